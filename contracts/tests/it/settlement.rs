//! Settlement: deposits, net batches, the checks that keep money conserved, Merkle proofs,
//! and a property test of the whole contract against an exact model.

use crate::harness::{Env, actor, embedded_fixed_clock, revert_of, tokens};
use crate::on_both_chains;
use alloy::primitives::{Address, B256, U256};
use gridshare_contracts::bindings::Settlement::SettlementErrors as E;
use gridshare_contracts::bindings::{GridToken, Settlement};
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::{
    Chain, ChainError, ChainSettlement, MerkleTree, NetDelta, SettlementBackend, SettlementBatch,
    TradeLeaf, TxOutcome,
};
use proptest::prelude::*;

on_both_chains!(
    settles_a_slot_and_rejects_bad_batches,
    trades_prove_against_the_root,
    a_permit_replaces_the_approval
);

pub(crate) fn delta(account: Address, amount: i128) -> NetDelta {
    NetDelta { account, amount }
}

pub(crate) async fn deposit<C: Chain>(env: &Env<C>, who: Address, amount: U256) {
    env.chain
        .transact(who, env.d.settlement, Settlement::depositCall { amount })
        .await
        .expect("deposit");
}

/// The operator settles batch `id` (root 0x77…) netting `deltas`.
pub(crate) async fn settle<C: Chain>(
    env: &Env<C>,
    id: u64,
    deltas: &[(Address, i128)],
) -> Result<TxOutcome, ChainError> {
    let batch = SettlementBatch::new(
        id,
        B256::repeat_byte(0x77),
        deltas.iter().map(|(a, n)| delta(*a, *n)),
    )
    .expect("balanced batch");
    env.chain
        .transact(
            env.operator,
            env.d.settlement,
            Settlement::settleCall {
                batchId: id,
                root: batch.root,
                deltas: batch.packed_deltas(),
            },
        )
        .await
}

pub(crate) async fn balance<C: Chain>(env: &Env<C>, account: Address) -> U256 {
    env.chain
        .view(env.d.settlement, Settlement::balanceOfCall { account })
        .await
        .expect("balance")
}

pub(crate) async fn debt<C: Chain>(env: &Env<C>, account: Address) -> U256 {
    env.chain
        .view(env.d.settlement, Settlement::debtOfCall { account })
        .await
        .expect("debt")
}

pub(crate) async fn pending<C: Chain>(env: &Env<C>, account: Address) -> U256 {
    U256::from(
        env.chain
            .view(env.d.settlement, Settlement::withdrawalOfCall { account })
            .await
            .expect("withdrawal")
            .amount,
    )
}

/// Σ balances == totalBalances, Σ pending == totalPendingWithdrawals, Σ debt == totalDebt,
/// and the contract holds exactly totalBalances + totalPendingWithdrawals tokens.
pub(crate) async fn assert_conserved<C: Chain>(env: &Env<C>, accounts: &[Address]) {
    let (mut balances, mut pendings, mut debts) = (U256::ZERO, U256::ZERO, U256::ZERO);
    for a in accounts {
        balances += balance(env, *a).await;
        pendings += pending(env, *a).await;
        debts += debt(env, *a).await;
    }
    let s = env.d.settlement;
    let total = env
        .chain
        .view(s, Settlement::totalBalancesCall {})
        .await
        .expect("total");
    let total_pending = env
        .chain
        .view(s, Settlement::totalPendingWithdrawalsCall {})
        .await
        .expect("total pending");
    let total_debt = env
        .chain
        .view(s, Settlement::totalDebtCall {})
        .await
        .expect("total debt");
    let held = env.token_balance(env.d.payment_token, s).await;
    assert_eq!(balances, total, "Σ balances");
    assert_eq!(pendings, total_pending, "Σ pending withdrawals");
    assert_eq!(debts, total_debt, "Σ debts");
    assert_eq!(held, total + total_pending, "tokens held");
}

