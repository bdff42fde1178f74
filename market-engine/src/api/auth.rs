//! Accounts, sessions and API tokens: sign-up, log in and out, the tokens a household's bots
//! use, who the caller is (`/me`) and the export of its custodial key.
//!
//! - Account names are normalised (trimmed, lower case) and drawn from one character set
//!   ([`account_name`]), so look-alikes (`HOME-01`, `home-01.`) cannot sit beside `home-01`;
//!   login applies the same normalisation. New passwords follow [`password_policy`]; they are
//!   hashed and checked within the [`Auth`] guard's capacity and login limits.
//! - A login for an unknown name does the same work as one with a wrong password (a
//!   verification against a fixed hash of the same parameters) and gets the same answer.
//! - The session lives in an HttpOnly cookie, never in a response body, marked `Secure` behind
//!   TLS; API tokens expire, are listed and can be revoked; logout deletes the session.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, bearer, cookie, token_hash};
use super::guard::throttled;
use super::{ApiError, AppState, random_token};
use crate::pipeline::now_ms;
use crate::store::{CredentialKind, CredentialRow, Role};

pub use super::extract::{Authenticated, ClientAddress};
pub use super::guard::{Auth, AuthConfig, AuthMetrics};
pub use super::passwords::{
    MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, hash_password, password_policy,
};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/accounts", post(create_account))
        .route("/api/v1/sessions", post(login).delete(logout))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{token_id}", delete(revoke_token))
        .route("/api/v1/me", get(me))
        .route(
            "/api/v1/me/custodial-key/export",
            post(export_custodial_key),
        )
}

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "gridshare_session";

/// Longest name a login looks up (names were up to 64 characters before they were limited to
/// 32; longer ones cannot exist).
const MAX_LOGIN_NAME_BYTES: usize = 64;
/// Hex digits of a token's hash that name it in listings and revocations.
const TOKEN_ID_HEX: usize = 16;
const DAY_MS: u64 = 86_400_000;

/// The session cookie carrying `token` for `max_age_s` (an empty token and 0 clear it).
fn session_cookie(token: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}"
    )
}

/// An account name as stored: trimmed and lower case, 3 to 32 characters of `a-z 0-9 . _ -`,
/// starting and ending with a letter or digit, no two of `. _ -` in a row.
pub fn account_name(raw: &str) -> Result<String, String> {
    let name = raw.trim().to_lowercase();
    let separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = name.as_bytes();
    let ok = (3..=32).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || separator(b))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !bytes.windows(2).any(|w| separator(w[0]) && separator(w[1]));
    if ok {
        Ok(name)
    } else {
        Err(
            "name: 3 to 32 characters of a-z 0-9 . _ - (capitals count as lower case), \
             starting and ending with a letter or digit, no two of . _ - in a row"
                .into(),
        )
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        message,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    name: String,
    password: String,
}

/// `POST /api/v1/accounts`: the account created.
#[derive(Serialize)]
struct AccountCreated {
    id: i64,
    name: String,
}

/// `POST /api/v1/accounts`: a new household account.
async fn create_account(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let name = account_name(&c.name).map_err(|m| invalid("name", m))?;
    password_policy(&name, &c.password).map_err(|m| invalid("password", m))?;
    // Sign-ups for taken names count against the address like failed logins: they would
    // otherwise tell a stranger which names exist, as fast as it can ask.
    let attempt = state.auth.admit(None, address).map_err(throttled)?;
    if state.store.account_by_name(&name).await?.is_some() {
        attempt.failed();
        return Err(ApiError::Conflict(format!(
            "account {name:?} already exists"
        )));
    }
    let hash = state.auth.hash(c.password).await?;
    let id = state
        .store
        .create_account(&name, &hash, Role::Household, now_ms())
        .await?;
    attempt.succeeded();
    Ok((StatusCode::CREATED, Json(AccountCreated { id, name })))
}

/// `POST /api/v1/sessions`: who logged in and until when (the secret is in the cookie).
#[derive(Serialize)]
struct SessionView {
    account: String,
    role: Role,
    expires_ms: u64,
}

