//! Settlement: deposits, net batches, the checks that keep money conserved, Merkle proofs.

use crate::harness::{Env, actor, embedded, revert_of, tokens};
use crate::on_both_chains;
use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::bindings::Settlement::SettlementErrors as E;
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::{
    Chain, ChainSettlement, MerkleTree, NetDelta, SettlementBackend, SettlementBatch, TradeLeaf,
};
use proptest::prelude::*;

on_both_chains!(
    settles_a_slot_and_rejects_bad_batches,
    trades_prove_against_the_root
);

fn delta(account: Address, amount: i128) -> NetDelta {
    NetDelta { account, amount }
}

async fn deposit<C: Chain>(env: &Env<C>, who: Address, amount: U256) {
    env.chain
        .transact(who, env.d.settlement, Settlement::depositCall { amount })
        .await
        .expect("deposit");
}

/// Σ balances == totalBalances == tokens the contract holds.
async fn assert_conserved<C: Chain>(env: &Env<C>, accounts: &[Address]) {
    let mut sum = U256::ZERO;
    for a in accounts {
        sum += env
            .chain
            .view(env.d.settlement, Settlement::balanceOfCall { account: *a })
            .await
            .expect("balance");
    }
    let total = env
        .chain
        .view(env.d.settlement, Settlement::totalBalancesCall {})
        .await
        .expect("total");
    let held = env
        .token_balance(env.d.payment_token, env.d.settlement)
        .await;
    assert_eq!(sum, total);
    assert_eq!(total, held);
}

async fn settles_a_slot_and_rejects_bad_batches<C: Chain>(env: Env<C>) {
    let (alice, bob, carol) = (actor(1), actor(2), actor(3));
    for a in [alice, bob, carol] {
        env.fund(a, tokens(1_000)).await;
        deposit(&env, a, U256::from(1_000_000u64)).await;
    }
    let backend = ChainSettlement::new(&env.chain, env.d.settlement, env.operator);
    let root = B256::repeat_byte(7);

    // Alice buys from Bob (600) and Carol (300); Carol is also the fee recipient (100).
    let batch = SettlementBatch::new(
        1,
        root,
        [delta(alice, -1_000), delta(bob, 600), delta(carol, 400)],
    )
    .expect("batch");
    backend.submit_batch(&batch).await.expect("settle");
    assert_eq!(
        backend.balance(alice).await.expect("balance"),
        U256::from(999_000u64)
    );
    assert_eq!(
        backend.balance(bob).await.expect("balance"),
        U256::from(1_000_600u64)
    );
    assert_eq!(backend.batch_root(1).await.expect("root"), Some(root));
    assert_eq!(backend.batch_root(2).await.expect("root"), None);
    assert_conserved(&env, &[alice, bob, carol]).await;

    // A retried batch id is rejected.
    assert!(matches!(
        revert_of::<E, _>(backend.submit_batch(&batch).await),
        E::BatchAlreadySettled(_)
    ));

    // Unbalanced, overdrawn, unordered and unauthorised batches change nothing.
    let settle = |id: u64, deltas: Vec<NetDelta>| Settlement::settleCall {
        batchId: id,
        root,
        deltas: deltas.iter().map(NetDelta::packed).collect(),
    };
    let mut sorted = [alice, bob, carol];
    sorted.sort();
    let r = env
        .chain
        .transact(
            env.operator,
            env.d.settlement,
            settle(2, vec![delta(sorted[0], 5), delta(sorted[1], -4)]),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::BatchNotBalanced(_)));
    let r = env
        .chain
        .transact(
            env.operator,
            env.d.settlement,
            settle(
                2,
                vec![delta(sorted[0], -2_000_000), delta(sorted[1], 2_000_000)],
            ),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::InsufficientBalance(_)));
    let r = env
        .chain
        .transact(
            env.operator,
            env.d.settlement,
            settle(2, vec![delta(sorted[1], 5), delta(sorted[0], -5)]),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::AccountsNotAscending(_)));
    let r = env
        .chain
        .transact(
            env.operator,
            env.d.settlement,
            settle(2, vec![delta(sorted[0], 5), delta(sorted[0], -5)]),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::AccountsNotAscending(_)));
    let r = env
        .chain
        .transact(
            alice,
            env.d.settlement,
            settle(2, vec![delta(sorted[0], 5), delta(sorted[1], -5)]),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NotOperator(_)));
    assert_eq!(backend.batch_root(2).await.expect("root"), None);
    assert_conserved(&env, &[alice, bob, carol]).await;

    // Withdrawals pay out exactly the balance, never more.
    let before = env.token_balance(env.d.payment_token, bob).await;
    env.chain
        .transact(
            bob,
            env.d.settlement,
            Settlement::withdrawCall {
                amount: U256::from(1_000_600u64),
            },
        )
        .await
        .expect("withdraw");
    assert_eq!(
        env.token_balance(env.d.payment_token, bob).await - before,
        U256::from(1_000_600u64)
    );
    let r = env
        .chain
        .transact(
            bob,
            env.d.settlement,
            Settlement::withdrawCall {
                amount: U256::from(1u64),
            },
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::InsufficientBalance(_)));
    assert_conserved(&env, &[alice, bob, carol]).await;
}

