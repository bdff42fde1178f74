//! Issue 14: what the operator and the owner can no longer do to households' money, and why a
//! single household can no longer stop a batch. Each `regression_*` test below is an attack
//! that succeeded against the Settlement contract before issue 14 (commit f7152d3); the doc
//! comment of each says how it went there. On that contract each of these tests fails.

use crate::harness::{Env, actor, revert_of, tokens};
use crate::on_both_chains;
use crate::settlement::{assert_conserved, balance, debt, deposit, pending, settle};
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};
use gridshare_contracts::bindings::Settlement;
use gridshare_contracts::bindings::Settlement::SettlementErrors as E;
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::{Chain, MerkleTree, SettlementBatch, TradeLeaf, TxOutcome};

on_both_chains!(
    regression_operator_cannot_debit_beyond_the_allowance,
    regression_owner_cannot_replace_the_operator_and_drain_in_one_block,
    regression_a_withdrawal_ahead_of_the_batch_still_pays_the_seller,
    regression_a_batch_cannot_credit_an_address_no_key_opened,
    regression_one_empty_account_does_not_revert_the_batch,
    regression_an_inner_node_does_not_prove_a_trade,
    a_stricter_allowance_waits_a_looser_one_applies_at_once,
    an_uncovered_shortfall_cuts_the_credits_pro_rata,
    a_signature_opens_an_account,
);

fn events<T: SolEvent>(outcome: &TxOutcome) -> Vec<T> {
    outcome
        .logs
        .iter()
        .filter_map(|log| T::decode_log_data(&log.data).ok())
        .collect()
}

async fn try_allowance<C: Chain>(
    env: &Env<C>,
    who: Address,
    amount: u64,
    period: u32,
) -> Result<TxOutcome, gridshare_contracts::ChainError> {
    env.chain
        .transact(
            who,
            env.d.settlement,
            Settlement::setAllowanceCall {
                amount: alloy::primitives::Uint::<80, 2>::from(amount),
                period,
            },
        )
        .await
}

async fn set_allowance<C: Chain>(env: &Env<C>, who: Address, amount: u64, period: u32) {
    try_allowance(env, who, amount, period)
        .await
        .expect("set allowance");
}

async fn remaining<C: Chain>(env: &Env<C>, who: Address) -> U256 {
    env.chain
        .view(
            env.d.settlement,
            Settlement::allowanceOfCall { account: who },
        )
        .await
        .expect("allowance")
        .remaining
}

/// The treasury (the deployer here) deposits `amount` so it can front shortfalls.
async fn fund_treasury<C: Chain>(env: &Env<C>, amount: u64) {
    env.chain
        .transact(
            env.deployer,
            env.d.payment_token,
            gridshare_contracts::bindings::GridToken::approveCall {
                spender: env.d.settlement,
                value: U256::MAX,
            },
        )
        .await
        .expect("approve");
    deposit(env, env.deployer, U256::from(amount)).await;
}

/// Before: `settle` debited any account by any amount its balance covered, so one batch from
/// the operator key moved Alice's whole 10 000 000 to Mallory. Now Alice's allowance (1 000 a
/// day) is all a batch takes; the rest is public debt that is itself collected only within the
/// allowance, so a leaked operator key takes at most each account's remaining allowance.
async fn regression_operator_cannot_debit_beyond_the_allowance<C: Chain>(env: Env<C>) {
    let (alice, mallory) = (actor(1), actor(9));
    env.fund(alice, tokens(1)).await;
    env.fund(mallory, tokens(1)).await;
    deposit(&env, alice, U256::from(10_000_000u64)).await;
    set_allowance(&env, alice, 1_000, 86_400).await;
    // A stricter allowance takes effect after the withdrawal delay.
    env.pass_withdrawal_delay().await;
    assert_eq!(remaining(&env, alice).await, U256::from(1_000u64));

    let outcome = settle(&env, 1, &[(alice, -10_000_000), (mallory, 10_000_000)])
        .await
        .expect("the batch settles");
    assert_eq!(balance(&env, alice).await, U256::from(9_999_000u64));
    assert_eq!(debt(&env, alice).await, U256::from(9_999_000u64));
    assert_eq!(remaining(&env, alice).await, U256::ZERO);
    // Nobody fronted the fake debt (the treasury is empty), so Mallory got what was taken.
    assert_eq!(balance(&env, mallory).await, U256::from(1_000u64));
    let recorded = events::<Settlement::DebtRecorded>(&outcome);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].account, alice);
    assert_eq!(recorded[0].amount, U256::from(9_999_000u64));

    // A second batch in the same day takes nothing more, and neither does debt collection
    // from a deposit.
    settle(&env, 2, &[(alice, -5_000), (mallory, 5_000)])
        .await
        .expect("settles");
    deposit(&env, alice, U256::from(5_000u64)).await;
    assert_eq!(balance(&env, alice).await, U256::from(10_004_000u64));
    assert_eq!(balance(&env, mallory).await, U256::from(1_000u64));
    // A day later the allowance is there again, and only it.
    env.chain.advance_time(86_400).await.expect("advance");
    settle(&env, 3, &[(alice, -10_000_000), (mallory, 10_000_000)])
        .await
        .expect("settles");
    assert_eq!(balance(&env, alice).await, U256::from(10_003_000u64));
    assert_eq!(balance(&env, mallory).await, U256::from(2_000u64));
    assert_conserved(&env, &[alice, mallory, env.deployer]).await;
}

