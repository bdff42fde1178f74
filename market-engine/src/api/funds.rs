//! A household's money: its balance and what holds it, deposits the community operator
//! records, withdrawals (booked at once without a chain, asked of the Settlement contract on
//! one), and the list of both.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::extract::{Authenticated, JsonBody, Operator, RateLimited, operator_action};
use super::{ApiError, AppState, auth, random_token};
use crate::market::FundsView;
use crate::pipeline::now_ms;
use crate::store::AccountRow;
use crate::store::money::FundingEntry;

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/balance", get(balance))
        .route("/api/v1/funding", get(funding))
        .route("/api/v1/withdrawals", post(withdraw))
        .route("/api/v1/accounts/{name}/deposits", post(deposit))
}

operator_action!(
    /// Deposits are the operator's to record.
    RecordsDeposits,
    "records deposits"
);

/// An account's funds as the API shows them.
#[derive(Debug, Serialize)]
struct FundsBody {
    account: String,
    balance: i64,
    held_by_bids: u64,
    held_by_purchases: u64,
    withdrawal_pending: u64,
    available: i64,
    /// What settled trades brought (the balance page only).
    #[serde(skip_serializing_if = "Option::is_none")]
    settled: Option<i64>,
    /// What deposits less withdrawals brought (the balance page only).
    #[serde(skip_serializing_if = "Option::is_none")]
    deposits: Option<i64>,
}

impl FundsBody {
    fn of(account: &str, funds: &FundsView) -> Self {
        Self {
            account: account.to_owned(),
            balance: funds.balance,
            held_by_bids: funds.held_by_bids,
            held_by_purchases: funds.held_by_purchases,
            withdrawal_pending: funds.withdrawal_pending,
            available: funds.available,
            settled: None,
            deposits: None,
        }
    }
}

/// The answer to a deposit, or a withdrawal booked at once: the funds after it.
#[derive(Debug, Serialize)]
struct Booked {
    #[serde(flatten)]
    funds: FundsBody,
    reference: String,
}

/// The answer to a withdrawal asked of the Settlement contract: the funds before it is paid out
/// and the request's transaction.
#[derive(Debug, Serialize)]
struct WithdrawalRequested {
    #[serde(flatten)]
    funds: FundsBody,
    requested: i64,
    tx: String,
    paid_to: String,
    ready_at: u64,
    settlement_contract: String,
}

/// The account's deposits and withdrawals.
#[derive(Debug, Serialize)]
struct FundingList {
    account: String,
    funding: Vec<FundingEntry>,
}

async fn balance(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<FundsBody>, ApiError> {
    let settled = state.market.balance(account.id).await?;
    let funds = state.market.funds(account.id).await;
    Ok(Json(FundsBody {
        settled: Some(settled),
        deposits: Some(funds.balance.saturating_sub(settled)),
        ..FundsBody::of(&account.name, &funds)
    }))
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
    _: Operator<RecordsDeposits>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<FundingRequest>,
) -> Result<(StatusCode, Json<Booked>), ApiError> {
    let (amount, reference) = req.checked("deposit")?;
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
) -> Result<(StatusCode, Json<Booked>), ApiError> {
    let funds = state
        .market
        .fund(account.id, amount, reference, now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Booked {
            funds: FundsBody::of(&account.name, &funds),
            reference: reference.to_owned(),
        }),
    ))
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
    RateLimited(account): RateLimited,
    JsonBody(req): JsonBody<FundingRequest>,
) -> Result<Response, ApiError> {
    let (amount, reference) = req.checked("withdrawal")?;
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
    let body = WithdrawalRequested {
        funds: FundsBody::of(&account.name, &funds),
        requested: amount,
        tx: format!("{:#x}", request.tx),
        paid_to: format!("{:#x}", request.address),
        ready_at: request.ready_at,
        settlement_contract: format!("{:#x}", settler.settlement_address()),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The account's deposits and withdrawals, newest first.
async fn funding(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
) -> Result<Json<FundingList>, ApiError> {
    let funding = state.market.funding(account.id, 100).await?;
    Ok(Json(FundingList {
        account: account.name,
        funding,
    }))
}
