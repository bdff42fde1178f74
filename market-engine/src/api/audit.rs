//! The operator's audit: rejected readings counted by reason with the latest ones, and meters
//! whose delivery in a settled slot could not be established.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::extract::{Operator, operator_action};
use super::{ApiError, AppState};
use crate::store::history::{DisputeRow, RejectionRow};

/// The routes of this module (merged into [`super::router`]).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/operator/rejections", get(rejections))
        .route("/api/v1/operator/disputes", get(disputes))
}

operator_action!(
    /// The audit of rejected readings is the operator's.
    SeesRejections,
    "sees rejected readings"
);

/// `GET /api/v1/operator/rejections`.
#[derive(Serialize)]
struct RejectionsBody {
    by_reason: Vec<ReasonCount>,
    latest: Vec<RejectionRow>,
}

/// How many readings were rejected for one reason.
#[derive(Serialize)]
struct ReasonCount {
    reason: String,
    count: i64,
}

/// The operator's audit of bad input: rejected readings counted by reason, and the latest 50
/// with their meter and detail.
async fn rejections(
    State(state): State<AppState>,
    _: Operator<SeesRejections>,
) -> Result<Json<RejectionsBody>, ApiError> {
    let by_reason = state
        .store
        .rejection_reasons()
        .await?
        .into_iter()
        .map(|(reason, count)| ReasonCount { reason, count })
        .collect();
    let latest = state.store.latest_rejections(50).await?;
    Ok(Json(RejectionsBody { by_reason, latest }))
}

operator_action!(
    /// Disputed meters are the operator's to resolve.
    SeesDisputes,
    "sees disputed meters"
);

/// `GET /api/v1/operator/disputes`.
#[derive(Serialize)]
struct DisputesBody {
    disputes: Vec<DisputeRow>,
}

/// Meters whose delivery could not be established in a settled slot, newest first (operator).
async fn disputes(
    State(state): State<AppState>,
    _: Operator<SeesDisputes>,
) -> Result<Json<DisputesBody>, ApiError> {
    let disputes = state.store.disputes(200).await?;
    Ok(Json(DisputesBody { disputes }))
}
