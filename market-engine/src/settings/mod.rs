//! The community's market settings in their three forms: the `[market]` section of the config
//! file ([`MarketConfig`], also what the API shows), the form stored in the database for every
//! change the operator makes ([`StoredSettings`], versioned, in [`stored`]), and the `core`
//! [`Community`] they describe.

use gridshare_core::market::{
    AccountId, AllocationKey, AreaTree, Community, FeeProfile, ImbalancePrices, Mechanism,
    SharingRule, SlotCalendar, Tariff, TimeProfile,
};
pub use gridshare_core::market::{MechanismName, PriceRuleName, SharingKeyName};
use serde::{Deserialize, Serialize};

use crate::exchange::{GRID_OPERATOR, UTILITY};

pub mod stored;

pub use stored::{StoredSettings, StoredSettingsError};

/// One member's static share of a sharing community's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareEntry {
    /// The member's account id.
    pub account: u32,
    /// Its share of the injected energy, basis points (10 000 = all of it).
    pub basis_points: u32,
}

/// Market settings of the community.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// `call` (uniform price at gate closure), `continuous` (pay-as-bid), `pay-as-offer` or
    /// `sharing` (no orders: generation shared by an allocation key after delivery).
    pub mechanism: MechanismName,
    /// For `call`: `midpoint`, `k-factor`, `marginal-bid` or `marginal-ask`.
    pub price_rule: PriceRuleName,
    /// For `k-factor`: k in basis points (5000 = 0.5).
    pub k_basis_points: u16,
    /// For `k-factor-capped`: sellers' largest margin over the marginal ask, basis points of
    /// the ask (500 = 5 %, Power TAC's default).
    pub seller_max_margin_basis_points: u16,
    /// Slot length, seconds.
    pub slot_length_s: u32,
    /// The order window opens this long before delivery.
    pub window_opens_before_s: u32,
    /// Gate closure this long before delivery.
    pub gate_closure_before_s: u32,
    /// Settlement this long after delivery ends (readings must have arrived).
    pub settlement_after_s: u32,
    /// Retail tariff, token units per kWh: the price ceiling.
    pub retail_per_kwh: u64,
    /// Feed-in tariff, token units per kWh: the price floor.
    pub feed_in_per_kwh: u64,
    /// Grid fee of the community's market, token units per kWh.
    pub grid_fee_per_kwh: u64,
    /// For `sharing`: `proportional` (to each member's consumption in the slot) or `fixed`.
    pub sharing_key: SharingKeyName,
    /// For `sharing`: what a producer receives per kWh shared; unset: halfway between the
    /// feed-in and the retail tariff.
    pub sharing_price_per_kwh: Option<u64>,
    /// For `sharing` with the `fixed` key: each member's share, at most 10 000 basis points in
    /// total; a member capped at what it drew leaves the rest to the utility.
    pub sharing_shares: Vec<ShareEntry>,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            mechanism: MechanismName::Call,
            price_rule: PriceRuleName::KFactor,
            k_basis_points: 5000,
            seller_max_margin_basis_points: 500,
            slot_length_s: 900,
            window_opens_before_s: 86_400,
            gate_closure_before_s: 300,
            settlement_after_s: 900,
            retail_per_kwh: 30_000,
            feed_in_per_kwh: 8_000,
            grid_fee_per_kwh: 1_000,
            sharing_key: SharingKeyName::Proportional,
            sharing_price_per_kwh: None,
            sharing_shares: Vec::new(),
        }
    }
}

impl MarketConfig {
    /// The sharing rule of a `sharing` community, checked: a price inside the tariff band, and
    /// for the `fixed` key one share per member adding up to at most 100 %.
    fn sharing_rule(&self) -> Result<SharingRule, String> {
        let price_per_kwh = self
            .sharing_price_per_kwh
            .unwrap_or(self.feed_in_per_kwh / 2 + self.retail_per_kwh / 2);
        if price_per_kwh < self.feed_in_per_kwh || price_per_kwh > self.retail_per_kwh {
            return Err(format!(
                "market.sharing_price_per_kwh: {price_per_kwh} is outside the tariff band [{}, {}]; set a price between the feed-in and the retail tariff",
                self.feed_in_per_kwh, self.retail_per_kwh
            ));
        }
        let key = match self.sharing_key {
            SharingKeyName::Proportional => {
                if !self.sharing_shares.is_empty() {
                    return Err("market.sharing_shares: only used with sharing_key = \"fixed\"; remove them or set the key".into());
                }
                AllocationKey::ProportionalToConsumption
            }
            SharingKeyName::Fixed => {
                if self.sharing_shares.is_empty() {
                    return Err("market.sharing_shares: the fixed key needs each member's share, e.g. [{ account = 1, basis_points = 5000 }]".into());
                }
                let mut shares: Vec<(AccountId, u32)> = Vec::new();
                for e in &self.sharing_shares {
                    if shares.iter().any(|(a, _)| a.0 == e.account) {
                        return Err(format!(
                            "market.sharing_shares: account {} appears twice; give one share per member",
                            e.account
                        ));
                    }
                    shares.push((AccountId(e.account), e.basis_points));
                }
                let total: u64 = shares.iter().map(|(_, bp)| u64::from(*bp)).sum();
                if total > 10_000 {
                    return Err(format!(
                        "market.sharing_shares: the shares add up to {total} basis points, more than 10000 (100 %)"
                    ));
                }
                shares.sort_unstable();
                AllocationKey::Fixed(shares)
            }
        };
        Ok(SharingRule { key, price_per_kwh })
    }

