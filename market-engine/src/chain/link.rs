//! A household replaces its custodial key by a wallet of its own (issue 14).
//!
//! The engine hands out a challenge: EIP-712 typed data `LinkWallet(address wallet, uint64
//! account, bytes32 nonce)` under the Settlement contract's own domain (its name, version,
//! chain id and address), for `eth_signTypedData_v4`, and — unless the wallet's account is
//! open already — the contract's `OpenAccount(address account)`. The household's wallet signs
//! both; the engine recovers the `LinkWallet` signer (it must be the wallet), checks the nonce
//! it issued for this account (single use, five minutes), and opens the wallet's account on
//! chain with the `OpenAccount` signature (`openAccountFor`: the contract checks that one,
//! ERC-1271 wallets included). From then on the account's batches, trade leaves and proofs use
//! the wallet, and the engine holds no key for it.
//!
//! Design: the `OpenAccount` signature alone would not do. Anyone can copy it from the
//! wallet's own opening transaction; linking that wallet to another engine account would then
//! let that account's bills be taken from the wallet (within its allowance). `LinkWallet`
//! names the account, so a signature links one wallet to one account of one community.
//! An account moves to a wallet only with nothing left at its custodial address (balance,
//! holds and pending withdrawal all zero in the books, which agree with the chain): the
//! custodial address's money would otherwise stay behind under a key the household can only
//! reach by exporting it — it withdraws that first.

use alloy::primitives::{Address, B256, Bytes, Signature};
use alloy::sol_types::{Eip712Domain, SolStruct};
use gridshare_contracts::SettlementClient;
use gridshare_contracts::chain::Chain;
use gridshare_contracts::settlement::ChainSettlement;
use serde_json::json;

use super::ChainSettler;
use crate::market::Market;

alloy::sol! {
    /// A wallet's consent to be the chain address of one account of the engine settling to
    /// this Settlement contract.
    struct LinkWallet {
        address wallet;
        uint64 account;
        bytes32 nonce;
    }
}

/// How long a challenge may be answered, ms.
pub const CHALLENGE_TTL_MS: u64 = 5 * 60 * 1000;

/// Why a wallet was not linked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A field of the request is wrong (the field, the message starting with its name).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// The account or the wallet cannot be linked now.
    #[error("{0}")]
    Conflict(String),
    /// The chain could not be asked (the node is away), or failed otherwise.
    #[error("{}", gridshare_contracts::household::describe(.0))]
    Chain(#[from] gridshare_contracts::chain::ChainError),
    /// The engine's database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The system gave no randomness for a challenge's nonce.
    #[error("no system randomness for a challenge")]
    NoRandomness,
}

/// A wallet's answer to its challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSignatures {
    /// The wallet.
    pub wallet: Address,
    /// The challenge's nonce.
    pub nonce: B256,
    /// Its signature of the challenge's `LinkWallet`.
    pub link_signature: Bytes,
    /// Its signature of `OpenAccount`, unless its account is open already.
    pub open_signature: Option<Bytes>,
}

/// A challenge issued: for `wallet`, answerable until `expires_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Issued {
    wallet: Address,
    nonce: B256,
    expires_ms: u64,
}

impl ChainSettler {
    /// The typed data a household's `wallet` signs to become `account`'s address.
    pub async fn link_challenge(
        &self,
        account: i64,
        wallet: Address,
        now_ms: u64,
    ) -> Result<serde_json::Value, LinkError> {
        let nonce = B256::from(rand_bytes()?);
        let (domain, open) = match self.handle() {
            super::ChainHandle::Embedded(s) => domain_and_open(s, wallet).await?,
            super::ChainHandle::Rpc(s) => domain_and_open(s, wallet).await?,
        };
        let expires_ms = now_ms + CHALLENGE_TTL_MS;
        self.challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                account,
                Issued {
                    wallet,
                    nonce,
                    expires_ms,
                },
            );
        let domain_json = json!({
            "name": domain.name.as_deref().unwrap_or_default(),
            "version": domain.version.as_deref().unwrap_or_default(),
            "chainId": domain.chain_id.map(|c| c.to::<u64>()),
            "verifyingContract": domain.verifying_contract.map(|a| format!("{a:#x}")),
        });
        let domain_type = json!([
            {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
        ]);
        Ok(json!({
            "wallet": format!("{wallet:#x}"),
            "nonce": format!("{nonce:#x}"),
            "expires_ms": expires_ms,
            "link": {
                "types": {
                    "EIP712Domain": domain_type,
                    "LinkWallet": [
                        {"name": "wallet", "type": "address"}, {"name": "account", "type": "uint64"},
                        {"name": "nonce", "type": "bytes32"},
                    ],
                },
                "primaryType": "LinkWallet",
                "domain": domain_json,
                "message": {"wallet": format!("{wallet:#x}"), "account": account, "nonce": format!("{nonce:#x}")},
            },
            "open": if open { serde_json::Value::Null } else { json!({
                "types": {
                    "EIP712Domain": domain_type,
                    "OpenAccount": [{"name": "account", "type": "address"}],
                },
                "primaryType": "OpenAccount",
                "domain": domain_json,
                "message": {"account": format!("{wallet:#x}")},
            })},
        }))
    }

