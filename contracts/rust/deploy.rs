//! Deploys the network token, the settlement contract and the meter staking contract from the
//! committed bytecode, on any [`Chain`].

use crate::bindings::{GridToken, MeterStaking, Settlement};
use crate::chain::{Chain, ChainError};
use alloy::primitives::{Address, Bytes, U256, address, hex};
use alloy::sol_types::{SolCall, SolConstructor};

/// Parameters of `MeterStaking`, fixed at deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StakingParams {
    /// Stake (network token units) a meter needs to sell and to earn rewards.
    pub min_stake: U256,
    /// Seconds between an unstake request and the withdrawal.
    pub unbonding_period: u64,
    /// Unix time (seconds) at which epoch 0 starts.
    pub genesis: u64,
    /// Epoch length, seconds.
    pub epoch_duration: u64,
    /// Seconds after an epoch during which its energy can be proven.
    pub proof_window: u64,
    /// Tokens emitted in epoch 0.
    pub initial_emission: U256,
    /// Epochs between halvings of the emission.
    pub halving_epochs: u64,
    /// Part of the stake a fraud proof takes, basis points.
    pub slash_bps: u16,
    /// Part of the slashed amount paid to the reporter, basis points.
    pub reporter_bps: u16,
    /// Ceiling of the reward per credited Wh (token units): emission above it returns to the
    /// treasury. See [`StakingParams::daily`] for how the default is chosen.
    pub max_reward_per_wh: U256,
}

impl StakingParams {
    /// A day-long epoch, a week of unbonding, 100 tokens minimum stake, 10 000 tokens emitted
    /// in the first epoch halving every 180 epochs, half the stake slashed, a tenth of that to
    /// the reporter, at most 0.5 token per credited kWh. Amounts assume 18 decimals.
    ///
    /// The ceiling is what keeps farming unprofitable: at the reference value of one token =
    /// the community's default grid fee of one kWh ([`REFERENCE_FEE_PER_KWH`] payment units),
    /// a kWh two colluding neighbours trade only to be credited earns at most half of the fee
    /// they pay for it.
    pub fn daily(genesis: u64) -> Self {
        let token = U256::from(10u64).pow(U256::from(18u64));
        Self {
            min_stake: token * U256::from(100u64),
            unbonding_period: 7 * 86_400,
            genesis,
            epoch_duration: 86_400,
            proof_window: 86_400,
            initial_emission: token * U256::from(10_000u64),
            halving_epochs: 180,
            slash_bps: 5_000,
            reporter_bps: 1_000,
            max_reward_per_wh: token / U256::from(2_000u64),
        }
    }

    /// [`StakingParams::daily`] with epochs of `epoch_s` seconds instead of a day (a demo's
    /// few minutes): the proof window is one epoch, the unbonding period seven, as for a day.
    pub fn with_epoch(genesis: u64, epoch_s: u64) -> Self {
        Self {
            epoch_duration: epoch_s,
            proof_window: epoch_s,
            unbonding_period: 7 * epoch_s,
            ..Self::daily(genesis)
        }
    }

    fn config(&self, treasury: Address, settlement: Address) -> MeterStaking::Config {
        MeterStaking::Config {
            minStake: self.min_stake,
            unbondingPeriod: self.unbonding_period,
            genesis: self.genesis,
            epochDuration: self.epoch_duration,
            proofWindow: self.proof_window,
            initialEmission: self.initial_emission,
            halvingEpochs: self.halving_epochs,
            slashBps: self.slash_bps,
            reporterBps: self.reporter_bps,
            maxRewardPerWh: self.max_reward_per_wh,
            treasury,
            settlement,
        }
    }
}

/// Parameters of `Settlement`, fixed at deployment (the treasury can be changed later through
/// the owner's timelock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlementParams {
    /// The community treasury account: fronts what debtors cannot pay, is repaid from their
    /// debt; `None`: the deployer.
    pub treasury: Option<Address>,
    /// Seconds between a withdrawal request (or a stricter allowance) and its effect; longer
    /// than the engine's settlement latency.
    pub withdrawal_delay: u32,
    /// Seconds between proposing a new operator, treasury or owner and its effect; longer
    /// than `withdrawal_delay`, so households can leave before a new operator key acts.
    pub governance_delay: u32,
    /// Operator allowance of an account that never set one, payment-token units per
    /// `default_period`.
    pub default_allowance: u128,
    /// Seconds.
    pub default_period: u32,
}

