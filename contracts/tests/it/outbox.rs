//! The settlement outbox: written before sent, retried, confirmed, never sent twice, resumed
//! after a restart; and the embedded chain's own restart.

use crate::harness::{Env, actor, tokens};
use crate::on_both_chains;
use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::bindings::Settlement;
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::outbox::OutboxStatus;
use gridshare_contracts::{
    Chain, ChainError, ChainSettlement, Deployment, EmbeddedChain, NetDelta, OutboxError,
    RetryPolicy, SettlementBackend, SettlementBatch, SettlementOutbox, SettlementReceipt,
    StakingParams,
};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

on_both_chains!(outbox_confirms_retries_and_resumes);

/// A backend whose first `failures` submissions fail as if the node were unreachable.
struct Flaky<B> {
    inner: B,
    failures: AtomicU32,
    submissions: AtomicU32,
}

impl<B: SettlementBackend> SettlementBackend for Flaky<B> {
    async fn submit_batch(&self, batch: &SettlementBatch) -> Result<SettlementReceipt, ChainError> {
        self.submissions.fetch_add(1, Ordering::SeqCst);
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ChainError::Transport("connection refused".into()));
        }
        self.inner.submit_batch(batch).await
    }

    async fn batch_root(&self, batch_id: u64) -> Result<Option<B256>, ChainError> {
        self.inner.batch_root(batch_id).await
    }

    async fn balance(&self, account: Address) -> Result<U256, ChainError> {
        self.inner.balance(account).await
    }
}

async fn pool(path: &std::path::Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
        )
        .await
        .expect("sqlite")
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        max_attempts,
    }
}

fn batch(id: u64, from: Address, to: Address, amount: i128) -> SettlementBatch {
    SettlementBatch::new(
        id,
        B256::with_last_byte(u8::try_from(id).expect("small id")),
        [
            NetDelta {
                account: from,
                amount: -amount,
            },
            NetDelta {
                account: to,
                amount,
            },
        ],
    )
    .expect("batch")
}

