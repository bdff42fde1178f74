//! The HTTP API (axum): accounts, sessions and API tokens ([`auth`]), meters and their
//! readings, plus `/metrics` (Prometheus text), `/healthz` and the OpenAPI document at
//! `/openapi.json`.
//!
//! Errors are turned into responses in one place ([`ApiError`]): a status code and a JSON
//! body `{"error": "..."}` that says what was wrong, with `"field"` when one request field is
//! at fault. Requests the extractors refuse (malformed JSON, a wrong content type, a body over
//! [`MAX_BODY_BYTES`], a bad path or query) and unknown routes answer in the same shape.

pub mod auth;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;

mod meters;

use auth::Authenticated;

use crate::chain::SettlerError;
use crate::ingest::{IngestMetrics, KeyRegistry};
use crate::market::{Market, MarketError, NewOrder, OrderSide};
use crate::pipeline::now_ms;
use crate::store::{AccountRow, Store, StoreError};

pub mod history;
pub mod proof;
mod roi;

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

    fn take(&self, account: i64) -> Result<(), ApiError> {
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

/// An error turned into a response.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or a value is out of range.
    BadRequest(String),
    /// 400: one request field is at fault (the web app shows the message beside it).
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it, starting with its name.
        message: String,
    },
    /// A request the extractors could not read: 400 (malformed JSON, bad path or query), 413
    /// (body too large), 415 (not JSON).
    Rejected {
        /// The status.
        status: StatusCode,
        /// What was wrong.
        message: String,
        /// The field at fault, when there is one.
        field: Option<String>,
    },
    /// 401: no valid session or token.
    Unauthorized,
    /// 401: a login's name or password is wrong (one answer for both: it must not tell
    /// which names exist).
    LoginFailed,
    /// 403: authenticated, but not allowed to touch this.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409: the name or id is taken.
    Conflict(String),
    /// 422: well-formed, but the market's rules refuse it (gate closed, price out of band).
    Unprocessable(String),
    /// 429: the account's order rate limit is exhausted.
    TooManyRequests,
    /// 429: too many failed logins for a name or from an address.
    Throttled {
        /// What to do.
        message: String,
        /// Seconds until the next attempt is looked at (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// 503: the engine is at capacity (password hashing) or its storage fails; try again
    /// shortly.
    Busy {
        /// What to do.
        message: String,
        /// Seconds to wait (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// 500: the database failed.
    Internal(String),
}

/// Seconds a client is asked to wait while storage fails.
const STORAGE_RETRY_AFTER_S: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            e if e.is_unavailable() => {
                tracing::error!(target: "api", "storage failing: {e}");
                Self::Busy {
                    message: "the engine's storage is failing (full disk or database \
                              unavailable); nothing was changed, try again shortly"
                        .into(),
                    retry_after_s: STORAGE_RETRY_AFTER_S,
                }
            }
            other => {
                tracing::error!(target: "api", "{other}");
                Self::Internal("database error".into())
            }
        }
    }
}

impl From<MarketError> for ApiError {
    fn from(e: MarketError) -> Self {
        match e {
            MarketError::Order(e) => Self::Unprocessable(e.to_string()),
            MarketError::Slot(m) => Self::Unprocessable(m),
            MarketError::Settlement(m) => {
                tracing::error!(target: "api", "{m}");
                Self::Internal("settlement failed".into())
            }
            MarketError::Stopped(what) => Self::Busy {
                message: format!("{what} stopped: the engine is shutting down"),
                retry_after_s: STORAGE_RETRY_AFTER_S,
            },
            MarketError::Settings(m) => Self::BadRequest(m),
            MarketError::UnknownOrder(_) => Self::NotFound(e.to_string()),
            MarketError::InsufficientFunds { .. } => Self::Unprocessable(e.to_string()),
            MarketError::ReferenceReused(_) => Self::Conflict(e.to_string()),
            MarketError::OutOfRange(m) => Self::Unprocessable(m),
            MarketError::Store(e) => e.into(),
        }
    }
}

