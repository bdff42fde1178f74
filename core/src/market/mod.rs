//! Delivery slots, order books, double auctions, grid fees, delivery and netting.
//!
//! The market engine and the grid simulator both drive this module, so a slot cleared in a
//! simulation is cleared exactly as it would be on the street. Everything is integer:
//! energy in Wh, prices in payment-token smallest units per kWh, amounts in token units.
//!
//! # A slot's life
//!
//! A [`SlotCalendar`] cuts time into [`DeliverySlot`]s (15 minutes by default). Each slot has
//! an order window, a **gate closure** (orders at or after it are rejected with
//! [`OrderError::GateClosed`]), delivery, and settlement. A [`Community`] gives each slot its
//! [`SlotTerms`]: the timeline, the tariff band, the grid fees, the imbalance prices.
//!
//! Orders are limit bids and asks ([`Order`]); there is no order without a price limit, and
//! every limit must lie in the slot's band `[feed-in tariff, retail tariff]` — beyond it the
//! utility, counterparty of last resort, is the better deal anyway.
//!
//! # Mechanisms
//!
//! - **Continuous double auction** ([`ContinuousBook`], [`ContinuousKind::TwoSided`]):
//!   price-time priority; a trade happens at the resting order's limit (pay-as-bid).
//! - **Call auction** ([`CallAuction`], [`clear_call_auction`]): at gate closure, one uniform
//!   price per slot (pay-as-clear) chosen by a [`PriceRule`] — midpoint, k-factor (k = 0.5 by
//!   default), marginal bid or marginal ask — from the volume-maximising marginal pair, within
//!   `[max(marginal ask, feed-in), min(marginal bid, retail)]`. Ties are broken by price, then
//!   submission sequence, then order id.
//! - **One-sided pay-as-offer** ([`ContinuousKind::PayAsOffer`]): sellers post offers; a buyer
//!   takes the cheapest offers; the seller receives its offer and the buyer pays offer + fees.
//!
//! In every mechanism, a preference pass (preferred partner; green-only bids with green asks)
//! runs before the standard pass, and an owner never trades with itself.
//!
//! # Grid fees and the rounding rule
//!
//! Areas form a tree ([`AreaTree`]: house → street → feeder → substation). A trade crosses
//! every market from the buyer's area up to the lowest common ancestor and down to the
//! seller's area, and each charges its [`GridFee`]: a constant per kWh, or a percentage of the
//! seller's receipt. A trade is priced on one side's rate ([`PriceAnchor`]): the buyer's
//! (pay-as-bid against a resting bid, pay-as-clear) or the seller's (a resting ask,
//! pay-as-offer).
//!
//! **Rounding rule:** every amount is `floor(energy_wh × rate_per_kwh / 1000)` and every fee
//! amount is floored; the side opposite the anchor is derived by subtraction (buyer-anchored:
//! `seller = buyer − Σ fees`, the seller gets the sub-unit remainders) or addition
//! (seller-anchored: `buyer = seller + Σ fees`, the buyer keeps them). Hence
//! `buyer_pays == seller_receives + Σ fees` exactly for every trade, and a slot's
//! [`settle_slot`] netting sums to zero.
//!
//! # Worked example (Grid Singularity's grid-fee scenario)
//!
//! A load in house 1 (neighbourhood 1) bids 30 ct/kWh; a PV in house 2 (neighbourhood 2)
//! offers 10 ct/kWh. Neighbourhood markets charge 1 ct/kWh, the grid market above them 2.
//! The trade crosses house 1 → N1 → grid → N2 → house 2 and pays 4 ct/kWh of fees.
//!
//! - Pay-as-bid against the resting bid, or pay-as-clear at the marginal bid: the load pays
//!   30, the PV receives 30 − 4 = 26. Rates by market: 30 / 30 / 29 / 27 / 26.
//! - Pay-as-offer: the PV receives 10, the load pays 10 + 4 = 14: 14 / 14 / 13 / 11 / 10.
//!
//! ```
//! use gridshare_core::market::*;
//!
//! let operator = AccountId(900);
//! let per_kwh = |ct| FeeProfile::PerKwh(TimeProfile::constant(ct));
//! let mut areas = AreaTree::new(per_kwh(2), operator).unwrap();
//! let n1 = areas.add_area(areas.root(), per_kwh(1), operator).unwrap();
//! let n2 = areas.add_area(areas.root(), per_kwh(1), operator).unwrap();
//! let house1 = areas.add_area(n1, FeeProfile::Free, operator).unwrap();
//! let house2 = areas.add_area(n2, FeeProfile::Free, operator).unwrap();
//! let community = Community {
//!     calendar: SlotCalendar::quarter_hourly(0),
//!     tariff: Tariff::flat(30, 0),
//!     imbalance: ImbalancePrices::default(),
//!     areas,
//!     utility: AccountId(0),
//!     mechanism: Mechanism::ContinuousDoubleAuction,
//! };
//! let terms = community.terms(100).unwrap();
//! let now = terms.slot.gate_closure - 60;
//!
//! let mut book = ContinuousBook::new(terms, ContinuousKind::TwoSided);
//! let (load, pv) = (AccountId(1), AccountId(2));
//! book.submit(Order::bid(OrderId(1), load, house1, 30, 1000), now).unwrap();
//! let trades = book.submit(Order::ask(OrderId(2), pv, house2, 10, 1000), now).unwrap();
//!
//! let t = trades[0];
//! assert_eq!((t.amounts.buyer_pays, t.amounts.seller_receives, t.amounts.fees), (30, 26, 4));
//! assert_eq!(t.amounts.buyer_pays, t.amounts.seller_receives + t.amounts.fees);
//! let rates: Vec<u64> = book
//!     .terms()
//!     .fees
//!     .market_rates(house1, house2, t.anchor)
//!     .unwrap()
//!     .into_iter()
//!     .map(|(_, rate)| rate)
//!     .collect();
//! assert_eq!(rates, [30, 30, 29, 27, 26]);
//! ```
//!
//! # Delivery, netting, KPIs
//!
//! After delivery, [`settle_slot`] takes each meter's cumulative counters at slot start and
//! end ([`MeterDelivery`]), compares the net energy with the account's traded position, and
//! settles the deviation with the utility (shortfall at retail, surplus at feed-in, or the
//! configured [`ImbalancePrices`]). The result is one net amount per account — households,
//! fee recipients and the utility — summing to zero: the input of on-chain settlement.
//! [`slot_kpis`] and [`PeriodKpis`] report volume, prices, self-sufficiency,
//! self-consumption, savings against the utility and fees collected.