/// Before: `setOperator` took effect at once, so the owner (or whoever stole its key) named a
/// new operator and drained an account with it in the same block. Now a new operator waits
/// out `governanceDelay` (longer than the withdrawal delay, so households can leave first),
/// with events; revoking the operator is immediate; ownership moves to any address (a Safe)
/// through the same delay.
async fn regression_owner_cannot_replace_the_operator_and_drain_in_one_block<C: Chain>(
    env: Env<C>,
) {
    let (alice, mallory, safe) = (actor(1), actor(9), actor(7));
    env.fund(alice, tokens(1)).await;
    env.fund(mallory, tokens(1)).await;
    env.chain.prepare_account(safe).await.expect("prepare");
    deposit(&env, alice, U256::from(1_000_000u64)).await;
    let s = env.d.settlement;

    let proposed = env
        .chain
        .transact(
            env.deployer,
            s,
            Settlement::proposeOperatorCall { operator_: mallory },
        )
        .await
        .expect("propose");
    let announced = events::<Settlement::OperatorChangeProposed>(&proposed);
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].operator, mallory);
    let drain = SettlementBatch::new(
        1,
        B256::repeat_byte(1),
        [
            crate::settlement::delta(alice, -1_000_000),
            crate::settlement::delta(mallory, 1_000_000),
        ],
    )
    .expect("batch");
    let drain_call = Settlement::settleCall {
        batchId: 1,
        root: drain.root,
        deltas: drain.packed_deltas(),
    };
    let r = env.chain.transact(mallory, s, drain_call.clone()).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotOperator(_)));
    let r = env
        .chain
        .transact(mallory, s, Settlement::activateOperatorCall {})
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::TooEarly(_)));
    assert_eq!(balance(&env, alice).await, U256::from(1_000_000u64));
    // Alice sees the announcement and lowers her allowance: that takes `withdrawalDelay`,
    // which ends before the new operator can act.
    set_allowance(&env, alice, 1_000, 86_400).await;

    let delay = u64::from(
        env.chain
            .view(s, Settlement::governanceDelayCall {})
            .await
            .expect("delay"),
    );
    assert!(delay > env.withdrawal_delay().await);
    env.chain.advance_time(delay).await.expect("advance");
    let activated = env
        .chain
        .transact(mallory, s, Settlement::activateOperatorCall {})
        .await
        .expect("activate");
    assert_eq!(
        events::<Settlement::OperatorChanged>(&activated)[0].operator,
        mallory
    );
    // Even now the new key takes only Alice's daily allowance.
    env.chain
        .transact(mallory, s, drain_call)
        .await
        .expect("settles within the allowance");
    assert_eq!(balance(&env, alice).await, U256::from(999_000u64));
    assert_eq!(balance(&env, mallory).await, U256::from(1_000u64));

    // The owner revokes the operator at once.
    env.chain
        .transact(env.deployer, s, Settlement::revokeOperatorCall {})
        .await
        .expect("revoke");
    let r = settle(&env, 2, &[(alice, -1), (mallory, 1)]).await;
    assert!(r.is_err(), "no operator after revocation");

    // Ownership goes to a Safe through the same delay.
    env.chain
        .transact(
            env.deployer,
            s,
            Settlement::transferOwnershipCall { newOwner: safe },
        )
        .await
        .expect("transfer");
    let r = env
        .chain
        .transact(safe, s, Settlement::acceptOwnershipCall {})
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::TooEarly(_)));
    env.chain.advance_time(delay).await.expect("advance");
    env.chain
        .transact(safe, s, Settlement::acceptOwnershipCall {})
        .await
        .expect("accept");
    assert_eq!(
        env.chain
            .view(s, Settlement::ownerCall {})
            .await
            .expect("owner"),
        safe
    );
}

