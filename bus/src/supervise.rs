//! The one retry-until-shutdown loop: every long-running part of a process (the relay, each
//! subscriber) runs its work in rounds through it.

use std::{future::Future, time::Duration};

use crate::ErrorChain;

/// Runs `round` again and again until `shutdown`, backing off (250 ms doubling to 5 s)
/// after a round that failed and starting at once after one that ended cleanly. An error
/// `fatal` says yes to ends it (an injected fault: a crash is not retried).
///
/// # Errors
/// The first fatal error.
pub async fn keep_running<E, F, Fut>(
    what: &str,
    shutdown: impl Future<Output = ()>,
    mut round: F,
    fatal: impl Fn(&E) -> bool,
) -> Result<(), E>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    const FIRST: Duration = Duration::from_millis(250);
    tokio::pin!(shutdown);
    let mut pause = FIRST;
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            result = round() => match result {
                Err(e) if fatal(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(what, error = %ErrorChain(&e), retry_in_ms = pause.as_millis() as u64, "interrupted; retrying");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Ok(()) => pause = FIRST,
            }
        }
    }
}
