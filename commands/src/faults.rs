use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// What an armed fault point does when it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Abort the whole process at once, as `kill -9` would (used with subprocesses).
    Abort,
    /// Make the component stop right there, with no clean-up, once; the point disarms. Used
    /// in-process: what a crash leaves behind (an open transaction, unacked messages, a
    /// dropped connection) is left behind the same way.
    Crash,
    /// [`Crash`](Self::Crash) at the point's `n`th hit from now (1: the next), passing the
    /// ones before: a crash between two steps that pass the same point.
    CrashAtHit(u32),
}

/// A component stopped at an armed fault point.
#[derive(Debug, Clone, thiserror::Error)]
#[error("injected fault at {0}")]
pub struct InjectedFault(pub String);

/// Named fault points, per component instance so parallel tests do not share them.
///
/// A production process arms none unless `CHRONICLE_FAILPOINTS` names some
/// (`relay.after_publish=abort,projector.before_commit=abort`).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<HashMap<String, FaultAction>>>,
}

impl Faults {
    /// Fault points from `CHRONICLE_FAILPOINTS`; unknown actions are ignored with a warning.
    pub fn from_env() -> Self {
        let faults = Self::default();
        if let Ok(spec) = std::env::var("CHRONICLE_FAILPOINTS") {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                match item.split_once('=') {
                    Some((name, "abort")) => faults.arm(name, FaultAction::Abort),
                    Some((name, "crash")) => faults.arm(name, FaultAction::Crash),
                    _ => tracing::warn!(item, "ignoring a malformed CHRONICLE_FAILPOINTS entry"),
                }
            }
        }
        faults
    }

    /// Arms `point` with `action` (replacing what it was armed with).
    pub fn arm(&self, point: &str, action: FaultAction) {
        self.lock().insert(point.to_owned(), action);
    }

    /// Called by a component at fault point `point`.
    ///
    /// # Errors
    /// [`InjectedFault`] when the point is armed with [`FaultAction::Crash`].
    pub fn hit(&self, point: &str) -> Result<(), InjectedFault> {
        let action = {
            let mut armed = self.lock();
            match armed.get(point).copied() {
                Some(FaultAction::Crash | FaultAction::CrashAtHit(0 | 1)) => {
                    armed.remove(point).map(|_| FaultAction::Crash)
                }
                Some(FaultAction::CrashAtHit(n)) => {
                    armed.insert(point.to_owned(), FaultAction::CrashAtHit(n - 1));
                    None
                }
                other => other,
            }
        };
        match action {
            None => Ok(()),
            Some(FaultAction::Abort) => {
                tracing::error!(point, "fault point armed with abort: aborting the process");
                std::process::abort()
            }
            Some(FaultAction::Crash | FaultAction::CrashAtHit(_)) => {
                tracing::warn!(point, "fault point armed with crash: stopping here");
                Err(InjectedFault(point.to_owned()))
            }
        }
    }

    /// Disarms `point`.
    pub fn disarm(&self, point: &str) {
        self.lock().remove(point);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FaultAction>> {
        // A poisoned map is still a valid map: the panic was elsewhere.
        self.armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_at_the_nth_hit_passes_the_ones_before_and_disarms() {
        let faults = Faults::default();
        faults.arm("p", FaultAction::CrashAtHit(3));
        assert!(faults.hit("p").is_ok());
        assert!(faults.hit("p").is_ok());
        assert!(faults.hit("p").is_err());
        assert!(faults.hit("p").is_ok(), "disarmed after it crashed");
        faults.arm("p", FaultAction::Crash);
        faults.disarm("p");
        assert!(faults.hit("p").is_ok());
    }
}