/// `POST /api/v1/sessions`: log in. The session is in the cookie only.
async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    if c.password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "password",
            format!("password: at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let name = c.name.trim().to_lowercase();
    if name.is_empty() || name.len() > MAX_LOGIN_NAME_BYTES {
        return Err(invalid(
            "name",
            format!("name: 1 to {MAX_LOGIN_NAME_BYTES} characters"),
        ));
    }
    let metrics = &state.auth.metrics;
    let attempt = state.auth.admit(Some(&name), address).map_err(|wait| {
        metrics.logins_throttled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "api", name, ?address, "login throttled");
        throttled(wait)
    })?;
    let mut account = state.store.account_by_name(&name).await?;
    let as_typed = c.name.trim();
    if account.is_none() && as_typed != name {
        // Accounts registered before names were normalised may hold capitals.
        account = state.store.account_by_name(as_typed).await?;
    }
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let right = state.auth.verify(stored, c.password).await?;
    let Some(account) = account.filter(|_| right) else {
        attempt.failed();
        metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::LoginFailed);
    };
    attempt.succeeded();
    metrics.logins_succeeded.fetch_add(1, Ordering::Relaxed);
    let now = now_ms();
    if let Err(e) = state
        .store
        .delete_expired_credentials(account.id, now)
        .await
    {
        tracing::warn!(target: "api", account = account.name, "expired credentials not deleted: {e}");
    }
    let token = random_token()?;
    let lifetime_ms = u64::from(state.auth.config().session_days) * DAY_MS;
    let expires_ms = now + lifetime_ms;
    state
        .store
        .insert_credential(
            &CredentialRow {
                token_hash: token_hash(&token),
                kind: CredentialKind::Session,
                label: "login".into(),
                created_ms: Some(now),
                expires_ms,
            },
            account.id,
        )
        .await?;
    let cookie = session_cookie(&token, lifetime_ms / 1000, state.auth.secure(&headers));
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(SessionView {
            account: account.name,
            role: account.role,
            expires_ms,
        }),
    )
        .into_response())
}

/// `DELETE /api/v1/sessions`: log out. Deletes the session (from the cookie, or a session's
/// secret sent as a bearer token) and clears the cookie; answers 204 even without one, so a
/// stale cookie is always cleared.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    for token in [cookie(&headers, SESSION_COOKIE), bearer(&headers)]
        .into_iter()
        .flatten()
    {
        state.store.delete_session(&token_hash(&token)).await?;
    }
    let cookie = session_cookie("", 0, state.auth.secure(&headers));
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    label: String,
    expires_in_days: Option<u32>,
}

/// An API token as the API shows it: named by the start of its hash, never by its secret.
#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    label: String,
    created_ms: Option<u64>,
    expires_ms: u64,
    /// The secret, in the answer that creates the token only.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl From<&CredentialRow> for TokenView {
    fn from(credential: &CredentialRow) -> Self {
        Self {
            id: credential.token_hash[..TOKEN_ID_HEX.min(credential.token_hash.len())].to_owned(),
            label: credential.label.clone(),
            created_ms: credential.created_ms,
            expires_ms: credential.expires_ms,
            token: None,
        }
    }
}

