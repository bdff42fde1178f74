//! Test environments: the same contracts deployed on the embedded EVM and on anvil, with
//! named actors, plus signed-reading helpers built on `gridshare-core`'s meter key.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::local::PrivateKeySigner;
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::staking::{Sale, StakingClient, device_hash, text_id};
use gridshare_contracts::{
    Chain, ChainError, Deployment, EmbeddedChain, RpcChain, SettlementParams, StakingParams,
};
use gridshare_core::reading::{
    ClockSync, DeviceIdentity, KeyStatement, Measured, MeterId, MeterKey, PublicKey, Reading,
    SignedReading,
};
use gridshare_testbed::anvil::Anvil;
use ring::rand::SystemRandom;

/// anvil's first development key (public knowledge, from its default mnemonic).
const ANVIL_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Seconds between deployment and the start of epoch 0 in the tests.
pub(crate) const GENESIS_DELAY_S: u64 = 600;

/// One token with 18 decimals.
pub(crate) fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18u64))
}

/// A deployed set of contracts on one chain, and the people who use them.
pub(crate) struct Env<C> {
    pub(crate) chain: C,
    pub(crate) d: Deployment,
    pub(crate) deployer: Address,
    pub(crate) operator: Address,
    pub(crate) params: StakingParams,
    _anvil: Option<Anvil>,
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// Named actors: distinct addresses that hold tokens after [`Env::fund`].
pub(crate) fn actor(n: u8) -> Address {
    Address::repeat_byte(0xa0 + n)
}

pub(crate) async fn embedded() -> Env<EmbeddedChain> {
    let chain = EmbeddedChain::in_memory();
    let deployer = Address::repeat_byte(0xde);
    let operator = Address::repeat_byte(0x0e);
    deploy(chain, deployer, operator, None, None, test_params).await
}

/// The embedded chain deployed with the production defaults ([`StakingParams::daily`]).
pub(crate) async fn embedded_daily() -> Env<EmbeddedChain> {
    let chain = EmbeddedChain::in_memory();
    deploy(
        chain,
        Address::repeat_byte(0xde),
        Address::repeat_byte(0x0e),
        None,
        None,
        StakingParams::daily,
    )
    .await
}

/// Anvil deployed with the production defaults ([`StakingParams::daily`]).
pub(crate) async fn anvil_daily() -> Option<Env<RpcChain>> {
    anvil_with(StakingParams::daily).await
}

/// Parameters of the tests: epochs of a day, 1 000 tokens emitted halving every two epochs,
/// and a reward ceiling high enough that the split of the emission shows.
pub(crate) fn test_params(genesis: u64) -> StakingParams {
    StakingParams {
        min_stake: tokens(100),
        unbonding_period: 7 * 86_400,
        genesis,
        epoch_duration: 86_400,
        proof_window: 86_400,
        initial_emission: tokens(1_000),
        halving_epochs: 2,
        slash_bps: 5_000,
        reporter_bps: 1_000,
        max_reward_per_wh: tokens(1),
    }
}

/// The embedded chain with a clock that ignores the wall clock, for reproducible gas figures;
/// the settlement contract's default allowance is 50 000 000 a day (50 at the gas report's six
/// decimals, the standard default's 50 € in that unit).
pub(crate) async fn embedded_fixed_clock() -> Env<EmbeddedChain> {
    // 2026-01-01T00:00:00Z
    let chain = EmbeddedChain::with_fixed_clock(1_767_225_600);
    deploy_with(
        chain,
        Address::repeat_byte(0xde),
        Address::repeat_byte(0x0e),
        None,
        None,
        test_params,
        SettlementParams {
            default_allowance: 50_000_000,
            ..SettlementParams::standard()
        },
    )
    .await
}

/// Anvil at `GRIDSHARE_TEST_ANVIL_URL` (CI starts one), or one started here from
/// `contracts/node_modules` (`npm ci` in `contracts/` installs it), deployed with the tests'
/// parameters; `None` (reported) where this machine has neither. Tests on a shared node run one
/// at a time, because moving its clock affects everyone on it.
pub(crate) async fn anvil() -> Option<Env<RpcChain>> {
    anvil_with(test_params).await
}

async fn anvil_with(params: fn(u64) -> StakingParams) -> Option<Env<RpcChain>> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let key: PrivateKeySigner = ANVIL_KEY.parse().expect("anvil key");
    let deployer = key.address();
    let node = Anvil::start()?;
    let serial = if node.is_shared() {
        Some(SERIAL.lock().await)
    } else {
        None
    };
    let chain = RpcChain::connect(&node.url, Some(key)).expect("connect to anvil");
    let mut env = deploy(chain, deployer, deployer, Some(node), serial, params).await;
    env.operator = deployer;
    Some(env)
}

