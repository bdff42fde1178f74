//! `MeterStaking` seen from an operator, a verifier and a watcher: every call they make, typed,
//! on any [`Chain`]. The `gridshare` command, the watcher and the tests all go through here.

use crate::bindings::{GridToken, MeterStaking, Settlement};
use crate::chain::{Chain, ChainError, ChainExt, TxOutcome};
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::sol_types::{SolEvent, SolValue};

/// A meter's state on chain.
pub type MeterRecord = MeterStaking::Meter;
/// A meter's standing in one epoch.
pub type EpochCredit = MeterStaking::EpochCredit;
/// One local sale, as settlement reports it.
pub type Sale = Settlement::Sale;

/// Length of the device identity in a reading (manufacturer, model, serial, 32 bytes each).
pub const DEVICE_IDENTITY_LEN: usize = 96;

/// The attested device hash: keccak256 of manufacturer ‖ model ‖ serial, each UTF-8 and
/// zero-padded to 32 bytes as the signed reading encodes them (bytes 65..161).
pub fn device_hash(manufacturer: &str, model: &str, serial: &str) -> Result<B256, String> {
    let mut bytes = [0u8; DEVICE_IDENTITY_LEN];
    for (i, (name, text)) in [
        ("manufacturer", manufacturer),
        ("model", model),
        ("serial", serial),
    ]
    .into_iter()
    .enumerate()
    {
        let t = text.as_bytes();
        if t.is_empty() || t.len() > 32 {
            return Err(format!(
                "device {name} must be 1 to 32 bytes, got {}",
                t.len()
            ));
        }
        bytes[i * 32..i * 32 + t.len()].copy_from_slice(t);
    }
    Ok(keccak256(bytes))
}

/// A text id (meter id, grid connection point) as bytes32: ASCII, right-padded with zeros.
pub fn text_id(text: &str) -> Result<B256, String> {
    let t = text.as_bytes();
    if t.is_empty() || t.len() > 32 {
        return Err(format!(
            "`{text}` must be 1 to 32 bytes to fit a bytes32 id"
        ));
    }
    let mut out = [0u8; 32];
    out[..t.len()].copy_from_slice(t);
    Ok(B256::from(out))
}

/// What a fraud report commits to first: `keccak256(abi.encode(reporter, keccak256(first),
/// keccak256(second)))`.
pub fn fraud_commitment(reporter: Address, first: &[u8], second: &[u8]) -> B256 {
    keccak256((reporter, keccak256(first), keccak256(second)).abi_encode())
}

/// The staking contract's revert, named (e.g. `NotAttested(..)`), or the error as it is.
pub fn describe(err: &ChainError) -> String {
    match err.decode::<MeterStaking::MeterStakingErrors>() {
        Some(e) => format!("the staking contract refused: {e:?}"),
        None => err.to_string(),
    }
}

/// Typed calls to one deployed `MeterStaking`.
#[derive(Debug, Clone)]
pub struct StakingClient<C> {
    chain: C,
    staking: Address,
}

impl<C: Chain> StakingClient<C> {
    /// The contract at `staking` on `chain`.
    pub fn new(chain: C, staking: Address) -> Self {
        Self { chain, staking }
    }

    /// The chain.
    pub fn chain(&self) -> &C {
        &self.chain
    }

    /// The contract's address.
    pub fn address(&self) -> Address {
        self.staking
    }

    /// The network token staked and paid out.
    pub async fn token(&self) -> Result<Address, ChainError> {
        self.chain
            .view(self.staking, MeterStaking::tokenCall {})
            .await
    }

    /// The exact bytes the meter key must sign to register `meter_id` for `owner` (or, with
    /// `rotation`, to become its new key).
    pub async fn registration_message(
        &self,
        meter_id: B256,
        owner: Address,
        rotation: bool,
    ) -> Result<Bytes, ChainError> {
        self.chain
            .view(
                self.staking,
                MeterStaking::registrationMessageCall {
                    meterId: meter_id,
                    owner_: owner,
                    rotation,
                },
            )
            .await
    }