async fn settles_a_slot_and_rejects_bad_batches<C: Chain>(env: Env<C>) {
    let (alice, bob, carol) = (actor(1), actor(2), actor(3));
    for a in [alice, bob, carol] {
        env.fund(a, tokens(1_000)).await;
        deposit(&env, a, U256::from(1_000_000u64)).await;
    }
    let everyone = [alice, bob, carol, env.deployer];
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
    assert_conserved(&env, &everyone).await;

    // A retried batch id is rejected.
    assert!(matches!(
        revert_of::<E, _>(backend.submit_batch(&batch).await),
        E::BatchAlreadySettled(_)
    ));

    // Unbalanced, unordered, unauthorised and unopened batches change nothing.
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
    let stranger = Address::repeat_byte(0x01);
    let r = env
        .chain
        .transact(
            env.operator,
            env.d.settlement,
            settle(2, vec![delta(stranger, -5), delta(sorted[2], 5)]),
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::AccountNotOpened(_)));
    assert_eq!(backend.batch_root(2).await.expect("root"), None);
    assert_conserved(&env, &everyone).await;

    // Withdrawals go through a request and pay out exactly the balance, never more.
    let request = |amount: u64| Settlement::requestWithdrawalCall {
        amount: U256::from(amount),
    };
    let r = env
        .chain
        .transact(bob, env.d.settlement, request(1_000_601))
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::InsufficientBalance(_)));
    env.chain
        .transact(bob, env.d.settlement, request(1_000_600))
        .await
        .expect("request");
    assert_conserved(&env, &everyone).await;
    let r = env
        .chain
        .transact(bob, env.d.settlement, Settlement::withdrawCall {})
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::TooEarly(_)));
    env.pass_withdrawal_delay().await;
    let before = env.token_balance(env.d.payment_token, bob).await;
    env.chain
        .transact(bob, env.d.settlement, Settlement::withdrawCall {})
        .await
        .expect("withdraw");
    assert_eq!(
        env.token_balance(env.d.payment_token, bob).await - before,
        U256::from(1_000_600u64)
    );
    let r = env
        .chain
        .transact(bob, env.d.settlement, Settlement::withdrawCall {})
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NothingPending(_)));
    assert_conserved(&env, &everyone).await;
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
    let verify = |batch_id: u64, leaf: &TradeLeaf, proof: Vec<B256>| {
        let env = &env;
        let leaf = *leaf;
        async move {
            match leaf {
                TradeLeaf::Trade {
                    buyer,
                    seller,
                    energy_wh,
                    amount,
                    ..
                } => env
                    .chain
                    .view(
                        env.d.settlement,
                        Settlement::verifyTradeCall {
                            batchId: batch_id,
                            buyer,
                            seller,
                            energyWh: energy_wh,
                            amount,
                            proof,
                        },
                    )
                    .await
                    .expect("verifyTrade"),
                TradeLeaf::Reading { digest, .. } => env
                    .chain
                    .view(
                        env.d.settlement,
                        Settlement::verifyReadingCall {
                            batchId: batch_id,
                            readingDigest: digest,
                            proof,
                        },
                    )
                    .await
                    .expect("verifyReading"),
            }
        }
    };
    for (i, leaf) in leaves.iter().enumerate() {
        let proof = tree.proof(i).expect("proof");
        assert!(verify(9, leaf, proof.clone()).await, "leaf {i}");
        // The same proof does not prove the leaf in another batch.
        assert!(!verify(8, leaf, proof).await, "leaf {i} in batch 8");
    }
    let forged = TradeLeaf::Trade {
        batch_id: 9,
        buyer: alice,
        seller: bob,
        energy_wh: 500,
        amount: U256::from(1u64),
    };
    assert!(!verify(9, &forged, tree.proof(0).expect("proof")).await);
}