async fn deploy<C: Chain>(
    chain: C,
    deployer: Address,
    operator: Address,
    anvil: Option<Anvil>,
    serial: Option<tokio::sync::MutexGuard<'static, ()>>,
    params: fn(u64) -> StakingParams,
) -> Env<C> {
    deploy_with(
        chain,
        deployer,
        operator,
        anvil,
        serial,
        params,
        SettlementParams::standard(),
    )
    .await
}

async fn deploy_with<C: Chain>(
    chain: C,
    deployer: Address,
    operator: Address,
    anvil: Option<Anvil>,
    serial: Option<tokio::sync::MutexGuard<'static, ()>>,
    params: fn(u64) -> StakingParams,
    settlement: SettlementParams,
) -> Env<C> {
    chain
        .prepare_account(deployer)
        .await
        .expect("prepare deployer");
    let now = chain.timestamp().await.expect("timestamp");
    // Epoch 0 starts a little after deployment, so stake placed right away is bonded for it.
    let params = params(now + GENESIS_DELAY_S);
    let d = Deployment::deploy_with(
        &chain,
        deployer,
        operator,
        None,
        tokens(1_000_000_000),
        &params,
        &settlement,
    )
    .await
    .expect("deploy");
    // The deployer is also the community's verifier.
    StakingClient::new(&chain, d.staking)
        .set_verifier(deployer, deployer, true)
        .await
        .expect("appoint verifier");
    Env {
        chain,
        d,
        deployer,
        operator,
        params,
        _anvil: anvil,
        _serial: serial,
    }
}

impl<C: Chain> Env<C> {
    /// Gives `who` gas money, `amount` of both tokens, and approvals for both contracts, and
    /// opens its settlement account (as its key would).
    pub(crate) async fn fund(&self, who: Address, amount: U256) {
        self.chain
            .prepare_account(who)
            .await
            .expect("prepare account");
        self.chain
            .transact(who, self.d.settlement, Settlement::openAccountCall {})
            .await
            .expect("open account");
        for token in [self.d.network_token, self.d.payment_token] {
            self.chain
                .transact(
                    self.deployer,
                    token,
                    GridToken::transferCall {
                        to: who,
                        value: amount,
                    },
                )
                .await
                .expect("transfer");
            for spender in [self.d.settlement, self.d.staking] {
                self.chain
                    .transact(
                        who,
                        token,
                        GridToken::approveCall {
                            spender,
                            value: U256::MAX,
                        },
                    )
                    .await
                    .expect("approve");
            }
        }
    }

    /// Seconds between a withdrawal request (or a stricter allowance) and its effect.
    pub(crate) async fn withdrawal_delay(&self) -> u64 {
        u64::from(
            self.chain
                .view(self.d.settlement, Settlement::withdrawalDelayCall {})
                .await
                .expect("withdrawal delay"),
        )
    }

    /// Moves the clock past the withdrawal delay.
    pub(crate) async fn pass_withdrawal_delay(&self) {
        let delay = self.withdrawal_delay().await;
        self.chain.advance_time(delay).await.expect("advance");
    }

    /// The EIP-712 domain `contract` declares (EIP-5267 `eip712Domain`).
    pub(crate) async fn eip712_domain(&self, contract: Address) -> alloy::sol_types::Eip712Domain {
        // The same function in every OpenZeppelin EIP712 contract; GridToken's binding serves.
        let d = self
            .chain
            .view(contract, GridToken::eip712DomainCall {})
            .await
            .expect("eip712Domain");
        alloy::sol_types::Eip712Domain::new(
            Some(d.name.into()),
            Some(d.version.into()),
            Some(d.chainId),
            Some(d.verifyingContract),
            None,
        )
    }

    /// `key`'s EIP-712 signature of `OpenAccount(key's address)` for this settlement contract,
    /// as `openAccountFor` takes it (the library's helper, the one the engine uses).
    pub(crate) async fn open_signature(&self, key: &PrivateKeySigner) -> Bytes {
        gridshare_contracts::household::SettlementClient::new(&self.chain, self.d.settlement)
            .open_signature(key)
            .await
            .expect("sign OpenAccount")
    }

    pub(crate) async fn token_balance(&self, token: Address, who: Address) -> U256 {
        self.chain
            .view(token, GridToken::balanceOfCall { account: who })
            .await
            .expect("balanceOf")
    }

    pub(crate) fn staking(&self) -> StakingClient<&C> {
        StakingClient::new(&self.chain, self.d.staking)
    }

    /// Registers a meter with its signed registration for `owner` and stakes `stake` on it;
    /// not attested.
    pub(crate) async fn register_unattested(&self, owner: Address, meter: &TestMeter, stake: U256) {
        let sig = meter.registration(self, owner, false).await;
        self.staking()
            .register(owner, meter.id, (meter.x(), meter.y()), sig)
            .await
            .expect("register meter");
        if stake > U256::ZERO {
            self.staking()
                .stake(owner, meter.id, stake)
                .await
                .expect("stake");
        }
    }