impl SettlementParams {
    /// Withdrawals after 6 hours (a slot settles within about 30 minutes of its end, retries
    /// included), governance changes after 3 days, and a default allowance of 5 000 000 units a
    /// day: 50 € at the engine's unit of 1/1 000 cent (`retail_per_kwh = 30000` is 0.30 €), five
    /// times a large household's daily consumption bought entirely at the retail tariff.
    /// Deploying for a token with another unit, pass `--default-allowance`.
    pub const fn standard() -> Self {
        Self {
            treasury: None,
            withdrawal_delay: 6 * 3_600,
            governance_delay: 3 * 86_400,
            default_allowance: 5_000_000,
            default_period: 86_400,
        }
    }

    /// Why the contract would refuse these parameters (it checks them too, `InvalidConfig`);
    /// checking first costs no transaction.
    pub fn validate(&self) -> Result<(), String> {
        if self.withdrawal_delay == 0 {
            return Err("the withdrawal delay must be at least a second".into());
        }
        if self.governance_delay <= self.withdrawal_delay {
            return Err(format!(
                "the governance delay ({} s) must be longer than the withdrawal delay ({} s), so \
                 households can leave before a new operator key acts",
                self.governance_delay, self.withdrawal_delay
            ));
        }
        if !(3_600..=30 * 86_400).contains(&self.default_period) {
            return Err(format!(
                "the default allowance period ({} s) must be between an hour and 30 days",
                self.default_period
            ));
        }
        if self.default_allowance >= 1 << 80 {
            return Err(format!(
                "the default allowance {} does not fit the contract's uint80",
                self.default_allowance
            ));
        }
        Ok(())
    }

    fn config(&self, deployer: Address) -> Result<Settlement::Config, ChainError> {
        self.validate().map_err(ChainError::Protocol)?;
        let default_allowance = alloy::primitives::Uint::<80, 2>::try_from(self.default_allowance)
            .map_err(|_| {
                ChainError::Protocol(format!(
                    "default allowance {} does not fit the contract's uint80",
                    self.default_allowance
                ))
            })?;
        Ok(Settlement::Config {
            treasury: self.treasury.unwrap_or(deployer),
            withdrawalDelay: self.withdrawal_delay,
            governanceDelay: self.governance_delay,
            defaultAllowance: default_allowance,
            defaultPeriod: self.default_period,
        })
    }
}

impl Default for SettlementParams {
    fn default() -> Self {
        Self::standard()
    }
}

/// The market engine's default grid fee per kWh traded, in payment-token units
/// (`grid_fee_per_kwh` in `market-engine.toml`): the reference against which
/// [`StakingParams::daily`]'s reward ceiling is set.
pub const REFERENCE_FEE_PER_KWH: u64 = 1_000;

/// Addresses of a deployed set of contracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deployment {
    /// The network token (stake and rewards).
    pub network_token: Address,
    /// The payment token settlement is denominated in.
    pub payment_token: Address,
    /// The settlement contract.
    pub settlement: Address,
    /// Meter registry, staking, rewards and fraud proofs.
    pub staking: Address,
}

impl Deployment {
    /// Deploys everything from `deployer`, who becomes the owner of settlement and staking
    /// (it appoints the verifiers), the treasury, and receives the network token's whole
    /// `supply`; settlement has [`SettlementParams::standard`] and credits its local sales to the staking contract. `payment_token` is an existing ERC-20 (a stablecoin on
    /// a real chain); `None` deploys a second `GridToken` with the same supply as a stand-in,
    /// for demos and tests.
    pub async fn deploy<C: Chain>(
        chain: &C,
        deployer: Address,
        operator: Address,
        payment_token: Option<Address>,
        supply: U256,
        params: &StakingParams,
    ) -> Result<Self, ChainError> {
        Self::deploy_with(
            chain,
            deployer,
            operator,
            payment_token,
            supply,
            params,
            &SettlementParams::standard(),
        )
        .await
    }

