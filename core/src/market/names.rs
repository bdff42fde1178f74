//! The names a community's mechanism, call-auction price rule and sharing key go by in the
//! files people write — the engine's `[market]` settings (and the rows it stores of them) and
//! the simulator's scenarios — kebab-case in TOML and JSON. One spelling for both, so that a
//! street's scenario and its engine's settings name a market the same way.

use super::call::PriceRule;
use serde::{Deserialize, Serialize};

/// How a slot trades: the name of a [`Mechanism`](super::Mechanism).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MechanismName {
    /// Uniform-price call auction at gate closure.
    Call,
    /// Continuous double auction, pay-as-bid.
    Continuous,
    /// One-sided: sellers' offers fill buyers at the offer price.
    PayAsOffer,
    /// No orders: after delivery, local generation is shared among the members by an
    /// allocation key at the community's price (EU collective self-consumption).
    Sharing,
}

/// How a sharing community splits its local generation: the name of an
/// [`AllocationKey`](super::AllocationKey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharingKeyName {
    /// In proportion to each member's net consumption in the slot (the French default).
    #[default]
    Proportional,
    /// Static shares per member (the engine's `sharing_shares`, a scenario's `share_weight`).
    Fixed,
}

/// How a call auction sets its price within the crossing range: the name of a [`PriceRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriceRuleName {
    /// Halfway between the marginal bid and ask.
    Midpoint,
    /// `k` of the way from the marginal ask to the marginal bid.
    KFactor,
    /// The marginal bid.
    MarginalBid,
    /// The marginal ask.
    MarginalAsk,
    /// As `k-factor`, with the sellers' margin over the marginal ask capped (Power TAC's
    /// seller-margin cap).
    KFactorCapped,
}

impl PriceRuleName {
    /// The rule this name stands for, with `k` and the sellers' margin cap (both in basis
    /// points) where it takes them.
    #[must_use]
    pub fn rule(self, k_basis_points: u16, seller_max_margin_basis_points: u16) -> PriceRule {
        match self {
            Self::Midpoint => PriceRule::Midpoint,
            Self::KFactor => PriceRule::KFactor {
                basis_points: k_basis_points,
            },
            Self::MarginalBid => PriceRule::MarginalBid,
            Self::MarginalAsk => PriceRule::MarginalAsk,
            Self::KFactorCapped => PriceRule::KFactorCapped {
                basis_points: k_basis_points,
                seller_max_margin_basis_points,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kebab_case_and_name_their_rules() {
        let name: MechanismName = serde_json::from_str("\"pay-as-offer\"").unwrap();
        assert_eq!(name, MechanismName::PayAsOffer);
        let rule: PriceRuleName = serde_json::from_str("\"k-factor-capped\"").unwrap();
        assert_eq!(
            rule.rule(5_000, 500),
            PriceRule::KFactorCapped {
                basis_points: 5_000,
                seller_max_margin_basis_points: 500
            }
        );
        assert_eq!(
            PriceRuleName::KFactor.rule(2_500, 500),
            PriceRule::KFactor {
                basis_points: 2_500
            }
        );
        let err = serde_json::from_str::<SharingKeyName>("\"equal\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected `proportional` or `fixed`"),
            "{err}"
        );
    }
}
