//! The order log on disk: group commit of order events, trades and gate closures.

use super::*;

/// What the log writer commits for one request, in the order requests took the book lock.
#[derive(Debug)]
pub(super) enum LogWrite {
    /// An order event and the trades it made.
    Event {
        slot: u64,
        event: OrderEvent,
        trades: Vec<Trade>,
    },
    /// A gate closure: the call auction's trades and the slot's row.
    Closure {
        slot: u64,
        trades: Vec<Trade>,
        clearing_price: Option<u64>,
    },
}

pub(super) struct LogJob {
    pub(super) write: LogWrite,
    pub(super) done: oneshot::Sender<Result<(), LogFailure>>,
}

/// Why a queued write was not committed.
#[derive(Debug, Clone)]
pub(super) struct LogFailure {
    /// Storage failed (full disk, read-only or lost database), not the write itself.
    storage: bool,
    message: String,
}

impl LogFailure {
    fn of(e: &StoreError) -> Self {
        let message = match e {
            // The driver's message alone: the refusal already says what was not stored.
            StoreError::Database(e) => e.to_string(),
            other => other.to_string(),
        };
        Self {
            storage: e.is_unavailable(),
            message,
        }
    }

    pub(super) fn stopped() -> Self {
        Self {
            storage: false,
            message: "the order log writer stopped".into(),
        }
    }

    /// The error the request gets, `what` failed: storage failing is
    /// [`StoreError::Unavailable`] (the API answers 503, try again), anything else refuses
    /// the request.
    pub(super) fn refusal(self, what: &str) -> MarketError {
        let message = format!("{what}: {}", self.message);
        if self.storage {
            MarketError::Store(StoreError::Unavailable(message))
        } else {
            MarketError::out_of_range(message)
        }
    }
}

/// Largest number of requests committed in one transaction.
pub(super) const GROUP_COMMIT: usize = 256;

/// Design: group commit. Requests are applied to the in-memory book under the lock and queued
/// here in that same order; one transaction commits every queued request, then each caller is
/// answered. One fsync serves many orders, and the log order is the order the book saw. A failed
/// transaction fails every request still queued, so nothing after a failure is committed
/// before the callers have rebuilt their books from the log.
pub(super) async fn log_writer(store: Store, mut rx: mpsc::Receiver<LogJob>) {
    let mut jobs = Vec::with_capacity(GROUP_COMMIT);
    while rx.recv_many(&mut jobs, GROUP_COMMIT).await > 0 {
        let outcome = commit(&store, &jobs).await.map_err(|e| LogFailure::of(&e));
        for job in jobs.drain(..) {
            let _ = job.done.send(outcome.clone());
        }
        if let Err(failure) = outcome {
            while let Ok(job) = rx.try_recv() {
                let _ = job.done.send(Err(LogFailure {
                    storage: failure.storage,
                    message: "an earlier order-log write failed; retry".into(),
                }));
            }
        }
    }
}

async fn commit(store: &Store, jobs: &[LogJob]) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    for job in jobs {
        match &job.write {
            LogWrite::Event {
                slot,
                event,
                trades,
            } => {
                tx.log_order_event(*slot, event).await?;
                for t in trades {
                    tx.store_trade(*slot, t).await?;
                }
            }
            LogWrite::Closure {
                slot,
                trades,
                clearing_price,
            } => {
                for t in trades {
                    tx.store_trade(*slot, t).await?;
                }
                tx.close_slot(*slot, *clearing_price).await?;
            }
        }
    }
    tx.commit().await
}
