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
//! [`Community::open_slot`] opens a [`SlotMarket`] with the community's [`Mechanism`]; the
//! engine and the simulator submit, amend and cancel through it and call
//! [`SlotMarket::close_gate`] at gate closure, which yields a [`GateClosure`].
//!
//! - **Continuous double auction** ([`ContinuousBook`], [`ContinuousKind::TwoSided`]):
//!   an incoming order sweeps the other side from the best price while prices cross, with
//!   price-time priority, and trades at the **resting** order's limit (pay-as-bid): against
//!   a resting ask the seller receives its ask and fees are added for the buyer; against a
//!   resting bid the buyer pays its bid and fees are deducted for the seller. Partial fills
//!   rest; [`ContinuousBook::amend`] keeps priority only when the energy shrinks at the same
//!   price; [`ContinuousBook::close_gate`] expires what is left.
//! - **Call auction** ([`CallAuction`], [`clear_call_auction`]): orders collect until gate
//!   closure and clear once at ONE uniform price per slot (pay-as-clear). Bids are ranked by
//!   price descending, asks ascending, equal prices by submission sequence then order id.
//!   The price range chosen is the one where the most energy can trade **between different
//!   owners** — at price `p`, `min(D, S, D + S − max_o (D_o + S_o))` with `D`, `S` the bid
//!   and ask energy willing to trade at `p` and `D_o`, `S_o` owner `o`'s part of it — bounded
//!   by a marginal ask and a marginal bid; the [`PriceRule`] — midpoint, k-factor (k = 0.5
//!   by default), Power TAC's k-factor with a seller margin cap, marginal bid (GSy-e),
//!   marginal ask — picks the price in it, rounded down. Each side then fills that volume in
//!   priority order, except that an owner on both sides never holds more than can be paired
//!   with others, and fills are paired without self-trades. [`CallAuction`] states the
//!   rules, proves the formula and lists the guarantees.
//! - **One-sided pay-as-offer** ([`ContinuousKind::PayAsOffer`]): sellers post offers; a bid
//!   takes the cheapest offers and never rests; the seller receives its offer and the buyer
//!   pays offer + fees.
//!
//! In every mechanism a preference pass (preferred partner; green-only bids with green asks)
//! runs before the standard pass. A pair never trades when both orders have the same owner
//! (self-trade prevention), when a green-only bid meets an ask that is not green, or when the
//! grid fees on its path would take the buyer above or the seller below its limit; such
//! orders rest (continuous) or stay unmatched (call auction). Preferences shape the pairing,
//! not the uniform price.
//!
//! # What is guaranteed when an owner is on both sides
//!
//! A household with a battery may offer to sell at a high price and to buy at a low one in
//! the same slot, and an aggregator may do both for many homes. Its two orders never trade
//! with each other, and that must not cost its neighbours trades:
//!
//! - **Continuous double auction:** after every operation no bid and ask of *different
//!   owners* that could trade with each other rest in the book — an arriving order sweeps
//!   every crossing resting order, skipping its own owner's without stopping. Bids and asks of
//!   one owner may rest crossed.
//! - **Call auction:** it trades the most energy between different owners that any single
//!   price allows (without preferences, and with grid fees that fit the margins at the
//!   price), and after clearing no unmatched bid and ask of different owners could trade with
//!   each other *at the clearing price*. It does **not** promise that no crossed pair of
//!   different owners is left: with one price for everybody that can be impossible.
//!
//! Worked through with 1 kWh orders and the midpoint rule (the issue that set these rules):
//!
//! 1. Bids 30 (owner 2) and 20 (owner 3); asks 10 (owner 1) and 10 (owner 3, later). Between
//!    10 and 20 all four orders are willing: `D = S = 2`, owner 3 holds 2, so `V = 2` kWh;
//!    above 20 only 1. The range is `[10, 20]`, the price 15. In priority order bid 30 would
//!    take ask 10 of owner 1 and leave owner 3 alone with itself; instead, since owner 3
//!    holds all that remains to pair, bid 30 takes owner 3's ask and owner 3's bid takes
//!    owner 1's: 2 000 Wh at 15 (pairing in priority order and skipping the self-trade traded
//!    1 000 Wh).
//! 2. Owner 1 bids 30 and asks 10; owner 2 asks 25. Below 25 only owner 1 is willing on
//!    both sides (`V = 0`); from 25 to 30 owner 1 can buy from owner 2 (`V = 1`). Price 27:
//!    owner 1 buys 1 kWh from owner 2; its own ask stays unmatched. (The owner-blind walk
//!    paired owner 1 with itself, priced at 20 and traded nothing.)
//! 3. Add owner 3 bidding 12. Now `V = 1` on `[10, 12]` (owner 3 buys from owner 1) and on
//!    `[25, 30]` (owner 1 buys from owner 2), 0 between: no price trades more than 1 kWh, and
//!    whichever is chosen leaves a crossed pair of different owners (bid 30 / ask 25, or
//!    bid 12 / ask 10) that cannot trade at that price. The owner-blind price is 20; 27 is
//!    nearer to it than 11, so owner 1 buys from owner 2 at 27; bid 12 and ask 10 stay
//!    unmatched, and bid 12 is below 27.
//!
//! ```
//! use gridshare_core::market::*;
//!
//! let community = Community {
//!     calendar: SlotCalendar::quarter_hourly(0),
//!     tariff: Tariff::flat(40, 5),
//!     imbalance: ImbalancePrices::default(),
//!     areas: AreaTree::new(FeeProfile::Free, AccountId(900)).unwrap(),
//!     utility: AccountId(0),
//!     mechanism: Mechanism::CallAuction(PriceRule::Midpoint),
//! };
//! let terms = community.terms(96).unwrap();
//! let (o1, o2, o3, home) = (AccountId(1), AccountId(2), AccountId(3), AreaId(0));
//! let clear = |orders: &[Order]| {
//!     let entries: Vec<AuctionEntry> = orders
//!         .iter()
//!         .zip(0..)
//!         .map(|(&order, sequence)| AuctionEntry { order, sequence })
//!         .collect();
//!     clear_call_auction(&entries, &terms, PriceRule::Midpoint).unwrap()
//! };
//!
//! // 1. Two kWh at 15, not one.
//! let r = clear(&[
//!     Order::bid(OrderId(1), o2, home, 30, 1000),
//!     Order::bid(OrderId(2), o3, home, 20, 1000),
//!     Order::ask(OrderId(3), o1, home, 10, 1000),
//!     Order::ask(OrderId(4), o3, home, 10, 1000),
//! ]);
//! assert_eq!((r.clearing_price, r.traded_wh()), (Some(15), 2000));
//!
//! // 2. Owner 1 buys from owner 2 at 27.
//! let book = [
//!     Order::bid(OrderId(1), o1, home, 30, 1000),
//!     Order::ask(OrderId(2), o1, home, 10, 1000),
//!     Order::ask(OrderId(3), o2, home, 25, 1000),
//! ];
//! let r = clear(&book);
//! assert_eq!((r.clearing_price, r.traded_wh()), (Some(27), 1000));
//! assert_eq!((r.trades[0].buyer, r.trades[0].seller), (o1, o2));
//!
//! // 3. With owner 3 bidding 12: still 1 kWh, and a crossed pair that cannot trade at 27.
//! let mut book = book.to_vec();
//! book.push(Order::bid(OrderId(4), o3, home, 12, 1000));
//! let r = clear(&book);
//! assert_eq!((r.clearing_price, r.traded_wh()), (Some(27), 1000));
//! let left: Vec<OrderId> = r.unmatched.iter().map(|u| u.order).collect();
//! assert_eq!(left, [OrderId(4), OrderId(2)]);
//! ```
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
//! **Rounding rule** (see [`SlotFees::price`]): each market's fee is first a rate
//! per kWh rounded down to a whole price unit (a constant fee already is one); every amount
//! is then `floor(energy_wh × rate_per_kwh / 1000)` — the anchored side's amount and each
//! fee amount — and the side opposite the anchor is derived: buyer-anchored,
//! `seller = buyer − Σ fees` (the seller gets the sub-unit remainders); seller-anchored,
//! `buyer = seller + Σ fees` (the buyer keeps them). Hence `buyer_pays == seller_receives +
//! Σ fees` exactly for every trade, no buyer pays more than `floor(energy × bid / 1000)`, no
//! seller receives less than `floor(energy × ask / 1000)`, and a slot's [`settle_slot`]
//! netting sums to zero. Imbalances with the utility are floored the same way.
//!
//! For example, 1 500 Wh sold at 10 per kWh across markets charging 1, 2 and 1 per kWh:
//! the seller receives `floor(1500 × 10 / 1000) = 15`, the fees are `1 + 3 + 1 = 5`
//! (each `floor(1500 × f / 1000)`), and the buyer pays `15 + 5 = 20`.
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
//!
//! # Sharing instead of trading
//!
//! A community that shares rather than trades (EU collective self-consumption) splits each
//! slot's local generation among its members by an allocation key with [`share_slot`]; the
//! allocation comes out as [`Trade`]s at the community's price, so [`settle_slot`] and the KPIs
//! treat it like auction trades.

