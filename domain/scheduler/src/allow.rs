//! Which hosts an HTTP action may call (`CHRONICLE_SCHEDULER_HTTP_ALLOW`): a user's job must
//! not become a way into the operator's internal services.

use chronicle_schemas::limits::Invalid;

use crate::MAX_URL;

/// Where an HTTP action goes: an `http` or `https` URL without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The host, lowercase; an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
}

impl HttpTarget {
    /// # Errors
    /// [`Invalid`] for `action.url`.
    pub fn parse(url: &str) -> Result<Self, Invalid> {
        let invalid = |m: &str| Invalid::new("action.url", m);
        if url.len() > MAX_URL {
            return Err(invalid("at most 2048 characters"));
        }
        let parsed = url::Url::parse(url).map_err(|e| invalid(&format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("an http or https URL"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // A credential would be stored in the job's event for every reader of the log.
            return Err(invalid("no user name or password in the URL"));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("a URL with a host"))?
            .to_ascii_lowercase();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| invalid("a URL with a port"))?;
        Ok(Self { host, port })
    }
}

/// Host names or IP addresses, each with an optional `:port` (any port when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    /// Parses `a.example,10.0.0.5:8080,[::1]:9000` (empty: nothing is allowed).
    ///
    /// # Errors
    /// A message naming the entry that is neither a host nor a host with a port.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            // Parse as the authority of a URL, which settles IPv6 brackets and ports.
            let plain = entry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            let target = plain
                .then(|| url::Url::parse(&format!("http://{entry}/")).ok())
                .flatten()
                .filter(|u| u.path() == "/" && u.username().is_empty() && u.query().is_none())
                .and_then(|u| Some((u.host_str()?.to_ascii_lowercase(), u.port())))
                .ok_or_else(|| {
                    format!("{entry:?} is not a host name or IP with an optional :port")
                })?;
            let explicit_port = entry.rsplit_once(':').is_some_and(|(h, p)| {
                !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty()
            });
            // `Url` drops a port equal to the scheme's default (80): keep what was written.
            let port = target.1.or(explicit_port.then_some(80));
            entries.push((target.0, port));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the list names `target`'s host (and its port, when the entry has one).
    pub fn allows(&self, target: &HttpTarget) -> bool {
        self.entries
            .iter()
            .any(|(host, port)| *host == target.host && port.is_none_or(|p| p == target.port))
    }

    /// Whether `url` may be called.
    ///
    /// # Errors
    /// [`Invalid`] for `action.url`: not an http(s) URL, or a host the list does not name.
    pub fn check(&self, url: &str) -> Result<(), Invalid> {
        let target = HttpTarget::parse(url)?;
        if self.allows(&target) {
            Ok(())
        } else {
            Err(Invalid::new(
                "action.url",
                format!(
                    "{}:{} is not in CHRONICLE_SCHEDULER_HTTP_ALLOW",
                    target.host, target.port
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_and_ports_are_allowed() {
        let list =
            AllowList::parse("hooks.example.com, 127.0.0.1:8080,[::1]:9000,plain:80").unwrap();
        assert!(list.check("https://hooks.example.com/x?y=1").is_ok());
        assert!(
            list.check("http://HOOKS.example.com:1234/").is_ok(),
            "any port"
        );
        assert!(list.check("http://127.0.0.1:8080/run").is_ok());
        assert!(
            list.check("http://127.0.0.1:8081/run").is_err(),
            "another port"
        );
        assert!(list.check("http://127.0.0.1/run").is_err(), "port 80");
        assert!(list.check("http://[::1]:9000/").is_ok());
        assert!(list.check("http://plain/").is_ok(), "port 80 written out");
        assert!(list.check("http://plain:81/").is_err());
        assert!(list
            .check("http://169.254.169.254/latest/meta-data")
            .is_err());
        assert!(list.check("http://hooks.example.com.evil.test/").is_err());
        assert!(
            list.check("http://user:pw@hooks.example.com/").is_err(),
            "no credentials"
        );
        assert!(list.check("file:///etc/passwd").is_err());
        assert!(list.check("gopher://hooks.example.com/").is_err());
        assert!(list
            .check(&format!("http://hooks.example.com/{}", "x".repeat(3000)))
            .is_err());
        assert!(
            AllowList::default()
                .check("http://hooks.example.com/")
                .is_err(),
            "empty: none"
        );
    }

    #[test]
    fn a_bad_entry_is_refused_with_its_text() {
        assert!(AllowList::parse("a.example,/path")
            .unwrap_err()
            .contains("/path"));
        assert!(AllowList::parse("a:b:c").is_err());
        assert!(AllowList::parse("").unwrap().is_empty());
    }
}