/// `POST /api/v1/tokens`: an API token for a bot, shown once.
async fn create_token(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if req.label.is_empty() || req.label.len() > 64 || req.label.chars().any(char::is_control) {
        return Err(invalid(
            "label",
            "label: 1 to 64 printable characters".into(),
        ));
    }
    let config = state.auth.config();
    let days = req.expires_in_days.unwrap_or(config.token_days);
    if !(1..=config.max_token_days).contains(&days) {
        return Err(invalid(
            "expires_in_days",
            format!("expires_in_days: 1 to {}", config.max_token_days),
        ));
    }
    let token = random_token()?;
    let now = now_ms();
    let credential = CredentialRow {
        token_hash: token_hash(&token),
        kind: CredentialKind::ApiToken,
        label: req.label,
        created_ms: Some(now),
        expires_ms: now + u64::from(days) * DAY_MS,
    };
    state
        .store
        .insert_credential(&credential, account.id)
        .await?;
    let body = TokenView {
        token: Some(token),
        ..TokenView::from(&credential)
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /api/v1/tokens`.
#[derive(Serialize)]
struct TokenList {
    tokens: Vec<TokenView>,
}

/// `GET /api/v1/tokens`: the account's unexpired API tokens (never their secrets).
async fn list_tokens(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state
        .store
        .credentials(account.id, CredentialKind::ApiToken, now_ms())
        .await?
        .iter()
        .map(TokenView::from)
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// `DELETE /api/v1/tokens/{id}`: revokes one of the account's API tokens. Another account's
/// token is "not found", like one that never existed.
async fn revoke_token(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let well_formed = id.len() == TOKEN_ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit());
    if well_formed
        && state
            .store
            .delete_credential(account.id, CredentialKind::ApiToken, &id)
            .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "you have no API token {id:?} (GET /api/v1/tokens lists them)"
        )))
    }
}

/// `GET /api/v1/me`.
#[derive(Serialize)]
struct Me {
    id: i64,
    name: String,
    role: Role,
    /// `null` without a chain.
    chain: Option<ChainAddress>,
}

/// An account's chain address, as `/me` and the wallet link show it.
#[derive(Serialize)]
pub(super) struct ChainAddress {
    pub(super) address: String,
    /// Whether the engine holds its key (derived from the custody secret), or it is the
    /// household's own wallet.
    pub(super) custodial: bool,
    /// The Settlement contract the address deals with (`0x…`); `null` where the engine runs no
    /// settler.
    pub(super) settlement_contract: Option<String>,
}

/// `GET /api/v1/me`: the authenticated account.
async fn me(State(state): State<AppState>, Authenticated(account): Authenticated) -> Json<Me> {
    // The account's chain address, from the one lookup batches and proofs use.
    let chain = state.market.custody().map(|custody| ChainAddress {
        address: custody.address(account.id).to_string(),
        custodial: custody.is_custodial(account.id),
        settlement_contract: state
            .settler
            .as_ref()
            .map(|s| format!("{:#x}", s.settlement_address())),
    });
    Json(Me {
        id: account.id,
        name: account.name,
        role: account.role,
        chain,
    })
}

/// The body of `POST /api/v1/me/custodial-key/export`: the account's password, re-entered.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordAgain {
    password: String,
}

/// `POST /api/v1/me/custodial-key/export`: the key and its address.
#[derive(Serialize)]
struct ExportedKey {
    address: String,
    private_key: String,
}

/// `POST /api/v1/me/custodial-key/export`: the household's custodial private key, to import
/// into a wallet of its own.
///
/// Design: the household takes its key itself — no operator ever handles it on its behalf —
/// and only with its password re-entered (a stolen session or API token alone is not enough),
/// under the same per-name and per-address throttle as logging in; the answer is marked
/// `no-store` and the export is logged (without the key). The engine still holds the key after
/// an export (it is derived, not stored): the household should move its money to a wallet it
/// alone controls once it has one.
async fn export_custodial_key(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Authenticated(account): Authenticated,
    JsonBody(body): JsonBody<PasswordAgain>,
) -> Result<Response, ApiError> {
    if body.password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "password",
            format!("password: at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    let custody = state.market.custody().cloned().ok_or_else(|| {
        ApiError::NotFound("no chain is configured: the account has no chain key".into())
    })?;
    let attempt = state
        .auth
        .admit(Some(&account.name), address)
        .map_err(throttled)?;
    let right = state
        .auth
        .verify(Some(account.password_hash.clone()), body.password)
        .await?;
    if !right {
        attempt.failed();
        // The session is valid (not 401, which would sign the app out): the password
        // re-entered is what is wrong, said by its field.
        return Err(ApiError::Forbidden(
            "password: not this account's password".into(),
        ));
    }
    attempt.succeeded();
    let key = custody
        .signer(account.id)
        .ok_or_else(|| ApiError::NotFound("the engine holds no key for this account".into()))?;
    tracing::warn!(target: "api", account = account.name, address = %key.address(), "custodial key exported by its household");
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(ExportedKey {
            address: key.address().to_string(),
            private_key: alloy::primitives::B256::from(key.to_bytes()).to_string(),
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_look_alikes_refused() {
        assert_eq!(account_name(" HOME-01 ").unwrap(), "home-01");
        for bad in [
            "home-01.",
            ".home",
            "ho",
            "home..01",
            "home-_01",
            "höme-01",
            "home 01",
            "a@b.c",
            "x234567890123456789012345678901234",
        ] {
            assert!(account_name(bad).is_err(), "{bad}");
        }
    }
}
