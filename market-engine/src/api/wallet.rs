//! A household's own wallet as its account's chain address: the EIP-712 challenge the wallet
//! signs, and the link made from its signatures (the rules are in [`crate::chain::link`]).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::ChainAddress;
use super::extract::{JsonBody, RateLimited};
use super::{ApiError, AppState};
use crate::pipeline::now_ms;

/// The routes of this resource.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me/wallet/challenge", post(wallet_challenge))
        .route("/api/v1/me/wallet", post(link_wallet))
}

/// `POST /api/v1/me/wallet/challenge`: what a household's own wallet signs to become its
/// account's chain address (see [`crate::chain::link`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WalletChallengeRequest {
    /// The wallet, `0x…`.
    address: String,
}

/// `POST /api/v1/me/wallet`: the wallet's signatures of its challenge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkWalletRequest {
    address: String,
    nonce: String,
    link_signature: String,
    open_signature: Option<String>,
}

/// `POST /api/v1/me/wallet`: the account's chain address is now the wallet.
#[derive(Serialize)]
struct WalletLinked {
    account: String,
    chain: ChainAddress,
}

fn settler_of(state: &AppState) -> Result<Arc<crate::chain::ChainSettler>, ApiError> {
    state.settler.clone().ok_or_else(|| {
        ApiError::NotFound("no chain is configured: there is no wallet to link".into())
    })
}

fn parse_field<T: std::str::FromStr>(
    field: &'static str,
    text: &str,
    what: &str,
) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.trim().parse().map_err(|e| ApiError::Invalid {
        field: field.into(),
        message: format!("{field}: not {what}: {e}"),
    })
}

async fn wallet_challenge(
    State(state): State<AppState>,
    RateLimited(account): RateLimited,
    JsonBody(body): JsonBody<WalletChallengeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let settler = settler_of(&state)?;
    let wallet: alloy::primitives::Address = parse_field(
        "address",
        &body.address,
        "an EVM address (0x and 40 hex digits)",
    )?;
    Ok(Json(
        settler.link_challenge(account.id, wallet, now_ms()).await?,
    ))
}

async fn link_wallet(
    State(state): State<AppState>,
    RateLimited(account): RateLimited,
    JsonBody(body): JsonBody<LinkWalletRequest>,
) -> Result<Json<WalletLinked>, ApiError> {
    let settler = settler_of(&state)?;
    let wallet: alloy::primitives::Address = parse_field(
        "address",
        &body.address,
        "an EVM address (0x and 40 hex digits)",
    )?;
    let nonce: alloy::primitives::B256 = parse_field(
        "nonce",
        &body.nonce,
        "the challenge's nonce (0x and 64 hex digits)",
    )?;
    let link_signature: alloy::primitives::Bytes =
        parse_field("link_signature", &body.link_signature, "a hex signature")?;
    let open_signature: Option<alloy::primitives::Bytes> = body
        .open_signature
        .as_deref()
        .map(|s| parse_field("open_signature", s, "a hex signature"))
        .transpose()?;
    let signed = crate::chain::link::WalletSignatures {
        wallet,
        nonce,
        link_signature,
        open_signature,
    };
    settler
        .link_wallet(&state.market, account.id, signed, now_ms())
        .await?;
    Ok(Json(WalletLinked {
        account: account.name,
        chain: ChainAddress {
            address: wallet.to_string(),
            custodial: false,
            settlement_contract: Some(format!("{:#x}", settler.settlement_address())),
        },
    }))
}
