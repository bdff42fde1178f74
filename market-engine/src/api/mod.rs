//! The HTTP API (axum): the state every handler shares, the rate limiter of the order
//! endpoints, and the router assembled from one module per resource — each contributes its
//! `routes()`, so adding an endpoint means adding it to its resource's module (and to
//! `openapi.json`, which a test checks against every `.route(` under `api/`).
//!
//! - [`error`]: the one error type, [`ApiError`], and every mapping to a status code; the JSON
//!   error shape `{"error": "...", "field": "..."}` of every refusal, unknown routes included.
//! - [`extract`]: the extractors handlers share — a JSON body refused in that shape, the
//!   authenticated account, the community operator, a page of a list.
//! - [`auth`] (accounts, sessions, tokens) over [`guard`] (login limits, hashing capacity)
//!   and [`passwords`] (Argon2id, the password policy).
//! - Resources: [`orders`], [`slots`], [`funds`], [`wallet`], [`rules`], [`settlements`],
//!   [`settings`], [`meters`], [`history`] (slots over a range), [`power`] (the picture now),
//!   [`audit`] (the operator's view of rejected readings and disputes), [`proof`], [`roi`], and
//!   [`ops`] (metrics, health, the OpenAPI document and the event stream).

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use ring::rand::{SecureRandom, SystemRandom};

use crate::ingest::{IngestMetrics, KeyRegistry};
use crate::market::Market;
use crate::pipeline::now_ms;
use crate::store::Store;

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod funds;
pub mod guard;
pub mod history;
pub mod meters;
pub mod ops;
pub mod orders;
pub mod passwords;
pub mod power;
pub mod proof;
pub mod roi;
pub mod rules;
pub mod settings;
pub mod settlements;
pub mod slots;
pub mod wallet;

pub use error::ApiError;
pub use extract::{Authenticated, JsonBody, Operator};

/// The largest request body accepted; a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Registered meter keys (the ingest reads them).
    pub keys: KeyRegistry,
    /// Ingest counters.
    pub ingest: Arc<IngestMetrics>,
    /// The market.
    pub market: Arc<Market>,
    /// Order-rate limits per account.
    pub limits: Arc<RateLimits>,
    /// Meters an account may register.
    pub meters_per_account: u32,
    /// Background task restarts.
    pub tasks: Arc<crate::tasks::TaskMetrics>,
    /// The chain outbox driver's counters.
    pub chain: Arc<crate::metrics::ChainMetrics>,
    /// The settlement outbox and chain, when the engine settles on one.
    pub settler: Option<Arc<crate::chain::ChainSettler>>,
    /// Logins and access-rule denials at the embedded broker.
    pub broker_auth: Arc<crate::broker::BrokerAuthMetrics>,
    /// Password hashing capacity and login limits.
    pub auth: Arc<auth::Auth>,
}

/// A token bucket per account for the order endpoints: `burst` requests at once, refilled at
/// `per_second`. Protects the book from one runaway bot.
#[derive(Debug)]
pub struct RateLimits {
    per_second: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<i64, (f64, std::time::Instant)>>,
}

impl RateLimits {
    /// Limits of `per_second` sustained and `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub(crate) fn take(&self, account: i64) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(account).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens < 1.0 {
            return Err(ApiError::TooManyRequests);
        }
        *tokens -= 1.0;
        Ok(())
    }
}

/// The routes: every resource's, one fallback and the layers that keep every refusal in the
/// one error shape.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(auth::routes())
        .merge(wallet::routes())
        .merge(meters::routes())
        .merge(rules::routes())
        .merge(orders::routes())
        .merge(slots::routes())
        .merge(funds::routes())
        .merge(settlements::routes())
        .merge(settings::routes())
        .merge(ops::routes())
        .merge(history::routes())
        .merge(power::routes())
        .merge(audit::routes())
        .merge(proof::routes())
        .merge(roi::routes())
        .merge(crate::staking::routes())
        .merge(crate::web::router())
        .fallback(error::no_route)
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// 32 random bytes in hex: a session's or token's secret, a generated funding reference.
pub(crate) fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal("no randomness".into()))?;
    Ok(hex::encode(bytes))
}

/// Seconds since the epoch, as the market's calendar counts them.
pub(crate) fn now_s() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX)
}
