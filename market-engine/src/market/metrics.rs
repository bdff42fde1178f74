//! The market's counters (orders, trades, gate closures, settlement), exported on `/metrics`.

use super::*;

/// Counters of the market, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct MarketMetrics {
    /// Orders accepted (on disk).
    pub orders_accepted: AtomicU64,
    /// Orders, cancels and amends refused, by reason.
    pub orders_rejected: ReasonCounts,
    /// Trades made.
    pub trades: AtomicU64,
    /// Gate closures.
    pub gate_closures: AtomicU64,
    /// Time spent clearing at gate closure, microseconds in total.
    pub gate_closure_micros: AtomicU64,
    /// Slots settled in the ledger.
    pub slots_settled: AtomicU64,
    /// Seconds from the latest settled slot's settlement time to its settlement (lag).
    pub settlement_lag_s: AtomicU64,
    /// Meter deliveries settled at their capacity bound instead of what the counters said.
    pub deliveries_capped: AtomicU64,
    /// Meters whose delivery in a settled slot could not be established (disputed).
    pub meters_disputed: AtomicU64,
    /// Attempts to settle a slot that failed (the slot is tried again; later slots go on).
    pub settlement_failures: AtomicU64,
}

/// Counters by a fixed set of reasons, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReasonCounts(std::sync::Mutex<BTreeMap<&'static str, u64>>);

impl ReasonCounts {
    /// Counts one `reason`.
    pub fn add(&self, reason: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Every reason counted so far with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect()
    }

    /// The sum over every reason.
    pub fn total(&self) -> u64 {
        self.snapshot().iter().map(|(_, n)| n).sum()
    }
}
