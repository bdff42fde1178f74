//! Delivery: what each meter actually did in a slot, from its cumulative counters, compared
//! with what its account traded.
//!
//! Signs: positive energy flows *into* the account (net import, energy bought); negative flows
//! out (net export, energy sold). The deviation `delivered − traded` is positive for a
//! shortfall (used more than bought, or delivered less than sold) and negative for a surplus.

use super::accounts::PerAccount;
use super::order::{AccountId, MeterId};
use super::trade::Trade;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A meter's cumulative lifetime counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeterCounters {
    /// Energy drawn from the grid, Wh, since the meter was installed.
    pub import_wh: u64,
    /// Energy fed into the grid, Wh, since the meter was installed.
    pub export_wh: u64,
}

/// One meter's counters at the start and the end of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeterDelivery {
    /// The meter.
    pub meter: MeterId,
    /// The account it belongs to.
    pub account: AccountId,
    /// Counters at delivery start.
    pub start: MeterCounters,
    /// Counters at delivery end.
    pub end: MeterCounters,
}

/// Why delivery data was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// A cumulative counter decreased over the slot (meter replaced, or a forged reading).
    #[error(
        "meter {meter:?}: {counter} counter went backwards from {start_wh} Wh to {end_wh} Wh; check the meter or register a replacement"
    )]
    CounterWentBackwards {
        /// The meter.
        meter: MeterId,
        /// "import" or "export".
        counter: &'static str,
        /// Value at slot start.
        start_wh: u64,
        /// Value at slot end.
        end_wh: u64,
    },
    /// A counter moved by more than any meter can in one slot.
    #[error(
        "meter {meter:?}: counter moved by more than 2^62 Wh in one slot; the readings are corrupt"
    )]
    Implausible {
        /// The meter.
        meter: MeterId,
    },
    /// The same meter appears twice.
    #[error(
        "meter {meter:?} appears twice in one slot's deliveries; send one start/end pair per meter"
    )]
    DuplicateMeter {
        /// The meter.
        meter: MeterId,
    },
}

const MAX_SLOT_FLOW_WH: u64 = 1 << 62;

impl MeterDelivery {
    /// Net energy imported during the slot, Wh (negative: net export).
    pub fn net_import_wh(&self) -> Result<i64, DeliveryError> {
        let delta = |counter, start_wh: u64, end_wh: u64| {
            let d = end_wh
                .checked_sub(start_wh)
                .ok_or(DeliveryError::CounterWentBackwards {
                    meter: self.meter,
                    counter,
                    start_wh,
                    end_wh,
                })?;
            if d > MAX_SLOT_FLOW_WH {
                return Err(DeliveryError::Implausible { meter: self.meter });
            }
            i64::try_from(d).map_err(|_| DeliveryError::Implausible { meter: self.meter })
        };
        let import = delta("import", self.start.import_wh, self.end.import_wh)?;
        let export = delta("export", self.start.export_wh, self.end.export_wh)?;
        Ok(import - export)
    }
}

/// An account's traded and delivered energy in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The account.
    pub account: AccountId,
    /// Energy bought minus energy sold, Wh.
    pub traded_wh: i64,
    /// Net import over all its meters, Wh.
    pub delivered_wh: i64,
}

impl Position {
    /// `delivered − traded`: positive is a shortfall, negative a surplus, in Wh.
    #[must_use]
    pub fn deviation_wh(&self) -> i128 {
        i128::from(self.delivered_wh) - i128::from(self.traded_wh)
    }
}

/// Every account's position, sorted by account: traded energy from `trades`, delivered
/// energy from `deliveries`. Accounts that traded without a meter delivered nothing.
pub fn positions(
    trades: &[Trade],
    deliveries: &[MeterDelivery],
) -> Result<Vec<Position>, DeliveryError> {
    let mut sums: PerAccount<(i128, i128)> = PerAccount::new(2 * trades.len() + deliveries.len());
    for t in trades {
        let e = i128::from(t.energy_wh);
        sums.entry(t.buyer).0 += e;
        sums.entry(t.seller).0 -= e;
    }
    // Design: meters listed in ascending order (as the engine and the simulator list them)
    // cannot repeat, so only other orders pay for the set that finds the first repeat.
    let ascending = deliveries.windows(2).all(|w| w[0].meter < w[1].meter);
    let mut seen = BTreeSet::new();
    for d in deliveries {
        if !ascending && !seen.insert(d.meter) {
            return Err(DeliveryError::DuplicateMeter { meter: d.meter });
        }
        sums.entry(d.account).1 += i128::from(d.net_import_wh()?);
    }
    // Collected into a vector of the right size at once (a collected `Result` would grow it
    // step by step: this runs for every account in every slot).
    let mut out = Vec::with_capacity(sums.len());
    for (account, (traded, delivered)) in sums.into_sorted() {
        // Sums of bounded per-order and per-meter flows; beyond i64 only with corrupt data.
        let fit = |v: i128| {
            i64::try_from(v).map_err(|_| DeliveryError::Implausible {
                meter: MeterId(account.0),
            })
        };
        out.push(Position {
            account,
            traded_wh: fit(traded)?,
            delivered_wh: fit(delivered)?,
        });
    }
    Ok(out)
}
