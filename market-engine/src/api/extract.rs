//! The extractors handlers share, so a rule about who may call or what a body must be is
//! written once: a JSON body refused in the API's error shape ([`JsonBody`]), the
//! authenticated account ([`Authenticated`]), the same charged to its order-rate limit
//! ([`RateLimited`]), the community operator ([`Operator`]), the client's address
//! ([`ClientAddress`]) and a page of a list ([`Page`]).

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request};
use axum::http::{HeaderMap, header, request::Parts};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::SESSION_COOKIE;
use super::{ApiError, AppState};
use crate::pipeline::now_ms;
use crate::store::{AccountRow, Role};

/// A JSON request body; a body that cannot be read (malformed JSON, a wrong field, a wrong
/// content type, too large) is refused in the API's error shape, naming the field at fault.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(body) = Json::<T>::from_request(req, state).await?;
        Ok(Self(body))
    }
}

/// The client's address: the TCP peer (the server is run with
/// `into_make_service_with_connect_info`), or with `trust_forwarded_for` the last entry of
/// `X-Forwarded-For`. Absent when the router is called without a socket (`Router::oneshot`);
/// the per-address limit then does not apply.
pub struct ClientAddress(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = if state.auth.config().trust_forwarded_for {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|a| a.trim().parse::<IpAddr>().ok())
        } else {
            None
        };
        Ok(Self(forwarded.or(peer)))
    }
}

/// The authenticated account, from the session cookie or a bearer token (an API token, or the
/// session's secret).
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

/// The authenticated account, charged one request of its order-rate limit (429 when it is
/// spent): for the endpoints that change the book or move money.
///
/// Design: the limit is taken before the body is read, as it was when each handler took it
/// first, so a runaway bot is slowed whatever it sends.
pub struct RateLimited(pub AccountRow);

impl FromRequestParts<AppState> for RateLimited {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authenticated(account) = Authenticated::from_request_parts(parts, state).await?;
        state.limits.take(account.id)?;
        Ok(Self(account))
    }
}

/// What only the community operator does, as the 403 a household gets says it: "only the
/// community operator {WHAT}".
pub trait OperatorAction {
    /// The action, e.g. `records deposits`.
    const WHAT: &'static str;
}

/// Declares a marker type for an [`OperatorAction`].
macro_rules! operator_action {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl $crate::api::extract::OperatorAction for $name {
            const WHAT: &'static str = $what;
        }
    };
}
pub(crate) use operator_action;

/// The authenticated account, when it is the community operator's (401 without a credential,
/// 403 for a household, saying what only the operator does).
pub struct Operator<A: OperatorAction>(pub AccountRow, pub PhantomData<A>);

impl<A: OperatorAction> FromRequestParts<AppState> for Operator<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authenticated(account) = Authenticated::from_request_parts(parts, state).await?;
        if account.role != Role::Operator {
            return Err(ApiError::Forbidden(format!(
                "only the community operator {}",
                A::WHAT
            )));
        }
        Ok(Self(account, PhantomData))
    }
}

/// A page of a list: `?after=` (exclusive) and `?limit=` (1 to 1000, 100 when absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Entries after this one.
    #[serde(default)]
    pub after: u64,
    /// At most this many.
    #[serde(default = "default_limit")]
    pub limit: u32,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(page) = Query::<Page>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        if page.limit == 0 || page.limit > 1000 {
            return Err(ApiError::BadRequest("limit: 1 to 1000".into()));
        }
        Ok(page)
    }
}

fn default_limit() -> u32 {
    100
}

/// The account behind the request's session or token, if it sends one; a credential that is
/// sent but not valid is refused (401), never served as anonymous.
pub(crate) async fn optional_account(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<AccountRow>, ApiError> {
    let Some(token) = bearer(headers).or_else(|| cookie(headers, SESSION_COOKIE)) else {
        return Ok(None);
    };
    state
        .store
        .account_by_credential(&token_hash(&token), now_ms())
        .await?
        .map(Some)
        .ok_or(ApiError::Unauthorized)
}

pub(super) fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
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
