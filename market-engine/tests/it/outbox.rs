//! The settlement outbox (issue 11, items 1, 2 and 7) against anvil: a batch counts as
//! confirmed only from a receipt in a block deep enough — not from the node's pending state,
//! not after a restart with its transaction still in the pool — and is sent again when its
//! transaction is dropped or its block reorganised away; a batch the contract refuses holds
//! back the later ones, is tried again by itself and can be re-sent by the operator.

use alloy::primitives::{Address, U256, keccak256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use axum::http::StatusCode;
use gridshare_contracts::SettlementClient;
use gridshare_contracts::batch::{NetDelta, SettlementBatch, SlotSales};
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::{Chain, ChainExt, RpcChain};
use gridshare_contracts::deploy::{Deployment, StakingParams};
use market_engine::chain::{ChainConfig, ChainSettler};
use market_engine::pipeline::now_ms;
use market_engine::store::Store;
use market_engine::store::settlement::{BatchRecord, BatchStatus};
use serde_json::json;

use crate::api::call;
use crate::market::login;
use crate::{databases, unique};

/// anvil's first development account: deployer, treasury and settlement operator here.
pub(crate) const ANVIL_KEY: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The contracts deployed fresh on the node at `url` by anvil's first account, which holds
/// the payment token and has approved the settlement contract, so it can deposit for anyone.
pub(crate) async fn deploy(url: &str) -> (RpcChain, Deployment, Address) {
    let signer: alloy::signers::local::PrivateKeySigner = ANVIL_KEY.parse().unwrap();
    let operator = signer.address();
    let chain = RpcChain::connect(url, Some(signer)).unwrap();
    let now = chain.timestamp().await.unwrap();
    let supply = U256::from(10u64).pow(U256::from(30u64));
    let d = Deployment::deploy(
        &chain,
        operator,
        operator,
        None,
        supply,
        &StakingParams::daily(now),
    )
    .await
    .unwrap();
    chain
        .transact(
            operator,
            d.payment_token,
            GridToken::approveCall {
                spender: d.settlement,
                value: U256::MAX,
            },
        )
        .await
        .unwrap();
    (chain, d, operator)
}

/// Opens the account of `key` in the settlement contract with its `OpenAccount` signature
/// (a household's own wallet, or its custodial key), the transaction sent by the treasury.
pub(crate) async fn open(chain: &RpcChain, d: &Deployment, key: &PrivateKeySigner) {
    let client = SettlementClient::new(chain.clone(), d.settlement);
    let signature = client.open_signature(key).await.unwrap();
    let treasury = ANVIL_KEY.parse::<PrivateKeySigner>().unwrap().address();
    client
        .open_for(treasury, key.address(), signature)
        .await
        .unwrap();
}

/// Deposits `amount` into the open `account`'s settlement balance from `from` (which holds the
/// payment token and has approved the contract).
pub(crate) async fn deposit(
    chain: &RpcChain,
    d: &Deployment,
    from: Address,
    account: Address,
    amount: u64,
) {
    chain
        .transact(
            from,
            d.settlement,
            Settlement::depositForCall {
                account,
                amount: U256::from(amount),
            },
        )
        .await
        .unwrap();
}

pub(crate) async fn rpc(
    url: &str,
    method: &'static str,
    params: serde_json::Value,
) -> serde_json::Value {
    ProviderBuilder::new()
        .connect_http(url.parse().unwrap())
        .raw_request::<_, serde_json::Value>(method.into(), params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

/// A batch of slot `id` moving `amount` from `debit` to `credit`.
fn batch(id: u64, credit: Address, debit: Address, amount: i128) -> SettlementBatch {
    SettlementBatch::new(
        id,
        keccak256(id.to_be_bytes()),
        [
            NetDelta {
                account: credit,
                amount,
            },
            NetDelta {
                account: debit,
                amount: -amount,
            },
        ],
    )
    .unwrap()
}

async fn queue(store: &Store, batch: &SettlementBatch) {
    store
        .queue_settlement_batch(batch, &SlotSales::default(), now_ms())
        .await
        .unwrap();
}

async fn record(store: &Store, slot: u64) -> BatchRecord {
    store.settlement_batch(slot).await.unwrap().unwrap()
}

/// The engine's settler on the node, as `serve` opens it (a new one is a restart: the same
/// custody master secret, kept in a file of this test process).
async fn settler(store: &Store, url: &str, d: &Deployment, confirmations: u64) -> ChainSettler {
    let config = ChainConfig {
        backend: market_engine::chain::ChainBackend::Rpc,
        rpc_url: url.into(),
        settlement_address: d.settlement.to_string(),
        confirmations,
        custody_key_file: Some(custody_file()),
        ..ChainConfig::default()
    };
    ChainSettler::open_with_key(&config, store.clone(), Some(ANVIL_KEY.into()))
        .await
        .unwrap()
        .unwrap()
}

fn custody_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gridshare-it-custody-{}.key", std::process::id()))
}

/// A new household account in the engine and its custodial key.
async fn household(store: &Store, s: &ChainSettler) -> (i64, PrivateKeySigner) {
    let id = store
        .create_account(
            &unique("household"),
            "x",
            market_engine::store::Role::Household,
            now_ms(),
        )
        .await
        .unwrap();
    (id, s.custody().signer(id).unwrap())
}

/// Steps the settler as the engine does (every tick) until `batches` more are confirmed; a
/// node mines a moment after it accepts a transaction. Panics after ten seconds.
pub(crate) async fn confirm(s: &ChainSettler, now: u64, batches: u64) {
    let mut confirmed = 0;
    for _ in 0..100 {
        confirmed += s.step(now).await.unwrap().confirmed;
        if confirmed >= batches {
            assert_eq!(confirmed, batches, "confirmed more than were open");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{confirmed} of {batches} batches confirmed after 10 s");
}

async fn balance(chain: &RpcChain, d: &Deployment, account: Address) -> U256 {
    chain
        .view(d.settlement, Settlement::balanceOfCall { account })
        .await
        .unwrap()
}

/// Regression (issue 11, item 1): after a kill -9 with a batch transaction sent but not mined,
/// the restarted engine marked the batch confirmed because it read the batch root from the
/// node's pending block; when the transaction was dropped, the chain never had the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_confirmed_only_by_a_receipt_deep_enough_across_restarts_drops_and_reorgs() {
    // A node of its own: this test stops its mining, empties its pool and reverts its chain.
    let Some(node) = gridshare_testbed::anvil::Anvil::start_own() else {
        return;
    };
    let url = node.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let (chain, d, treasury) = deploy(url).await;
        let store = Store::open(&db).await.unwrap();
        let s = settler(&store, url, &d, 2).await;
        // Two households with custodial keys, their accounts opened (with those keys) before
        // the node stops mining; bob deposits.
        let (_, alice_key) = household(&store, &s).await;
        let (_, bob_key) = household(&store, &s).await;
        let (alice, bob) = (alice_key.address(), bob_key.address());
        open(&chain, &d, &alice_key).await;
        open(&chain, &d, &bob_key).await;
        deposit(&chain, &d, treasury, bob, 1_000).await;
        let b1 = batch(1, alice, bob, 100);
        queue(&store, &b1).await;
        rpc(url, "evm_setAutomine", json!([false])).await;
        let now = now_ms();

        s.step(now).await.unwrap();
        let sent = record(&store, 1).await;
        assert_eq!(sent.status, BatchStatus::Sent, "{db}");
        assert_eq!(
            s.settled_root(1).await.unwrap(),
            None,
            "not mined, not settled"
        );
        // kill -9 and restart: the transaction is still only in the pool.
        drop(s);
        let s = settler(&store, url, &d, 2).await;
        s.step(now).await.unwrap();
        let r = record(&store, 1).await;
        assert_eq!(
            (r.status, r.tx_hash),
            (BatchStatus::Sent, sent.tx_hash),
            "{db}: a transaction in the pool is no confirmation, before or after a restart"
        );

        // The node drops it: the batch is sent again.
        rpc(url, "anvil_dropAllTransactions", json!([])).await;
        let p = s.step(now).await.unwrap();
        assert_eq!(p.fell_back, 1, "{db}");
        let r = record(&store, 1).await;
        assert_eq!(r.status, BatchStatus::Sent, "{db}");
        assert_eq!(
            r.attempts, 2,
            "{db}: sent again (the same signed transaction, or a new one)"
        );

        // Mined: in a block, but one block deep is not two.
        rpc(url, "evm_mine", json!([])).await;
        s.step(now).await.unwrap();
        let r = record(&store, 1).await;
        assert_eq!(r.status, BatchStatus::Included, "{db}");
        assert!(r.block_number.is_some() && r.block_hash.is_some(), "{db}");
        rpc(url, "evm_mine", json!([])).await;
        assert_eq!(s.step(now).await.unwrap().confirmed, 1, "{db}");
        assert_eq!(record(&store, 1).await.status, BatchStatus::Confirmed);

        // A reorganisation takes the block of the next batch away before it is deep enough.
        let b2 = batch(2, alice, bob, 50);
        queue(&store, &b2).await;
        s.step(now).await.unwrap();
        assert_eq!(record(&store, 2).await.status, BatchStatus::Sent, "{db}");
        let snapshot = rpc(url, "evm_snapshot", json!([])).await;
        rpc(url, "evm_mine", json!([])).await;
        s.step(now).await.unwrap();
        let included = record(&store, 2).await;
        assert_eq!(included.status, BatchStatus::Included, "{db}");
        rpc(url, "evm_revert", json!([snapshot])).await;
        rpc(url, "anvil_dropAllTransactions", json!([])).await;
        rpc(url, "evm_mine", json!([])).await;
        let p = s.step(now).await.unwrap();
        assert_eq!(p.fell_back, 1, "{db}: its block is gone");
        let r = record(&store, 2).await;
        assert_eq!(r.status, BatchStatus::Sent, "{db}: sent again");
        rpc(url, "evm_mine", json!([])).await;
        rpc(url, "evm_mine", json!([])).await;
        assert_eq!(s.step(now).await.unwrap().confirmed, 1, "{db}");

        // Each batch settled exactly once.
        assert_eq!(balance(&chain, &d, alice).await, U256::from(150), "{db}");
        assert_eq!(balance(&chain, &d, bob).await, U256::from(850), "{db}");
        rpc(url, "evm_setAutomine", json!([true])).await;
    }
}

/// Regression (issue 11, item 2): a batch the chain refused (an account without funds on chain)
/// stayed `rejected` for ever, nothing re-queued it, and later batches went through anyway
/// although the outbox documents strict order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_holds_back_later_ones_is_retried_and_the_operator_can_resend_it() {
    let Some(node) = gridshare_testbed::anvil::Anvil::start() else {
        return;
    };
    let url = node.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let crate::Fixture {
            store,
            market,
            keys,
            ..
        } = crate::Fixture::open(&db).await;
        let (chain, d, treasury) = deploy(url).await;
        let s = std::sync::Arc::new(settler(&store, url, &d, 1).await);
        // Alice's custodial account the engine opens; carol opened hers and deposited; bob
        // linked a wallet of his own (the engine holds no key for it) and never opened his
        // account on chain. Carol's batch comes after his.
        let (_, alice_key) = household(&store, &s).await;
        let (_, carol_key) = household(&store, &s).await;
        let bob_key = PrivateKeySigner::random();
        let (alice, bob, carol) = (alice_key.address(), bob_key.address(), carol_key.address());
        open(&chain, &d, &carol_key).await;
        deposit(&chain, &d, treasury, carol, 10).await;
        queue(&store, &batch(7, alice, bob, 100)).await;
        queue(&store, &batch(8, alice, carol, 10)).await;
        let now = now_ms();
        let p = s.step(now).await.unwrap();
        assert_eq!(p.rejected, 1, "{db}");
        let refused = record(&store, 7).await;
        assert_eq!(refused.status, BatchStatus::Rejected, "{db}");
        assert!(refused.retry, "{db}: an account can be opened");
        assert!(
            refused
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("AccountNotOpened")),
            "{db}: {refused:?}"
        );
        let waiting = record(&store, 8).await;
        assert_eq!(
            (waiting.status, waiting.attempts),
            (BatchStatus::Pending, 0),
            "{db}: strict order, the later batch waits"
        );
        // Not again before its backoff; again by itself after it (still refused).
        s.step(now).await.unwrap();
        assert_eq!(record(&store, 7).await.attempts, 1, "{db}");
        s.step(refused.next_attempt_ms).await.unwrap();
        let again = record(&store, 7).await;
        assert_eq!(
            (again.status, again.attempts),
            (BatchStatus::Rejected, 2),
            "{db}"
        );
        assert!(
            again.next_attempt_ms > refused.next_attempt_ms,
            "{db}: backs off"
        );

        // Bob opens his account and deposits; the operator re-sends at once instead of waiting out the backoff.
        open(&chain, &d, &bob_key).await;
        deposit(&chain, &d, treasury, bob, 100).await;
        let app = crate::market::api_with_settler(&store, &market, &keys, Some(s.clone()));
        let household = login(&app, &unique("household")).await;
        let resend = "/api/v1/operator/settlements/7/resend";
        let (status, _, _) = call(&app, "POST", resend, Some(&household), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{db}");
        let operator_name = unique("operator");
        let operator = login(&app, &operator_name).await;
        assert!(
            store
                .set_role(&operator_name, market_engine::store::Role::Operator)
                .await
                .unwrap()
        );
        let (status, body, _) = call(&app, "POST", resend, Some(&operator), None).await;
        assert_eq!(status, StatusCode::OK, "{db}: {body}");
        assert_eq!(body["chain"]["status"], "pending", "{body}");
        let (status, _, _) = call(
            &app,
            "POST",
            "/api/v1/operator/settlements/999/resend",
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{db}");
        // The refused batch, then the one behind it.
        confirm(&s, now, 2).await;
        assert_eq!(balance(&chain, &d, alice).await, U256::from(110), "{db}");
        assert_eq!(balance(&chain, &d, bob).await, U256::ZERO, "{db}");
        assert_eq!(balance(&chain, &d, carol).await, U256::ZERO, "{db}");
    }
}

/// Regression (issue 14): one household without the money for its debit made the contract
/// revert the slot's whole batch, the outbox held every later batch behind it, and nobody in
/// the community was settled until that household paid. Now the batch settles: the household's
/// shortfall is debt on chain, the treasury fronts it, and the next batch follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_empty_account_settles_as_debt_and_the_outbox_moves_on() {
    let Some(node) = gridshare_testbed::anvil::Anvil::start() else {
        return;
    };
    let url = node.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let store = Store::open(&db).await.unwrap();
        let (chain, d, treasury) = deploy(url).await;
        let s = settler(&store, url, &d, 1).await;
        // The treasury (the deployer) can front the shortfall; the empty household has no
        // money on chain (the engine opens its custodial account); carol deposited.
        let (_, alice_key) = household(&store, &s).await;
        let (_, empty_key) = household(&store, &s).await;
        let (_, carol_key) = household(&store, &s).await;
        let (alice, empty, carol) = (
            alice_key.address(),
            empty_key.address(),
            carol_key.address(),
        );
        deposit(&chain, &d, treasury, treasury, 1_000).await;
        open(&chain, &d, &carol_key).await;
        deposit(&chain, &d, treasury, carol, 10).await;
        queue(&store, &batch(7, alice, empty, 100)).await;
        queue(&store, &batch(8, alice, carol, 10)).await;
        let now = now_ms();
        confirm(&s, now, 2).await;
        assert_eq!(balance(&chain, &d, alice).await, U256::from(110), "{db}");
        let debt: U256 = chain
            .view(d.settlement, Settlement::debtOfCall { account: empty })
            .await
            .unwrap();
        assert_eq!(debt, U256::from(100), "{db}: the shortfall is public debt");
        assert_eq!(balance(&chain, &d, treasury).await, U256::from(900), "{db}");
    }
}

