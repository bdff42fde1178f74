//! A meter's stake and rewards as the chain holds them (`GET /api/v1/meters/{meter_id}/stake`),
//! read from the `MeterStaking` contract that the community's `Settlement` contract credits its
//! local sales to: registered or not, attested, staked, unbonding, what the owner could claim
//! now, and per recent epoch the energy sold and credited and the reward it earned.
//!
//! Design: read-only, and nothing here is the engine's own record — every figure is a view call
//! on the chain the engine settles on, so the wallet shows what anyone can check on chain. The
//! staking contract is found through `Settlement.salesRecorder()`, so an engine needs no second
//! address in its configuration. Meter ids are `bytes32` as the `gridshare` command and the
//! contract write them (ASCII, right-padded with zeros).

use alloy::primitives::{Address, U256};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gridshare_contracts::bindings::{MeterStaking, Settlement};
use gridshare_contracts::chain::{Chain, ChainExt};
use gridshare_contracts::staking::{StakingClient, text_id};
use serde::Serialize;

use crate::api::auth::Authenticated;
use crate::api::{ApiError, AppState};
use crate::chain::{ChainHandle, SettlerError};
use crate::store::settlement::ProofRecord;

/// How many of the engine's latest proofs of the meter the answer lists.
pub const PROOFS_SHOWN: u32 = 7;

/// How many epochs back (the current one included) the answer lists: enough to reach the
/// newest vested epoch (proof window one epoch, vesting seven, at the default parameters).
pub const EPOCHS_SHOWN: u64 = 10;

/// The routes of this module (merged into [`crate::api::router`]).
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/meters/{meter_id}/stake", get(stake))
}

/// The staking contract the settlement contract credits its sales to (`None`: it credits
/// none, so no meter has a stake there).
pub async fn staking_contract<C: Chain>(
    chain: &C,
    settlement: Address,
) -> Result<Option<Address>, SettlerError> {
    let recorder = chain
        .view(settlement, Settlement::salesRecorderCall {})
        .await
        .map_err(SettlerError::read("Settlement.salesRecorder"))?;
    Ok((recorder != Address::ZERO).then_some(recorder))
}

/// Token amounts (18 decimals) as decimal strings: they do not fit a JSON number.
fn amount(v: U256) -> String {
    v.to_string()
}

/// A meter's stake as the API shows it. Which parts are there says how far the chain knows the
/// meter: no staking contract, a meter id too long for it, not registered, or registered.
#[derive(Debug, Serialize)]
pub struct MeterStake {
    meter_id: String,
    /// The staking contract; `null` when the settlement contract credits none.
    staking_contract: Option<String>,
    registered: bool,
    /// What the contract says of the id, once it is one the contract can hold.
    #[serde(flatten)]
    contract: Option<StakingIds>,
    /// The meter's record, once registered.
    #[serde(flatten)]
    record: Option<StakeRecord>,
    /// The engine's part, for a registered meter (added by the API, not read from the chain).
    #[serde(flatten)]
    engine: Option<EngineProofs>,
}

/// The meter's id as the contract holds it, and where the contract's clock stands.
#[derive(Debug, Serialize)]
struct StakingIds {
    meter_id_bytes32: String,
    token_decimals: u8,
    current_epoch: u64,
}

/// A registered meter's record and its recent epochs.
#[derive(Debug, Serialize)]
struct StakeRecord {
    owner: String,
    active: bool,
    attested: bool,
    slashed: bool,
    staked: String,
    bonded_since_s: Option<u64>,
    unbonding: String,
    unbonding_ends_s: Option<u64>,
    export_capacity_w: u32,
    next_claim_epoch: u64,
    delegate: Option<String>,
    last_proven_seq: Option<u64>,
    last_proven_ms: Option<u64>,
    claimable: String,
    epochs: Vec<EpochView>,
    /// The owner and the delegate (if any): who may prove the meter's epochs.
    #[serde(skip)]
    provers: Vec<Address>,
}

/// What one epoch credited the meter and the reward it earned.
#[derive(Debug, Serialize)]
struct EpochView {
    epoch: u64,
    sold_wh: u64,
    exported_wh: u64,
    covered_s: u32,
    credited_wh: u64,
    reward: String,
}

/// Whether the engine proves the meter's epochs, and its latest attempts.
#[derive(Debug, Serialize)]
struct EngineProofs {
    engine_address: String,
    proved_by_engine: bool,
    proofs: Vec<ProofRecord>,
}