    /// Registers, stakes, and has the deployer (the verifier) attest the meter at grid
    /// connection point `grid_point` with a 5 kW export capacity.
    pub(crate) async fn register(&self, owner: Address, meter: &TestMeter, stake: U256) {
        self.register_unattested(owner, meter, stake).await;
        self.attest(meter, &format!("gcp-{}", meter.name), 5_000)
            .await;
    }

    /// Alice (actor 1) and Bob (actor 2), funded, with attested meters staked at the minimum,
    /// and a funded reward pool.
    pub(crate) async fn neighbours(&self, seller: &str, buyer: &str) -> (TestMeter, TestMeter) {
        let (alice, bob) = (actor(1), actor(2));
        self.fund(alice, tokens(1_000)).await;
        self.fund(bob, tokens(1_000)).await;
        self.fund_rewards(tokens(100_000)).await;
        let (ma, mb) = (TestMeter::new(seller), TestMeter::new(buyer));
        self.register(alice, &ma, tokens(100)).await;
        self.register(bob, &mb, tokens(100)).await;
        (ma, mb)
    }

    /// The verifier attests `meter` (its test device) at `grid_point`.
    pub(crate) async fn attest(&self, meter: &TestMeter, grid_point: &str, export_w: u32) {
        self.staking()
            .attest(
                self.deployer,
                meter.id,
                (meter.x(), meter.y()),
                TestMeter::device(),
                export_w,
                export_w,
                text_id(grid_point).expect("gcp"),
            )
            .await
            .expect("attest");
    }

    /// The operator settles an empty batch whose sales were delivered at `at_ms`.
    pub(crate) async fn settle_sales(
        &self,
        batch: u64,
        at_ms: u64,
        sales: &[(&TestMeter, &TestMeter, u64)],
    ) {
        self.chain
            .transact(
                self.operator,
                self.d.settlement,
                Settlement::settleWithSalesCall {
                    batchId: batch,
                    root: B256::repeat_byte(0x77),
                    deltas: vec![],
                    deliveredAtMs: at_ms,
                    sales: sales
                        .iter()
                        .map(|(s, b, wh)| Sale {
                            seller: s.id,
                            buyer: b.id,
                            energyWh: *wh,
                        })
                        .collect(),
                },
            )
            .await
            .expect("settle with sales");
    }

    /// Lets the staking contract fund rewards from the treasury.
    pub(crate) async fn fund_rewards(&self, amount: U256) {
        self.chain
            .transact(
                self.deployer,
                self.d.network_token,
                GridToken::approveCall {
                    spender: self.d.staking,
                    value: U256::MAX,
                },
            )
            .await
            .expect("approve");
        self.chain
            .transact(
                self.deployer,
                self.d.staking,
                gridshare_contracts::bindings::MeterStaking::fundRewardsCall { amount },
            )
            .await
            .expect("fund");
    }

    /// Unix time (ms) inside epoch `epoch`, `offset_s` seconds after it starts.
    pub(crate) fn time_in_epoch(&self, epoch: u64, offset_s: u64) -> u64 {
        (self.params.genesis + epoch * self.params.epoch_duration + offset_s) * 1000
    }

    /// Moves the clock to just after epoch `epoch` ends (inside its proof window).
    pub(crate) async fn end_epoch(&self, epoch: u64) {
        let target = self.params.genesis + (epoch + 1) * self.params.epoch_duration + 10;
        let now = self.chain.timestamp().await.expect("timestamp");
        if target > now {
            self.chain
                .advance_time(target - now)
                .await
                .expect("advance");
        }
    }

    /// Moves the clock past epoch `epoch`'s proof window.
    pub(crate) async fn close_epoch(&self, epoch: u64) {
        let target = self.params.genesis
            + (epoch + 1) * self.params.epoch_duration
            + self.params.proof_window
            + 10;
        let now = self.chain.timestamp().await.expect("timestamp");
        if target > now {
            self.chain
                .advance_time(target - now)
                .await
                .expect("advance");
        }
    }
}

/// Expects a revert with a specific custom error.
pub(crate) fn revert_of<E: alloy::sol_types::SolInterface + std::fmt::Debug, T: std::fmt::Debug>(
    result: Result<T, ChainError>,
) -> E {
    let err = result.expect_err("expected a revert");
    err.decode::<E>()
        .unwrap_or_else(|| panic!("expected a custom error, got {err}"))
}

/// A meter with a fresh P-256 key, signing readings through `gridshare-core`.
pub(crate) struct TestMeter {
    pub(crate) name: String,
    pub(crate) id: B256,
    pub(crate) key: MeterKey,
    rng: SystemRandom,
}