/// A household deposits with an EIP-2612 permit instead of a prior approval transaction; a
/// permit copied from the mempool and used first does not make the deposit fail.
async fn a_permit_replaces_the_approval<C: Chain>(env: Env<C>) {
    use alloy::signers::SignerSync;
    use alloy::sol_types::SolStruct;
    alloy::sol! {
        struct Permit { address owner; address spender; uint256 value; uint256 nonce; uint256 deadline; }
    }
    let key = alloy::signers::local::PrivateKeySigner::random();
    let owner = key.address();
    env.chain.prepare_account(owner).await.expect("prepare");
    env.chain
        .transact(
            env.deployer,
            env.d.payment_token,
            GridToken::transferCall {
                to: owner,
                value: U256::from(5_000u64),
            },
        )
        .await
        .expect("transfer");
    let domain = env.eip712_domain(env.d.payment_token).await;
    let deadline = U256::from(env.chain.timestamp().await.expect("now") + 3_600);
    let deposit = |value: u64, nonce: u64| {
        let permit = Permit {
            owner,
            spender: env.d.settlement,
            value: U256::from(value),
            nonce: U256::from(nonce),
            deadline,
        };
        let sig = key
            .sign_hash_sync(&permit.eip712_signing_hash(&domain))
            .expect("sign");
        Settlement::depositWithPermitCall {
            amount: U256::from(value),
            deadline,
            v: 27 + u8::from(sig.v()),
            r: sig.r().into(),
            s: sig.s().into(),
        }
    };
    // No approval transaction: the contract uses the permit.
    env.chain
        .transact(owner, env.d.settlement, deposit(1_000, 0))
        .await
        .expect("deposit with permit");
    assert_eq!(balance(&env, owner).await, U256::from(1_000u64));
    // Someone front-runs the next permit itself: the allowance is there, the deposit works.
    let call = deposit(2_000, 1);
    env.chain
        .transact(
            env.deployer,
            env.d.payment_token,
            GridToken::permitCall {
                owner,
                spender: env.d.settlement,
                value: call.amount,
                deadline,
                v: call.v,
                r: call.r,
                s: call.s,
            },
        )
        .await
        .expect("permit");
    env.chain
        .transact(owner, env.d.settlement, call)
        .await
        .expect("deposit after a front-run permit");
    assert_eq!(balance(&env, owner).await, U256::from(3_000u64));
    assert!(
        env.chain
            .view(env.d.settlement, Settlement::isOpenCall { account: owner })
            .await
            .expect("isOpen")
    );
}

/// One step of the settlement property test.
#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, u64),
    Request(usize, u64),
    Withdraw(usize),
    Cancel(usize),
    /// Pairs (payer, payee, amount); netted into one batch.
    Batch(Vec<(usize, usize, u64)>),
    /// Account, amount, period in hours.
    SetAllowance(usize, u64, u32),
    /// Seconds.
    Advance(u64),
    /// Replays the last batch id.
    Replay,
}

/// Households 0..4 and the treasury (index 4).
const N: usize = 5;
const TREASURY: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..N, 1..5_000u64).prop_map(|(a, n)| Op::Deposit(a, n)),
        (0..N, 1..5_000u64).prop_map(|(a, n)| Op::Request(a, n)),
        (0..N).prop_map(Op::Withdraw),
        (0..N).prop_map(Op::Cancel),
        prop::collection::vec((0..N, 0..N, 1..3_000u64), 1..8).prop_map(Op::Batch),
        prop::collection::vec((0..N, 0..N, 1..3_000u64), 1..8).prop_map(Op::Batch),
        (0..N, 0..6_000u64, prop::sample::select(vec![1u32, 24, 168]))
            .prop_map(|(a, n, h)| Op::SetAllowance(a, n, h)),
        prop::sample::select(vec![600u64, 3_600, 6 * 3_600 + 1, 86_400]).prop_map(Op::Advance),
        Just(Op::Replay),
    ]
}

/// Allowance terms in the model: (amount, period seconds).
type Terms = (u128, u64);