/// Seconds a client is asked to wait while the chain's node does not answer.
const CHAIN_RETRY_AFTER_S: u64 = 15;

impl From<SettlerError> for ApiError {
    fn from(e: SettlerError) -> Self {
        match e {
            SettlerError::Store(e) => e.into(),
            SettlerError::Market(e) => e.into(),
            SettlerError::NoKey { .. } => Self::Conflict(e.to_string()),
            e if e.refused() => Self::Unprocessable(e.to_string()),
            e if e.is_transient() => {
                tracing::warn!(target: "api", "chain: {e}");
                Self::Busy {
                    message: "the chain's node is not answering; nothing was changed, try again \
                              shortly"
                        .into(),
                    retry_after_s: CHAIN_RETRY_AFTER_S,
                }
            }
            other => {
                tracing::error!(target: "api", "chain: {other}");
                Self::Internal("the chain settler failed".into())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        // axum deserialises through serde_path_to_error: the path names the field at fault.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut located = None;
        while let Some(err) = source {
            if let Some(found) = err.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>()
            {
                located = Some((found.path().to_string(), found.inner().to_string()));
                break;
            }
            source = err.source();
        }
        let (status, message, field) = match (&e, located) {
            (JsonRejection::JsonDataError(_), Some((path, message))) if path != "." => (
                StatusCode::BAD_REQUEST,
                format!("{path}: {message}"),
                Some(path),
            ),
            (JsonRejection::JsonDataError(_), Some((_, message))) => {
                // A missing field is reported at the object that lacks it.
                let field = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned());
                (StatusCode::BAD_REQUEST, format!("body: {message}"), field)
            }
            (JsonRejection::JsonSyntaxError(_), Some((_, message))) => (
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {message}"),
                None,
            ),
            (JsonRejection::MissingJsonContentType(_), _) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON, with `Content-Type: application/json`".into(),
                None,
            ),
            _ if e.status() == StatusCode::PAYLOAD_TOO_LARGE => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                None,
            ),
            _ => (StatusCode::BAD_REQUEST, e.body_text(), None),
        };
        Self::Rejected {
            status,
            message,
            field,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut field = None;
        let mut retry_after = None;
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Invalid { field: f, message } => {
                field = Some(f);
                (StatusCode::BAD_REQUEST, message)
            }
            Self::Rejected {
                status,
                message,
                field: f,
            } => {
                field = f;
                (status, message)
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "log in (POST /api/v1/sessions) or send an API token as `Authorization: Bearer <token>`".into(),
            ),
            Self::LoginFailed => (StatusCode::UNAUTHORIZED, "wrong name or password".into()),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            Self::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "order rate limit reached for this account; slow down".into(),
            ),
            Self::Throttled {
                message,
                retry_after_s,
            } => {
                retry_after = Some(retry_after_s);
                (StatusCode::TOO_MANY_REQUESTS, message)
            }
            Self::Busy {
                message,
                retry_after_s,
            } => {
                retry_after = Some(retry_after_s);
                (StatusCode::SERVICE_UNAVAILABLE, message)
            }
            Self::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        let mut body = json!({ "error": message });
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Answers a request for a route that does not exist.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {method} {}; the API is described at /openapi.json",
        uri.path()
    ))
}

