//! What operations and tools read: Prometheus metrics, the health check, the OpenAPI
//! document, and the live event stream (SSE).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::STORAGE_RETRY_AFTER_S;
use super::extract::optional_account;
use super::{ApiError, AppState};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
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
    let account = optional_account(&state, &headers).await?.map(|a| a.id);
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

/// The hand-written OpenAPI document (a test checks it against every route).
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../openapi.json"),
    )
}