impl TestMeter {
    pub(crate) fn new(name: &str) -> Self {
        let rng = SystemRandom::new();
        let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("generate"), &rng)
            .expect("key");
        let mut id = [0u8; 32];
        id[..name.len()].copy_from_slice(name.as_bytes());
        Self {
            name: name.into(),
            id: B256::from(id),
            key,
            rng,
        }
    }

    /// A meter whose public key has no zero byte, so registering it always costs the same
    /// calldata gas (for the gas report).
    pub(crate) fn new_stable(name: &str) -> Self {
        loop {
            let meter = Self::new(name);
            if meter.x().iter().chain(meter.y().iter()).all(|b| *b != 0) {
                return meter;
            }
        }
    }

    /// The device every test meter reads as (SunSpec model 1 identity).
    pub(crate) fn device() -> B256 {
        device_hash("Gridshare", "SIM-HYBRID-5K", "SN-TEST").expect("device")
    }

    /// A second meter with this one's name and a new key (a replaced device).
    pub(crate) fn with_name_of(other: &TestMeter) -> Self {
        Self::new(&other.name)
    }

    /// The key's signature registering this meter for `owner` (or rotating to this key).
    pub(crate) async fn registration<C: Chain>(
        &self,
        env: &Env<C>,
        owner: Address,
        rotation: bool,
    ) -> Bytes {
        self.statement_signature(env, owner, rotation, self).await
    }

    /// This key's signature registering `other`'s id for `owner`.
    pub(crate) async fn registration_for<C: Chain>(
        &self,
        env: &Env<C>,
        owner: Address,
        other: &TestMeter,
    ) -> Bytes {
        self.statement_signature(env, owner, false, other).await
    }

    async fn statement_signature<C: Chain>(
        &self,
        env: &Env<C>,
        owner: Address,
        rotation: bool,
        meter: &TestMeter,
    ) -> Bytes {
        let message = env
            .staking()
            .registration_message(meter.id, owner, rotation)
            .await
            .expect("registration message");
        let statement = KeyStatement {
            rotation,
            chain_id: u64::from_be_bytes(message[56..64].try_into().expect("8 bytes")),
            contract: env.d.staking.into_array(),
            meter_id: MeterId::new(meter.name.clone()).expect("meter id"),
            owner: owner.into_array(),
            nonce: u64::from_be_bytes(message[136..144].try_into().expect("8 bytes")),
        };
        assert_eq!(statement.encode().as_slice(), message.as_ref());
        Bytes::copy_from_slice(
            &self
                .key
                .sign_statement(&statement, &self.rng)
                .expect("sign")
                .0,
        )
    }

    pub(crate) fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    pub(crate) fn x(&self) -> B256 {
        B256::from(self.public().x())
    }

    pub(crate) fn y(&self) -> B256 {
        B256::from(self.public().y())
    }

    /// A reading with the given lifetime counters, everything else plausible.
    pub(crate) fn reading(
        &self,
        seq: u64,
        timestamp_ms: u64,
        import_wh: u64,
        export_wh: u64,
    ) -> Reading {
        Reading {
            meter_id: MeterId::new(self.name.clone()).expect("meter id"),
            device: DeviceIdentity::new("Gridshare", "SIM-HYBRID-5K", "SN-TEST").expect("device"),
            seq,
            timestamp_ms,
            clock: ClockSync::Synchronised,
            import_wh: Measured::ok(import_wh),
            export_wh: Measured::ok(export_wh),
            battery_charge_wh: Measured::not_implemented(),
            battery_discharge_wh: Measured::not_implemented(),
            power_w: Measured::ok(-1_000),
            soc_bp: Measured::not_implemented(),
            flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
        }
    }

    /// Signs until the signature has no zero byte, so its calldata cost (16 gas per non-zero
    /// byte, 4 per zero byte) does not vary with ECDSA's random nonce.
    pub(crate) fn sign_stable(&self, reading: Reading) -> (Bytes, Bytes) {
        loop {
            let (encoded, sig) = self.sign(reading.clone());
            if sig.iter().all(|b| *b != 0) {
                return (encoded, sig);
            }
        }
    }

    /// Signs and returns (encoding, signature) as contract arguments.
    pub(crate) fn sign(&self, reading: Reading) -> (Bytes, Bytes) {
        let signed: SignedReading = self.key.sign(reading, &self.rng).expect("sign");
        (
            Bytes::copy_from_slice(&signed.encoded()),
            Bytes::copy_from_slice(&signed.signature.0),
        )
    }
}

/// Runs a test body on both backends: `mod name { embedded, anvil }`.
#[macro_export]
macro_rules! on_both_chains {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::harness::embedded().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn anvil() {
                if let Some(env) = $crate::harness::anvil().await {
                    super::$name(env).await;
                }
            }
        }
    )*};
}