/// Puts every error response that is not JSON yet (axum's own rejections of a path or a query,
/// 405 for a wrong method) into the one error shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(
        parts,
        axum::body::Body::from(json!({ "error": message }).to_string()),
    )
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/accounts", post(auth::create_account))
        .route("/api/v1/sessions", post(auth::login).delete(auth::logout))
        .route(
            "/api/v1/tokens",
            post(auth::create_token).get(auth::list_tokens),
        )
        .route("/api/v1/tokens/{token_id}", delete(auth::revoke_token))
        .route("/api/v1/me", get(auth::me))
        .route(
            "/api/v1/me/custodial-key/export",
            post(auth::export_custodial_key),
        )
        .route("/api/v1/me/wallet/challenge", post(wallet_challenge))
        .route("/api/v1/me/wallet", post(link_wallet))
        .route("/api/v1/meters/{meter_id}/readings", get(meter_readings))
        .route(
            "/api/v1/meters/{meter_id}/rule",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route("/api/v1/orders", post(place_order))
        .route(
            "/api/v1/orders/{order_id}",
            delete(cancel_order).patch(amend_order),
        )
        .route("/api/v1/slots/current", get(current_slot))
        .route("/api/v1/slots/{slot}", get(slot_info))
        .route("/api/v1/slots/{slot}/book", get(slot_book))
        .route("/api/v1/balance", get(balance))
        .route("/api/v1/funding", get(funding))
        .route("/api/v1/withdrawals", post(withdraw))
        .route("/api/v1/accounts/{name}/deposits", post(deposit))
        .route("/api/v1/settlements", get(settlements))
        .route(
            "/api/v1/operator/settlements/{slot}/resend",
            post(resend_settlement),
        )
        .route(
            "/api/v1/market/settings",
            get(get_settings).put(put_settings),
        )
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .merge(meters::routes())
        .merge(history::routes())
        .merge(proof::routes())
        .merge(roi::routes())
        .merge(crate::staking::routes())
        .merge(crate::web::router())
        .fallback(no_route)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal("no randomness".into()))?;
    Ok(hex::encode(bytes))
}

/// The body, or the extractor's rejection in the one error shape (naming the field at fault).
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(ApiError::from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

impl Page {
    /// The query's page, with `limit` in 1..=1000.
    fn checked(
        page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Page, ApiError> {
        let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        if page.limit == 0 || page.limit > 1000 {
            return Err(ApiError::BadRequest("limit: 1 to 1000".into()));
        }
        Ok(page)
    }
}

fn default_limit() -> u32 {
    100
}

async fn meter_readings(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = Page::checked(page)?;
    own_meter(&state, &account, &meter_id).await?;
    let readings: Vec<serde_json::Value> = state
        .store
        .readings(&meter_id, page.after, page.limit)
        .await?
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    Ok(Json(json!({ "meter_id": meter_id, "readings": readings })))
}

fn now_s() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    meter_id: String,
    slot: u64,
    side: OrderSide,
    energy_wh: u64,
    price_per_kwh: u64,
}

fn trade_json(t: &gridshare_core::market::Trade) -> serde_json::Value {
    json!({
        "bid": t.bid.0, "ask": t.ask.0, "energy_wh": t.energy_wh,
        "buyer_pays": t.amounts.buyer_pays, "seller_receives": t.amounts.seller_receives,
        "fees": t.amounts.fees, "buyer_rate_per_kwh": t.amounts.buyer_rate_per_kwh,
        "seller_rate_per_kwh": t.amounts.seller_rate_per_kwh,
    })
}

async fn place_order(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<OrderRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.take(account.id)?;
    let req = json_body(body)?;
    own_meter(&state, &account, &req.meter_id).await?;
    let slot = req.slot;
    let new = NewOrder {
        account: account.id,
        meter: req.meter_id,
        slot,
        side: req.side,
        price_per_kwh: req.price_per_kwh,
        energy_wh: req.energy_wh,
    };
    let (id, trades) = state.market.submit(&new, now_s()).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "order_id": id, "slot": slot, "trades": trades.iter().map(trade_json).collect::<Vec<_>>() }),
        ),
    ))
}

