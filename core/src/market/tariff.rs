//! The utility as counterparty of last resort: retail tariff (ceiling), feed-in tariff (floor)
//! and imbalance prices, each a time profile over slot indices.

use serde::{Deserialize, Serialize};

/// A value per slot, repeating: slot `n` uses `values[n % len]`.
///
/// One value is a constant; 96 values with 15-minute slots and a midnight calendar epoch are a
/// daily profile; 35 040 values cover a year.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u64>", into = "Vec<u64>")]
pub struct TimeProfile {
    values: Vec<u64>,
}

impl TryFrom<Vec<u64>> for TimeProfile {
    type Error = TariffError;

    fn try_from(values: Vec<u64>) -> Result<Self, TariffError> {
        Self::repeating(values)
    }
}

impl From<TimeProfile> for Vec<u64> {
    fn from(p: TimeProfile) -> Self {
        p.values
    }
}

/// Why a tariff or time profile was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    /// A profile needs at least one value.
    #[error("a time profile needs at least one value; use TimeProfile::constant for a flat price")]
    EmptyProfile,
    /// In some slot the feed-in tariff is above the retail tariff, so no price band exists.
    #[error(
        "in slot {slot} the feed-in tariff {feed_in_per_kwh} is above the retail tariff {retail_per_kwh}; the floor must not exceed the ceiling"
    )]
    FeedInAboveRetail {
        /// Slot index.
        slot: u64,
        /// Feed-in tariff in that slot.
        feed_in_per_kwh: u64,
        /// Retail tariff in that slot.
        retail_per_kwh: u64,
    },
}

impl TimeProfile {
    /// The same value in every slot.
    #[must_use]
    pub fn constant(value: u64) -> Self {
        Self {
            values: vec![value],
        }
    }

    /// A repeating profile (see the type docs).
    pub fn repeating(values: Vec<u64>) -> Result<Self, TariffError> {
        if values.is_empty() {
            return Err(TariffError::EmptyProfile);
        }
        Ok(Self { values })
    }

    /// One period of the profile.
    #[must_use]
    pub fn values(&self) -> &[u64] {
        &self.values
    }

    /// The value in slot `slot`.
    #[must_use]
    pub fn at(&self, slot: u64) -> u64 {
        // Every constructor (and deserialization) rejects an empty profile; the checked
        // remainder only keeps this total. The remainder is below `len`, so it fits in usize.
        let len = self.values.len() as u64;
        let i = slot.checked_rem(len).and_then(|i| usize::try_from(i).ok());
        i.and_then(|i| self.values.get(i)).copied().unwrap_or(0)
    }
}

/// Retail (the utility sells) and feed-in (the utility buys) tariffs per kWh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tariff {
    /// What a household pays the utility per kWh: the market ceiling.
    pub retail: TimeProfile,
    /// What the utility pays a household per kWh exported: the market floor.
    pub feed_in: TimeProfile,
}

/// The price band of one slot: every local trade price lies in `[feed_in, retail]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TariffBand {
    /// Floor: the feed-in tariff per kWh.
    pub feed_in_per_kwh: u64,
    /// Ceiling: the retail tariff per kWh.
    pub retail_per_kwh: u64,
}

impl Tariff {
    /// Flat tariffs.
    #[must_use]
    pub fn flat(retail_per_kwh: u64, feed_in_per_kwh: u64) -> Self {
        Self {
            retail: TimeProfile::constant(retail_per_kwh),
            feed_in: TimeProfile::constant(feed_in_per_kwh),
        }
    }

    /// The band of slot `slot`.
    pub fn band(&self, slot: u64) -> Result<TariffBand, TariffError> {
        let band = TariffBand {
            feed_in_per_kwh: self.feed_in.at(slot),
            retail_per_kwh: self.retail.at(slot),
        };
        if band.feed_in_per_kwh > band.retail_per_kwh {
            return Err(TariffError::FeedInAboveRetail {
                slot,
                feed_in_per_kwh: band.feed_in_per_kwh,
                retail_per_kwh: band.retail_per_kwh,
            });
        }
        Ok(band)
    }
}

/// Prices at which deviations between delivered and traded energy settle with the utility.
///
/// Unset profiles default to the tariffs: a shortfall is bought at retail, a surplus is sold at
/// feed-in — exactly "the utility buys and sells what the local market did not match".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImbalancePrices {
    /// Price per kWh an account pays for energy it used beyond its position (default: retail).
    pub shortfall: Option<TimeProfile>,
    /// Price per kWh an account receives for energy it delivered beyond its position
    /// (default: feed-in).
    pub surplus: Option<TimeProfile>,
}

/// The imbalance prices of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotImbalancePrices {
    /// Paid per kWh of shortfall.
    pub shortfall_per_kwh: u64,
    /// Received per kWh of surplus.
    pub surplus_per_kwh: u64,
}

impl ImbalancePrices {
    /// The imbalance prices of slot `slot`, falling back to `band`.
    #[must_use]
    pub fn at(&self, slot: u64, band: TariffBand) -> SlotImbalancePrices {
        SlotImbalancePrices {
            shortfall_per_kwh: self
                .shortfall
                .as_ref()
                .map_or(band.retail_per_kwh, |p| p.at(slot)),
            surplus_per_kwh: self
                .surplus
                .as_ref()
                .map_or(band.feed_in_per_kwh, |p| p.at(slot)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn profiles_repeat_and_bands_are_checked() {
        let p = TimeProfile::repeating(vec![1, 2, 3]).unwrap();
        assert_eq!((p.at(0), p.at(4), p.at(u64::MAX)), (1, 2, 1));
        assert_eq!(
            TimeProfile::repeating(vec![]),
            Err(TariffError::EmptyProfile)
        );
        let t = Tariff {
            retail: TimeProfile::repeating(vec![30, 10]).unwrap(),
            feed_in: TimeProfile::constant(12),
        };
        assert_eq!(t.band(0).unwrap().retail_per_kwh, 30);
        assert!(matches!(
            t.band(1),
            Err(TariffError::FeedInAboveRetail { slot: 1, .. })
        ));
        let imbalance = ImbalancePrices {
            shortfall: Some(TimeProfile::constant(50)),
            surplus: None,
        };
        let p = imbalance.at(0, t.band(0).unwrap());
        assert_eq!((p.shortfall_per_kwh, p.surplus_per_kwh), (50, 12));
    }
}