mod accounts;
mod book;
mod call;
mod delivery;
mod fees;
mod kpi;
mod names;
mod netting;
mod order;
mod rule;
mod sharing;
mod slot;
mod slot_market;
mod tariff;
mod terms;
mod trade;

pub use book::{
    ContinuousBook, ContinuousKind, LEVEL_BYTES_ESTIMATE, RESTING_ORDER_BYTES, RestingOrder,
    Submitted,
};
pub use call::{
    AuctionEntry, CallAuction, ClearingError, ClearingResult, MAX_SKIPS_PER_ORDER, PriceRule,
    Unmatched, clear_call_auction,
};
pub use delivery::{DeliveryError, MeterCounters, MeterDelivery, Position, positions};
pub use fees::{
    AreaError, AreaSpec, AreaTree, FeeError, FeeLeg, FeeLegs, FeeProfile, GridFee, MAX_AREA_DEPTH,
    MAX_FEE_BASIS_POINTS, MAX_PATH_MARKETS, MarketPath, PriceAnchor, SlotFees, TradeAmounts,
    amount_for,
};
pub use kpi::{
    CommunityKpis, HouseholdEnergy, HouseholdKpis, KpiError, PeriodKpis, Ratio, SlotKpis,
    SlotTotals, slot_kpis,
};
pub use names::{MechanismName, PriceRuleName, SharingKeyName};
pub use netting::{
    ImbalanceCharge, NetBalance, SettlementError, SlotSettlement, settle_slot, settle_slot_disputed,
};
pub use order::{
    AccountId, AreaId, MAX_BOOK_ORDERS, MAX_ORDER_ENERGY_WH, MeterId, Order, OrderError, OrderId,
    Preference, Side,
};
pub use rule::{RuleOrder, TradingRule};
pub use sharing::{
    Allocation, AllocationKey, MemberFlow, SharedSlot, SharingError, member_flows, share_slot,
};
pub use slot::{DeliverySlot, SlotCalendar, SlotError, SlotPhase, UnixSeconds};
pub use slot_market::{BookDepth, GateClosure, SlotMarket};
pub use tariff::{
    ImbalancePrices, SlotImbalancePrices, Tariff, TariffBand, TariffError, TimeProfile,
};
pub use terms::{Community, Mechanism, SharingRule, SlotTerms, TermsError};
pub use trade::{MatchPass, Trade};