async fn trades_prove_against_the_root<C: Chain>(env: Env<C>) {
    let (alice, bob) = (actor(1), actor(2));
    for a in [alice, bob] {
        env.fund(a, tokens(10)).await;
        deposit(&env, a, U256::from(10_000u64)).await;
    }
    let leaves: Vec<TradeLeaf> = (0..5u64)
        .map(|i| TradeLeaf::Trade {
            batch_id: 9,
            buyer: alice,
            seller: bob,
            energy_wh: 500 + i,
            amount: U256::from(100 + i),
        })
        .chain([TradeLeaf::Reading {
            batch_id: 9,
            digest: B256::repeat_byte(3),
        }])
        .collect();
    let tree = MerkleTree::new(leaves.iter().map(TradeLeaf::hash).collect()).expect("tree");
    let total: i128 = (0..5).map(|i| 100 + i).sum();
    let batch = SettlementBatch::new(9, tree.root(), [delta(alice, -total), delta(bob, total)])
        .expect("batch");
    ChainSettlement::new(&env.chain, env.d.settlement, env.operator)
        .submit_batch(&batch)
        .await
        .expect("settle");

    // The contract computes the same leaf hashes as the Rust side.
    let on_chain = env
        .chain
        .view(
            env.d.settlement,
            Settlement::tradeLeafCall {
                batchId: 9,
                buyer: alice,
                seller: bob,
                energyWh: 500,
                amount: U256::from(100u64),
            },
        )
        .await
        .expect("tradeLeaf");
    assert_eq!(on_chain, leaves[0].hash());
    for (i, leaf) in leaves.iter().enumerate() {
        let proof = tree.proof(i).expect("proof");
        let ok = env
            .chain
            .view(
                env.d.settlement,
                Settlement::verifyLeafCall {
                    batchId: 9,
                    leaf: leaf.hash(),
                    proof: proof.clone(),
                },
            )
            .await
            .expect("verifyLeaf");
        assert!(ok, "leaf {i}");
        // The same proof does not prove the leaf in another batch.
        let other = env
            .chain
            .view(
                env.d.settlement,
                Settlement::verifyLeafCall {
                    batchId: 8,
                    leaf: leaf.hash(),
                    proof,
                },
            )
            .await
            .expect("verifyLeaf");
        assert!(!other);
    }
    let forged = TradeLeaf::Trade {
        batch_id: 9,
        buyer: alice,
        seller: bob,
        energy_wh: 500,
        amount: U256::from(1u64),
    };
    let ok = env
        .chain
        .view(
            env.d.settlement,
            Settlement::verifyLeafCall {
                batchId: 9,
                leaf: forged.hash(),
                proof: tree.proof(0).expect("proof"),
            },
        )
        .await
        .expect("verifyLeaf");
    assert!(!ok);
}

/// One step of the settlement property test.
#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, u64),
    Withdraw(usize, u64),
    /// Pairs (payer, payee, amount); netted into one batch.
    Batch(Vec<(usize, usize, u64)>),
    /// Replays the last batch id.
    Replay,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..5usize, 1..5_000u64).prop_map(|(a, n)| Op::Deposit(a, n)),
        (0..5usize, 1..5_000u64).prop_map(|(a, n)| Op::Withdraw(a, n)),
        prop::collection::vec((0..5usize, 0..5usize, 1..3_000u64), 1..8).prop_map(Op::Batch),
        Just(Op::Replay),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the engine sends, the contract's balances follow an exact model, never go
    /// below zero, and always add up to the tokens it holds.
    #[test]
    fn settlement_matches_model_and_conserves_tokens(ops in prop::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let env = embedded().await;
            let accounts: Vec<Address> = (1..=5).map(actor).collect();
            for a in &accounts {
                env.fund(*a, tokens(1)).await;
            }
            let backend = ChainSettlement::new(&env.chain, env.d.settlement, env.operator);
            let mut model = [0u64; 5];
            let mut next_id = 1u64;
            for op in ops {
                match op {
                    Op::Deposit(a, n) => {
                        deposit(&env, accounts[a], U256::from(n)).await;
                        model[a] += n;
                    }
                    Op::Withdraw(a, n) => {
                        let r = env.chain.transact(accounts[a], env.d.settlement, Settlement::withdrawCall { amount: U256::from(n) }).await;
                        assert_eq!(r.is_ok(), n <= model[a]);
                        if r.is_ok() { model[a] -= n; }
                    }
                    Op::Batch(pairs) => {
                        let mut net = [0i128; 5];
                        for (from, to, n) in &pairs {
                            net[*from] -= i128::from(*n);
                            net[*to] += i128::from(*n);
                        }
                        let batch = SettlementBatch::new(
                            next_id,
                            B256::repeat_byte(1),
                            (0..5).map(|i| delta(accounts[i], net[i])),
                        ).expect("balanced by construction");
                        let feasible = (0..5).all(|i| i128::from(model[i]) + net[i] >= 0);
                        let r = backend.submit_batch(&batch).await;
                        assert_eq!(r.is_ok(), feasible, "{r:?}");
                        if r.is_ok() {
                            for i in 0..5 {
                                model[i] = u64::try_from(i128::from(model[i]) + net[i]).expect("non-negative");
                            }
                            next_id += 1;
                        } else {
                            assert!(matches!(revert_of::<E, _>(r), E::InsufficientBalance(_)));
                        }
                    }
                    Op::Replay => {
                        if next_id > 1 {
                            let batch = SettlementBatch { id: next_id - 1, root: B256::repeat_byte(1), deltas: vec![] };
                            assert!(matches!(revert_of::<E, _>(backend.submit_batch(&batch).await), E::BatchAlreadySettled(_)));
                        }
                    }
                }
                for (i, a) in accounts.iter().enumerate() {
                    assert_eq!(backend.balance(*a).await.expect("balance"), U256::from(model[i]));
                }
                let held = env.token_balance(env.d.payment_token, env.d.settlement).await;
                assert_eq!(held, U256::from(model.iter().sum::<u64>()));
                let supply = env.chain.view(env.d.payment_token, GridToken::totalSupplyCall {}).await.expect("supply");
                assert_eq!(supply, tokens(1_000_000_000));
            }
        });
    }
}