async fn cancel_order(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(order_id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    state.limits.take(account.id)?;
    state.market.cancel(account.id, order_id, now_s()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmendRequest {
    energy_wh: u64,
    price_per_kwh: u64,
}

async fn amend_order(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(order_id): Path<u64>,
    body: Result<Json<AmendRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.limits.take(account.id)?;
    let req = json_body(body)?;
    let trades = state
        .market
        .amend(
            account.id,
            order_id,
            req.price_per_kwh,
            req.energy_wh,
            now_s(),
        )
        .await?;
    Ok(Json(
        json!({ "order_id": order_id, "trades": trades.iter().map(trade_json).collect::<Vec<_>>() }),
    ))
}

async fn current_slot(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let calendar = &state.market.community().calendar;
    let now = now_s();
    let slot = calendar
        .slot_delivering_at(now)
        .ok_or_else(|| ApiError::Internal("clock before the calendar's epoch".into()))?;
    let next = calendar
        .slot(slot + 1)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({ "now_s": now, "delivering": slot, "next": next }),
    ))
}

async fn slot_info(
    State(state): State<AppState>,
    Path(slot): Path<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let terms = state
        .market
        .community()
        .terms(slot)
        .map_err(|e| ApiError::BadRequest(format!("slot {slot}: {e}")))?;
    let (status, clearing_price) = state.market.slot_status(slot).await?;
    let trades = state.market.trades(slot).await?;
    Ok(Json(json!({
        "slot": terms.slot, "status": status, "clearing_price": clearing_price,
        "retail_per_kwh": terms.band.retail_per_kwh, "feed_in_per_kwh": terms.band.feed_in_per_kwh,
        "traded_wh": trades.iter().map(|t| t.energy_wh).sum::<u64>(),
        "trades": trades.iter().map(trade_json).collect::<Vec<_>>(),
    })))
}

async fn slot_book(
    State(state): State<AppState>,
    Path(slot): Path<u64>,
) -> Json<serde_json::Value> {
    let depth = state.market.depth(slot).await;
    let level = |(price, wh, orders): &(u64, u64, u32)| json!({"price_per_kwh": price, "energy_wh": wh, "orders": orders});
    Json(json!({
        "slot": slot,
        "bids": depth.bids.iter().map(level).collect::<Vec<_>>(),
        "asks": depth.asks.iter().map(level).collect::<Vec<_>>(),
    }))
}

async fn balance(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let settled = state.market.balance(account.id).await?;
    Ok(Json(funds_json(
        &account.name,
        state.market.funds(account.id).await,
        Some(settled),
    )))
}

fn funds_json(
    account: &str,
    funds: crate::market::FundsView,
    settled: Option<i64>,
) -> serde_json::Value {
    let mut body = json!({
        "account": account, "balance": funds.balance, "held_by_bids": funds.held_by_bids,
        "held_by_purchases": funds.held_by_purchases,
        "withdrawal_pending": funds.withdrawal_pending, "available": funds.available,
    });
    if let Some(settled) = settled {
        body["settled"] = json!(settled);
        body["deposits"] = json!(funds.balance.saturating_sub(settled));
    }
    body
}

/// A deposit or a withdrawal.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FundingRequest {
    /// Token units, more than zero.
    amount: u64,
    /// An idempotency key: a retried request with the same reference changes nothing.
    reference: Option<String>,
}

impl FundingRequest {
    fn checked(self, kind: &str) -> Result<(i64, String), ApiError> {
        let amount = i64::try_from(self.amount)
            .ok()
            .filter(|a| (1..=crate::market::MAX_BALANCE).contains(a))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "amount: a {kind} is between 1 and {} token units",
                    crate::market::MAX_BALANCE
                ))
            })?;
        let reference = match self.reference {
            Some(r) if r.is_empty() || r.len() > 128 || r.chars().any(char::is_control) => {
                return Err(ApiError::BadRequest(
                    "reference: 1 to 128 printable characters".into(),
                ));
            }
            Some(r) => r,
            None => format!("{kind}-{}", random_token()?),
        };
        Ok((amount, reference))
    }
}

