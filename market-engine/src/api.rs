//! The HTTP API (axum): accounts, sessions and API tokens, meters and their readings, plus
//! `/metrics` (Prometheus text), `/healthz` and the OpenAPI document at `/openapi.json`.
//!
//! Errors are turned into responses in one place ([`ApiError`]): a status code and a JSON
//! body `{"error": "..."}` that says what was wrong.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;

mod meters;

use crate::ingest::{IngestMetrics, KeyRegistry};
use crate::market::{Market, MarketError, NewOrder, OrderSide};
use crate::pipeline::now_ms;
use crate::store::{AccountRow, Store, StoreError};

pub mod history;
pub mod proof;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "gridshare_session";
const SESSION_MS: u64 = 7 * 24 * 3_600_000;

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
    /// 401: no valid session or token.
    Unauthorized,
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
    /// 500: the database failed.
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
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
            MarketError::UnknownOrder(_) => Self::NotFound(e.to_string()),
            MarketError::InsufficientFunds { .. } => Self::Unprocessable(e.to_string()),
            MarketError::ReferenceReused(_) => Self::Conflict(e.to_string()),
            MarketError::OutOfRange(m) => Self::Unprocessable(m),
            MarketError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "log in (POST /api/v1/sessions) or send an API token as `Authorization: Bearer <token>`".into(),
            ),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            Self::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "order rate limit reached for this account; slow down".into(),
            ),
            Self::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/accounts", post(create_account))
        .route("/api/v1/sessions", post(login))
        .route("/api/v1/tokens", post(create_token))
        .route("/api/v1/me", get(me))
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
        .merge(crate::web::router())
        .with_state(state)
}

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal("no randomness".into()))?;
    Ok(hex::encode(bytes))
}

fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The authenticated account, from the session cookie or a bearer token.
pub struct Authenticated(pub AccountRow);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).or_else(|| cookie(&parts.headers, SESSION_COOKIE));
        let Some(token) = token else {
            return Err(ApiError::Unauthorized);
        };
        state
            .store
            .account_by_credential(&token_hash(&token), now_ms())
            .await?
            .map(Authenticated)
            .ok_or(ApiError::Unauthorized)
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    name: String,
    password: String,
}

fn check_credentials(c: &Credentials) -> Result<(), ApiError> {
    let name_ok = (3..=64).contains(&c.name.len())
        && c.name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | '@'));
    if !name_ok {
        return Err(ApiError::BadRequest(
            "name: 3-64 characters of A-Z a-z 0-9 - _ . @".into(),
        ));
    }
    if c.password.len() < 10 || c.password.len() > 1024 {
        return Err(ApiError::BadRequest(
            "password: 10 to 1024 characters".into(),
        ));
    }
    Ok(())
}

fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// Hashes a password with Argon2id and a random salt (PHC string format).
pub async fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness".to_owned())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let password = password.to_owned();
    // Argon2id is deliberately slow: off the async workers.
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn create_account(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let c = json_body(body)?;
    check_credentials(&c)?;
    let hash = hash_password(&c.password)
        .await
        .map_err(ApiError::Internal)?;
    let id = state
        .store
        .create_account(&c.name, &hash, "household", now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": c.name })),
    ))
}

async fn login(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let c = json_body(body)?;
    let account = state.store.account_by_name(&c.name).await?;
    let Some(account) = account else {
        return Err(ApiError::Unauthorized);
    };
    let stored = account.password_hash.clone();
    let password = c.password;
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !ok {
        return Err(ApiError::Unauthorized);
    }
    let token = random_token()?;
    state
        .store
        .insert_credential(
            &token_hash(&token),
            account.id,
            "session",
            "login",
            Some(now_ms() + SESSION_MS),
        )
        .await?;
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_MS / 1000
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "account": account.name, "token": token })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    label: String,
}

async fn create_token(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = json_body(body)?;
    if req.label.is_empty() || req.label.len() > 64 {
        return Err(ApiError::BadRequest("label: 1 to 64 characters".into()));
    }
    let token = random_token()?;
    state
        .store
        .insert_credential(
            &token_hash(&token),
            account.id,
            "api_token",
            &req.label,
            None,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "label": req.label })),
    ))
}

async fn me(Authenticated(account): Authenticated) -> Json<serde_json::Value> {
    Json(json!({ "id": account.id, "name": account.name, "role": account.role }))
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
        "held_by_purchases": funds.held_by_purchases, "available": funds.available,
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

/// A household takes money out: at most what it has available.
async fn withdraw(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    body: Result<Json<FundingRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    state.limits.take(account.id)?;
    let (amount, reference) = json_body(body)?.checked("withdrawal")?;
    move_funds(&state, &account, -amount, &reference).await
}

/// The account's deposits and withdrawals, newest first.
async fn funding(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entries: Vec<_> = state
        .market
        .funding(account.id, 100)
        .await?
        .into_iter()
        .map(|(amount, reference, at_ms)| json!({"amount": amount, "reference": reference, "at_ms": at_ms}))
        .collect();
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
    let batches: Vec<_> = state
        .market
        .settlements(page.after, page.limit)
        .await?
        .into_iter()
        .map(|(slot, accounts, debits, queued_ms)| {
            json!({
                "slot": slot, "batch_id": slot, "accounts": accounts, "total_debits": debits,
                "queued_for_chain_ms": queued_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "settlements": batches })))
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
    mechanism: String,
    price_rule: String,
    k_basis_points: u16,
    retail_per_kwh: u64,
    feed_in_per_kwh: u64,
    grid_fee_per_kwh: u64,
    /// The slot timeline; each keeps its current value when absent.
    window_opens_before_s: Option<u32>,
    gate_closure_before_s: Option<u32>,
    settlement_after_s: Option<u32>,
    /// Accepted only as the current length (slot indices count slots of it).
    slot_length_s: Option<u32>,
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
    };
    let from_slot = state
        .market
        .change_settings(settings, now_s())
        .await
        .map_err(|e| match e {
            MarketError::Slot(m) => ApiError::BadRequest(m),
            other => other.into(),
        })?;
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
    let account = match bearer(&headers).or_else(|| cookie(&headers, SESSION_COOKIE)) {
        None => None,
        Some(token) => Some(
            state
                .store
                .account_by_credential(&token_hash(&token), now_ms())
                .await?
                .ok_or(ApiError::Unauthorized)?
                .id,
        ),
    };
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

async fn healthz() -> &'static str {
    "ok\n"
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}
