//! The settlement outbox in the engine's database: one row per settled slot, written in the
//! slot's settlement transaction, then driven to the chain strictly in slot order.
//!
//! Design: a row moves `pending → sent → included → confirmed`. `sent` means the node accepted
//! the transaction (its hash is kept); `included` means a receipt in a block of the canonical
//! chain; `confirmed` means that block is `confirmations` deep. Every state is re-checked
//! against the chain on each step — after a restart as much as in a running engine — so a
//! transaction that is dropped from the pool goes back to `pending` and is sent again, and one
//! whose block is reorganised away goes back as well. Reads use mined blocks only, never the
//! node's pending block. A batch is sent only when every earlier batch is confirmed: a slot's
//! debits may rely on the previous slot's credits. A batch the contract refuses is `rejected`:
//! tried again later by itself when the refusal can pass (a balance may be topped up, the
//! operator key re-authorised), or kept for the operator (`market-engine settlement resend`)
//! when the batch itself is wrong; later batches wait behind it either way.

use std::time::Duration;

use gridshare_contracts::bindings::Settlement;
use gridshare_contracts::chain::{Chain, ChainError, TxStatus};
use gridshare_contracts::settlement::ChainSettlement;

use crate::store::Store;
use crate::store::settlement::{BatchRecord, BatchStatus};

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Batches that reached `confirmations` deep.
    pub confirmed: u64,
    /// Batches whose transaction was dropped or whose block was reorganised away.
    pub fell_back: u64,
    /// Batches the contract refused in this step.
    pub rejected: u64,
    /// Custodial accounts the engine opened on chain for the next batch.
    pub accounts_opened: u64,
    /// Custodial accounts it could not open (the batch then waits, refused retryably).
    pub account_open_failures: u64,
}

/// Backoff after the `attempts`-th failure: 2 s doubling to a minute for a chain that cannot
/// be reached, 30 s doubling to an hour for a batch the contract refuses.
fn backoff(attempts: u32, refused: bool) -> Duration {
    let (first, most) = if refused { (30, 3_600) } else { (2, 60) };
    Duration::from_secs((first << attempts.saturating_sub(1).min(12)).min(most))
}

fn later(now_ms: u64, wait: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// Why the contract refused a batch, and whether the same batch can pass later.
fn refusal(error: &ChainError) -> (String, bool) {
    use Settlement::SettlementErrors as E;
    match error.decode::<E>() {
        // A household may open its account; the operator key may be re-authorised. (A lack
        // of money is never a refusal: the contract records it as the account's debt.)
        Some(e @ (E::AccountNotOpened(_) | E::NotOperator(_))) => (format!("{e:?}"), true),
        Some(e) => (format!("{e:?}"), false),
        None => (error.to_string(), true),
    }
}

/// Drives the open batches one step: each is checked against the chain and moved on; a batch
/// is sent only once every earlier one is confirmed.
pub async fn step<C: Chain>(
    store: &Store,
    chain: &ChainSettlement<C>,
    confirmations: u64,
    now_ms: u64,
) -> Result<Progress, super::SettlerError> {
    let mut progress = Progress::default();
    let open = store.open_settlement_batches().await?;
    if open.is_empty() {
        return Ok(progress);
    }
    let head = chain.chain().head().await?;
    for mut r in open {
        advance(
            chain,
            &mut r,
            head,
            confirmations.max(1),
            now_ms,
            &mut progress,
        )
        .await;
        store.save_settlement_batch(&r, now_ms).await?;
        if r.status != BatchStatus::Confirmed {
            break;
        }
    }
    Ok(progress)
}

/// Moves one batch as far as the chain allows now. Chain errors leave it where it is, with the
/// error recorded and a later attempt time.
async fn advance<C: Chain>(
    chain: &ChainSettlement<C>,
    r: &mut BatchRecord,
    head: u64,
    confirmations: u64,
    now_ms: u64,
    progress: &mut Progress,
) {
    let slot = r.batch.id;
    // A few transitions per step at most (sent → included → confirmed; dropped → re-sent).
    for _ in 0..4 {
        let outcome = match r.status {
            BatchStatus::Confirmed => return,
            BatchStatus::Pending | BatchStatus::Rejected => {
                if r.next_attempt_ms > now_ms || (r.status == BatchStatus::Rejected && !r.retry) {
                    return;
                }
                send(chain, r, head, now_ms, progress).await
            }
            BatchStatus::Sent | BatchStatus::Included => {
                follow(chain, r, head, confirmations, now_ms, progress).await
            }
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // The chain could not be asked: try again after a pause, nothing else changes.
                r.last_error = Some(e.to_string());
                r.next_attempt_ms = later(now_ms, backoff(r.attempts.max(1), false));
                tracing::warn!(target: "chain", slot, error = %e, "settlement batch waits for the chain");
                return;
            }
        }
    }
}

