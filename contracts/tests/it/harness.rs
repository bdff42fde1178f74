//! Test environments: the same contracts deployed on the embedded EVM and on anvil, with
//! named actors, plus signed-reading helpers built on `gridshare-core`'s meter key.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::signers::local::PrivateKeySigner;
use gridshare_contracts::bindings::{GridToken, MeterStaking};
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::{Chain, ChainError, Deployment, EmbeddedChain, RpcChain, StakingParams};
use gridshare_core::reading::{
    ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, PublicKey, Reading, SignedReading,
};
use gridshare_testbed::anvil::Anvil;
use ring::rand::SystemRandom;

/// anvil's first development key (public knowledge, from its default mnemonic).
const ANVIL_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

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
    deploy(chain, deployer, operator, None, None).await
}

/// The embedded chain with a clock that ignores the wall clock, for reproducible gas figures.
pub(crate) async fn embedded_fixed_clock() -> Env<EmbeddedChain> {
    // 2026-01-01T00:00:00Z
    let chain = EmbeddedChain::with_fixed_clock(1_767_225_600);
    deploy(
        chain,
        Address::repeat_byte(0xde),
        Address::repeat_byte(0x0e),
        None,
        None,
    )
    .await
}

/// Anvil at `GRIDSHARE_TEST_ANVIL_URL` (CI starts one), or one started here from
/// `contracts/node_modules` (`npm ci` in `contracts/` installs it); `None` (reported) where
/// this machine has neither. Tests on a shared node run one at a time, because moving its
/// clock affects everyone on it.
pub(crate) async fn anvil() -> Option<Env<RpcChain>> {
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
    let mut env = deploy(chain, deployer, deployer, Some(node), serial).await;
    env.operator = deployer;
    Some(env)
}

async fn deploy<C: Chain>(
    chain: C,
    deployer: Address,
    operator: Address,
    anvil: Option<Anvil>,
    serial: Option<tokio::sync::MutexGuard<'static, ()>>,
) -> Env<C> {
    chain
        .prepare_account(deployer)
        .await
        .expect("prepare deployer");
    let now = chain.timestamp().await.expect("timestamp");
    let params = StakingParams {
        min_stake: tokens(100),
        unbonding_period: 7 * 86_400,
        genesis: now,
        epoch_duration: 86_400,
        proof_window: 86_400,
        initial_emission: tokens(1_000),
        halving_epochs: 2,
        slash_bps: 5_000,
        reporter_bps: 1_000,
    };
    let d = Deployment::deploy(
        &chain,
        deployer,
        operator,
        None,
        tokens(1_000_000_000),
        &params,
    )
    .await
    .expect("deploy");
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
    /// Gives `who` gas money, `amount` of both tokens, and approvals for both contracts.
    pub(crate) async fn fund(&self, who: Address, amount: U256) {
        self.chain
            .prepare_account(who)
            .await
            .expect("prepare account");
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

    pub(crate) async fn token_balance(&self, token: Address, who: Address) -> U256 {
        self.chain
            .view(token, GridToken::balanceOfCall { account: who })
            .await
            .expect("balanceOf")
    }

    /// Registers a meter with `key` for `owner` and stakes `stake` on it.
    pub(crate) async fn register(&self, owner: Address, meter: &TestMeter, stake: U256) {
        self.chain
            .transact(
                owner,
                self.d.staking,
                MeterStaking::registerMeterCall {
                    meterId: meter.id,
                    keyX: meter.x(),
                    keyY: meter.y(),
                },
            )
            .await
            .expect("register meter");
        if stake > U256::ZERO {
            self.chain
                .transact(
                    owner,
                    self.d.staking,
                    MeterStaking::stakeCall {
                        meterId: meter.id,
                        amount: stake,
                    },
                )
                .await
                .expect("stake");
        }
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