/// The contract's rules, written again in Rust.
#[derive(Debug, Clone, Default)]
struct Model {
    balance: u128,
    spent: u128,
    window: u64,
    debt: u128,
    pending: u128,
    ready_at: u64,
    /// The account's own terms, and the next ones with when they apply.
    terms: Option<(Terms, Option<(Terms, u64)>)>,
}

impl Model {
    fn terms(&self, now: u64, default: Terms) -> Terms {
        match self.terms {
            None => default,
            Some((_, Some((next, at)))) if now >= at => next,
            Some((current, _)) => current,
        }
    }

    fn spend(&mut self, want: u128, now: u64, default: Terms) -> u128 {
        if want == 0 {
            return 0;
        }
        let (amount, period) = self.terms(now, default);
        if now >= self.window + period {
            self.window = now;
            self.spent = 0;
        }
        let take = want.min(amount.saturating_sub(self.spent));
        self.spent += take;
        take
    }

    fn collect(&mut self, available: u128, now: u64, default: Terms) -> u128 {
        let k = self.spend(self.debt.min(available), now, default);
        self.debt -= k;
        k
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the engine sends and the households do, no batch reverts for lack of money,
    /// every balance, pending withdrawal and debt follows an exact model (allowances, debt,
    /// the treasury fronting, pro-rata cuts), and the tokens the contract holds always equal
    /// Σ balances + Σ pending withdrawals (debts are claims, not tokens).
    #[test]
    fn settlement_matches_model_and_conserves_tokens(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let env = embedded_fixed_clock().await;
            let mut accounts: Vec<Address> = (1..=4).map(actor).collect();
            accounts.push(env.deployer);
            for a in &accounts[..TREASURY] {
                env.fund(*a, tokens(1)).await;
            }
            env.chain
                .transact(env.deployer, env.d.payment_token, GridToken::approveCall { spender: env.d.settlement, value: U256::MAX })
                .await
                .expect("approve");
            let s = env.d.settlement;
            let default = (
                env.chain.view(s, Settlement::defaultAllowanceCall {}).await.expect("default").to::<u128>(),
                u64::from(env.chain.view(s, Settlement::defaultPeriodCall {}).await.expect("period")),
            );
            let delay = env.withdrawal_delay().await;
            let mut model = vec![Model::default(); N];
            let mut deposited: u128 = 0;
            let mut next_id = 1u64;
            for op in ops {
                // Each transaction is one block, one second after the last.
                let now = env.chain.timestamp().await.expect("now") + 1;
                match op {
                    Op::Deposit(a, n) => {
                        deposit(&env, accounts[a], U256::from(n)).await;
                        let n = u128::from(n);
                        let k = model[a].collect(n, now, default);
                        model[a].balance += n - k;
                        model[TREASURY].balance += k;
                        deposited += n;
                    }
                    Op::Request(a, n) => {
                        let r = env.chain.transact(accounts[a], s, Settlement::requestWithdrawalCall { amount: U256::from(n) }).await;
                        let n = u128::from(n);
                        assert_eq!(r.is_ok(), n <= model[a].balance, "{r:?}");
                        if r.is_ok() {
                            model[a].balance -= n;
                            model[a].pending += n;
                            model[a].ready_at = now + delay;
                        }
                    }
                    Op::Withdraw(a) => {
                        let r = env.chain.transact(accounts[a], s, Settlement::withdrawCall {}).await;
                        let m = &mut model[a];
                        assert_eq!(r.is_ok(), m.pending > 0 && now >= m.ready_at, "{r:?}");
                        if r.is_ok() {
                            let pay = m.pending;
                            m.pending = 0;
                            let k = m.collect(pay, now, default);
                            model[TREASURY].balance += k;
                            deposited -= pay - k;
                        }
                    }
                    Op::Cancel(a) => {
                        let r = env.chain.transact(accounts[a], s, Settlement::cancelWithdrawalCall {}).await;
                        assert_eq!(r.is_ok(), model[a].pending > 0, "{r:?}");
                        if r.is_ok() {
                            model[a].balance += model[a].pending;
                            model[a].pending = 0;
                        }
                    }
                    Op::SetAllowance(a, amount, hours) => {
                        let period = u64::from(hours) * 3_600;
                        env.chain
                            .transact(accounts[a], s, Settlement::setAllowanceCall {
                                amount: alloy::primitives::Uint::<80, 2>::from(amount),
                                period: hours * 3_600,
                            })
                            .await
                            .expect("set allowance");
                        let m = &mut model[a];
                        let (current, current_period) = m.terms(now, default);
                        let amount = u128::from(amount);
                        m.terms = Some(if amount >= current && period <= current_period {
                            ((amount, period), None)
                        } else {
                            ((current, current_period), Some(((amount, period), now + delay)))
                        });
                    }
                    Op::Advance(secs) => {
                        env.chain.advance_time(secs).await.expect("advance");
                    }
                    Op::Batch(pairs) => {
                        let mut net = [0i128; N];
                        for (from, to, n) in &pairs {
                            net[*from] -= i128::from(*n);
                            net[*to] += i128::from(*n);
                        }
                        let deltas: Vec<(Address, i128)> = (0..N).map(|i| (accounts[i], net[i])).collect();
                        settle(&env, next_id, &deltas).await.expect("a batch never reverts for lack of money");
                        next_id += 1;
                        // Debits in address order (the order does not matter to the model:
                        // each account appears once), then the treasury, then credits.
                        let debits: u128 = net.iter().filter(|n| **n < 0).map(|n| n.unsigned_abs()).sum();
                        let mut shortfall = 0u128;
                        for i in (0..N).filter(|i| net[*i] < 0) {
                            let d = net[i].unsigned_abs();
                            let m = &mut model[i];
                            let have = if m.balance < d { m.balance + m.pending } else { m.balance };
                            let taken = m.spend(d.min(have), now, default);
                            let from_balance = taken.min(m.balance);
                            m.balance -= from_balance;
                            m.pending -= taken - from_balance;
                            m.debt += d - taken;
                            shortfall += d - taken;
                        }
                        let mut uncovered = 0;
                        if shortfall > 0 {
                            let t = &mut model[TREASURY];
                            let fronted = t.spend(shortfall.min(t.balance), now, default);
                            t.balance -= fronted;
                            uncovered = shortfall - fronted;
                        }
                        let (mut cut_total, mut repaid) = (0u128, 0u128);
                        for i in (0..N).filter(|i| net[*i] > 0) {
                            let mut c = net[i].unsigned_abs();
                            if uncovered > 0 {
                                let cut = (c * uncovered).div_ceil(debits);
                                c -= cut;
                                cut_total += cut;
                            }
                            let k = model[i].collect(c, now, default);
                            repaid += k;
                            model[i].balance += c - k;
                        }
                        model[TREASURY].balance += repaid + cut_total - uncovered;
                    }
                    Op::Replay => {
                        if next_id > 1 {
                            let r = env.chain.transact(env.operator, s, Settlement::settleCall { batchId: next_id - 1, root: B256::repeat_byte(1), deltas: vec![] }).await;
                            assert!(matches!(revert_of::<E, _>(r), E::BatchAlreadySettled(_)));
                        }
                    }
                }
                for (i, a) in accounts.iter().enumerate() {
                    assert_eq!(balance(&env, *a).await, U256::from(model[i].balance), "balance of {i}");
                    assert_eq!(pending(&env, *a).await, U256::from(model[i].pending), "pending of {i}");
                    assert_eq!(debt(&env, *a).await, U256::from(model[i].debt), "debt of {i}");
                }
                assert_conserved(&env, &accounts).await;
                let held = env.token_balance(env.d.payment_token, s).await;
                assert_eq!(held, U256::from(deposited), "tokens in = deposits − payouts");
            }
        });
    }
}