/// A pending batch: confirmed if the chain already has it (sent before a crash), otherwise
/// sent. Whether it moved on.
async fn send<C: Chain>(
    chain: &ChainSettlement<C>,
    r: &mut BatchRecord,
    head: u64,
    now_ms: u64,
    progress: &mut Progress,
) -> Result<bool, ChainError> {
    let slot = r.batch.id;
    match chain.batch_root_at(slot, Some(head)).await? {
        Some(root) if root == r.batch.root => {
            // On chain already, by a transaction this row does not know (the engine stopped
            // between sending and writing its hash): follow the root instead of a receipt.
            r.status = BatchStatus::Included;
            r.tx_hash = None;
            r.block_number = Some(head);
            r.block_hash = None;
            return Ok(true);
        }
        Some(root) => {
            r.status = BatchStatus::Rejected;
            r.retry = false;
            r.last_error = Some(format!(
                "batch id {slot} is settled on chain with another root ({root}); the engine's \
                 database and the contract disagree"
            ));
            progress.rejected += 1;
            tracing::error!(target: "chain", slot, "{}", r.last_error.as_deref().unwrap_or_default());
            return Ok(false);
        }
        None => {}
    }
    r.attempts = r.attempts.saturating_add(1);
    match chain.send_batch(&r.batch, &r.sales).await {
        Ok(hash) => {
            r.status = BatchStatus::Sent;
            r.tx_hash = Some(hash);
            r.block_number = None;
            r.block_hash = None;
            r.last_error = None;
            r.next_attempt_ms = 0;
            tracing::info!(target: "chain", slot, tx = %hash, "settlement batch sent");
            Ok(true)
        }
        Err(e) if e.is_transient() => Err(e),
        Err(e)
            if matches!(
                e.decode(),
                Some(Settlement::SettlementErrors::BatchAlreadySettled(_))
            ) =>
        {
            // Settled in the node's pending state by a transaction still in its pool: wait for
            // it to be mined (or dropped) and look again.
            r.last_error = Some("settled by a transaction not yet mined".into());
            r.next_attempt_ms = later(now_ms, backoff(1, false));
            Ok(false)
        }
        Err(e) => {
            let (reason, retry) = refusal(&e);
            r.status = BatchStatus::Rejected;
            r.retry = retry;
            r.last_error = Some(reason);
            r.next_attempt_ms = later(now_ms, backoff(r.attempts, true));
            progress.rejected += 1;
            tracing::error!(
                target: "chain",
                slot,
                reason = r.last_error.as_deref().unwrap_or_default(),
                retries_by_itself = retry,
                "settlement batch refused by the contract; later batches wait behind it"
            );
            Ok(false)
        }
    }
}

/// A sent or included batch: where its transaction stands now. Whether it moved on.
async fn follow<C: Chain>(
    chain: &ChainSettlement<C>,
    r: &mut BatchRecord,
    head: u64,
    confirmations: u64,
    now_ms: u64,
    progress: &mut Progress,
) -> Result<bool, ChainError> {
    let slot = r.batch.id;
    let Some(tx) = r.tx_hash else {
        // Found on chain without a receipt: the root itself must be deep enough.
        let first = r.block_number.unwrap_or(head);
        if !deep_enough(first, head, confirmations) {
            return Ok(false);
        }
        let at = head + 1 - confirmations;
        return match chain.batch_root_at(slot, Some(at)).await? {
            Some(root) if root == r.batch.root => {
                r.status = BatchStatus::Confirmed;
                progress.confirmed += 1;
                Ok(false)
            }
            _ => {
                fall_back(r, "its root is no longer on chain", progress);
                Ok(true)
            }
        };
    };
    match chain.chain().transaction(tx).await? {
        TxStatus::Pending => {
            if r.status == BatchStatus::Included {
                fall_back(
                    r,
                    "its block was reorganised away; back in the pool",
                    progress,
                );
                r.status = BatchStatus::Sent;
            }
            Ok(false)
        }
        TxStatus::Unknown => {
            let why = if r.status == BatchStatus::Included {
                "its block was reorganised away"
            } else {
                "the node dropped its transaction"
            };
            fall_back(r, why, progress);
            Ok(true)
        }
        TxStatus::Included(inc) if !inc.success => {
            // Mined and reverted (say, a withdrawal in the same block left a debit uncovered):
            // nothing was settled; send again after a pause.
            fall_back(
                r,
                &format!("its transaction reverted in block {}", inc.block_number),
                progress,
            );
            r.next_attempt_ms = later(now_ms, backoff(r.attempts, false));
            Ok(false)
        }
        TxStatus::Included(inc) => {
            // The receipt proves its block exists, even when `head` was read before it.
            let head = head.max(inc.block_number);
            if r.status == BatchStatus::Included
                && r.block_hash.is_some_and(|h| h != inc.block_hash)
            {
                tracing::warn!(target: "chain", slot, block = inc.block_number, "settlement batch re-included after a reorganisation");
            }
            r.block_number = Some(inc.block_number);
            r.block_hash = Some(inc.block_hash);
            r.gas_used = Some(inc.gas_used);
            r.status = BatchStatus::Included;
            if deep_enough(inc.block_number, head, confirmations) {
                r.status = BatchStatus::Confirmed;
                r.last_error = None;
                progress.confirmed += 1;
                tracing::info!(target: "chain", slot, block = inc.block_number, tx = %tx, "settlement batch confirmed");
            }
            Ok(false)
        }
    }
}

/// Whether `block` is `confirmations` deep below `head` (itself counting as one).
fn deep_enough(block: u64, head: u64, confirmations: u64) -> bool {
    head.checked_sub(block)
        .is_some_and(|d| d + 1 >= confirmations)
}

fn fall_back(r: &mut BatchRecord, why: &str, progress: &mut Progress) {
    tracing::warn!(target: "chain", slot = r.batch.id, "settlement batch back to pending: {why}");
    r.status = BatchStatus::Pending;
    r.last_error = Some(why.to_string());
    r.block_number = None;
    r.block_hash = None;
    r.next_attempt_ms = 0;
    progress.fell_back += 1;
}