/// Regression (issue 14, step 2): the engine settled to addresses derived from account ids
/// that no key controls, so on a JSON-RPC chain every batch was refused `AccountNotOpened`
/// (only the embedded chain, which opens accounts without signatures, settled). Now each
/// account's address is its custodial key's, and the engine opens the accounts of the next
/// batch with those keys' `OpenAccount` signatures before sending it — households and the
/// utility alike — once, across restarts; an address the engine holds no key for (a utility
/// address the operator configured and did not open) is still refused, retryably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodial_accounts_are_opened_with_their_keys_and_the_batch_settles() {
    let Some(node) = gridshare_testbed::anvil::Anvil::start() else {
        return;
    };
    let url = node.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    for db in databases(dir.path()).await {
        let store = Store::open(&db).await.unwrap();
        let (chain, d, treasury) = deploy(url).await;
        deposit(&chain, &d, treasury, treasury, 1_000).await;
        let s = settler(&store, url, &d, 1).await;
        let (alice_id, alice_key) = household(&store, &s).await;
        let (bob_id, bob_key) = household(&store, &s).await;
        let custody = s.custody().clone();
        let utility = custody.address(market_engine::chain::custody::UTILITY);
        assert_eq!(custody.address(alice_id), alice_key.address());
        assert_ne!(custody.address(alice_id), custody.address(bob_id));
        let is_open = |account: Address| {
            let chain = chain.clone();
            async move {
                chain
                    .view(d.settlement, Settlement::isOpenCall { account })
                    .await
                    .unwrap()
            }
        };
        for a in [alice_key.address(), bob_key.address(), utility] {
            assert!(!is_open(a).await, "{db}: nobody opened {a} yet");
        }
        // Slot 1: bob (no deposit: debt the treasury fronts) pays alice 100 and the utility 30.
        let b1 = SettlementBatch::new(
            1,
            keccak256(1u64.to_be_bytes()),
            [
                NetDelta {
                    account: alice_key.address(),
                    amount: 100,
                },
                NetDelta {
                    account: utility,
                    amount: 30,
                },
                NetDelta {
                    account: bob_key.address(),
                    amount: -130,
                },
            ],
        )
        .unwrap();
        queue(&store, &b1).await;
        let now = now_ms();
        let p = s.step(now).await.unwrap();
        assert_eq!(
            (p.accounts_opened, p.account_open_failures),
            (3, 0),
            "{db}: the three accounts opened in the step that sends the batch"
        );
        if p.confirmed == 0 {
            confirm(&s, now, 1).await;
        }
        for a in [alice_key.address(), bob_key.address(), utility] {
            assert!(is_open(a).await, "{db}: {a} opened by the engine");
        }
        assert_eq!(record(&store, 1).await.attempts, 1, "{db}: never refused");
        assert_eq!(
            balance(&chain, &d, alice_key.address()).await,
            U256::from(100)
        );
        assert_eq!(balance(&chain, &d, utility).await, U256::from(30));
        assert_eq!(s.balance(alice_id).await.unwrap(), U256::from(100));

        // A restart: the same addresses, nothing opened twice, the next batch settles.
        drop(s);
        let s = settler(&store, url, &d, 1).await;
        assert_eq!(s.custody().address(alice_id), alice_key.address());
        queue(
            &store,
            &batch(2, bob_key.address(), alice_key.address(), 40),
        )
        .await;
        let p = s.step(now).await.unwrap();
        assert_eq!(p.accounts_opened, 0, "{db}: open already");
        if p.confirmed == 0 {
            confirm(&s, now, 1).await;
        }
        assert_eq!(
            balance(&chain, &d, alice_key.address()).await,
            U256::from(60)
        );

        // A utility address the operator configured but never opened: the engine has no key
        // for it, and the batch naming it waits (retryably) until its owner opens it.
        let supplier = PrivateKeySigner::random();
        let config = ChainConfig {
            backend: market_engine::chain::ChainBackend::Rpc,
            rpc_url: url.into(),
            settlement_address: d.settlement.to_string(),
            custody_key_file: Some(custody_file()),
            utility_address: supplier.address().to_string(),
            ..ChainConfig::default()
        };
        let s = ChainSettler::open_with_key(&config, store.clone(), Some(ANVIL_KEY.into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.custody().address(market_engine::chain::custody::UTILITY),
            supplier.address()
        );
        assert!(
            !s.custody()
                .is_custodial(market_engine::chain::custody::UTILITY)
        );
        queue(
            &store,
            &batch(3, supplier.address(), alice_key.address(), 10),
        )
        .await;
        let p = s.step(now).await.unwrap();
        assert_eq!(p.rejected, 1, "{db}");
        let refused = record(&store, 3).await;
        assert!(refused.retry, "{db}");
        assert!(
            refused
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("AccountNotOpened")),
            "{db}: {refused:?}"
        );
        open(&chain, &d, &supplier).await;
        confirm(&s, refused.next_attempt_ms, 1).await;
        assert_eq!(
            balance(&chain, &d, supplier.address()).await,
            U256::from(10)
        );
    }
}

