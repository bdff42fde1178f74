//! `GET /api/v1/meters/{meter_id}/stake`: a meter's stake and rewards as the staking contract
//! on the engine's chain holds them — before and after the owner registers (with the meter
//! key's signed registration), the operator attests and the owner stakes; only for the owner
//! or the community operator; a clear 404 on an engine without a chain.

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use axum::http::StatusCode;
use gridshare_contracts::bindings::{GridToken, MeterStaking};
use gridshare_contracts::chain::{Chain, ChainExt};
use gridshare_contracts::staking::{StakingClient, device_hash, text_id};
use market_engine::chain::{ChainConfig, ChainHandle, ChainSettler, EMBEDDED_OPERATOR};
use market_engine::ingest::KeyRegistry;
use market_engine::market::{Market, MarketConfig};
use market_engine::store::Store;

use crate::api::call;
use crate::market::{api, api_with_settler, login, new_meter};
use crate::unique;

/// Registers `meter` on the staking contract for `owner` with `key`'s signed registration,
/// has the operator attest it, and stakes `amount`, as the demo and the `gridshare` command do.
async fn register_and_stake<C: Chain>(
    chain: &C,
    staking: Address,
    owner: Address,
    meter: &str,
    key: &gridshare_core::reading::MeterKey,
    amount: U256,
) {
    let client = StakingClient::new(chain, staking);
    let id = text_id(meter).unwrap();
    let signature =
        gridshare_operator::registration::sign_registration(&client, key, meter, owner, false)
            .await
            .unwrap();
    chain.prepare_account(owner).await.unwrap();
    let public = key.public_key();
    let xy = (public.x().into(), public.y().into());
    client.register(owner, id, xy, signature).await.unwrap();
    client
        .set_verifier(EMBEDDED_OPERATOR, EMBEDDED_OPERATOR, true)
        .await
        .unwrap();
    let device = crate::simulated_device("SIM-000001");
    client
        .attest(
            EMBEDDED_OPERATOR,
            id,
            xy,
            device_hash(&device.manufacturer, &device.model, &device.serial).unwrap(),
            5_000,
            12_000,
            text_id("gcp-test").unwrap(),
        )
        .await
        .unwrap();
    let token = client.token().await.unwrap();
    chain
        .transact(
            EMBEDDED_OPERATOR,
            token,
            GridToken::transferCall {
                to: owner,
                value: amount,
            },
        )
        .await
        .unwrap();
    client.approve(owner).await.unwrap();
    client.stake(owner, id, amount).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meters_stake_and_rewards_come_from_the_staking_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("engine.sqlite").display());
    let store = Store::open(&url).await.unwrap();
    let market = Arc::new(
        Market::open(MarketConfig::default().community().unwrap(), store.clone())
            .await
            .unwrap(),
    );
    let settler = Arc::new(
        ChainSettler::open(
            &ChainConfig {
                backend: market_engine::chain::ChainBackend::Embedded,
                state_file: dir.path().join("chain.json"),
                ..ChainConfig::default()
            },
            store.clone(),
        )
        .await
        .unwrap()
        .unwrap(),
    );
    let app = api_with_settler(
        &store,
        &market,
        &KeyRegistry::default(),
        Some(settler.clone()),
    );
    let owner_name = unique("staker");
    let owner = login(&app, &owner_name).await;
    let other = login(&app, &unique("neighbour")).await;
    let (key, meter) = new_meter(&app, &store, &owner, "st").await;
    let path = format!("/api/v1/meters/{meter}/stake");

    // Who may look: the owner, the community operator; nobody else, and not without a session.
    let (s, _, _) = call(&app, "GET", &path, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body, _) = call(&app, "GET", &path, Some(&other), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body, _) = call(
        &app,
        "GET",
        "/api/v1/meters/nobody/stake",
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");

    // Known to the engine, not yet on chain.
    let (s, body, _) = call(&app, "GET", &path, Some(&owner), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["registered"], false, "{body}");
    let ChainHandle::Embedded(settlement) = settler.handle() else {
        panic!("an embedded chain");
    };
    let chain = settlement.chain();
    let staking: Address = body["staking_contract"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        Some(staking),
        market_engine::staking::staking_contract(chain, settlement.address())
            .await
            .unwrap(),
        "the contract settlement credits its sales to"
    );
    assert_eq!(
        body["meter_id_bytes32"],
        text_id(&meter).unwrap().to_string()
    );

    // Registered with the meter key, attested, staked: the chain's figures, as it holds them.
    let account = store
        .account_by_name(&owner_name)
        .await
        .unwrap()
        .unwrap()
        .id;
    let owner_address = settler.custody().address(account);
    let min_stake = chain
        .view(staking, MeterStaking::minStakeCall {})
        .await
        .unwrap();
    let amount = min_stake + U256::from(7u8);
    register_and_stake(chain, staking, owner_address, &meter, &key, amount).await;
    let (s, body, _) = call(&app, "GET", &path, Some(&owner), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["registered"], true, "{body}");
    assert_eq!(body["owner"], owner_address.to_string());
    assert_eq!(body["attested"], true);
    assert_eq!(body["active"], true);
    assert_eq!(body["slashed"], false);
    assert_eq!(body["staked"], amount.to_string());
    assert_eq!(body["unbonding"], "0");
    assert_eq!(body["claimable"], "0", "nothing earned yet");
    assert_eq!(body["export_capacity_w"], 5_000);
    let epochs = body["epochs"].as_array().unwrap();
    let current = body["current_epoch"].as_u64().unwrap();
    assert_eq!(epochs[0]["epoch"], current, "newest first");
    assert!(epochs.len() <= 10 && !epochs.is_empty());
    assert!(
        epochs
            .iter()
            .all(|e| e["reward"] == "0" && e["sold_wh"] == 0)
    );

    // Unbonding shows as such, and the stake that is left.
    StakingClient::new(chain, staking)
        .unbond(owner_address, text_id(&meter).unwrap(), U256::from(7u8))
        .await
        .unwrap();
    let (_, body, _) = call(&app, "GET", &path, Some(&owner), None).await;
    assert_eq!(body["staked"], min_stake.to_string(), "{body}");
    assert_eq!(body["unbonding"], "7");
    assert!(body["unbonding_ends_s"].as_u64().is_some());

    // The community operator may look too.
    let operator_name = unique("op");
    let operator = login(&app, &operator_name).await;
    assert!(
        store
            .set_role(&operator_name, market_engine::store::Role::Operator)
            .await
            .unwrap()
    );
    let (s, body, _) = call(&app, "GET", &path, Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["registered"], true);

    // An engine that settles on no chain says so.
    let no_chain = api(&store, &market);
    let (s, body, _) = call(&no_chain, "GET", &path, Some(&owner), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("no chain"),
        "{body}"
    );
    store.close().await;
}