mod book;
mod call;
mod delivery;
mod fees;
mod kpi;
mod netting;
mod order;
mod slot;
mod tariff;
mod terms;
mod trade;

pub use book::{ContinuousBook, ContinuousKind, RESTING_ORDER_BYTES, RestingOrder, Submitted};
pub use call::{
    AuctionEntry, CallAuction, ClearingError, ClearingResult, MAX_SKIPS_PER_ORDER, PriceRule,
    Unmatched, clear_call_auction,
};
pub use delivery::{DeliveryError, MeterCounters, MeterDelivery, Position, positions};
pub use fees::{
    AreaError, AreaTree, FeeError, FeeLeg, FeeLegs, FeeProfile, GridFee, MAX_AREA_DEPTH,
    MAX_FEE_BASIS_POINTS, MAX_PATH_MARKETS, MarketPath, PriceAnchor, SlotFees, TradeAmounts,
    amount_for,
};
pub use kpi::{
    CommunityKpis, HouseholdEnergy, HouseholdKpis, KpiError, PeriodKpis, Ratio, SlotKpis,
    slot_kpis,
};
pub use netting::{ImbalanceCharge, NetBalance, SettlementError, SlotSettlement, settle_slot};
pub use order::{
    AccountId, AreaId, MAX_ORDER_ENERGY_WH, MeterId, Order, OrderError, OrderId, Preference, Side,
};
pub use slot::{DeliverySlot, SlotCalendar, SlotError, SlotPhase, UnixSeconds};
pub use tariff::{
    ImbalancePrices, SlotImbalancePrices, Tariff, TariffBand, TariffError, TimeProfile,
};
pub use terms::{Community, Mechanism, SlotTerms, TermsError};
pub use trade::{MatchPass, Trade};
