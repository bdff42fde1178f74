//! A community's market rules, and the terms they give one delivery slot.

use super::call::PriceRule;
use super::fees::{AreaTree, SlotFees};
use super::order::{AccountId, MAX_ORDER_ENERGY_WH, Order, OrderError, OrderId, Side};
use super::sharing::AllocationKey;
use super::slot::{DeliverySlot, SlotCalendar, SlotError, UnixSeconds};
use super::tariff::{ImbalancePrices, SlotImbalancePrices, Tariff, TariffBand, TariffError};
use serde::{Deserialize, Serialize};

/// The matching mechanism a community chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mechanism {
    /// Continuous double auction, price-time priority, trade at the resting order's price.
    ContinuousDoubleAuction,
    /// Call auction at gate closure with one uniform price (pay-as-clear).
    CallAuction(PriceRule),
    /// One-sided: sellers post offers, buyers take them at the offer price plus fees.
    PayAsOffer,
    /// No auction and no orders: after delivery, each slot's local generation is shared among
    /// the members by an allocation key at the community's price ([`share_slot`]).
    ///
    /// [`share_slot`]: super::share_slot
    Sharing(SharingRule),
}

/// How a sharing community splits its local generation, and at what price.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SharingRule {
    /// The allocation key.
    pub key: AllocationKey,
    /// What a producer receives per kWh shared (the consumer pays it plus the grid fees of
    /// the path); within every slot's tariff band.
    pub price_per_kwh: u64,
}

/// Everything that fixes a community's market: time, tariffs, areas and fees, mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Community {
    /// How time is cut into slots.
    pub calendar: SlotCalendar,
    /// Retail and feed-in tariffs.
    pub tariff: Tariff,
    /// Prices for deviations (default: the tariffs).
    pub imbalance: ImbalancePrices,
    /// Grid hierarchy and fees.
    pub areas: AreaTree,
    /// The utility's account: counterparty of last resort in settlement.
    pub utility: AccountId,
    /// The matching mechanism.
    pub mechanism: Mechanism,
}

/// Why a slot's terms could not be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    /// The slot index is out of range.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The tariffs give no valid band in that slot.
    #[error(transparent)]
    Tariff(#[from] TariffError),
}

impl Community {
    /// The terms of slot `index`.
    pub fn terms(&self, index: u64) -> Result<SlotTerms, TermsError> {
        let slot = self.calendar.slot(index)?;
        let band = self.tariff.band(index)?;
        Ok(SlotTerms {
            slot,
            band,
            fees: self.areas.slot_fees(index),
            imbalance: self.imbalance.at(index, band),
            utility: self.utility,
        })
    }
}

/// The rules of one slot's market: its timeline, price band, fees and imbalance prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTerms {
    /// The slot's timeline.
    pub slot: DeliverySlot,
    /// Feed-in floor and retail ceiling.
    pub band: TariffBand,
    /// Every market's fee.
    pub fees: SlotFees,
    /// Deviation prices.
    pub imbalance: SlotImbalancePrices,
    /// The utility's account.
    pub utility: AccountId,
}

impl SlotTerms {
    /// Checks what an order must satisfy whatever the time: energy, price band, area, and
    /// that its worst-case amount fits in the token range.
    pub fn validate(&self, order: &Order) -> Result<(), OrderError> {
        let id = order.id;
        if order.energy_wh == 0 {
            return Err(OrderError::ZeroEnergy { order: id });
        }
        if order.energy_wh > MAX_ORDER_ENERGY_WH {
            return Err(OrderError::EnergyTooLarge {
                order: id,
                energy_wh: order.energy_wh,
                max_wh: MAX_ORDER_ENERGY_WH,
            });
        }
        if order.price_per_kwh > self.band.retail_per_kwh {
            return Err(OrderError::PriceAboveRetail {
                order: id,
                price_per_kwh: order.price_per_kwh,
                retail_per_kwh: self.band.retail_per_kwh,
            });
        }
        if order.price_per_kwh < self.band.feed_in_per_kwh {
            return Err(OrderError::PriceBelowFeedIn {
                order: id,
                price_per_kwh: order.price_per_kwh,
                feed_in_per_kwh: self.band.feed_in_per_kwh,
            });
        }
        if !self.fees.contains(order.area) {
            return Err(OrderError::UnknownArea {
                order: id,
                area: order.area,
            });
        }
        // A buyer never pays more than its limit and a seller never receives more than the
        // retail ceiling, so this bound covers every amount the order can produce.
        let bound = match order.side {
            Side::Buy => order.price_per_kwh,
            Side::Sell => self.band.retail_per_kwh,
        };
        if u64::try_from(u128::from(order.energy_wh) * u128::from(bound) / 1000).is_err() {
            return Err(OrderError::AmountOverflow {
                order: id,
                energy_wh: order.energy_wh,
                price_per_kwh: bound,
            });
        }
        Ok(())
    }

    /// Checks that an order, amend or cancel for `order` arriving at `now` is inside the
    /// order window.
    pub fn check_window(&self, order: OrderId, now: UnixSeconds) -> Result<(), OrderError> {
        if now < self.slot.order_window_opens {
            return Err(OrderError::WindowNotOpen {
                order,
                slot: self.slot.index,
                now,
                opens_at: self.slot.order_window_opens,
            });
        }
        if now >= self.slot.gate_closure {
            return Err(OrderError::GateClosed {
                order,
                slot: self.slot.index,
                now,
                gate_closure: self.slot.gate_closure,
            });
        }
        Ok(())
    }
}
