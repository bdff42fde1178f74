//! The API's one error type, [`ApiError`], and the one place it becomes a response: a status
//! code and a JSON body `{"error": "..."}` that says what was wrong, with `"field"` when one
//! request field is at fault. Every error of the layers below (store, market, chain, wallet
//! link, a refused JSON body) maps to a status here, so the same failure answers the same code
//! in every handler. Unknown routes and axum's own rejections (a bad path or query, a wrong
//! method) are put into the same shape by [`json_errors`].

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::MAX_BODY_BYTES;
use crate::chain::SettlerError;
use crate::market::{ExchangeError, MarketError};
use crate::store::StoreError;

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
pub(crate) const STORAGE_RETRY_AFTER_S: u64 = 5;

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
            MarketError::Exchange(ExchangeError::UnknownOrder(_)) => Self::NotFound(e.to_string()),
            MarketError::Exchange(e) => Self::Unprocessable(e.to_string()),
            MarketError::Settlement(m) => {
                tracing::error!(target: "api", "{m}");
                Self::Internal("settlement failed".into())
            }
            MarketError::Stopped(what) => Self::Busy {
                message: format!("{what} stopped: the engine is shutting down"),
                retry_after_s: STORAGE_RETRY_AFTER_S,
            },
            MarketError::Settings(m) => Self::BadRequest(m),
            MarketError::StoredSettings(e) => {
                tracing::error!(target: "api", "{e}");
                Self::Internal("stored market settings unreadable".into())
            }
            MarketError::ReferenceReused(_) => Self::Conflict(e.to_string()),
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
pub(super) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {method} {}; the API is described at /openapi.json",
        uri.path()
    ))
}

/// Puts every error response that is not JSON yet (axum's own rejections of a path or a query,
/// 405 for a wrong method) into the one error shape.
pub(super) async fn json_errors(response: Response) -> Response {
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