/// Before: a buyer withdrew its whole balance in the block before its slot's batch, the batch
/// reverted with `InsufficientBalance` and the seller was never paid (the outbox stopped).
/// Now a withdrawal is a request paid `withdrawalDelay` later, and the batch takes the debit
/// from it.
async fn regression_a_withdrawal_ahead_of_the_batch_still_pays_the_seller<C: Chain>(env: Env<C>) {
    let (seller, buyer) = (actor(1), actor(2));
    env.fund(seller, tokens(1)).await;
    env.fund(buyer, tokens(1)).await;
    deposit(&env, buyer, U256::from(1_000u64)).await;
    let s = env.d.settlement;
    env.chain
        .transact(
            buyer,
            s,
            Settlement::requestWithdrawalCall {
                amount: U256::from(1_000u64),
            },
        )
        .await
        .expect("request");
    let r = env
        .chain
        .transact(buyer, s, Settlement::withdrawCall {})
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::TooEarly(_)));

    settle(&env, 1, &[(buyer, -600), (seller, 600)])
        .await
        .expect("the batch settles");
    assert_eq!(balance(&env, seller).await, U256::from(600u64));
    assert_eq!(pending(&env, buyer).await, U256::from(400u64));
    assert_eq!(debt(&env, buyer).await, U256::ZERO);

    env.pass_withdrawal_delay().await;
    let before = env.token_balance(env.d.payment_token, buyer).await;
    env.chain
        .transact(buyer, s, Settlement::withdrawCall {})
        .await
        .expect("withdraw");
    assert_eq!(
        env.token_balance(env.d.payment_token, buyer).await - before,
        U256::from(400u64)
    );
    assert_conserved(&env, &[seller, buyer, env.deployer]).await;
}

/// Before: a batch could credit any address, including one derived from an account number that
/// no key controls, where the money was stuck for ever. Now only accounts opened by their key
/// take part in batches, and `depositFor` goes only to open accounts.
async fn regression_a_batch_cannot_credit_an_address_no_key_opened<C: Chain>(env: Env<C>) {
    let alice = actor(1);
    env.fund(alice, tokens(1)).await;
    deposit(&env, alice, U256::from(1_000u64)).await;
    let nobody = Address::from_slice(&keccak256(b"gridshare-account 42")[12..]);
    let r = settle(&env, 1, &[(alice, -100), (nobody, 100)]).await;
    assert!(matches!(revert_of::<E, _>(r), E::AccountNotOpened(_)));
    let r = env
        .chain
        .transact(
            alice,
            env.d.settlement,
            Settlement::depositForCall {
                account: nobody,
                amount: U256::from(1u64),
            },
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::AccountNotOpened(_)));
    assert_eq!(balance(&env, alice).await, U256::from(1_000u64));
    assert!(
        !env.chain
            .view(env.d.settlement, Settlement::isOpenCall { account: nobody })
            .await
            .expect("isOpen")
    );
}