/// What the chain holds for `meter`: the `meter` record, `claimable` through the current
/// epoch, and `credit` and `rewardOf` for the last [`EPOCHS_SHOWN`] epochs.
pub async fn meter_stake<C: Chain>(
    chain: &C,
    settlement: Address,
    meter: &str,
) -> Result<MeterStake, SettlerError> {
    let mut out = MeterStake {
        meter_id: meter.to_owned(),
        staking_contract: None,
        registered: false,
        contract: None,
        record: None,
        engine: None,
    };
    let Some(staking) = staking_contract(chain, settlement).await? else {
        return Ok(out);
    };
    out.staking_contract = Some(staking.to_string());
    let client = StakingClient::new(chain, staking);
    // A meter id longer than the contract's 32-byte ids cannot stake (the prover skips it too).
    let Ok(id) = text_id(meter) else {
        return Ok(out);
    };
    let m = client
        .meter(id)
        .await
        .map_err(SettlerError::read("MeterStaking.meters"))?;
    let current = client
        .current_epoch()
        .await
        .map_err(SettlerError::read("MeterStaking.currentEpoch"))?;
    out.contract = Some(StakingIds {
        meter_id_bytes32: id.to_string(),
        token_decimals: 18,
        current_epoch: current,
    });
    if m.owner == Address::ZERO {
        return Ok(out);
    }
    let claimable = client
        .claimable(id, current)
        .await
        .map_err(SettlerError::read("MeterStaking.claimable"))?;
    let mut epochs = Vec::new();
    for epoch in (current.saturating_sub(EPOCHS_SHOWN - 1)..=current).rev() {
        let credit = client
            .credit(id, epoch)
            .await
            .map_err(SettlerError::read("MeterStaking.credit"))?;
        let reward = chain
            .view(staking, MeterStaking::rewardOfCall { meterId: id, epoch })
            .await
            .map_err(SettlerError::read("MeterStaking.rewardOf"))?;
        epochs.push(EpochView {
            epoch,
            sold_wh: credit.soldWh,
            exported_wh: credit.exportedWh,
            covered_s: credit.coveredS,
            credited_wh: credit.creditedWh,
            reward: amount(reward),
        });
    }
    let delegate = (m.delegate != Address::ZERO).then_some(m.delegate);
    out.registered = true;
    out.record = Some(StakeRecord {
        owner: m.owner.to_string(),
        active: m.active,
        attested: m.attested,
        slashed: m.slashed,
        staked: amount(m.stake),
        bonded_since_s: (m.bondedSince > 0).then_some(m.bondedSince),
        unbonding: amount(m.unbonding),
        unbonding_ends_s: (m.unbondingEnds > 0).then_some(m.unbondingEnds),
        export_capacity_w: m.exportCapacityW,
        next_claim_epoch: m.nextClaimEpoch,
        delegate: delegate.map(|d| d.to_string()),
        last_proven_seq: (m.lastTimestampMs != 0).then_some(m.lastSeq),
        last_proven_ms: (m.lastTimestampMs != 0).then_some(m.lastTimestampMs),
        claimable: amount(claimable),
        epochs,
        provers: std::iter::once(m.owner).chain(delegate).collect(),
    });
    Ok(out)
}

/// `GET /api/v1/meters/{meter_id}/stake`: for the meter's owner or the community operator.
async fn stake(
    State(state): State<AppState>,
    Authenticated(account): Authenticated,
    Path(meter_id): Path<String>,
) -> Result<Json<MeterStake>, ApiError> {
    match state.store.meter_owner(&meter_id).await? {
        None => {
            return Err(ApiError::NotFound(format!(
                "meter {meter_id:?} is not registered"
            )));
        }
        Some(owner) if owner != account.id && account.role != crate::store::Role::Operator => {
            return Err(ApiError::Forbidden(format!(
                "meter {meter_id:?} belongs to another account: you can only see the stake of your own meters"
            )));
        }
        Some(_) => {}
    }
    let Some(settler) = &state.settler else {
        return Err(ApiError::NotFound(
            "this engine settles on no chain (chain.backend = \"none\"), so its meters have no stake"
                .into(),
        ));
    };
    let (answer, engine) = match settler.handle() {
        ChainHandle::Embedded(s) => (
            meter_stake(s.chain(), s.address(), &meter_id).await,
            s.operator(),
        ),
        ChainHandle::Rpc(s) => (
            meter_stake(s.chain(), s.address(), &meter_id).await,
            s.operator(),
        ),
    };
    let mut answer = answer?;
    // The engine's own proofs of the meter's epochs ([`crate::prover`]): what it tried, and
    // why a proof failed.
    let proofs = state.store.proof_records(&meter_id, PROOFS_SHOWN).await?;
    if let Some(record) = &answer.record {
        answer.engine = Some(EngineProofs {
            engine_address: engine.to_string(),
            proved_by_engine: record.provers.contains(&engine),
            proofs,
        });
    }
    Ok(Json(answer))
}
