//! A household's automatic trading rule: "sell my surplus at no less than X, buy what I need
//! at no more than Y, keep the battery above Z %". The engine places these orders for real
//! households (`market-engine`'s `autotrade`) and the simulator for simulated ones, through
//! this one function, so a street simulated with rules trades as the street will.

use super::Side;

/// The prices and the battery level a household set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TradingRule {
    /// Sell the forecast surplus, asking at least this per kWh (none: never sell).
    pub sell_at_least: Option<u64>,
    /// Buy the forecast need, bidding at most this per kWh (none: never buy).
    pub buy_at_most: Option<u64>,
    /// Sell nothing while the battery is below this state of charge, basis points.
    pub keep_battery_above_bp: Option<u16>,
}

/// What a rule orders for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOrder {
    /// Buy or sell.
    pub side: Side,
    /// Limit price per kWh.
    pub price_per_kwh: u64,
    /// Energy, Wh.
    pub energy_wh: u64,
}

impl TradingRule {
    /// The order for a slot of `slot_s` seconds, for a meter whose average grid power over the
    /// last slot was `avg_w` (positive = import; a persistence forecast, the usual baseline for
    /// very short-term forecasts) and whose battery is at `soc_bp` — or none: nothing to
    /// trade, no price set for that side, or the battery below the level to keep.
    #[must_use]
    pub fn order(&self, avg_w: i64, soc_bp: Option<u16>, slot_s: u32) -> Option<RuleOrder> {
        // W × s / 3600 = Wh.
        let energy_wh = avg_w.unsigned_abs().saturating_mul(u64::from(slot_s)) / 3600;
        if energy_wh == 0 {
            return None;
        }
        let (side, price_per_kwh) = if avg_w < 0 {
            let keep = self.keep_battery_above_bp.unwrap_or(0);
            if soc_bp.is_some_and(|soc| soc < keep) {
                return None;
            }
            (Side::Sell, self.sell_at_least?)
        } else {
            (Side::Buy, self.buy_at_most?)
        };
        Some(RuleOrder {
            side,
            price_per_kwh,
            energy_wh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: TradingRule = TradingRule {
        sell_at_least: Some(12_000),
        buy_at_most: Some(25_000),
        keep_battery_above_bp: Some(3_000),
    };

    #[test]
    fn surplus_is_sold_need_is_bought_and_the_battery_is_kept() {
        // 3.6 kW export over 15 minutes: 900 Wh at the floor.
        assert_eq!(
            RULE.order(-3_600, Some(8_000), 900),
            Some(RuleOrder {
                side: Side::Sell,
                price_per_kwh: 12_000,
                energy_wh: 900
            })
        );
        assert_eq!(
            RULE.order(-3_600, Some(2_000), 900),
            None,
            "battery below 30 %"
        );
        assert_eq!(
            RULE.order(7_200, None, 900).map(|o| (o.side, o.energy_wh)),
            Some((Side::Buy, 1_800))
        );
        assert_eq!(RULE.order(3, None, 900), None, "under 1 Wh");
        let sell_only = TradingRule {
            buy_at_most: None,
            ..RULE
        };
        assert_eq!(sell_only.order(7_200, None, 900), None);
    }
}
