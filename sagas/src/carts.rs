//! The cart sweeper: counts a cart abandoned when it held lines and nobody touched it for
//! `CHRONICLE_CART_ABANDONED_AFTER` (the API contract, "Catalog edits and the cart"; the series
//! `business_carts_abandoned` counts the `CartAbandoned` events).
//!
//! Time passing is no event, so a sweep turns it into one: it pages through the carts the
//! `carts` read model shows waiting with lines since before the cutoff, and asks each cart to
//! `MarkAbandoned` at the version the read model saw. A cart touched since (the read model
//! lagging, or a customer at work during the sweep) has moved past that version and the
//! command appends nothing; a cart already counted appends nothing either. So any number of
//! sweeps, overlapping or repeated after a crash, count each idle spell once.

use std::{future::Future, time::Duration};

use chronicle_bus::ErrorChain;
use chronicle_commands::{CommandContext, CommandError, CommandExecutor, Executed, RetryPolicy};
use chronicle_commerce::{Cart, CartCommand};
use chronicle_projections::carts;
use sqlx::PgPool;

/// The actor recorded on the events the sweeper causes.
const ACTOR: &str = "sweeper:carts";

/// How many carts a sweep reads from the read model at a time.
const PAGE: i64 = 500;

/// When a cart counts as abandoned, and how often the sweeper looks.
#[derive(Debug, Clone)]
pub struct CartSweeperConfig {
    /// How long a cart with lines stays untouched before it counts as abandoned
    /// (`CHRONICLE_CART_ABANDONED_AFTER`).
    pub abandoned_after: Duration,
    /// How often it sweeps.
    pub every: Duration,
}

impl CartSweeperConfig {
    /// Sweeps a tenth as often as `abandoned_after`, at most every minute and at least
    /// every 100 ms: a cart is counted within 10% (or a minute) of becoming abandoned.
    pub fn abandoned_after(abandoned_after: Duration) -> Self {
        Self {
            abandoned_after,
            every: (abandoned_after / 10)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
        }
    }
}

impl Default for CartSweeperConfig {
    fn default() -> Self {
        Self::abandoned_after(Duration::from_secs(24 * 3600))
    }
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum CartSweepError {
    #[error("reading the carts waiting")]
    Database(#[from] sqlx::Error),
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CartsSwept {
    /// The carts counted abandoned.
    pub abandoned: Vec<String>,
    /// The carts looked at that had been touched since the read model saw them, or were
    /// counted already.
    pub unchanged: usize,
}

/// The cart sweeper of one process (one is enough; two only repeat each other's no-ops).
pub struct CartSweeper {
    pool: PgPool,
    commands: CommandExecutor,
    config: CartSweeperConfig,
}

impl CartSweeper {
    /// A sweeper reading the commerce schema's `carts` read model in `pool`.
    pub fn new(pool: PgPool, commands: CommandExecutor, config: CartSweeperConfig) -> Self {
        Self {
            pool,
            commands,
            config,
        }
    }

    /// Sweeps every interval until `shutdown`; a failed sweep is logged and tried again.
    ///
    /// # Errors
    /// Never; the signature matches the other components'.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), CartSweepError> {
        // The read model it reads may not exist yet (its projector starts beside it).
        if let Err(e) = chronicle_projections::setup(&self.pool, &carts::CartsProjection).await {
            tracing::warn!(error = %ErrorChain(&e), "the carts tables are not there yet");
        }
        let sweeper = &self;
        chronicle_bus::periodic::every(
            "cart sweeper",
            self.config.every,
            Duration::ZERO,
            shutdown,
            move || async move {
                let swept = sweeper.sweep().await?;
                if !swept.abandoned.is_empty() {
                    tracing::info!(carts = swept.abandoned.len(), "carts counted abandoned");
                }
                Ok::<(), CartSweepError>(())
            },
        )
        .await;
        Ok(())
    }

    /// One sweep: every cart waiting with lines since before `abandoned_after` ago is asked
    /// to count itself abandoned, a page at a time.
    ///
    /// # Errors
    /// The database's; a cart whose command fails is logged and left for the next sweep.
    pub async fn sweep(&self) -> Result<CartsSwept, CartSweepError> {
        // An interval too large for the calendar abandons nothing, rather than panicking.
        let Some(before) = chrono::TimeDelta::from_std(self.config.abandoned_after)
            .ok()
            .and_then(|after| chrono::Utc::now().checked_sub_signed(after))
        else {
            return Ok(CartsSwept::default());
        };
        let mut swept = CartsSwept::default();
        let mut after: Option<carts::IdleCart> = None;
        loop {
            let page = carts::idle(
                &self.pool,
                before,
                after.as_ref().map(|c| (c.updated_at, c.cart_id.as_str())),
                PAGE,
            )
            .await?;
            for cart in &page {
                match self.mark(cart).await {
                    Ok(true) => swept.abandoned.push(cart.cart_id.clone()),
                    Ok(false) => swept.unchanged += 1,
                    Err(e) => {
                        tracing::warn!(cart = %cart.cart_id, error = %ErrorChain(&e), "a cart was not counted abandoned")
                    }
                }
            }
            if page.len() < usize::try_from(PAGE).unwrap_or(usize::MAX) {
                return Ok(swept);
            }
            after = page.into_iter().last();
        }
    }

    /// Asks `cart` to count itself abandoned at the version it was seen idle at: whether it
    /// did.
    async fn mark(
        &self,
        cart: &carts::IdleCart,
    ) -> Result<bool, CommandError<chronicle_commerce::CartError>> {
        let ctx = CommandContext {
            actor: Some(ACTOR.to_owned()),
            expected_version: u64::try_from(cart.version).ok(),
            retry: RetryPolicy::NEVER,
            ..CommandContext::new()
        };
        match self
            .commands
            .execute::<Cart>(&cart.cart_id, CartCommand::MarkAbandoned, &(), &ctx)
            .await
        {
            Ok(Executed::Committed(committed)) => Ok(committed.appended > 0),
            Ok(Executed::Replayed(_)) => Ok(false),
            // Touched since it was seen idle: not abandoned.
            Err(CommandError::VersionMismatch { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