/// Issue 14, step 2: the utility's custodial account starts empty. When it buys surplus at
/// feed-in before anything credited it, its debit becomes debt the treasury fronts (the seller
/// is paid in full, nothing is refused); the utility's next credit (selling a shortfall at
/// retail) repays the treasury.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_utility_buying_surplus_first_is_fronted_by_the_treasury_and_repays_it() {
    use market_engine::chain::custody::UTILITY;
    let Some(node) = gridshare_testbed::anvil::Anvil::start() else {
        return;
    };
    let url = node.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let db = databases(dir.path()).await.remove(0);
    let store = Store::open(&db).await.unwrap();
    let (chain, d, treasury) = deploy(url).await;
    deposit(&chain, &d, treasury, treasury, 10_000).await;
    let s = settler(&store, url, &d, 1).await;
    let (_, seller) = household(&store, &s).await;
    let (_, buyer) = household(&store, &s).await;
    let utility = s.custody().address(UTILITY);
    // Slot 1: the seller's surplus goes to the utility at feed-in.
    queue(&store, &batch(1, seller.address(), utility, 1_600)).await;
    let now = now_ms();
    confirm(&s, now, 1).await;
    assert_eq!(
        balance(&chain, &d, seller.address()).await,
        U256::from(1_600)
    );
    let debt = |account: Address| {
        let chain = chain.clone();
        async move {
            chain
                .view(d.settlement, Settlement::debtOfCall { account })
                .await
                .unwrap()
        }
    };
    assert_eq!(debt(utility).await, U256::from(1_600), "public debt");
    assert_eq!(balance(&chain, &d, treasury).await, U256::from(8_400));
    // Slot 2: the buyer's shortfall comes from the utility at retail; the buyer deposited.
    open(&chain, &d, &buyer).await;
    deposit(&chain, &d, treasury, buyer.address(), 5_000).await;
    queue(&store, &batch(2, utility, buyer.address(), 3_000)).await;
    confirm(&s, now, 1).await;
    assert_eq!(debt(utility).await, U256::ZERO, "repaid from its credit");
    assert_eq!(balance(&chain, &d, utility).await, U256::from(1_400));
    assert_eq!(
        balance(&chain, &d, treasury).await,
        U256::from(10_000),
        "the treasury is whole again"
    );
}