    /// Registers a meter for `owner` with its key's signature over the registration message.
    pub async fn register(
        &self,
        owner: Address,
        meter_id: B256,
        key: (B256, B256),
        signature: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::registerMeterCall {
                    meterId: meter_id,
                    keyX: key.0,
                    keyY: key.1,
                    signature,
                },
            )
            .await
    }

    /// Replaces the meter's key; the new key signs the rotation message.
    pub async fn rotate_key(
        &self,
        owner: Address,
        meter_id: B256,
        key: (B256, B256),
        signature: Bytes,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::rotateKeyCall {
                    meterId: meter_id,
                    keyX: key.0,
                    keyY: key.1,
                    signature,
                },
            )
            .await
    }

    /// The owner appoints `verifier` (or removes it).
    pub async fn set_verifier(
        &self,
        owner: Address,
        verifier: Address,
        allowed: bool,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::setVerifierCall { verifier, allowed },
            )
            .await
    }

    /// A verifier attests a meter it inspected.
    #[allow(clippy::too_many_arguments)]
    pub async fn attest(
        &self,
        verifier: Address,
        meter_id: B256,
        key: (B256, B256),
        device: B256,
        export_capacity_w: u32,
        import_capacity_w: u32,
        grid_point: B256,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                verifier,
                self.staking,
                MeterStaking::attestCall {
                    meterId: meter_id,
                    keyX: key.0,
                    keyY: key.1,
                    deviceHash: device,
                    exportCapacityW: export_capacity_w,
                    importCapacityW: import_capacity_w,
                    gridPoint: grid_point,
                },
            )
            .await
    }

    /// Approves the staking contract to take `owner`'s network tokens (once, unlimited).
    pub async fn approve(&self, owner: Address) -> Result<TxOutcome, ChainError> {
        let token = self.token().await?;
        self.chain
            .transact(
                owner,
                token,
                GridToken::approveCall {
                    spender: self.staking,
                    value: U256::MAX,
                },
            )
            .await
    }

    /// Adds to the meter's stake (approve first).
    pub async fn stake(
        &self,
        owner: Address,
        meter_id: B256,
        amount: U256,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::stakeCall {
                    meterId: meter_id,
                    amount,
                },
            )
            .await
    }

    /// Starts unbonding `amount` of the meter's stake.
    pub async fn unbond(
        &self,
        owner: Address,
        meter_id: B256,
        amount: U256,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::requestUnstakeCall {
                    meterId: meter_id,
                    amount,
                },
            )
            .await
    }

    /// Withdraws what has finished unbonding.
    pub async fn withdraw(&self, owner: Address, meter_id: B256) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::withdrawUnbondedCall { meterId: meter_id },
            )
            .await
    }

    /// Lets `delegate` prove and claim for the owner (zero revokes).
    pub async fn set_delegate(
        &self,
        owner: Address,
        meter_id: B256,
        delegate: Address,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::setDelegateCall {
                    meterId: meter_id,
                    delegate,
                },
            )
            .await
    }

    /// Retires the meter; its whole stake starts unbonding.
    pub async fn deregister(
        &self,
        owner: Address,
        meter_id: B256,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                owner,
                self.staking,
                MeterStaking::deregisterMeterCall { meterId: meter_id },
            )
            .await
    }

    /// Proves the meter's export from `first` (the last proven reading, or any signed one for
    /// the first proof) to `last`; returns the Wh credited in the epoch of `last`.
    pub async fn prove_epoch(
        &self,
        from: Address,
        meter_id: B256,
        first: (Bytes, Bytes),
        last: (Bytes, Bytes),
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                from,
                self.staking,
                MeterStaking::proveEpochCall {
                    meterId: meter_id,
                    first: first.0,
                    firstSig: first.1,
                    last: last.0,
                    lastSig: last.1,
                },
            )
            .await
    }

    /// Claims the meter's vested rewards through `through_epoch`; returns the amount paid.
    pub async fn claim(
        &self,
        from: Address,
        meter_id: B256,
        through_epoch: u64,
    ) -> Result<(U256, TxOutcome), ChainError> {
        let call = MeterStaking::claimRewardsCall {
            meterId: meter_id,
            throughEpoch: through_epoch,
        };
        let outcome = self.chain.transact(from, self.staking, call).await?;
        let paid = outcome
            .logs
            .iter()
            .filter(|log| log.address == self.staking)
            .find_map(|log| MeterStaking::RewardClaimed::decode_log_data(&log.data).ok())
            .map(|e| e.amount)
            .unwrap_or_default();
        Ok((paid, outcome))
    }

    /// Reports fraud: commits to the evidence, then reveals it in the next transaction (a
    /// later block), so a copy of the reveal pays nobody else. Returns the amount slashed.
    pub async fn report_fraud(
        &self,
        reporter: Address,
        first: (Bytes, Bytes),
        second: (Bytes, Bytes),
    ) -> Result<TxOutcome, ChainError> {
        let commitment = fraud_commitment(reporter, &first.0, &second.0);
        self.chain
            .transact(
                reporter,
                self.staking,
                MeterStaking::commitFraudCall { commitment },
            )
            .await?;
        self.chain
            .transact(
                reporter,
                self.staking,
                MeterStaking::proveFraudCall {
                    first: first.0,
                    firstSig: first.1,
                    second: second.0,
                    secondSig: second.1,
                },
            )
            .await
    }

    /// Everything the contract keeps about a meter (an all-zero record if unknown).
    pub async fn meter(&self, meter_id: B256) -> Result<MeterRecord, ChainError> {
        self.chain
            .view(self.staking, MeterStaking::meterCall { meterId: meter_id })
            .await
    }

    /// The meter's standing in `epoch`.
    pub async fn credit(&self, meter_id: B256, epoch: u64) -> Result<EpochCredit, ChainError> {
        self.chain
            .view(
                self.staking,
                MeterStaking::creditCall {
                    meterId: meter_id,
                    epoch,
                },
            )
            .await
    }

    /// What the owner could claim now through `through_epoch`.
    pub async fn claimable(&self, meter_id: B256, through_epoch: u64) -> Result<U256, ChainError> {
        self.chain
            .view(
                self.staking,
                MeterStaking::claimableCall {
                    meterId: meter_id,
                    throughEpoch: through_epoch,
                },
            )
            .await
    }

    /// The epoch a reading timestamp (ms) falls in.
    pub async fn epoch_of(&self, timestamp_ms: u64) -> Result<u64, ChainError> {
        self.chain
            .view(
                self.staking,
                MeterStaking::epochOfCall {
                    timestampMs: timestamp_ms,
                },
            )
            .await
    }

    /// (genesis, epoch duration, proof window), seconds.
    pub async fn schedule(&self) -> Result<(u64, u64, u64), ChainError> {
        let genesis = self
            .chain
            .view(self.staking, MeterStaking::genesisCall {})
            .await?;
        let epoch = self
            .chain
            .view(self.staking, MeterStaking::epochDurationCall {})
            .await?;
        let window = self
            .chain
            .view(self.staking, MeterStaking::proofWindowCall {})
            .await?;
        Ok((genesis, epoch, window))
    }

    /// The epoch running at the chain's latest block time (0 before genesis).
    pub async fn current_epoch(&self) -> Result<u64, ChainError> {
        let (genesis, epoch, _) = self.schedule().await?;
        let now = self.chain.timestamp().await?;
        Ok(now.saturating_sub(genesis) / epoch.max(1))
    }
}