/// The community operator records money a household paid in (a bank transfer, a token
/// deposit on chain); the household may spend it on bids.
async fn deposit(
    State(state): State<AppState>,
    Authenticated(operator): Authenticated,
    Path(name): Path<String>,
    body: Result<Json<FundingRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if operator.role != "operator" {
        return Err(ApiError::Forbidden(
            "only the community operator records deposits".into(),
        ));
    }
    let (amount, reference) = json_body(body)?.checked("deposit")?;
    // Names are stored normalised (`HOME-07` is `home-07`), so the path is read the same way.
    let name = auth::account_name(&name).unwrap_or(name);
    let account = state
        .store
        .account_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no account named {name:?}")))?;
    move_funds(&state, &account, amount, &reference).await
}

/// Books a deposit (positive) or withdrawal (negative) and answers with the account's funds.
async fn move_funds(
    state: &AppState,
    account: &AccountRow,
    amount: i64,
    reference: &str,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let funds = state
        .market
        .fund(account.id, amount, reference, now_ms())
        .await?;
    let mut body = funds_json(&account.name, funds, None);
    body["reference"] = json!(reference);
    Ok((StatusCode::CREATED, Json(body)))
}

/// A household takes money out: at most what it has available. Without a chain the engine
/// books it at once (the operator pays it out off chain). On a chain the money is in the
/// Settlement contract, so it leaves only on chain: the engine asks the contract with the
/// household's custodial key (`requestWithdrawal`), answers 202, and the books follow the
/// contract's events — the amount is held back once the request is confirmed and leaves the
/// balance when it is paid out to the custodial address after the withdrawal delay. (A
/// household with its own wallet calls the contract itself.)
async fn withdraw(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<FundingRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::response::Response, ApiError> {
    state.limits.take(account.id)?;
    let (amount, reference) = json_body(body)?.checked("withdrawal")?;
    let Some(settler) = state.settler.clone() else {
        return Ok(move_funds(&state, &account, -amount, &reference)
            .await?
            .into_response());
    };
    if let Some(wallet) = settler.custody().linked(account.id) {
        return Err(ApiError::Conflict(format!(
            "your account settles to your own wallet {wallet}: the engine holds no key for it, so \
             withdraw from the wallet (requestWithdrawal, then withdraw after the delay, on the \
             Settlement contract {:#x})",
            settler.settlement_address()
        )));
    }
    let funds = state.market.funds(account.id).await;
    if amount > funds.available {
        return Err(ApiError::Invalid {
            field: "amount".into(),
            message: format!(
                "amount: {amount} is more than the {} token units available (open bids, unsettled purchases and a pending withdrawal hold the rest)",
                funds.available.max(0)
            ),
        });
    }
    let request = settler
        .request_withdrawal(account.id, amount.unsigned_abs())
        .await?;
    let mut body = funds_json(&account.name, funds, None);
    body["requested"] = json!(amount);
    body["tx"] = json!(format!("{:#x}", request.tx));
    body["paid_to"] = json!(format!("{:#x}", request.address));
    body["ready_at"] = json!(request.ready_at);
    body["settlement_contract"] = json!(format!("{:#x}", settler.settlement_address()));
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /api/v1/me/wallet/challenge`: what a household's own wallet signs to become its
/// account's chain address (see [`crate::chain::link`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletChallengeRequest {
    /// The wallet, `0x…`.
    address: String,
}

/// `POST /api/v1/me/wallet`: the wallet's signatures of its challenge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkWalletRequest {
    address: String,
    nonce: String,
    link_signature: String,
    open_signature: Option<String>,
}

fn settler_of(state: &AppState) -> Result<Arc<crate::chain::ChainSettler>, ApiError> {
    state.settler.clone().ok_or_else(|| {
        ApiError::NotFound("no chain is configured: there is no wallet to link".into())
    })
}

fn parse_field<T: std::str::FromStr>(
    field: &'static str,
    text: &str,
    what: &str,
) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.trim().parse().map_err(|e| ApiError::Invalid {
        field: field.into(),
        message: format!("{field}: not {what}: {e}"),
    })
}

impl From<crate::chain::link::LinkError> for ApiError {
    fn from(e: crate::chain::link::LinkError) -> Self {
        use crate::chain::link::LinkError;
        match e {
            LinkError::Invalid(field, message) => ApiError::Invalid {
                field: field.into(),
                message,
            },
            LinkError::Conflict(m) => ApiError::Conflict(m),
            LinkError::Chain(e) => SettlerError::Chain(e).into(),
            LinkError::Store(e) => e.into(),
            LinkError::NoRandomness => ApiError::Internal("no system randomness".into()),
        }
    }
}

async fn wallet_challenge(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<WalletChallengeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.limits.take(account.id)?;
    let settler = settler_of(&state)?;
    let wallet: alloy::primitives::Address = parse_field(
        "address",
        &json_body(body)?.address,
        "an EVM address (0x and 40 hex digits)",
    )?;
    Ok(Json(
        settler.link_challenge(account.id, wallet, now_ms()).await?,
    ))
}

async fn link_wallet(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<LinkWalletRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.limits.take(account.id)?;
    let settler = settler_of(&state)?;
    let body = json_body(body)?;
    let wallet: alloy::primitives::Address = parse_field(
        "address",
        &body.address,
        "an EVM address (0x and 40 hex digits)",
    )?;
    let nonce: alloy::primitives::B256 = parse_field(
        "nonce",
        &body.nonce,
        "the challenge's nonce (0x and 64 hex digits)",
    )?;
    let link_signature: alloy::primitives::Bytes =
        parse_field("link_signature", &body.link_signature, "a hex signature")?;
    let open_signature: Option<alloy::primitives::Bytes> = body
        .open_signature
        .as_deref()
        .map(|s| parse_field("open_signature", s, "a hex signature"))
        .transpose()?;
    let signed = crate::chain::link::WalletSignatures {
        wallet,
        nonce,
        link_signature,
        open_signature,
    };
    settler
        .link_wallet(&state.market, account.id, signed, now_ms())
        .await?;
    Ok(Json(json!({
        "account": account.name,
        "chain": {"address": wallet.to_string(), "custodial": false,
                  "settlement_contract": format!("{:#x}", settler.settlement_address())},
    })))
}

/// The account's deposits and withdrawals, newest first.
async fn funding(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entries = state.market.funding(account.id, 100).await?;
    Ok(Json(json!({ "account": account.name, "funding": entries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRequest {
    sell_at_least_per_kwh: Option<u64>,
    buy_at_most_per_kwh: Option<u64>,
    keep_battery_above_bp: Option<u16>,
}

async fn own_meter(state: &AppState, account: &AccountRow, meter_id: &str) -> Result<(), ApiError> {
    match state.store.meter_owner(meter_id).await? {
        None => Err(ApiError::NotFound(format!(
            "meter {meter_id:?} is not registered"
        ))),
        Some(owner) if owner != account.id => Err(ApiError::Forbidden(format!(
            "meter {meter_id:?} belongs to another account: you can only read, trade and set rules for your own meters"
        ))),
        Some(_) => Ok(()),
    }
}

fn rule_json(rule: &crate::store::TradingRule) -> serde_json::Value {
    json!({
        "meter_id": rule.meter_id,
        "sell_at_least_per_kwh": rule.sell_at_least,
        "buy_at_most_per_kwh": rule.buy_at_most,
        "keep_battery_above_bp": rule.keep_battery_above_bp,
    })
}

async fn put_rule(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
    body: Result<Json<RuleRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req = json_body(body)?;
    own_meter(&state, &account, &meter_id).await?;
    if req.sell_at_least_per_kwh.is_none() && req.buy_at_most_per_kwh.is_none() {
        return Err(ApiError::BadRequest(
            "give sell_at_least_per_kwh, buy_at_most_per_kwh or both (DELETE removes the rule)"
                .into(),
        ));
    }
    let community = state.market.community();
    let slot = community.calendar.slot_delivering_at(now_s()).unwrap_or(0);
    let band = community
        .tariff
        .band(slot)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for (name, price) in [
        ("sell_at_least_per_kwh", req.sell_at_least_per_kwh),
        ("buy_at_most_per_kwh", req.buy_at_most_per_kwh),
    ] {
        if let Some(p) = price
            && !(band.feed_in_per_kwh..=band.retail_per_kwh).contains(&p)
        {
            return Err(ApiError::BadRequest(format!(
                "{name}: {p} is outside the tariff band {}..={} (feed-in..retail)",
                band.feed_in_per_kwh, band.retail_per_kwh
            )));
        }
    }
    if req.keep_battery_above_bp.is_some_and(|bp| bp > 10_000) {
        return Err(ApiError::BadRequest(
            "keep_battery_above_bp: at most 10000 (100 %)".into(),
        ));
    }
    let rule = crate::store::TradingRule {
        meter_id,
        account_id: account.id,
        sell_at_least: req.sell_at_least_per_kwh,
        buy_at_most: req.buy_at_most_per_kwh,
        keep_battery_above_bp: req.keep_battery_above_bp,
    };
    state.store.set_rule(&rule, now_ms()).await?;
    Ok(Json(rule_json(&rule)))
}

async fn get_rule(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    own_meter(&state, &account, &meter_id).await?;
    let rules = state.store.rules().await?;
    let rule = rules
        .iter()
        .find(|r| r.meter_id == meter_id)
        .ok_or_else(|| ApiError::NotFound(format!("meter {meter_id:?} has no trading rule")))?;
    Ok(Json(rule_json(rule)))
}

async fn delete_rule(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    own_meter(&state, &account, &meter_id).await?;
    if state.store.delete_rule(&meter_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "meter {meter_id:?} has no trading rule"
        )))
    }
}

async fn settlements(
    State(state): State<AppState>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = Page::checked(page)?;
    let mut batches = Vec::new();
    for (slot, accounts, debits, queued_ms) in
        state.market.settlements(page.after, page.limit).await?
    {
        let chain = state
            .store
            .settlement_batch(slot)
            .await?
            .map(|r| r.to_json());
        batches.push(json!({
            "slot": slot, "batch_id": slot, "accounts": accounts, "total_debits": debits,
            "queued_for_chain_ms": queued_ms, "chain": chain,
        }));
    }
    Ok(Json(json!({ "settlements": batches })))
}

/// The operator's re-send of a batch the contract refused (after the cause is fixed, say a
/// household topped up its balance on chain): tried again at the outbox's next step.
async fn resend_settlement(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(slot): Path<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if account.role != "operator" {
        return Err(ApiError::Forbidden(
            "only the community operator re-sends settlement batches".into(),
        ));
    }
    if !state
        .store
        .resend_settlement_batch(slot, crate::pipeline::now_ms())
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "slot {slot} has no settlement batch waiting to be sent (it is not in the outbox, \
             or it is already sent or confirmed)"
        )));
    }
    let record = state.store.settlement_batch(slot).await?;
    Ok(Json(
        json!({ "slot": slot, "chain": record.map(|r| r.to_json()) }),
    ))
}

async fn get_settings(State(state): State<AppState>) -> Json<serde_json::Value> {
    let versions: Vec<_> = state
        .market
        .settings()
        .into_iter()
        .map(|(from_slot, settings)| json!({ "from_slot": from_slot, "settings": settings }))
        .collect();
    Json(json!({ "versions": versions }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    mechanism: crate::settings::MechanismName,
    price_rule: crate::settings::PriceRuleName,
    k_basis_points: u16,
    /// For `k-factor-capped`; the current value when absent.
    seller_max_margin_basis_points: Option<u16>,
    retail_per_kwh: u64,
    feed_in_per_kwh: u64,
    grid_fee_per_kwh: u64,
    /// The slot timeline; each keeps its current value when absent.
    window_opens_before_s: Option<u32>,
    gate_closure_before_s: Option<u32>,
    settlement_after_s: Option<u32>,
    /// Accepted only as the current length (slot indices count slots of it).
    slot_length_s: Option<u32>,
    /// For `sharing`; each keeps its current value when absent.
    sharing_key: Option<crate::settings::SharingKeyName>,
    sharing_price_per_kwh: Option<u64>,
    sharing_shares: Option<Vec<crate::settings::ShareEntry>>,
}

/// The community operator changes tariffs, fees, the mechanism or the slot timeline; the change
/// takes effect from the first slot whose order window has not opened, so no open order changes
/// terms.
async fn put_settings(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<SettingsRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if account.role != "operator" {
        return Err(ApiError::Forbidden(
            "only the community operator changes market settings".into(),
        ));
    }
    let req = json_body(body)?;
    let current = state
        .market
        .settings()
        .last()
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    let settings = crate::market::MarketConfig {
        mechanism: req.mechanism,
        price_rule: req.price_rule,
        k_basis_points: req.k_basis_points,
        seller_max_margin_basis_points: req
            .seller_max_margin_basis_points
            .unwrap_or(current.seller_max_margin_basis_points),
        retail_per_kwh: req.retail_per_kwh,
        feed_in_per_kwh: req.feed_in_per_kwh,
        grid_fee_per_kwh: req.grid_fee_per_kwh,
        slot_length_s: req.slot_length_s.unwrap_or(current.slot_length_s),
        window_opens_before_s: req
            .window_opens_before_s
            .unwrap_or(current.window_opens_before_s),
        gate_closure_before_s: req
            .gate_closure_before_s
            .unwrap_or(current.gate_closure_before_s),
        settlement_after_s: req.settlement_after_s.unwrap_or(current.settlement_after_s),
        sharing_key: req.sharing_key.unwrap_or(current.sharing_key),
        sharing_price_per_kwh: req.sharing_price_per_kwh.or(current.sharing_price_per_kwh),
        sharing_shares: req.sharing_shares.unwrap_or(current.sharing_shares),
    };
    let from_slot = state.market.change_settings(settings, now_s()).await?;
    Ok(Json(json!({ "from_slot": from_slot })))
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = crate::metrics::Snapshot::of_engine(&state)
        .await
        .render()
        .map_err(|e| ApiError::Internal(format!("rendering metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// Server-Sent Events (`{"type": "reading" | "order" | "trades" | "neighbourhood", ...}`).
/// With a session or token: the household's own readings, its orders with their ids, and the
/// public events; without: only the public events — the book's orders without owner, trades
/// and the anonymised neighbourhood aggregate, never a household's readings.
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<
    axum::response::sse::Sse<
        impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    let account = auth::optional_account(&state, &headers)
        .await?
        .map(|a| a.id);
    let rx = state.market.live().subscribe();
    let events = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let Some(event) = event.visible_to(account) else {
                        continue;
                    };
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    let sse = axum::response::sse::Event::default().data(data);
                    return Some((Ok(sse), rx));
                }
                // A slow client skips what it missed rather than holding the engine back.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}

/// Healthy unless a background task kept panicking and was given up (the binary is then
/// exiting, so that its service manager restarts it), or storage takes no writes (a read-only
/// database, a full disk, a lost connection: readings and orders cannot be stored).
async fn healthz(State(state): State<AppState>) -> Response {
    if let Some(task) = state.tasks.given_up() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("background task {task} kept failing; the engine is restarting\n"),
        )
            .into_response();
    }
    match state.store.writable().await {
        Ok(()) => "ok\n".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, STORAGE_RETRY_AFTER_S.to_string())],
            format!("storage takes no writes: {e}\n"),
        )
            .into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}