async fn outbox_confirms_retries_and_resumes<C: Chain>(env: Env<C>) {
    let (alice, bob) = (actor(1), actor(2));
    for a in [alice, bob] {
        env.fund(a, tokens(1)).await;
        env.chain
            .transact(
                a,
                env.d.settlement,
                Settlement::depositCall {
                    amount: U256::from(10_000u64),
                },
            )
            .await
            .expect("deposit");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("outbox.sqlite");
    let backend = || Flaky {
        inner: ChainSettlement::new(&env.chain, env.d.settlement, env.operator),
        failures: AtomicU32::new(0),
        submissions: AtomicU32::new(0),
    };

    // Written first, sent in order, confirmed by receipt; enqueueing again is harmless.
    let outbox = SettlementOutbox::open(pool(&db).await, backend(), fast_retry(3))
        .await
        .expect("open");
    outbox
        .enqueue(&batch(1, alice, bob, 100))
        .await
        .expect("enqueue");
    outbox
        .enqueue(&batch(2, bob, alice, 40))
        .await
        .expect("enqueue");
    outbox
        .enqueue(&batch(1, alice, bob, 100))
        .await
        .expect("same batch again");
    assert!(matches!(
        outbox.enqueue(&batch(1, alice, bob, 101)).await,
        Err(OutboxError::Conflict { batch_id: 1, .. })
    ));
    assert_eq!(outbox.pending().await.expect("pending"), vec![1, 2]);
    assert_eq!(outbox.flush().await.expect("flush"), 2);
    let entry = outbox.entry(1).await.expect("entry").expect("exists");
    assert_eq!(entry.status, OutboxStatus::Confirmed);
    assert!(entry.tx_hash.is_some());
    assert_eq!(outbox.backend().submissions.load(Ordering::SeqCst), 2);
    assert_eq!(
        outbox.backend().balance(alice).await.expect("balance"),
        U256::from(9_940u64)
    );

    // Transient failures are retried with backoff until the batch lands.
    outbox.backend().failures.store(2, Ordering::SeqCst);
    outbox
        .enqueue(&batch(3, alice, bob, 1))
        .await
        .expect("enqueue");
    assert_eq!(outbox.flush().await.expect("flush"), 1);
    assert_eq!(
        outbox
            .entry(3)
            .await
            .expect("entry")
            .expect("exists")
            .attempts,
        3
    );

    // Out of retries: the batch stays pending and goes out on the next flush.
    outbox.backend().failures.store(5, Ordering::SeqCst);
    outbox
        .enqueue(&batch(4, alice, bob, 1))
        .await
        .expect("enqueue");
    assert!(matches!(
        outbox.flush().await,
        Err(OutboxError::RetriesExhausted {
            batch_id: 4,
            attempts: 3,
            ..
        })
    ));
    assert_eq!(outbox.pending().await.expect("pending"), vec![4]);
    outbox.backend().failures.store(0, Ordering::SeqCst);
    assert_eq!(outbox.flush().await.expect("flush"), 1);

    // A batch the contract refuses is marked rejected with the reason, not retried.
    outbox
        .enqueue(&batch(5, alice, bob, 1_000_000))
        .await
        .expect("enqueue");
    match outbox.flush().await {
        Err(OutboxError::Rejected {
            batch_id: 5,
            reason,
        }) => {
            assert!(reason.contains("InsufficientBalance"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        outbox
            .entry(5)
            .await
            .expect("entry")
            .expect("exists")
            .status,
        OutboxStatus::Rejected
    );

    // Crash after the transaction landed but before the outbox recorded it: after a restart the
    // outbox sees the batch on chain and confirms it without sending it again.
    outbox
        .enqueue(&batch(6, bob, alice, 7))
        .await
        .expect("enqueue");
    drop(outbox);
    ChainSettlement::new(&env.chain, env.d.settlement, env.operator)
        .submit_batch(&batch(6, bob, alice, 7))
        .await
        .expect("landed before the crash");
    let outbox = SettlementOutbox::open(pool(&db).await, backend(), fast_retry(3))
        .await
        .expect("reopen");
    assert_eq!(outbox.pending().await.expect("pending"), vec![6]);
    assert_eq!(outbox.flush().await.expect("flush"), 1);
    assert_eq!(outbox.backend().submissions.load(Ordering::SeqCst), 0);
    let entry = outbox.entry(6).await.expect("entry").expect("exists");
    assert_eq!(entry.status, OutboxStatus::Confirmed);
    assert_eq!(entry.tx_hash, None);
    assert_eq!(
        outbox.backend().balance(alice).await.expect("balance"),
        U256::from(9_945u64)
    );
}

/// The embedded chain keeps contracts, balances and settled batches across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_chain_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chain.json");
    let (deployer, alice, bob) = (Address::repeat_byte(0xde), actor(1), actor(2));
    let d = {
        let chain = EmbeddedChain::open(&path).expect("open");
        let now = chain.timestamp().await.expect("timestamp");
        let d = Deployment::deploy(
            &chain,
            deployer,
            deployer,
            None,
            tokens(1_000),
            &StakingParams::daily(now),
        )
        .await
        .expect("deploy");
        for a in [alice, bob] {
            chain
                .transact(
                    deployer,
                    d.payment_token,
                    gridshare_contracts::bindings::GridToken::transferCall {
                        to: a,
                        value: U256::from(500u64),
                    },
                )
                .await
                .expect("transfer");
            chain
                .transact(
                    a,
                    d.payment_token,
                    gridshare_contracts::bindings::GridToken::approveCall {
                        spender: d.settlement,
                        value: U256::MAX,
                    },
                )
                .await
                .expect("approve");
            chain
                .transact(
                    a,
                    d.settlement,
                    Settlement::depositCall {
                        amount: U256::from(500u64),
                    },
                )
                .await
                .expect("deposit");
        }
        ChainSettlement::new(chain, d.settlement, deployer)
            .submit_batch(&batch(1, alice, bob, 200))
            .await
            .expect("settle");
        d
    };
    let backend = ChainSettlement::new(
        EmbeddedChain::open(&path).expect("reopen"),
        d.settlement,
        deployer,
    );
    assert_eq!(
        backend.balance(bob).await.expect("balance"),
        U256::from(700u64)
    );
    assert_eq!(
        backend.batch_root(1).await.expect("root"),
        Some(B256::with_last_byte(1))
    );
    assert!(matches!(
        backend
            .submit_batch(&batch(1, alice, bob, 200))
            .await
            .expect_err("replay")
            .decode(),
        Some(Settlement::SettlementErrors::BatchAlreadySettled(_))
    ));
    backend
        .submit_batch(&batch(2, bob, alice, 50))
        .await
        .expect("settle after restart");
    assert_eq!(
        backend.balance(alice).await.expect("balance"),
        U256::from(350u64)
    );
}
