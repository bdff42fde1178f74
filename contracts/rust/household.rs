//! [`SettlementClient`]: the calls a household and the contract's owner make to `Settlement`
//! with their own keys — open the account, deposit, set the operator's allowance, request and
//! take a withdrawal, read the account; propose, activate or revoke an operator. The market
//! engine's batches go through [`crate::ChainSettlement`] instead.

use crate::bindings::{GridToken, Settlement};
use crate::chain::{Chain, ChainError, ChainExt, TxOutcome};
use alloy::primitives::{Address, U256};

/// Names a `Settlement` refusal (e.g. `TooEarly`), or the chain error as it is.
pub fn describe(err: &ChainError) -> String {
    match err.decode::<Settlement::SettlementErrors>() {
        Some(e) => format!("the settlement contract refused: {e:?}"),
        None => err.to_string(),
    }
}

/// An account in `Settlement`, as the contract holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountStatus {
    /// Opened by its key: batches may credit and debit it.
    pub open: bool,
    /// Available balance, payment-token units.
    pub balance: U256,
    /// Requested withdrawal not paid yet.
    pub pending_withdrawal: U256,
    /// When the pending withdrawal can be taken (unix seconds; 0: none).
    pub withdrawable_at: u64,
    /// Unpaid debits, collected from the next credits and deposits.
    pub debt: U256,
    /// The operator's allowance in force, per `allowance_period` seconds.
    pub allowance: U256,
    /// Seconds.
    pub allowance_period: U256,
    /// What the operator may still take in the current window.
    pub allowance_remaining: U256,
}

/// Typed calls to one deployed `Settlement`, each from the account that signs it.
#[derive(Debug, Clone)]
pub struct SettlementClient<C> {
    chain: C,
    settlement: Address,
}

impl<C: Chain> SettlementClient<C> {
    /// The contract at `settlement` on `chain`.
    pub fn new(chain: C, settlement: Address) -> Self {
        Self { chain, settlement }
    }

    /// The chain.
    pub fn chain(&self) -> &C {
        &self.chain
    }

