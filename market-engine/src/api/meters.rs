//! Meters over HTTP: a household registers its meter (pending) and lists its meters; the
//! community operator lists every meter, approves one with its capacity and device identity,
//! or refuses a pending one; a household reads its meter's readings. The rules themselves
//! live in [`crate::meters`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{Authenticated, JsonBody, Operator, Page, operator_action};
use super::{ApiError, AppState};
use crate::meters::{self, ApprovalRequest, MeterError};
use crate::pipeline::now_ms;
use crate::store::gaps::Gap;
use crate::store::{AccountRow, MeterRow};

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/meters", post(register).get(mine))
        .route("/api/v1/meters/{meter_id}/approval", post(approve))
        .route("/api/v1/meters/{meter_id}", delete(refuse))
        .route("/api/v1/operator/meters", get(every))
        .route("/api/v1/operator/gaps", get(gaps))
        .route("/api/v1/meters/{meter_id}/readings", get(meter_readings))
}

impl From<MeterError> for ApiError {
    fn from(e: MeterError) -> Self {
        match e {
            MeterError::Taken(_) => Self::Conflict(e.to_string()),
            MeterError::NotFound(_) => Self::NotFound(e.to_string()),
            MeterError::Store(s) => s.into(),
            MeterError::InvalidId(_) | MeterError::InvalidKey(_) => Self::BadRequest(e.to_string()),
            MeterError::InvalidApproval { .. } | MeterError::TooMany { .. } => {
                Self::Unprocessable(e.to_string())
            }
        }
    }
}

operator_action!(
    /// The community's list of meters is the operator's.
    ListsEveryMeter,
    "lists every meter"
);
operator_action!(
    /// The gaps of every meter are the operator's to watch.
    SeesGaps,
    "sees the meters' missing readings"
);
operator_action!(
    /// A meter counts only once the operator approved it.
    ApprovesMeters,
    "approves meters"
);
operator_action!(
    /// Refusing a registration is the operator's.
    RefusesMeters,
    "refuses meter registrations"
);

/// Whether `meter_id` is `account`'s: 404 when no one registered it, 403 when another account
/// did.
pub(super) async fn own_meter(
    state: &AppState,
    account: &AccountRow,
    meter_id: &str,
) -> Result<(), ApiError> {
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

/// Whether a meter's readings count yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum MeterStatus {
    /// Registered by its household, not approved yet: its readings do not count.
    Pending,
    /// Approved by the operator with its capacity and device identity.
    Approved,
}