    /// The `core` community these settings describe.
    pub fn community(&self) -> Result<Community, String> {
        let mechanism = match self.mechanism {
            MechanismName::Continuous => Mechanism::ContinuousDoubleAuction,
            MechanismName::PayAsOffer => Mechanism::PayAsOffer,
            MechanismName::Call => Mechanism::CallAuction(
                self.price_rule
                    .rule(self.k_basis_points, self.seller_max_margin_basis_points),
            ),
            MechanismName::Sharing => Mechanism::Sharing(self.sharing_rule()?),
        };
        if self.seller_max_margin_basis_points > 10_000 {
            return Err("market.seller_max_margin_basis_points: at most 10000 (100 %)".into());
        }
        if self.k_basis_points > 10_000 {
            return Err("market.k_basis_points: at most 10000 (k = 1)".into());
        }
        if self.feed_in_per_kwh > self.retail_per_kwh {
            return Err("market.feed_in_per_kwh must not exceed market.retail_per_kwh".into());
        }
        let calendar = SlotCalendar::new(
            0,
            self.slot_length_s,
            self.window_opens_before_s,
            self.gate_closure_before_s,
            self.settlement_after_s,
        )
        .map_err(|e| format!("market: {e}"))?;
        let fee = if self.grid_fee_per_kwh == 0 {
            FeeProfile::Free
        } else {
            FeeProfile::PerKwh(TimeProfile::constant(self.grid_fee_per_kwh))
        };
        let areas = AreaTree::new(fee, GRID_OPERATOR).map_err(|e| format!("market: {e}"))?;
        Ok(Community {
            calendar,
            tariff: Tariff::flat(self.retail_per_kwh, self.feed_in_per_kwh),
            imbalance: ImbalancePrices::default(),
            areas,
            utility: UTILITY,
            mechanism,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridshare_core::market::PriceRule;

    #[test]
    fn the_seller_margin_cap_is_a_price_rule() {
        let config: MarketConfig = toml::from_str(
            "price_rule = \"k-factor-capped\"\nseller_max_margin_basis_points = 300",
        )
        .unwrap();
        assert!(matches!(
            config.community().unwrap().mechanism,
            Mechanism::CallAuction(PriceRule::KFactorCapped {
                basis_points: 5000,
                seller_max_margin_basis_points: 300
            })
        ));
        let too_much = MarketConfig {
            seller_max_margin_basis_points: 10_001,
            ..config
        };
        assert!(
            too_much
                .community()
                .unwrap_err()
                .contains("seller_max_margin")
        );
    }

    #[test]
    fn a_sharing_community_is_checked() {
        let config: MarketConfig = toml::from_str(
            "mechanism = \"sharing\"\nsharing_key = \"fixed\"\nsharing_price_per_kwh = 19000\n\
             sharing_shares = [{ account = 2, basis_points = 4000 }, { account = 1, basis_points = 6000 }]",
        )
        .unwrap();
        assert_eq!(
            config.community().unwrap().mechanism,
            Mechanism::Sharing(SharingRule {
                key: AllocationKey::Fixed(vec![(AccountId(1), 6000), (AccountId(2), 4000)]),
                price_per_kwh: 19_000,
            })
        );
        // Unset price: halfway between the tariffs.
        let halfway = MarketConfig {
            mechanism: MechanismName::Sharing,
            ..MarketConfig::default()
        };
        assert!(matches!(
            halfway.community().unwrap().mechanism,
            Mechanism::Sharing(SharingRule {
                price_per_kwh: 19_000,
                key: AllocationKey::ProportionalToConsumption
            })
        ));
        for (bad, says) in [
            (
                MarketConfig {
                    sharing_price_per_kwh: Some(40_000),
                    ..config.clone()
                },
                "outside the tariff band",
            ),
            (
                MarketConfig {
                    sharing_shares: vec![ShareEntry {
                        account: 1,
                        basis_points: 10_001,
                    }],
                    ..config.clone()
                },
                "more than 10000",
            ),
            (
                MarketConfig {
                    sharing_shares: vec![
                        ShareEntry {
                            account: 1,
                            basis_points: 1
                        };
                        2
                    ],
                    ..config.clone()
                },
                "appears twice",
            ),
            (
                MarketConfig {
                    sharing_shares: Vec::new(),
                    ..config.clone()
                },
                "needs each member's share",
            ),
            (
                MarketConfig {
                    sharing_key: SharingKeyName::Proportional,
                    ..config.clone()
                },
                "only used with",
            ),
        ] {
            let e = bad.community().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_expected_ones() {
        let e = toml::from_str::<MarketConfig>("mechanism = \"dutch\"").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("call") && text.contains("pay-as-offer"),
            "{text}"
        );
    }
}