/// Issue 14, step 2: `GET /api/v1/me` names the household's chain address (the one its
/// batches use) and that it is custodial; the household exports its custodial key with its
/// password re-entered (not with the session alone), and the exported key really controls the
/// account on chain: it requests a withdrawal of what a batch credited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_shows_the_chain_address_and_the_household_exports_a_key_that_controls_it() {
    let Some(node) = gridshare_testbed::anvil::Anvil::start() else {
        return;
    };
    let url = node.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let db = databases(dir.path()).await.remove(0);
    let crate::Fixture {
        store,
        market,
        keys,
        ..
    } = crate::Fixture::open(&db).await;
    let (chain, d, treasury) = deploy(url).await;
    let s = std::sync::Arc::new(settler(&store, url, &d, 1).await);
    let app = crate::market::api_with_settler(&store, &market, &keys, Some(s.clone()));
    let name = unique("household");
    let session = login(&app, &name).await;
    let id = store.account_by_name(&name).await.unwrap().unwrap().id;
    let export = "/api/v1/me/custodial-key/export";

    // Without a chain: no address, nothing to export.
    let (status, me, _) = call(&app, "GET", "/api/v1/me", Some(&session), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert!(me["chain"].is_null(), "{me}");
    let right = json!({"password": "correct horse battery"});
    let (status, _, _) = call(&app, "POST", export, Some(&session), Some(right.clone())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    market.queue_batches(s.custody().clone());
    let (_, me, _) = call(&app, "GET", "/api/v1/me", Some(&session), None).await;
    let address: Address = me["chain"]["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(address, s.custody().address(id), "{me}");
    assert_eq!(me["chain"]["custodial"], true, "{me}");

    // The session alone is not enough; a wrong password gets nothing.
    let (status, body, _) = call(&app, "POST", export, Some(&session), None).await;
    assert!(status.is_client_error(), "{status} {body}");
    // Regression: a wrong password was 401, which the web app takes for an ended session and
    // signs out; the session is fine, the password field is wrong.
    let wrong = json!({"password": "battery staple"});
    let (status, body, _) = call(&app, "POST", export, Some(&session), Some(wrong)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("password: "),
        "{body}"
    );
    assert!(body.get("private_key").is_none(), "{body}");
    let (status, body, _) = call(&app, "POST", export, None, Some(right.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body, _) = call(&app, "POST", export, Some(&session), Some(right)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key: PrivateKeySigner = body["private_key"].as_str().unwrap().parse().unwrap();
    assert_eq!(key.address(), address);

    // A batch credits the custodial account (the engine opens it); the household, with the
    // exported key in a wallet of its own (gas from the node), asks for its money.
    deposit(&chain, &d, treasury, treasury, 1_000).await;
    queue(&store, &batch(1, address, treasury, 70)).await;
    confirm(&s, now_ms(), 1).await;
    let wallet = RpcChain::connect(url, Some(key)).unwrap();
    wallet.prepare_account(address).await.unwrap();
    SettlementClient::new(wallet, d.settlement)
        .request_withdrawal(address, U256::from(70))
        .await
        .unwrap();
    let status = SettlementClient::new(chain.clone(), d.settlement)
        .account(address)
        .await
        .unwrap();
    assert_eq!(status.pending_withdrawal, U256::from(70));
    assert_eq!(status.balance, U256::ZERO);
}

/// `market-engine verify-trade` (issue 14): a household's saved proof document checks out
/// against a plain JSON-RPC node — the leaf rebuilt from the trade's fields, off chain and by
/// the contract's `verifyTrade` — and a trade with another amount does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_trade_checks_a_proof_document_against_the_node() {
    use gridshare_contracts::batch::{MerkleTree, TradeLeaf};
    let Some(node) = gridshare_testbed::anvil::Anvil::start() else {
        return;
    };
    let url = node.url.as_str();
    let (chain, d, treasury) = deploy(url).await;
    let (alice_key, bob_key) = (PrivateKeySigner::random(), PrivateKeySigner::random());
    let (alice, bob) = (alice_key.address(), bob_key.address());
    open(&chain, &d, &alice_key).await;
    deposit(&chain, &d, treasury, alice, 1_000).await;
    open(&chain, &d, &bob_key).await;
    let trades = [(500u64, 120u64), (300, 80)];
    let leaves = trades
        .iter()
        .map(|(wh, amount)| {
            TradeLeaf::Trade {
                batch_id: 42,
                buyer: alice,
                seller: bob,
                energy_wh: *wh,
                amount: U256::from(*amount),
            }
            .hash()
        })
        .collect();
    let tree = MerkleTree::new(leaves).unwrap();
    let b = SettlementBatch::new(
        42,
        tree.root(),
        [
            NetDelta {
                account: alice,
                amount: -200,
            },
            NetDelta {
                account: bob,
                amount: 200,
            },
        ],
    )
    .unwrap();
    chain
        .transact(
            treasury,
            d.settlement,
            Settlement::settleCall {
                batchId: 42,
                root: b.root,
                deltas: b.packed_deltas(),
            },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |first_amount: u64| {
        let doc = json!({
            "slot": 42,
            "batch_id": 42,
            "trades": trades.iter().enumerate().map(|(i, (wh, amount))| json!({
                "buyer": alice,
                "seller": bob,
                "energy_wh": wh,
                "amount": if i == 0 { first_amount } else { *amount }.to_string(),
                "proof": tree.proof(i).unwrap(),
            })).collect::<Vec<_>>(),
        });
        let path = dir.path().join(format!("proof-{first_amount}.json"));
        std::fs::write(&path, doc.to_string()).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_market-engine"))
            .args(["verify-trade", "--rpc-url", url, "--settlement"])
            .arg(d.settlement.to_string())
            .arg("--proof")
            .arg(&path)
            .output()
            .unwrap()
    };
    let good = run(120);
    assert!(good.status.success(), "{good:?}");
    let out: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    for t in out["trades"].as_array().unwrap() {
        assert_eq!(
            (t["on_chain"].clone(), t["off_chain"].clone()),
            (json!(true), json!(true)),
            "{out}"
        );
    }
    let forged = run(1);
    assert!(!forged.status.success());
    let err = String::from_utf8_lossy(&forged.stderr);
    assert!(err.contains("1 of 2 trades do not verify"), "{err}");
}