/// Whether a revert is a given `MeterStaking` error (for callers that treat some as expected).
pub fn is_error(
    err: &ChainError,
    pred: impl Fn(&MeterStaking::MeterStakingErrors) -> bool,
) -> bool {
    err.decode::<MeterStaking::MeterStakingErrors>()
        .is_some_and(|e| pred(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_zero_padded_and_checked() {
        let id = text_id("home-07").expect("id");
        assert_eq!(&id[..7], b"home-07");
        assert!(id[7..].iter().all(|b| *b == 0));
        assert!(text_id("").is_err());
        assert!(text_id(&"x".repeat(33)).is_err());
        assert!(device_hash("Gridshare", "SIM", &"s".repeat(33)).is_err());
        assert_ne!(
            device_hash("Gridshare", "SIM", "SN-1").expect("h"),
            device_hash("Gridshare", "SIM", "SN-2").expect("h")
        );
    }

    #[test]
    fn a_commitment_names_its_reporter() {
        let (a, b) = (b"first".as_slice(), b"second".as_slice());
        assert_ne!(
            fraud_commitment(Address::repeat_byte(1), a, b),
            fraud_commitment(Address::repeat_byte(2), a, b)
        );
    }

    #[test]
    fn errors_are_named() {
        use alloy::sol_types::SolInterface;
        let err = ChainError::Reverted {
            data: Bytes::from(
                MeterStaking::MeterStakingErrors::NotAttested(MeterStaking::NotAttested {
                    meterId: B256::ZERO,
                })
                .abi_encode(),
            ),
        };
        assert!(describe(&err).contains("NotAttested"));
        assert!(is_error(&err, |e| matches!(
            e,
            MeterStaking::MeterStakingErrors::NotAttested(_)
        )));
    }
}