/// Before: one account without the money for its debit made `settle` revert with
/// `InsufficientBalance`, so nobody in the slot was settled and the outbox stopped there.
/// Now the batch settles: the shortfall is public debt, the treasury fronts it, and the debt
/// is collected from the account's next credit and deposit back to the treasury.
async fn regression_one_empty_account_does_not_revert_the_batch<C: Chain>(env: Env<C>) {
    let (empty, bob, carol) = (actor(1), actor(2), actor(3));
    for a in [empty, bob, carol] {
        env.fund(a, tokens(1)).await;
    }
    deposit(&env, bob, U256::from(1_000u64)).await;
    fund_treasury(&env, 10_000).await;
    let everyone = [empty, bob, carol, env.deployer];

    let outcome = settle(&env, 1, &[(empty, -500), (bob, -300), (carol, 800)])
        .await
        .expect("the batch settles");
    assert_eq!(balance(&env, carol).await, U256::from(800u64));
    assert_eq!(balance(&env, bob).await, U256::from(700u64));
    assert_eq!(debt(&env, empty).await, U256::from(500u64));
    assert_eq!(balance(&env, env.deployer).await, U256::from(9_500u64));
    let covered = events::<Settlement::ShortfallCovered>(&outcome);
    assert_eq!(
        (covered[0].shortfall, covered[0].fronted, covered[0].cut),
        (U256::from(500u64), U256::from(500u64), U256::ZERO)
    );
    assert_conserved(&env, &everyone).await;

    // Its next credit repays the treasury first.
    settle(&env, 2, &[(bob, -200), (empty, 200)])
        .await
        .expect("settles");
    assert_eq!(balance(&env, empty).await, U256::ZERO);
    assert_eq!(debt(&env, empty).await, U256::from(300u64));
    assert_eq!(balance(&env, env.deployer).await, U256::from(9_700u64));
    // And so does its next deposit.
    deposit(&env, empty, U256::from(1_000u64)).await;
    assert_eq!(balance(&env, empty).await, U256::from(700u64));
    assert_eq!(debt(&env, empty).await, U256::ZERO);
    assert_eq!(balance(&env, env.deployer).await, U256::from(10_000u64));
    assert_conserved(&env, &everyone).await;
}

fn hash_pair(a: B256, b: B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    keccak256([lo.as_slice(), hi.as_slice()].concat())
}

/// Before: `verifyLeaf(batchId, leaf, proof)` took the leaf hash from the caller, so an inner
/// node of the tree with the rest of the path "proved" a trade that never existed. Now the
/// only proofs are `verifyTrade` and `verifyReading`, which build the leaf from its fields;
/// the old entry point is gone.
async fn regression_an_inner_node_does_not_prove_a_trade<C: Chain>(env: Env<C>) {
    let (alice, bob) = (actor(1), actor(2));
    for a in [alice, bob] {
        env.fund(a, tokens(1)).await;
    }
    deposit(&env, alice, U256::from(10_000u64)).await;
    let trades: Vec<TradeLeaf> = (0..4u64)
        .map(|i| TradeLeaf::Trade {
            batch_id: 5,
            buyer: alice,
            seller: bob,
            energy_wh: 100 + i,
            amount: U256::from(10 + i),
        })
        .collect();
    let leaves: Vec<B256> = trades.iter().map(TradeLeaf::hash).collect();
    let tree = MerkleTree::new(leaves.clone()).expect("tree");
    let batch = SettlementBatch::new(
        5,
        tree.root(),
        [
            crate::settlement::delta(alice, -46),
            crate::settlement::delta(bob, 46),
        ],
    )
    .expect("batch");
    env.chain
        .transact(
            env.operator,
            env.d.settlement,
            Settlement::settleCall {
                batchId: 5,
                root: batch.root,
                deltas: batch.packed_deltas(),
            },
        )
        .await
        .expect("settle");
    let (inner, sibling) = (
        hash_pair(leaves[0], leaves[1]),
        hash_pair(leaves[2], leaves[3]),
    );
    assert_eq!(hash_pair(inner, sibling), tree.root());

    // The old call: verifyLeaf(uint64,bytes32,bytes32[]) with the inner node.
    alloy::sol! {
        function verifyLeaf(uint64 batchId, bytes32 leaf, bytes32[] proof) external view returns (bool);
    }
    let old = verifyLeafCall {
        batchId: 5,
        leaf: inner,
        proof: vec![sibling],
    };
    let answer = env
        .chain
        .call(
            Address::ZERO,
            env.d.settlement,
            Bytes::from(old.abi_encode()),
        )
        .await;
    let proved = answer
        .ok()
        .and_then(|out| verifyLeafCall::abi_decode_returns(&out).ok())
        .unwrap_or(false);
    assert!(!proved, "an inner node proved a trade");

    // The real trade proves from its fields.
    let TradeLeaf::Trade {
        buyer,
        seller,
        energy_wh,
        amount,
        ..
    } = trades[0]
    else {
        unreachable!("built as trades")
    };
    let ok = env
        .chain
        .view(
            env.d.settlement,
            Settlement::verifyTradeCall {
                batchId: 5,
                buyer,
                seller,
                energyWh: energy_wh,
                amount,
                proof: tree.proof(0).expect("proof"),
            },
        )
        .await
        .expect("verifyTrade");
    assert!(ok);
}