/// A meter as the API shows it.
#[derive(Debug, Serialize)]
struct MeterView {
    meter_id: String,
    public_key: String,
    status: MeterStatus,
    registered_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    export_capacity_w: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    import_capacity_w: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    /// The owner's account name (the operator's list only).
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

impl MeterView {
    fn of(row: &MeterRow) -> Self {
        let a = row.approval.as_ref();
        Self {
            meter_id: row.meter_id.clone(),
            public_key: row.public_key.clone(),
            status: if a.is_some() {
                MeterStatus::Approved
            } else {
                MeterStatus::Pending
            },
            registered_ms: row.created_ms,
            approved_ms: row.approved_ms,
            export_capacity_w: a.map(|a| a.export_capacity_w),
            import_capacity_w: a.map(|a| a.import_capacity_w),
            manufacturer: a.map(|a| a.device.manufacturer.clone()),
            model: a.map(|a| a.device.model.clone()),
            serial: a.map(|a| a.device.serial.clone()),
            owner: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    meter_id: String,
    public_key: String,
}

/// `POST /api/v1/meters`: the meter registered, and what happens next.
#[derive(Serialize)]
struct MeterRegistered {
    meter_id: String,
    key_id: String,
    status: MeterStatus,
    next: &'static str,
}

/// `GET /api/v1/meters` and `GET /api/v1/operator/meters`.
#[derive(Serialize)]
struct MeterList {
    meters: Vec<MeterView>,
}

/// A household registers a meter; it is `pending` until the operator approves it.
async fn register(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (meter, key) = meters::register(
        &state.store,
        &state.keys,
        account.id,
        &req.meter_id,
        &req.public_key,
        state.meters_per_account,
        now_ms(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(MeterRegistered {
            meter_id: meter.as_str().to_owned(),
            key_id: key.key_id().to_string(),
            status: MeterStatus::Pending,
            next: "the community operator approves the meter with its rated capacity and device identity; its readings count from then on",
        }),
    ))
}

/// The caller's meters.
async fn mine(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<MeterList>, ApiError> {
    let meters = state
        .store
        .meters()
        .await?
        .iter()
        .filter(|m| m.account_id == account.id)
        .map(MeterView::of)
        .collect();
    Ok(Json(MeterList { meters }))
}

/// Every meter of the community with its owner (operator only).
async fn every(
    State(state): State<AppState>,
    _: Operator<ListsEveryMeter>,
) -> Result<Json<MeterList>, ApiError> {
    let names = state.store.account_names().await?;
    let meters = state
        .store
        .meters()
        .await?
        .iter()
        .map(|m| MeterView {
            owner: names.get(&m.account_id).cloned(),
            ..MeterView::of(m)
        })
        .collect();
    Ok(Json(MeterList { meters }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GapQuery {
    /// Only this meter's gaps.
    meter: Option<String>,
    #[serde(default = "default_gap_limit")]
    limit: u32,
}

fn default_gap_limit() -> u32 {
    1000
}

/// `GET /api/v1/operator/gaps`.
#[derive(Serialize)]
struct GapsBody {
    gaps: Vec<Gap>,
    /// The gaps still asked for.
    requesting: GapCount,
    /// The gaps given up.
    unfillable: GapCount,
}

/// Gaps, the readings missing in them, and the meters that have any.
#[derive(Serialize)]
struct GapCount {
    gaps: u64,
    readings: u64,
    meters: u64,
}

/// Readings missing from meters' sequences: what the engine still asks the agents for, and
/// what it gave up as unfillable (operator only).
async fn gaps(
    State(state): State<AppState>,
    _: Operator<SeesGaps>,
    query: Result<axum::extract::Query<GapQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<GapsBody>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !(1..=10_000).contains(&q.limit) {
        return Err(ApiError::Invalid {
            field: "limit".into(),
            message: "limit: 1 to 10000".into(),
        });
    }
    let gaps = state.store.gaps(q.meter.as_deref(), q.limit).await?;
    let totals = state.store.gap_totals().await?;
    Ok(Json(GapsBody {
        gaps,
        requesting: GapCount {
            gaps: totals.open_gaps,
            readings: totals.open_missing,
            meters: totals.meters_with_open_gaps,
        },
        unfillable: GapCount {
            gaps: totals.unfillable_gaps,
            readings: totals.unfillable_missing,
            meters: totals.meters_with_unfillable_gaps,
        },
    }))
}

/// `POST /api/v1/meters/{meter_id}/approval`: the meter as approved, with its broker login
/// the first time.
#[derive(Serialize)]
struct MeterApproved {
    meter: MeterView,
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt: Option<BrokerLogin>,
}

/// A meter's login to the embedded broker.
#[derive(Serialize)]
struct BrokerLogin {
    username: String,
    password: String,
    note: &'static str,
}

/// The operator approves a meter with its rated capacity and installed device identity.
async fn approve(
    State(state): State<AppState>,
    Operator(account, _): Operator<ApprovesMeters>,
    Path(meter_id): Path<String>,
    JsonBody(approval): JsonBody<ApprovalRequest>,
) -> Result<Json<MeterApproved>, ApiError> {
    let approval = approval.checked()?;
    // The ingest's registry knows every meter and whether it is approved: no query needed.
    let first_approval = state
        .keys
        .get(&meter_id)
        .is_some_and(|m| m.approval.is_none());
    let row = meters::approve(
        &state.store,
        &state.keys,
        &meter_id,
        &approval,
        account.id,
        now_ms(),
    )
    .await?;
    // The meter's broker login is issued with its first approval and shown once: the
    // installer puts it in the agent's config. A later approval (new capacity) keeps it.
    let mqtt = if first_approval {
        let password = crate::broker::issue_meter_credentials(&state.store, &meter_id)
            .await
            .map_err(|e| ApiError::Internal(format!("issuing broker credentials: {e}")))?;
        Some(BrokerLogin {
            username: meter_id,
            password,
            note: "shown once: put it in the meter agent's [mqtt] username and password",
        })
    } else {
        None
    };
    Ok(Json(MeterApproved {
        meter: MeterView::of(&row),
        mqtt,
    }))
}

/// The operator refuses a pending meter registration: the id and key are free again.
async fn refuse(
    State(state): State<AppState>,
    _: Operator<RefusesMeters>,
    Path(meter_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    meters::refuse(&state.store, &state.keys, &meter_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/meters/{meter_id}/readings`.
#[derive(Serialize)]
struct MeterReadings {
    meter_id: String,
    /// Each stored reading's JSON, as the ingest stored it.
    readings: Vec<serde_json::Value>,
}

/// The meter's stored readings, oldest first, a page at a time (its owner only).
async fn meter_readings(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
    page: Page,
) -> Result<Json<MeterReadings>, ApiError> {
    own_meter(&state, &account, &meter_id).await?;
    let readings = state
        .store
        .readings(&meter_id, page.after, page.limit)
        .await?
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    Ok(Json(MeterReadings { meter_id, readings }))
}