    /// Links `wallet` as `account`'s address with the wallet's signatures of the challenge
    /// (`open_signature` needed unless its account is open on chain already).
    pub async fn link_wallet(
        &self,
        market: &Market,
        account: i64,
        signed: WalletSignatures,
        now_ms: u64,
    ) -> Result<(), LinkError> {
        let WalletSignatures {
            wallet,
            nonce,
            link_signature,
            open_signature,
        } = signed;
        let issued = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&account)
            .copied();
        match issued {
            Some(i) if i.nonce == nonce && i.wallet == wallet && now_ms <= i.expires_ms => {}
            _ => {
                return Err(LinkError::Invalid(
                    "nonce",
                    "nonce: not the challenge issued for this account and wallet, or expired \
                     (POST /api/v1/me/wallet/challenge again)"
                        .into(),
                ));
            }
        }
        let signature = Signature::try_from(link_signature.as_ref()).map_err(|e| {
            LinkError::Invalid(
                "link_signature",
                format!("link_signature: not a 65-byte signature: {e}"),
            )
        })?;
        let domain = match self.handle() {
            super::ChainHandle::Embedded(s) => domain_and_open(s, wallet).await?.0,
            super::ChainHandle::Rpc(s) => domain_and_open(s, wallet).await?.0,
        };
        let digest = LinkWallet {
            wallet,
            account: u64::try_from(account).map_err(|_| {
                LinkError::Conflict("only a household's account links a wallet".into())
            })?,
            nonce,
        }
        .eip712_signing_hash(&domain);
        let signer = signature
            .recover_address_from_prehash(&digest)
            .map_err(|e| LinkError::Invalid("link_signature", format!("link_signature: {e}")))?;
        if signer != wallet {
            return Err(LinkError::Invalid(
                "link_signature",
                format!(
                    "link_signature: signed by {signer:#x}, not by the wallet {wallet:#x} (sign the challenge's LinkWallet typed data with that wallet)"
                ),
            ));
        }
        let custody = self.custody();
        let ids = self.store.account_ids().await?;
        if let Some(other) = custody.account_of(wallet, ids)
            && other != account
        {
            return Err(LinkError::Conflict(format!(
                "the wallet {wallet:#x} is already another account's address"
            )));
        }
        let funds = market.funds(account).await;
        if funds.balance != 0
            || funds.held_by_bids != 0
            || funds.held_by_purchases != 0
            || funds.withdrawal_pending != 0
        {
            return Err(LinkError::Conflict(format!(
                "your custodial address {:#x} still holds your money (balance {}, held {}, withdrawal pending {}): withdraw it and let open bids and purchases settle first, then link the wallet",
                custody.address(account),
                funds.balance,
                funds.held_by_bids + funds.held_by_purchases,
                funds.withdrawal_pending
            )));
        }
        match self.handle() {
            super::ChainHandle::Embedded(s) => open_wallet(s, wallet, open_signature).await?,
            super::ChainHandle::Rpc(s) => open_wallet(s, wallet, open_signature).await?,
        }
        self.store
            .link_wallet(account, &format!("{wallet:#x}"), now_ms)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Conflict(m) => LinkError::Conflict(m),
                other => LinkError::Store(other),
            })?;
        custody.link(account, wallet);
        self.challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&account);
        tracing::info!(target: "chain", account, %wallet, "household linked its own wallet");
        Ok(())
    }
}

/// The contract's EIP-712 domain, and whether `wallet`'s account is open.
async fn domain_and_open<C: Chain>(
    s: &ChainSettlement<C>,
    wallet: Address,
) -> Result<(Eip712Domain, bool), LinkError> {
    let client = SettlementClient::new(s.chain(), s.address());
    let domain = client.eip712_domain().await?;
    let open = client.is_open(wallet).await?;
    Ok((domain, open))
}

/// Opens `wallet`'s account with its `OpenAccount` signature, sent by the operator, unless it
/// is open.
async fn open_wallet<C: Chain>(
    s: &ChainSettlement<C>,
    wallet: Address,
    signature: Option<Bytes>,
) -> Result<(), LinkError> {
    let client = SettlementClient::new(s.chain(), s.address());
    if client.is_open(wallet).await? {
        return Ok(());
    }
    let signature = signature.ok_or_else(|| {
        LinkError::Invalid(
            "open_signature",
            "open_signature: the wallet's account is not open on chain: sign the challenge's OpenAccount typed data too".into(),
        )
    })?;
    client
        .open_for(s.operator(), wallet, signature)
        .await
        .map_err(|e| match e {
            // A refusal is the signature's fault; a node that does not answer is not.
            gridshare_contracts::chain::ChainError::Reverted { .. } => LinkError::Invalid(
                "open_signature",
                format!(
                    "open_signature: the Settlement contract refused it: {}",
                    gridshare_contracts::household::describe(&e)
                ),
            ),
            other => LinkError::Chain(other),
        })?;
    Ok(())
}

fn rand_bytes() -> Result<[u8; 32], LinkError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut nonce = [0u8; 32];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| LinkError::NoRandomness)?;
    Ok(nonce)
}
