//! Trading agents: what each household bids or offers for a slot.
//!
//! - [`ramp_price`]: Grid Singularity's price ramp. A seller's offer starts at the retail
//!   tariff and falls to the feed-in tariff over the order window; a buyer's bid starts at the
//!   feed-in tariff and rises to retail. GSy-e updates on every tick; here each agent updates
//!   `ramp_steps` times per slot, evenly spread, the last update reaching the final price.
//! - [`forecast_order`]: the engine's automatic rule, the very function (`core`'s
//!   `TradingRule::order`) the engine's `autotrade` calls: one order per slot sized from the
//!   household's own net grid power over the last slot (persistence forecast), selling surplus
//!   at no less than its rule price unless the battery is below the level to keep, buying need
//!   at no more than its rule price.

use gridshare_core::market::{Side, TariffBand};

/// The ramp agent's limit price at update `step` (0-based) of `steps`.
#[must_use]
pub fn ramp_price(side: Side, band: TariffBand, step: u32, steps: u32) -> u64 {
    let span = u128::from(band.retail_per_kwh - band.feed_in_per_kwh);
    let steps = steps.max(1);
    // Fraction (step + 1) / steps of the way, rounded down: the last step reaches the end.
    let moved = span * u128::from(step.min(steps - 1) + 1) / u128::from(steps);
    let moved = u64::try_from(moved).unwrap_or(u64::MAX);
    match side {
        Side::Sell => band.retail_per_kwh.saturating_sub(moved),
        Side::Buy => band.feed_in_per_kwh.saturating_add(moved),
    }
}

/// A rule in the engine's terms: prices per kWh and the battery level to keep, basis points.
pub use gridshare_core::market::TradingRule;

/// The order the rule places: `(side, price per kWh, energy Wh)`, or none. `avg_w` is the
/// meter's average grid power over the last slot (positive = import), `soc_bp` the battery's
/// state of charge, `slot_s` the slot length: `core`'s [`TradingRule::order`], the function
/// the engine's automatic rules call.
#[must_use]
pub fn forecast_order(
    rule: &TradingRule,
    avg_w: i64,
    soc_bp: Option<u16>,
    slot_s: u32,
) -> Option<(Side, u64, u64)> {
    rule.order(avg_w, soc_bp, slot_s)
        .map(|o| (o.side, o.price_per_kwh, o.energy_wh))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BAND: TariffBand = TariffBand {
        feed_in_per_kwh: 8_000,
        retail_per_kwh: 30_000,
    };

    #[test]
    fn the_ramp_moves_from_one_tariff_to_the_other() {
        assert_eq!(ramp_price(Side::Sell, BAND, 0, 4), 24_500);
        assert_eq!(ramp_price(Side::Sell, BAND, 3, 4), 8_000);
        assert_eq!(ramp_price(Side::Buy, BAND, 0, 4), 13_500);
        assert_eq!(ramp_price(Side::Buy, BAND, 3, 4), 30_000);
        // Beyond the last step the price stays at the end of the ramp.
        assert_eq!(ramp_price(Side::Buy, BAND, 9, 4), 30_000);
        assert_eq!(ramp_price(Side::Sell, BAND, 0, 1), 8_000);
    }

    #[test]
    fn the_forecast_rule_matches_the_engine() {
        let rule = TradingRule {
            sell_at_least: Some(12_000),
            buy_at_most: Some(25_000),
            keep_battery_above_bp: Some(5_000),
        };
        // The engine's own test cases (autotrade.rs).
        assert_eq!(
            forecast_order(&rule, -2_000, Some(9_000), 900),
            Some((Side::Sell, 12_000, 500))
        );
        assert_eq!(
            forecast_order(&rule, 1_200, None, 900),
            Some((Side::Buy, 25_000, 300))
        );
        assert_eq!(forecast_order(&rule, -2_000, Some(4_999), 900), None);
        assert_eq!(forecast_order(&rule, 0, None, 900), None);
        let only_buy = TradingRule {
            sell_at_least: None,
            ..rule
        };
        assert_eq!(forecast_order(&only_buy, -2_000, None, 900), None);
    }
}
