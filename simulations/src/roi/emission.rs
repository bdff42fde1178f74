//! The network token's emission schedule and minimum stake, read from the contracts'
//! deployment parameters: [`gridshare_contracts::StakingParams::daily`], the very parameters
//! the market engine deploys `MeterStaking` with (`market-engine/src/chain.rs`). When the
//! deployment changes, the calculator follows; nothing here restates a number.

use alloy::primitives::U256;
use gridshare_contracts::StakingParams;
use serde::Serialize;

/// The network token's decimals (`GridToken` is an OpenZeppelin ERC-20: 18).
const TOKEN_DECIMALS: i32 = 18;

/// What `MeterStaking` emits and asks for, in whole tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EmissionSchedule {
    /// Tokens emitted in epoch 0.
    pub initial_tokens_per_epoch: f64,
    /// Epochs between halvings: epoch `e` emits `initial >> (e / halving_epochs)`.
    pub halving_epochs: u64,
    /// Epoch length, seconds.
    pub epoch_s: u64,
    /// The stake a meter needs to earn rewards, tokens.
    pub min_stake_tokens: f64,
    /// Where these figures come from.
    pub source: &'static str,
}

fn tokens(units: U256) -> f64 {
    // Two steps keep the precision: whole tokens exactly, then the fraction.
    let one = U256::from(10u64).pow(U256::from(TOKEN_DECIMALS.unsigned_abs()));
    let whole: u128 = (units / one).saturating_to();
    let frac: u128 = (units % one).saturating_to();
    #[allow(clippy::cast_precision_loss, reason = "display and projection only")]
    let t = whole as f64 + frac as f64 / 10f64.powi(TOKEN_DECIMALS);
    t
}

impl EmissionSchedule {
    /// The schedule the engine deploys.
    #[must_use]
    pub fn deployed() -> Self {
        let p = StakingParams::daily(0);
        Self {
            initial_tokens_per_epoch: tokens(p.initial_emission),
            halving_epochs: p.halving_epochs.max(1),
            epoch_s: p.epoch_duration.max(1),
            min_stake_tokens: tokens(p.min_stake),
            source: "gridshare_contracts::StakingParams::daily (MeterStaking's deployment by the engine)",
        }
    }

    /// Tokens emitted network-wide in each of `years` years from the household's start,
    /// `start_epoch` epochs after genesis.
    #[must_use]
    pub fn tokens_per_year(&self, start_epoch: u64, years: u32) -> Vec<f64> {
        let per_year = (365 * 86_400 / self.epoch_s).max(1);
        (0..u64::from(years))
            .map(|y| {
                (0..per_year)
                    .map(|i| {
                        let e = start_epoch + y * per_year + i;
                        let halvings = i32::try_from(e / self.halving_epochs).unwrap_or(i32::MAX);
                        // `>>` on the integer amount; beyond 256 halvings it is 0.
                        if halvings >= 256 {
                            0.0
                        } else {
                            self.initial_tokens_per_epoch * 0.5f64.powi(halvings)
                        }
                    })
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_halves_as_the_contract_does() {
        let s = EmissionSchedule {
            initial_tokens_per_epoch: 100.0,
            halving_epochs: 365,
            epoch_s: 86_400,
            min_stake_tokens: 1.0,
            source: "test",
        };
        let y = s.tokens_per_year(0, 3);
        assert_eq!(y, vec![36_500.0, 18_250.0, 9_125.0]);
        let deployed = EmissionSchedule::deployed();
        assert!(deployed.initial_tokens_per_epoch > 0.0 && deployed.min_stake_tokens > 0.0);
    }
}
