//! The input limits of the API contract ("Input limits"), shared by every domain crate so that an
//! accepted event can always be stored, published and projected (architecture.md invariant 7).
//!
//! The domain crates call these in `decide` and export them for the gateway to run before
//! a command is built: a rule is written once, here or in the domain, never in a handler.

/// Largest quantity one order line, receipt or reservation may carry.
pub const MAX_QUANTITY: u64 = 1_000_000;
/// Largest stock an item may hold (`initial_stock` and every receipt stay under it).
pub const MAX_STOCK: u64 = 1_000_000_000_000;
/// Largest price or amount, in cents.
pub const MAX_CENTS: i64 = 1_000_000_000_000;

/// One input that breaks a limit, named as the API names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}

/// Whether `c` may stand in text: anything but control characters, except tab, newline
/// and carriage return. (PostgreSQL's `text` refuses NUL outright; the others would reach
/// every reader of the log unseen.)
pub fn is_allowed_char(c: char) -> bool {
    !c.is_control() || matches!(c, '\t' | '\n' | '\r')
}

/// Text of `min_chars` to `max_chars` characters, not blank when `min_chars > 0`, with no
/// control characters but tab, newline and carriage return.
///
/// # Errors
/// [`Invalid`] naming `field` and what is wrong.
pub fn text(field: &str, value: &str, min_chars: usize, max_chars: usize) -> Result<(), Invalid> {
    if !value.chars().all(is_allowed_char) {
        return Err(Invalid::new(
            field,
            "must not contain control characters (tab, newline and carriage return are allowed)",
        ));
    }
    let chars = value.chars().count();
    if chars < min_chars || chars > max_chars || (min_chars > 0 && value.trim().is_empty()) {
        return Err(Invalid::new(
            field,
            if min_chars > 0 {
                format!("{min_chars} to {max_chars} characters, not blank")
            } else {
                format!("at most {max_chars} characters")
            },
        ));
    }
    Ok(())
}

/// An integer in `min..=max`.
///
/// # Errors
/// [`Invalid`] naming `field` and the range.
pub fn in_range(field: &str, value: i128, min: i128, max: i128) -> Result<(), Invalid> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Invalid::new(field, format!("must be from {min} to {max}")))
    }
}

/// A quantity of 1 to [`MAX_QUANTITY`].
///
/// # Errors
/// [`Invalid`] naming `field`.
pub fn quantity(field: &str, value: u64) -> Result<(), Invalid> {
    in_range(field, value.into(), 1, MAX_QUANTITY.into())
}

/// An amount of 0 to [`MAX_CENTS`] cents.
///
/// # Errors
/// [`Invalid`] naming `field`.
pub fn cents(field: &str, value: i64) -> Result<(), Invalid> {
    in_range(field, value.into(), 0, MAX_CENTS.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_control_characters_but_tab_and_newlines() {
        assert!(text("f", "a\u{0}b", 1, 10).is_err());
        assert!(text("f", "a\u{1b}[31m", 1, 10).is_err());
        assert!(text("f", "a\u{7f}", 1, 10).is_err());
        assert!(text("f", "a\u{85}", 1, 10).is_err(), "C1 controls too");
        assert!(text("f", "a\tb\r\nc", 1, 10).is_ok());
        assert!(text("f", "日本語", 1, 3).is_ok(), "counted in characters");
    }

    #[test]
    fn text_bounds_length_and_blankness() {
        assert!(text("f", "", 1, 10).is_err());
        assert!(text("f", "   ", 1, 10).is_err());
        assert!(text("f", "", 0, 10).is_ok());
        assert!(text("f", &"x".repeat(11), 1, 10).is_err());
        assert_eq!(text("name", "", 1, 10).unwrap_err().field, "name");
    }

    #[test]
    fn numbers_stay_in_their_ranges() {
        assert!(quantity("q", 0).is_err());
        assert!(quantity("q", MAX_QUANTITY).is_ok());
        assert!(quantity("q", MAX_QUANTITY + 1).is_err());
        assert!(quantity("q", u64::MAX).is_err());
        assert!(cents("c", -1).is_err());
        assert!(cents("c", MAX_CENTS).is_ok());
        assert!(cents("c", i64::MAX).is_err());
    }
}

/// What kind of refusal a domain error is. Each domain error names its kind once, in
/// business words; the gateway maps each kind to one HTTP status, for every context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The aggregate does not exist (404).
    NotFound,
    /// The actor may not do this (403).
    Forbidden,
    /// The input breaks a limit (422 `validation_failed`).
    Invalid,
    /// A business rule refuses it in the aggregate's current state (409, with the code).
    Conflict,
    /// An outside service did not answer in time (504).
    TimedOut,
}

/// A domain error as every caller of the domain sees it: a stable code and a kind.
pub trait DomainRule: std::error::Error + Send + Sync + 'static {
    /// The stable snake_case `code` of the API contract's problem+json.
    fn rule_code(&self) -> &'static str;
    fn refusal(&self) -> Refusal;
    /// The invalid fields, when the kind is [`Refusal::Invalid`] and the domain knows them.
    fn invalid_fields(&self) -> Vec<Invalid> {
        Vec::new()
    }
}

/// `impl DomainRule` from one row per variant, so a variant's code, kind and field are
/// written together and a new variant cannot be left out (each match is exhaustive):
///
/// - `NotFound`, `Forbidden`: that kind, with the code `not_found` or `forbidden`;
/// - `Invalid("field")`: `validation_failed`, naming the field (the error's message is the
///   field's); `Invalid("field", "code")` with another code; `Invalid(binding)` for a
///   variant that carries its [`Invalid`];
/// - `Conflict("code")`, `TimedOut("code")`: that kind with its code.
///
/// ```ignore
/// chronicle_schemas::domain_rules!(CouponError {
///     Self::NotFound => NotFound,
///     Self::InvalidCode => Invalid("code"),
///     Self::Exhausted => Conflict("coupon_exhausted"),
/// });
/// ```
#[macro_export]
macro_rules! domain_rules {
    ($error:ty { $($pattern:pat => $kind:ident $(($($arg:tt)*))?),+ $(,)? }) => {
        impl $crate::limits::DomainRule for $error {
            #[allow(unused_variables)]
            fn rule_code(&self) -> &'static str {
                match self {
                    $($pattern => $crate::domain_rules!(@code $kind $(($($arg)*))?),)+
                }
            }

            #[allow(unused_variables)]
            fn refusal(&self) -> $crate::limits::Refusal {
                match self {
                    $($pattern => $crate::limits::Refusal::$kind,)+
                }
            }

            #[allow(unused_variables)]
            fn invalid_fields(&self) -> Vec<$crate::limits::Invalid> {
                match self {
                    $($pattern => $crate::domain_rules!(@invalid self $kind $(($($arg)*))?),)+
                }
            }
        }
    };
    (@code NotFound) => { "not_found" };
    (@code Forbidden) => { "forbidden" };
    (@code Invalid ($field:literal, $code:literal)) => { $code };
    (@code Invalid ($($field:tt)*)) => { "validation_failed" };
    (@code $kind:ident ($code:literal)) => { $code };
    (@invalid $self:ident Invalid ($field:literal $(, $code:literal)?)) => {
        vec![$crate::limits::Invalid::new($field, $self.to_string())]
    };
    (@invalid $self:ident Invalid ($carried:ident)) => { vec![$carried.clone()] };
    (@invalid $self:ident $($other:tt)*) => { Vec::new() };
}
