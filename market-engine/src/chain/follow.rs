//! The engine follows the Settlement contract's money events, so its books and the chain's
//! agree (issue 14): a household's own `Deposited` tokens become spendable funds, a
//! `WithdrawalRequested` holds the amount back from bids (it stays in the balance, since the
//! contract still takes due debits from a pending withdrawal), `WithdrawalCancelled` releases
//! it, and `Withdrawn` takes what was paid out. Deposits sent by the engine's own operator key
//! are the on-chain mirrors of deposits the operator recorded (money that arrived off chain,
//! counted when recorded) and are not counted again.
//!
//! Design: only blocks at least `confirmations` deep are read, so a reorganisation shallower
//! than that never reaches the books; the cursor (last block read and its hash) is written in
//! the same database transaction as the events of the blocks up to it, so a restart neither
//! counts an event twice nor misses one. A cursor block whose hash changed means the chain
//! reorganised deeper than `confirmations`: the follower stops with an error that says so
//! (the operator raises `confirmations`), rather than guess which events still hold.
//! With the engine's books following the chain this way, for every account
//! `engine balance = balanceOf + withdrawalOf − debtOf` after every settled batch, deposit and
//! withdrawal; `market-engine chain-balances` checks it.

use alloy::primitives::Address;
use alloy::sol_types::SolEvent;
use gridshare_contracts::bindings::Settlement;
use gridshare_contracts::chain::{Chain, ChainLog};
use gridshare_contracts::settlement::ChainSettlement;

use super::SettlerError;
use super::custody::Custody;
use crate::market::{ChainMoney, Market};
use crate::store::Store;
use crate::store::money::FollowCursor;

/// Blocks read per step at most (nodes cap `eth_getLogs` ranges).
pub const BLOCKS_PER_STEP: u64 = 2_000;

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowProgress {
    /// Money events applied to the books.
    pub applied: u64,
    /// The last block read (0: none yet).
    pub through_block: u64,
    /// Confirmed blocks still to read after this step.
    pub behind: u64,
}

/// Reads the next confirmed blocks of the contract's events and applies them. `start_block`
/// is where a follower with no cursor starts (the contract's deployment block, or 0).
pub async fn step<C: Chain>(
    market: &Market,
    store: &Store,
    settlement: &ChainSettlement<C>,
    custody: &Custody,
    confirmations: u64,
    start_block: u64,
    now_ms: u64,
) -> Result<FollowProgress, SettlerError> {
    let chain = settlement.chain();
    let contract = format!("{:#x}", settlement.address());
    let head = chain.head().await?;
    // A block is confirmed when it and `confirmations - 1` blocks on top of it exist.
    let Some(safe) = (head + 1).checked_sub(confirmations.max(1)) else {
        return Ok(FollowProgress::default());
    };
    let cursor = market.follow_cursor(&contract).await?;
    let from = match &cursor {
        Some(c) => {
            let now = chain.block_hash(c.block).await?;
            if now.map(|h| format!("{h:#x}")).as_deref() != Some(c.block_hash.as_str()) {
                return Err(SettlerError::Reorganised {
                    block: c.block,
                    hash: c.block_hash.clone(),
                });
            }
            c.block + 1
        }
        None => start_block,
    };
    if from > safe {
        return Ok(FollowProgress {
            through_block: cursor.map_or(0, |c| c.block),
            ..FollowProgress::default()
        });
    }
    let to = safe.min(from + BLOCKS_PER_STEP - 1);
    let logs = chain.logs(settlement.address(), from, to).await?;
    // The engine's accounts, for addresses no one derived yet (asked only when there are logs).
    let ids = if logs.is_empty() {
        Vec::new()
    } else {
        store.account_ids().await?
    };
    let mut events = Vec::new();
    for log in &logs {
        if let Some(event) = money_event(log, settlement.operator(), custody, &ids)? {
            events.push(event);
        }
    }
    let hash = chain
        .block_hash(to)
        .await?
        .ok_or(SettlerError::MissingBlock { block: to, head })?;
    let applied = market
        .apply_chain_money(
            &contract,
            &events,
            &FollowCursor {
                block: to,
                block_hash: format!("{hash:#x}"),
            },
            now_ms,
        )
        .await?;
    Ok(FollowProgress {
        applied,
        through_block: to,
        behind: safe - to,
    })
}

/// The money event a log of the contract is, for an account of the engine; `None` for any
/// other log, an address no account has (the treasury, a stranger) and the operator's mirror
/// deposits.
fn money_event(
    log: &ChainLog,
    operator: Address,
    custody: &Custody,
    ids: &[i64],
) -> Result<Option<ChainMoney>, SettlerError> {
    let Some(topic) = log.log.topics().first() else {
        return Ok(None);
    };
    let reference = format!("chain:{:#x}:{}", log.tx_hash, log.log_index);
    let account = |address: Address| custody.account_of(address, ids.iter().copied());
    let bad = |e: alloy::sol_types::Error| SettlerError::Log {
        block: log.block_number,
        reason: format!("a Settlement log that does not decode: {e}"),
    };
    let amount = |v: alloy::primitives::U256, what: &str| {
        i64::try_from(v).map_err(|_| SettlerError::Log {
            block: log.block_number,
            reason: format!("a {what} of {v} token units is beyond what the engine books"),
        })
    };
    Ok(match *topic {
        Settlement::Deposited::SIGNATURE_HASH => {
            let e = Settlement::Deposited::decode_log_data(&log.log.data).map_err(bad)?;
            if e.from == operator {
                return Ok(None);
            }
            match account(e.account) {
                Some(account) => Some(ChainMoney::Deposited {
                    account,
                    amount: amount(e.amount, "deposit")?,
                    reference,
                }),
                None => None,
            }
        }
        Settlement::WithdrawalRequested::SIGNATURE_HASH => {
            let e = Settlement::WithdrawalRequested::decode_log_data(&log.log.data).map_err(bad)?;
            match account(e.account) {
                Some(account) => Some(ChainMoney::WithdrawalRequested {
                    account,
                    amount: amount(e.amount, "withdrawal")?.unsigned_abs(),
                    ready_at: e.readyAt,
                }),
                None => None,
            }
        }
        Settlement::WithdrawalCancelled::SIGNATURE_HASH => {
            let e = Settlement::WithdrawalCancelled::decode_log_data(&log.log.data).map_err(bad)?;
            account(e.account).map(|account| ChainMoney::WithdrawalCancelled { account })
        }
        Settlement::Withdrawn::SIGNATURE_HASH => {
            let e = Settlement::Withdrawn::decode_log_data(&log.log.data).map_err(bad)?;
            match account(e.account) {
                Some(account) => Some(ChainMoney::Withdrawn {
                    account,
                    paid: amount(e.amount, "withdrawal")?,
                    reference,
                }),
                None => None,
            }
        }
        _ => None,
    })
}