    /// Opens `from`'s account.
    pub async fn open(&self, from: Address) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(from, self.settlement, Settlement::openAccountCall {})
            .await
    }

    /// The EIP-712 domain the contract declares (EIP-5267 `eip712Domain`: name, version, chain
    /// id, the contract itself), under which `OpenAccount` is signed.
    pub async fn eip712_domain(&self) -> Result<alloy::sol_types::Eip712Domain, ChainError> {
        // The same function in every OpenZeppelin EIP712 contract; GridToken's binding serves.
        let d = self
            .chain
            .view(self.settlement, GridToken::eip712DomainCall {})
            .await?;
        Ok(alloy::sol_types::Eip712Domain::new(
            Some(d.name.into()),
            Some(d.version.into()),
            Some(d.chainId),
            Some(d.verifyingContract),
            None,
        ))
    }

    /// `key`'s EIP-712 signature of `OpenAccount(key's address)` for this contract, as
    /// `openAccountFor` takes it: the account's consent to be credited and debited by batches.
    pub async fn open_signature(
        &self,
        key: &alloy::signers::local::PrivateKeySigner,
    ) -> Result<alloy::primitives::Bytes, ChainError> {
        use alloy::signers::SignerSync;
        use alloy::sol_types::SolStruct;
        alloy::sol! {
            struct OpenAccount { address account; }
        }
        let digest = OpenAccount {
            account: key.address(),
        }
        .eip712_signing_hash(&self.eip712_domain().await?);
        let signature = key
            .sign_hash_sync(&digest)
            .map_err(|e| ChainError::Protocol(format!("signing OpenAccount: {e}")))?;
        Ok(signature.as_bytes().to_vec().into())
    }

    /// Opens `account` with its `OpenAccount` signature, the transaction sent by `from`
    /// (anyone: the signature is the account's consent).
    pub async fn open_for(
        &self,
        from: Address,
        account: Address,
        signature: alloy::primitives::Bytes,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                from,
                self.settlement,
                Settlement::openAccountForCall { account, signature },
            )
            .await
    }

    /// Whether `account` is open (batches may credit and debit it).
    pub async fn is_open(&self, account: Address) -> Result<bool, ChainError> {
        self.chain
            .view(self.settlement, Settlement::isOpenCall { account })
            .await
    }

    /// Deposits `amount` payment-token units from `from` to its own account (opening it),
    /// approving the contract first if its token allowance is short.
    pub async fn deposit(&self, from: Address, amount: U256) -> Result<TxOutcome, ChainError> {
        self.approve(from, amount).await?;
        self.chain
            .transact(from, self.settlement, Settlement::depositCall { amount })
            .await
    }

    /// Lets the contract take `amount` payment-token units from `from` (approving without
    /// limit when its token allowance is short).
    pub async fn approve(&self, from: Address, amount: U256) -> Result<(), ChainError> {
        let token = self
            .chain
            .view(self.settlement, Settlement::paymentTokenCall {})
            .await?;
        let approved = self
            .chain
            .view(
                token,
                GridToken::allowanceCall {
                    owner: from,
                    spender: self.settlement,
                },
            )
            .await?;
        if approved < amount {
            self.chain
                .transact(
                    from,
                    token,
                    GridToken::approveCall {
                        spender: self.settlement,
                        value: U256::MAX,
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Sets how much the operator may take from `from` per `period` seconds (an hour, a day,
    /// a week or 30 days; `amount` a round figure m × 10^e with m < 2^32).
    pub async fn set_allowance(
        &self,
        from: Address,
        amount: u128,
        period: u32,
    ) -> Result<TxOutcome, ChainError> {
        let amount = alloy::primitives::Uint::<80, 2>::try_from(amount)
            .map_err(|_| ChainError::Protocol(format!("allowance {amount} exceeds uint80")))?;
        self.chain
            .transact(
                from,
                self.settlement,
                Settlement::setAllowanceCall { amount, period },
            )
            .await
    }

    /// Asks to withdraw `amount`, payable after the contract's withdrawal delay.
    pub async fn request_withdrawal(
        &self,
        from: Address,
        amount: U256,
    ) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(
                from,
                self.settlement,
                Settlement::requestWithdrawalCall { amount },
            )
            .await
    }

    /// Takes the pending withdrawal back into the balance.
    pub async fn cancel_withdrawal(&self, from: Address) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(from, self.settlement, Settlement::cancelWithdrawalCall {})
            .await
    }

    /// Pays out `from`'s pending withdrawal (less any debt); returns what was paid.
    pub async fn withdraw(&self, from: Address) -> Result<(U256, TxOutcome), ChainError> {
        let out = self
            .chain
            .transact(from, self.settlement, Settlement::withdrawCall {})
            .await?;
        let paid = out
            .logs
            .iter()
            .find_map(|log| {
                use alloy::sol_types::SolEvent;
                Settlement::Withdrawn::decode_log_data(&log.data).ok()
            })
            .map_or(U256::ZERO, |e| e.amount);
        Ok((paid, out))
    }

    /// `account` as the contract holds it.
    pub async fn account(&self, account: Address) -> Result<AccountStatus, ChainError> {
        let s = self.settlement;
        let open = self
            .chain
            .view(s, Settlement::isOpenCall { account })
            .await?;
        let balance = self
            .chain
            .view(s, Settlement::balanceOfCall { account })
            .await?;
        let w = self
            .chain
            .view(s, Settlement::withdrawalOfCall { account })
            .await?;
        let debt = self
            .chain
            .view(s, Settlement::debtOfCall { account })
            .await?;
        let a = self
            .chain
            .view(s, Settlement::allowanceOfCall { account })
            .await?;
        Ok(AccountStatus {
            open,
            balance,
            pending_withdrawal: U256::from(w.amount),
            withdrawable_at: w.readyAt,
            debt,
            allowance: a.amount,
            allowance_period: a.period,
            allowance_remaining: a.remaining,
        })
    }

    /// Owner: proposes `operator`, who may take over after the governance delay; returns when.
    pub async fn propose_operator(
        &self,
        from: Address,
        operator: Address,
    ) -> Result<(u64, TxOutcome), ChainError> {
        let out = self
            .chain
            .transact(
                from,
                self.settlement,
                Settlement::proposeOperatorCall {
                    operator_: operator,
                },
            )
            .await?;
        let ready_at = out
            .logs
            .iter()
            .find_map(|log| {
                use alloy::sol_types::SolEvent;
                Settlement::OperatorChangeProposed::decode_log_data(&log.data).ok()
            })
            .map_or(0, |e| e.readyAt);
        Ok((ready_at, out))
    }

    /// Makes the proposed operator the operator once its delay has passed (anyone may).
    pub async fn activate_operator(&self, from: Address) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(from, self.settlement, Settlement::activateOperatorCall {})
            .await
    }

    /// Owner: removes the operator at once (settlement stops, no money moves).
    pub async fn revoke_operator(&self, from: Address) -> Result<TxOutcome, ChainError> {
        self.chain
            .transact(from, self.settlement, Settlement::revokeOperatorCall {})
            .await
    }

    /// The operator key (zero while revoked).
    pub async fn operator(&self) -> Result<Address, ChainError> {
        self.chain
            .view(self.settlement, Settlement::operatorCall {})
            .await
    }
}