async fn a_stricter_allowance_waits_a_looser_one_applies_at_once<C: Chain>(env: Env<C>) {
    let alice = actor(1);
    env.fund(alice, tokens(1)).await;
    let default = env
        .chain
        .view(env.d.settlement, Settlement::defaultAllowanceCall {})
        .await
        .expect("default");
    set_allowance(&env, alice, 1_000, 86_400).await;
    // The engine has `withdrawalDelay` to stop accepting bids the lower allowance would not pay.
    assert_eq!(remaining(&env, alice).await, U256::from(default));
    env.pass_withdrawal_delay().await;
    assert_eq!(remaining(&env, alice).await, U256::from(1_000u64));
    set_allowance(&env, alice, 2_000, 3_600).await;
    assert_eq!(remaining(&env, alice).await, U256::from(2_000u64));
    let r = try_allowance(&env, alice, 1, 60).await;
    assert!(matches!(revert_of::<E, _>(r), E::InvalidTerms(_)));
    // An amount is a round figure m × 10^e with m < 2^32; 2^32 + 1 is not.
    let r = try_allowance(&env, alice, 4_294_967_297, 86_400).await;
    assert!(matches!(revert_of::<E, _>(r), E::InvalidTerms(_)));
    set_allowance(&env, alice, 5_000_000_000_000, 3_600).await;
    assert_eq!(
        remaining(&env, alice).await,
        U256::from(5_000_000_000_000u64)
    );
}

/// When the treasury cannot front a shortfall, the batch's credits carry it pro rata, rounded
/// up; the rounding excess goes to the treasury and the cut is public.
async fn an_uncovered_shortfall_cuts_the_credits_pro_rata<C: Chain>(env: Env<C>) {
    let (empty, bob, carol, dave) = (actor(1), actor(2), actor(3), actor(4));
    for a in [empty, bob, carol, dave] {
        env.fund(a, tokens(1)).await;
    }
    deposit(&env, bob, U256::from(1_000u64)).await;
    let outcome = settle(
        &env,
        1,
        &[(empty, -999), (bob, -1_000), (carol, 1_333), (dave, 666)],
    )
    .await
    .expect("the batch settles");
    let covered = events::<Settlement::ShortfallCovered>(&outcome);
    assert_eq!(
        (covered[0].shortfall, covered[0].fronted, covered[0].cut),
        (U256::from(999u64), U256::ZERO, U256::from(999u64))
    );
    // 1 333 − ⌈1 333·999/1 999⌉ = 666; 666 − ⌈666·999/1 999⌉ = 333; the excess 1 to the treasury.
    assert_eq!(balance(&env, carol).await, U256::from(666u64));
    assert_eq!(balance(&env, dave).await, U256::from(333u64));
    assert_eq!(balance(&env, env.deployer).await, U256::from(1u64));
    assert_eq!(debt(&env, empty).await, U256::from(999u64));
    assert_conserved(&env, &[empty, bob, carol, dave, env.deployer]).await;
}

/// A key without gas money (a custodial key of the engine, a fresh wallet) opens its account
/// by signing `OpenAccount(account)` under the contract's EIP-712 domain; anyone submits it.
async fn a_signature_opens_an_account<C: Chain>(env: Env<C>) {
    let key = PrivateKeySigner::random();
    let other = PrivateKeySigner::random();
    let open_for =
        |account: Address, signature: Bytes| Settlement::openAccountForCall { account, signature };
    // Another key's signature (of its own statement) does not open this account.
    let r = env
        .chain
        .transact(
            env.operator,
            env.d.settlement,
            open_for(key.address(), env.open_signature(&other).await),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::InvalidSignature(_)));
    env.chain
        .transact(
            env.operator,
            env.d.settlement,
            open_for(key.address(), env.open_signature(&key).await),
        )
        .await
        .expect("open");
    assert!(
        env.chain
            .view(
                env.d.settlement,
                Settlement::isOpenCall {
                    account: key.address()
                }
            )
            .await
            .expect("isOpen")
    );
}
