//! Automatic trading rules: "sell my surplus at no less than X, buy what I need at no more than
//! Y, keep the battery above Z %". Every few seconds, for the next slot whose gate is still open,
//! each meter with a rule gets at most one order, sized from a forecast — the meter's average
//! net grid power over the last slot's length of its own signed counters (persistence, the
//! usual baseline for very short-term forecasts) — and, for a bid, no larger than the
//! account's available funds pay for.

use std::sync::Arc;
use std::time::Duration;

use gridshare_core::market::Side;
use tokio::sync::watch;

use crate::market::{Market, MarketError, NewOrder, OrderSide};
use crate::pipeline::now_ms;
use crate::store::{Store, TradingRule};

/// Power samples averaged for the forecast when a meter has no two counter readings yet.
const FALLBACK_SAMPLES: u32 = 5;

/// The order a rule places for a meter whose recent average grid power is `avg_w` (positive =
/// import) and whose battery is at `soc_bp`, for a slot of `slot_s` seconds — or none. The rule
/// itself is `core`'s [`gridshare_core::market::TradingRule`], which the simulator runs too.
pub fn order_for(
    rule: &TradingRule,
    avg_w: i64,
    soc_bp: Option<u16>,
    slot: u64,
    slot_s: u32,
) -> Option<NewOrder> {
    let price_rule = gridshare_core::market::TradingRule {
        sell_at_least: rule.sell_at_least,
        buy_at_most: rule.buy_at_most,
        keep_battery_above_bp: rule.keep_battery_above_bp,
    };
    let order = price_rule.order(avg_w, soc_bp, slot_s)?;
    Some(NewOrder {
        account: rule.account_id,
        meter: rule.meter_id.clone(),
        slot,
        side: match order.side {
            Side::Sell => OrderSide::Sell,
            Side::Buy => OrderSide::Buy,
        },
        price_per_kwh: order.price_per_kwh,
        energy_wh: order.energy_wh,
    })
}

/// Places the rules' orders until `stop` turns true: a round every tenth of a slot, between one
/// and three seconds apart.
pub async fn run(market: Arc<Market>, store: Store, mut stop: watch::Receiver<bool>) {
    let slot_s = market.community().calendar.slot_length_s();
    let every = Duration::from_secs(u64::from(slot_s / 10).clamp(1, 3));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
        trade_once(&market, &store, now).await;
    }
}

/// One round at time `now`: each rule's order for the next slot whose gate closes far enough
/// ahead for the order to arrive in time. Returns the number of orders placed.
pub async fn trade_once(market: &Market, store: &Store, now: i64) -> usize {
    let calendar = market.community().calendar;
    let Some(current) = calendar.slot_delivering_at(now) else {
        return 0;
    };
    let Some(slot) = (current + 1..current + 4)
        .find(|s| calendar.slot(*s).is_ok_and(|d| d.gate_closure > now + 2))
    else {
        return 0;
    };
    let rules = match store.rules().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "autotrade", "{e}");
            return 0;
        }
    };
    let mut placed = 0;
    for rule in rules {
        match place(market, store, &rule, slot, now, calendar.slot_length_s()).await {
            Ok(true) => placed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(target: "autotrade", meter = %rule.meter_id, slot, "no order: {e}")
            }
        }
    }
    placed
}

async fn place(
    market: &Market,
    store: &Store,
    rule: &TradingRule,
    slot: u64,
    now: i64,
    slot_s: u32,
) -> Result<bool, MarketError> {
    if store.has_order(&rule.meter_id, slot).await? {
        return Ok(false);
    }
    let Some(avg_w) = store
        .recent_grid_power(&rule.meter_id, u64::from(slot_s) * 1000, FALLBACK_SAMPLES)
        .await?
    else {
        return Ok(false);
    };
    let soc = store.latest_soc(&rule.meter_id).await?;
    let Some(mut order) = order_for(rule, avg_w, soc, slot, slot_s) else {
        return Ok(false);
    };
    if order.side == OrderSide::Buy {
        // Buy no more than the account's available funds pay for at the rule's price.
        let available = u64::try_from(market.available(rule.account_id).await).unwrap_or(0);
        let affordable =
            u64::try_from(u128::from(available) * 1000 / u128::from(order.price_per_kwh.max(1)))
                .unwrap_or(u64::MAX);
        if affordable == 0 {
            // Not an error of the engine's: the household has to pay in. Quiet, since the
            // rule is looked at every few seconds.
            tracing::debug!(
                target: "autotrade",
                meter = %rule.meter_id,
                slot,
                need_wh = order.energy_wh,
                "no bid: no funds available"
            );
            return Ok(false);
        }
        order.energy_wh = order.energy_wh.min(affordable);
    }
    market.submit(&order, now).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> TradingRule {
        TradingRule {
            meter_id: "home-01".into(),
            account_id: 7,
            sell_at_least: Some(12_000),
            buy_at_most: Some(25_000),
            keep_battery_above_bp: Some(5_000),
        }
    }

    #[test]
    fn surplus_is_sold_and_need_is_bought_at_the_rule_prices() {
        let sell = order_for(&rule(), -2_000, Some(9_000), 4, 900).unwrap();
        assert_eq!(
            (sell.side, sell.price_per_kwh, sell.energy_wh),
            (OrderSide::Sell, 12_000, 500)
        );
        let buy = order_for(&rule(), 1_200, None, 4, 900).unwrap();
        assert_eq!(
            (buy.side, buy.price_per_kwh, buy.energy_wh),
            (OrderSide::Buy, 25_000, 300)
        );
    }

    #[test]
    fn a_low_battery_keeps_its_surplus_and_missing_prices_mean_no_order() {
        assert!(order_for(&rule(), -2_000, Some(4_999), 4, 900).is_none());
        let only_buy = TradingRule {
            sell_at_least: None,
            ..rule()
        };
        assert!(order_for(&only_buy, -2_000, None, 4, 900).is_none());
        assert!(order_for(&rule(), 0, None, 4, 900).is_none());
    }
}