    /// [`Deployment::deploy`] with the settlement contract's own parameters.
    pub async fn deploy_with<C: Chain>(
        chain: &C,
        deployer: Address,
        operator: Address,
        payment_token: Option<Address>,
        supply: U256,
        params: &StakingParams,
        settlement_params: &SettlementParams,
    ) -> Result<Self, ChainError> {
        let token_args = GridToken::constructorCall {
            treasury: deployer,
            supply,
        };
        let network_token =
            create(chain, deployer, &GridToken::BYTECODE, token_args.clone()).await?;
        let payment_token = match payment_token {
            Some(address) => address,
            None => create(chain, deployer, &GridToken::BYTECODE, token_args).await?,
        };
        let settlement = create(
            chain,
            deployer,
            &Settlement::BYTECODE,
            Settlement::constructorCall {
                token: payment_token,
                owner_: deployer,
                operator_: operator,
                c: settlement_params.config(deployer)?,
            },
        )
        .await?;
        let staking = create(
            chain,
            deployer,
            &MeterStaking::BYTECODE,
            MeterStaking::constructorCall {
                token_: network_token,
                owner_: deployer,
                c: params.config(deployer, settlement),
            },
        )
        .await?;
        chain
            .send(
                deployer,
                Some(settlement),
                Bytes::from(Settlement::setSalesRecorderCall { recorder: staking }.abi_encode()),
            )
            .await?;
        Ok(Self {
            network_token,
            payment_token,
            settlement,
            staking,
        })
    }
}

async fn create<C: Chain, A: SolConstructor>(
    chain: &C,
    deployer: Address,
    bytecode: &Bytes,
    args: A,
) -> Result<Address, ChainError> {
    let mut data = bytecode.to_vec();
    data.extend_from_slice(&args.abi_encode());
    let outcome = chain.send(deployer, None, Bytes::from(data)).await?;
    outcome
        .contract_address
        .ok_or_else(|| ChainError::Protocol("deployment receipt without a contract address".into()))
}

/// The P256VERIFY precompile (EIP-7951; RIP-7212 on L2s).
pub const P256VERIFY: Address = address!("0000000000000000000000000000000000000100");

/// One valid P256VERIFY input: `sha256 ‖ r ‖ s ‖ x ‖ y` of the first committed reading
/// vector (`core/tests/vectors/reading-v1.json`).
const P256_PROBE: [u8; 160] = hex!(
    "eef64159237ee27b41bf58cd5eb166e56500ead71f0d67af5de9a3eb4b0615a7"
    "17dae86df2d5fd91abb57725afde796c341ff49257bd024557b57b37f3b64775"
    "376d5674477b879a36773d39fffc3a46e03ff42bf8cf25cb0db2a62a7f114a36"
    "b8c40dcabb653ce15fb38375b87b2b76746fb24c9faa326d9ec34eeffca661bf"
    "57ce689a0902fdd8fbcb73e30b9ba92153fddda8055d923090a9f9505a992daa"
);

/// Whether the chain has the P256VERIFY precompile. Without it the contracts still deploy,
/// but reject every signed reading (the call returns nothing), so rewards and fraud proofs
/// would be dead: check before deploying.
pub async fn p256_precompile_available<C: Chain>(chain: &C) -> Result<bool, ChainError> {
    let out = chain
        .call(Address::ZERO, P256VERIFY, Bytes::from_static(&P256_PROBE))
        .await?;
    Ok(out.len() == 32 && out[31] == 1 && out[..31].iter().all(|b| *b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlement_parameters_that_cannot_work_are_refused_before_deploying() {
        assert_eq!(SettlementParams::standard().validate(), Ok(()));
        let swapped = SettlementParams {
            withdrawal_delay: 7_200,
            governance_delay: 3_600,
            ..SettlementParams::standard()
        };
        assert!(
            swapped
                .validate()
                .is_err_and(|e| e.contains("longer than the withdrawal delay"))
        );
        let minute = SettlementParams {
            default_period: 60,
            ..SettlementParams::standard()
        };
        assert!(minute.validate().is_err());
        let huge = SettlementParams {
            default_allowance: 1 << 80,
            ..SettlementParams::standard()
        };
        assert!(huge.validate().is_err());
    }
}
