//! Meter registry, attestation, staking and unbonding, rewards for settled local sales, fraud
//! proofs and slashing. Each attack the contracts once let through is a test named after it.

use crate::harness::{Env, TestMeter, actor, embedded, revert_of, tokens};
use crate::on_both_chains;
use alloy::primitives::{Address, Bytes, U256};
use gridshare_contracts::bindings::MeterStaking;
use gridshare_contracts::bindings::MeterStaking::MeterStakingErrors as E;
use gridshare_contracts::chain::ChainExt;
use gridshare_contracts::{Chain, ChainError, StakingParams, TxOutcome};
use proptest::prelude::*;

on_both_chains!(
    stake_unbond_and_withdraw,
    copied_or_squatted_registrations_are_refused,
    owner_rotates_the_key_and_deregisters,
    an_unattested_fake_meter_earns_nothing,
    credited_energy_is_capped_by_capacity_and_sales,
    self_trades_and_one_grid_point_earn_nothing,
    only_the_owner_or_its_delegate_proves_and_claims,
    proofs_are_contiguous_so_import_intervals_cannot_be_skipped,
    stake_must_be_bonded_through_the_epoch_it_earns_in,
    rewards_vest_and_a_slash_takes_them_with_the_stake,
    a_copied_fraud_report_pays_nobody_else,
    a_reused_sequence_number_with_consistent_counters_is_not_fraud,
    fraud_proofs_slash_exactly_once,
    empty_epochs_return_their_emission_to_the_treasury,
    deployment_parameters_are_validated,
);

/// A signed reading: (encoding, signature).
type Signed = (Bytes, Bytes);

/// The `first` of every proof after a key's first: the contract knows where it starts.
fn contiguous() -> Signed {
    (Bytes::new(), Bytes::new())
}

fn signed(m: &TestMeter, seq: u64, at_ms: u64, import_wh: u64, export_wh: u64) -> Signed {
    m.sign(m.reading(seq, at_ms, import_wh, export_wh))
}

async fn prove<C: Chain>(
    env: &Env<C>,
    from: Address,
    m: &TestMeter,
    first: &Signed,
    last: &Signed,
) -> Result<TxOutcome, ChainError> {
    env.staking()
        .prove_epoch(from, m.id, first.clone(), last.clone())
        .await
}

async fn claim<C: Chain>(env: &Env<C>, from: Address, m: &TestMeter, through: u64) -> U256 {
    env.staking()
        .claim(from, m.id, through)
        .await
        .expect("claim")
        .0
}

async fn credited<C: Chain>(env: &Env<C>, m: &TestMeter, epoch: u64) -> u64 {
    env.staking()
        .credit(m.id, epoch)
        .await
        .expect("credit")
        .creditedWh
}

async fn u<C: Chain, T: alloy::sol_types::SolCall<Return = U256> + Send>(
    env: &Env<C>,
    call: T,
) -> U256 {
    env.chain.view(env.d.staking, call).await.expect("view")
}

/// Moves the clock past the vesting of `epoch`'s rewards.
async fn vest<C: Chain>(env: &Env<C>, epoch: u64) {
    env.close_epoch(epoch).await;
    env.chain
        .advance_time(env.params.unbonding_period)
        .await
        .expect("advance");
}

/// Every token the staking contract holds is stake, unbonding stake, or reward funding not
/// yet paid, returned or forfeited; paid ≤ allocated ≤ funded.
async fn assert_staking_solvent<C: Chain>(env: &Env<C>) {
    let staked = u(env, MeterStaking::totalStakedCall {}).await;
    let unbonding = u(env, MeterStaking::totalUnbondingCall {}).await;
    let funded = u(env, MeterStaking::rewardsFundedCall {}).await;
    let allocated = u(env, MeterStaking::rewardsAllocatedCall {}).await;
    let returned = u(env, MeterStaking::rewardsReturnedCall {}).await;
    let forfeited = u(env, MeterStaking::rewardsForfeitedCall {}).await;
    let paid = u(env, MeterStaking::rewardsPaidCall {}).await;
    assert!(
        paid + forfeited <= allocated,
        "paid {paid} forfeited {forfeited} allocated {allocated}"
    );
    assert!(
        allocated + returned <= funded,
        "allocated {allocated} returned {returned} funded {funded}"
    );
    assert_eq!(
        env.token_balance(env.d.network_token, env.d.staking).await,
        staked + unbonding + funded - returned - paid - forfeited
    );
}

/// Alice's attested meter with a full epoch 0 of readings: sold `sold` Wh to Bob's attested
/// meter, exported `exported` Wh. Returns (alice's meter, bob's meter, last proven reading).
async fn one_earning_epoch<C: Chain>(
    env: &Env<C>,
    sold: u64,
    exported: u64,
) -> (TestMeter, TestMeter, Signed) {
    let alice = actor(1);
    let (ma, mb) = env.neighbours("alice-pv", "bob-home").await;
    // Readings can start before the epoch: stake was bonded before it began.
    env.chain.advance_time(10).await.expect("advance");
    env.settle_sales(1, env.time_in_epoch(0, 3_600), &[(&ma, &mb, sold)])
        .await;
    let first = signed(&ma, 1, env.time_in_epoch(0, 0), 0, 0);
    let last = signed(&ma, 2, env.time_in_epoch(0, 86_399), 0, exported);
    env.end_epoch(0).await;
    prove(env, alice, &ma, &first, &last).await.expect("prove");
    (ma, mb, last)
}

async fn stake_unbond_and_withdraw<C: Chain>(env: Env<C>) {
    let (alice, mallory) = (actor(1), actor(9));
    env.fund(alice, tokens(1_000)).await;
    env.fund(mallory, tokens(1_000)).await;
    let meter = TestMeter::new("home-01");
    env.register(alice, &meter, tokens(150)).await;
    let can_sell = |m: &TestMeter| MeterStaking::canSellCall { meterId: m.id };
    assert!(
        env.chain
            .view(env.d.staking, can_sell(&meter))
            .await
            .expect("v")
    );

    let r = env.staking().unbond(mallory, meter.id, tokens(1)).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotMeterOwner(_)));
    let before = env.token_balance(env.d.network_token, alice).await;
    env.staking()
        .unbond(alice, meter.id, tokens(100))
        .await
        .expect("unbond");
    // 50 left: below the minimum, so the meter may no longer sell.
    assert!(
        !env.chain
            .view(env.d.staking, can_sell(&meter))
            .await
            .expect("v")
    );
    assert_eq!(
        env.staking().meter(meter.id).await.expect("m").stake,
        tokens(50)
    );
    assert_staking_solvent(&env).await;
    let r = env.staking().withdraw(alice, meter.id).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotUnbonded(_)));
    env.chain
        .advance_time(env.params.unbonding_period + 1)
        .await
        .expect("advance");
    env.staking()
        .withdraw(alice, meter.id)
        .await
        .expect("withdraw");
    assert_eq!(
        env.token_balance(env.d.network_token, alice).await - before,
        tokens(100)
    );
    assert_eq!(u(&env, MeterStaking::totalStakedCall {}).await, tokens(50));
    assert_staking_solvent(&env).await;
}

/// Attack: copy a `registerMeter` call from the mempool to own another household's meter, or
/// register someone's public key under a junk id to lock them out.
async fn copied_or_squatted_registrations_are_refused<C: Chain>(env: Env<C>) {
    let (alice, mallory) = (actor(1), actor(9));
    env.fund(alice, tokens(1_000)).await;
    env.fund(mallory, tokens(1_000)).await;
    let meter = TestMeter::new("home-01");
    let sig = meter.registration(&env, alice, false).await;
    // Mallory sends Alice's exact call from her own address.
    let r = env
        .staking()
        .register(mallory, meter.id, (meter.x(), meter.y()), sig.clone())
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::BadSignature(_)));
    // Mallory registers Alice's key under a junk id, with Alice's signature or her own junk.
    let junk = TestMeter::new("junk-01");
    for s in [sig.clone(), Bytes::from(vec![7u8; 64])] {
        let r = env
            .staking()
            .register(mallory, junk.id, (meter.x(), meter.y()), s)
            .await;
        assert!(matches!(revert_of::<E, _>(r), E::BadSignature(_)));
    }
    // Alice's own registration goes through, once.
    env.staking()
        .register(alice, meter.id, (meter.x(), meter.y()), sig.clone())
        .await
        .expect("register");
    let r = env
        .staking()
        .register(alice, meter.id, (meter.x(), meter.y()), sig)
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::MeterExists(_)));
    // A key serves one meter.
    let other = TestMeter::new("home-02");
    let sig = meter.registration_for(&env, alice, &other).await;
    let r = env
        .staking()
        .register(alice, other.id, (meter.x(), meter.y()), sig)
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::KeyInUse(_)));
    // A verifier attests only the registered key, and only a verifier attests.
    let r = env
        .staking()
        .attest(
            mallory,
            meter.id,
            (meter.x(), meter.y()),
            TestMeter::device(),
            5_000,
            5_000,
            meter.id,
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NotVerifier(_)));
    let r = env
        .staking()
        .attest(
            env.deployer,
            meter.id,
            (other.x(), other.y()),
            TestMeter::device(),
            5_000,
            5_000,
            meter.id,
        )
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::AttestedKeyMismatch(_)));
}

async fn owner_rotates_the_key_and_deregisters<C: Chain>(env: Env<C>) {
    let (alice, eve) = (actor(1), actor(6));
    env.fund(alice, tokens(1_000)).await;
    env.fund(eve, tokens(1)).await;
    let old = TestMeter::new("home-01");
    env.register(alice, &old, tokens(100)).await;
    let new = TestMeter::with_name_of(&old);
    let sig = new.registration(&env, alice, true).await;
    let r = env
        .staking()
        .rotate_key(eve, old.id, (new.x(), new.y()), sig.clone())
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NotMeterOwner(_)));
    env.staking()
        .rotate_key(alice, old.id, (new.x(), new.y()), sig)
        .await
        .expect("rotate");
    let record = env.staking().meter(old.id).await.expect("m");
    assert_eq!((record.keyX, record.attested), (new.x(), false));
    // The old key's contradicting readings still slash: rotating does not escape a fraud proof.
    let t = env.time_in_epoch(0, 60);
    env.staking()
        .report_fraud(eve, signed(&old, 5, t, 0, 100), signed(&old, 6, t, 0, 90))
        .await
        .expect("fraud by the old key");
    assert!(env.staking().meter(old.id).await.expect("m").slashed);

    // Deregistering unbonds the whole stake; after withdrawal the id is free again.
    let m2 = TestMeter::new("home-02");
    env.register(alice, &m2, tokens(100)).await;
    env.staking()
        .deregister(alice, m2.id)
        .await
        .expect("deregister");
    let record = env.staking().meter(m2.id).await.expect("m");
    assert_eq!(
        (record.stake, record.unbonding, record.active),
        (U256::ZERO, tokens(100), false)
    );
    let r = env.staking().stake(alice, m2.id, tokens(1)).await;
    assert!(matches!(revert_of::<E, _>(r), E::MeterInactive(_)));
    env.chain
        .advance_time(env.params.unbonding_period + 1)
        .await
        .expect("advance");
    env.staking()
        .withdraw(alice, m2.id)
        .await
        .expect("withdraw");
    assert_eq!(
        env.staking().meter(m2.id).await.expect("m").owner,
        Address::ZERO
    );
    let again = TestMeter::with_name_of(&m2);
    env.register(alice, &again, tokens(100)).await;
    assert_staking_solvent(&env).await;
}

/// Attack: one fake meter with the minimum stake signs a reading claiming 10^15 Wh exported
/// and takes the whole epoch's emission.
async fn an_unattested_fake_meter_earns_nothing<C: Chain>(env: Env<C>) {
    let (mallory, bob) = (actor(9), actor(2));
    env.fund(mallory, tokens(1_000)).await;
    env.fund(bob, tokens(1_000)).await;
    env.fund_rewards(tokens(100_000)).await;
    let fake = TestMeter::new("fake-01");
    let buyer = TestMeter::new("bob-home");
    env.register_unattested(mallory, &fake, tokens(100)).await;
    env.register(bob, &buyer, tokens(100)).await;
    env.chain.advance_time(10).await.expect("advance");
    env.settle_sales(
        1,
        env.time_in_epoch(0, 60),
        &[(&fake, &buyer, 1_000_000_000_000_000)],
    )
    .await;
    env.end_epoch(0).await;
    let first = signed(&fake, 1, env.time_in_epoch(0, 0), 0, 0);
    let last = signed(
        &fake,
        2,
        env.time_in_epoch(0, 86_399),
        0,
        1_000_000_000_000_000,
    );
    let r = prove(&env, mallory, &fake, &first, &last).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotAttested(_)));
    assert_eq!(credited(&env, &fake, 0).await, 0);
    assert_eq!(env.staking().credit(fake.id, 0).await.expect("c").soldWh, 0);
    assert_eq!(
        u(&env, MeterStaking::sharesWhCall { epoch: 0 }).await,
        U256::ZERO
    );
}

/// Even an attested meter is credited at most min(sold, exported, capacity × epoch).
async fn credited_energy_is_capped_by_capacity_and_sales<C: Chain>(env: Env<C>) {
    // 5 kW for a day is 120 kWh.
    let (ma, _, _) = one_earning_epoch(&env, 1_000_000_000_000_000, 1_000_000_000_000_000).await;
    assert_eq!(credited(&env, &ma, 0).await, 119_998);
    let c = env.staking().credit(ma.id, 0).await.expect("c");
    assert_eq!(c.coveredS, 86_399);
}

/// Attack: the "no reward for trading with yourself" rule bypassed with a second address.
/// Sales between one owner's meters or meters at one grid connection point earn nothing; what
/// is credited is the lesser of sold and exported energy.
async fn self_trades_and_one_grid_point_earn_nothing<C: Chain>(env: Env<C>) {
    let (alice, alice2, bob) = (actor(1), actor(3), actor(2));
    for a in [alice, alice2, bob] {
        env.fund(a, tokens(1_000)).await;
    }
    let (pv, ev, twin, neighbour) = (
        TestMeter::new("alice-pv"),
        TestMeter::new("alice-ev"),
        TestMeter::new("alice-twin"),
        TestMeter::new("bob-home"),
    );
    env.register(alice, &pv, tokens(100)).await;
    env.register(alice, &ev, tokens(100)).await;
    // Alice's second address, behind her own grid connection point.
    env.register_unattested(alice2, &twin, tokens(100)).await;
    env.attest(&twin, "gcp-alice-pv", 5_000).await;
    env.register(bob, &neighbour, tokens(100)).await;
    env.chain.advance_time(10).await.expect("advance");
    let at = env.time_in_epoch(0, 600);
    env.settle_sales(
        1,
        at,
        &[
            (&pv, &ev, 4_000),
            (&pv, &twin, 3_000),
            (&pv, &neighbour, 2_000),
        ],
    )
    .await;
    assert_eq!(
        env.staking().credit(pv.id, 0).await.expect("c").soldWh,
        2_000
    );
    // Exported less than sold: the export decides.
    env.end_epoch(0).await;
    let first = signed(&pv, 1, env.time_in_epoch(0, 0), 0, 0);
    let last = signed(&pv, 2, env.time_in_epoch(0, 86_400 - 1), 0, 1_500);
    prove(&env, alice, &pv, &first, &last).await.expect("prove");
    assert_eq!(credited(&env, &pv, 0).await, 1_500 * 86_399 / 86_400);
}

/// Attack: anyone proves the last interval of another owner's epoch first and takes its reward.
async fn only_the_owner_or_its_delegate_proves_and_claims<C: Chain>(env: Env<C>) {
    let (alice, bob, mallory, engine) = (actor(1), actor(2), actor(9), actor(8));
    env.fund(alice, tokens(1_000)).await;
    env.fund(bob, tokens(1_000)).await;
    env.fund(mallory, tokens(1)).await;
    env.fund(engine, tokens(1)).await;
    env.fund_rewards(tokens(100_000)).await;
    let (ma, mb) = (TestMeter::new("alice-pv"), TestMeter::new("bob-home"));
    env.register(alice, &ma, tokens(100)).await;
    env.register(bob, &mb, tokens(100)).await;
    env.chain.advance_time(10).await.expect("advance");
    env.settle_sales(1, env.time_in_epoch(0, 60), &[(&ma, &mb, 5_000)])
        .await;
    env.end_epoch(0).await;
    let first = signed(&ma, 1, env.time_in_epoch(0, 0), 0, 0);
    let last = signed(&ma, 2, env.time_in_epoch(0, 86_399), 0, 5_000);
    let r = prove(&env, mallory, &ma, &first, &last).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotMeterOwner(_)));
    let r = prove(&env, engine, &ma, &first, &last).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotMeterOwner(_)));
    env.staking()
        .set_delegate(alice, ma.id, engine)
        .await
        .expect("delegate");
    prove(&env, engine, &ma, &first, &last)
        .await
        .expect("delegate proves");
    vest(&env, 0).await;
    let r = env.staking().claim(mallory, ma.id, 0).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotMeterOwner(_)));
    let before = env.token_balance(env.d.network_token, alice).await;
    let paid = claim(&env, engine, &ma, 0).await;
    // Alone in epoch 0: the whole emission, and the tokens go to the owner.
    assert!(
        paid <= tokens(1_000) && paid + U256::from(4_999u64) >= tokens(1_000),
        "paid {paid}"
    );
    assert_eq!(
        env.token_balance(env.d.network_token, alice).await - before,
        paid
    );
    assert_staking_solvent(&env).await;
}

/// Attack: an owner skips the intervals in which it imported and is credited gross export.
/// A proof starts at the last proven reading; counters cannot go backwards.
async fn proofs_are_contiguous_so_import_intervals_cannot_be_skipped<C: Chain>(env: Env<C>) {
    let (ma, mb, last) = one_earning_epoch(&env, 10_000, 4_000).await;
    let alice = actor(1);
    env.settle_sales(2, env.time_in_epoch(1, 60), &[(&ma, &mb, 10_000)])
        .await;
    env.end_epoch(1).await;
    // Skipping from seq 2 to seq 5 (seqs 3-4 imported): a proof cannot choose its start.
    let skip_from = signed(&ma, 5, env.time_in_epoch(1, 40_000), 9_000, 4_000);
    let skip_to = signed(&ma, 6, env.time_in_epoch(1, 86_000), 9_000, 8_000);
    for start in [&skip_from, &last] {
        let r = prove(&env, alice, &ma, start, &skip_to).await;
        assert!(matches!(revert_of::<E, _>(r), E::NotContiguous(_)));
    }
    // Counters below the last proven reading are refused (and are evidence of fraud).
    let back = signed(&ma, 3, env.time_in_epoch(1, 86_000), 0, 3_000);
    let r = prove(&env, alice, &ma, &contiguous(), &back).await;
    assert!(matches!(revert_of::<E, _>(r), E::CountersWentBackwards(_)));
    // From the last proven reading, through the import interval, it is accepted.
    prove(&env, alice, &ma, &contiguous(), &skip_to)
        .await
        .expect("contiguous");
    assert_eq!(
        env.staking().credit(ma.id, 1).await.expect("c").exportedWh,
        4_000
    );
    // The same interval cannot be counted twice.
    let r = prove(&env, alice, &ma, &contiguous(), &skip_to).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotContiguous(_)));
}

/// Attack: stake is needed only at the moment of proving; unbonded right after.
async fn stake_must_be_bonded_through_the_epoch_it_earns_in<C: Chain>(env: Env<C>) {
    let (alice, bob) = (actor(1), actor(2));
    env.fund(alice, tokens(1_000)).await;
    env.fund(bob, tokens(1_000)).await;
    let (ma, mb) = (TestMeter::new("alice-pv"), TestMeter::new("bob-home"));
    env.register(alice, &ma, U256::ZERO).await;
    env.register(bob, &mb, tokens(100)).await;
    env.settle_sales(1, env.time_in_epoch(0, 60), &[(&ma, &mb, 5_000)])
        .await;
    env.end_epoch(0).await;
    // Staked only now, after the epoch.
    env.staking()
        .stake(alice, ma.id, tokens(100))
        .await
        .expect("stake");
    let first = signed(&ma, 1, env.time_in_epoch(0, 0), 0, 0);
    let last = signed(&ma, 2, env.time_in_epoch(0, 86_399), 0, 5_000);
    let r = prove(&env, alice, &ma, &first, &last).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotBondedForEpoch(_)));

    // Bob was bonded all epoch 1 and earns; his stake then stays until epoch 1's reward vests.
    env.settle_sales(2, env.time_in_epoch(1, 60), &[(&mb, &ma, 5_000)])
        .await;
    env.end_epoch(1).await;
    let f = signed(&mb, 1, env.time_in_epoch(1, 0), 0, 0);
    let l = signed(&mb, 2, env.time_in_epoch(1, 86_399), 0, 5_000);
    prove(&env, bob, &mb, &f, &l).await.expect("bob proves");
    env.staking()
        .unbond(bob, mb.id, tokens(100))
        .await
        .expect("unbond");
    let vests = env
        .chain
        .view(env.d.staking, MeterStaking::vestsAtCall { epoch: 1 })
        .await
        .expect("v");
    let record = env.staking().meter(mb.id).await.expect("m");
    assert_eq!(U256::from(record.unbondingEnds), vests);
    env.chain
        .advance_time(env.params.unbonding_period + 1)
        .await
        .expect("advance");
    let r = env.staking().withdraw(bob, mb.id).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotUnbonded(_)));
}

/// Attack: a slashed owner still claims its rewards.
async fn rewards_vest_and_a_slash_takes_them_with_the_stake<C: Chain>(env: Env<C>) {
    let (ma, _mb, _) = one_earning_epoch(&env, 8_000, 8_000).await;
    let (alice, eve) = (actor(1), actor(6));
    env.fund(eve, tokens(1)).await;
    env.close_epoch(0).await;
    // Final but not vested.
    let r = env.staking().claim(alice, ma.id, 0).await;
    assert!(matches!(revert_of::<E, _>(r), E::NotVested(_)));
    let treasury_before = env.token_balance(env.d.network_token, env.deployer).await;
    let t = env.time_in_epoch(1, 60);
    env.staking()
        .report_fraud(
            eve,
            signed(&ma, 9, t, 0, 9_000),
            signed(&ma, 9, t, 0, 9_500),
        )
        .await
        .expect("fraud");
    vest(&env, 0).await;
    assert_eq!(
        env.staking().claimable(ma.id, 0).await.expect("c"),
        U256::ZERO
    );
    let r = env.staking().claim(alice, ma.id, 0).await;
    assert!(matches!(revert_of::<E, _>(r), E::MeterSlashed(_)));
    // The forfeited reward goes to the treasury (with the slashed stake less the reporter's part).
    env.chain
        .transact(
            eve,
            env.d.staking,
            MeterStaking::forfeitRewardsCall {
                meterId: ma.id,
                throughEpoch: 0,
            },
        )
        .await
        .expect("forfeit");
    let forfeited = u(&env, MeterStaking::rewardsForfeitedCall {}).await;
    assert!(forfeited > U256::ZERO);
    assert_eq!(
        env.token_balance(env.d.network_token, env.deployer).await - treasury_before,
        forfeited + tokens(45) + u(&env, MeterStaking::rewardsReturnedCall {}).await
    );
    assert_staking_solvent(&env).await;
}

/// Attack: a fraud report copied from the mempool takes the reporter's share.
async fn a_copied_fraud_report_pays_nobody_else<C: Chain>(env: Env<C>) {
    let (dave, eve, mallory) = (actor(4), actor(6), actor(9));
    env.fund(dave, tokens(1_000)).await;
    env.fund(eve, tokens(1)).await;
    env.fund(mallory, tokens(1)).await;
    let m = TestMeter::new("dave-pv");
    env.register(dave, &m, tokens(200)).await;
    let t = env.time_in_epoch(0, 60);
    let (a, b) = (signed(&m, 5, t, 0, 100), signed(&m, 5, t, 0, 150));
    let reveal = MeterStaking::proveFraudCall {
        first: a.0.clone(),
        firstSig: a.1.clone(),
        second: b.0.clone(),
        secondSig: b.1.clone(),
    };
    // Without a commitment, or with one made in the same transaction's block, nothing.
    let r = env
        .chain
        .transact(mallory, env.d.staking, reveal.clone())
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NoCommitment(_)));
    // Eve commits; Mallory copies Eve's commitment and reveal: the commitment names Eve.
    let commitment = gridshare_contracts::staking::fraud_commitment(eve, &a.0, &b.0);
    env.chain
        .transact(
            eve,
            env.d.staking,
            MeterStaking::commitFraudCall { commitment },
        )
        .await
        .expect("commit");
    env.chain
        .transact(
            mallory,
            env.d.staking,
            MeterStaking::commitFraudCall { commitment },
        )
        .await
        .expect("copied commit");
    let r = env
        .chain
        .transact(mallory, env.d.staking, reveal.clone())
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NoCommitment(_)));
    let before = env.token_balance(env.d.network_token, eve).await;
    env.chain
        .transact(eve, env.d.staking, reveal)
        .await
        .expect("reveal");
    assert_eq!(
        env.token_balance(env.d.network_token, eve).await - before,
        tokens(10)
    );
}

/// Attack: an agent that lost its state and reused a sequence number is slashed though it
/// cheated nobody.
async fn a_reused_sequence_number_with_consistent_counters_is_not_fraud<C: Chain>(env: Env<C>) {
    let (dave, eve) = (actor(4), actor(6));
    env.fund(dave, tokens(1_000)).await;
    env.fund(eve, tokens(1)).await;
    let m = TestMeter::new("dave-pv");
    env.register(dave, &m, tokens(200)).await;
    let before = signed(&m, 7, env.time_in_epoch(0, 60), 10, 100);
    let after_restore = signed(&m, 7, env.time_in_epoch(0, 7_200), 12, 180);
    let r = env
        .staking()
        .report_fraud(eve, before.clone(), after_restore)
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NotFraud(_)));
    // Lower sequence number after the loss of state, counters still moving forward: not fraud.
    let restarted = signed(&m, 1, env.time_in_epoch(0, 9_000), 12, 200);
    let r = env
        .staking()
        .report_fraud(eve, before.clone(), restarted)
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NotFraud(_)));
    // But a counter lower later in time is a rollback, whatever the sequence numbers.
    let rollback = signed(&m, 7, env.time_in_epoch(0, 9_000), 10, 90);
    env.staking()
        .report_fraud(eve, before, rollback)
        .await
        .expect("rollback is fraud");
}

async fn fraud_proofs_slash_exactly_once<C: Chain>(env: Env<C>) {
    let (dave, erin, eve) = (actor(4), actor(5), actor(6));
    env.fund(dave, tokens(1_000)).await;
    env.fund(erin, tokens(1_000)).await;
    env.fund(eve, tokens(1)).await;
    let m = TestMeter::new("dave-pv");
    env.register(dave, &m, tokens(200)).await;
    let t = env.time_in_epoch(0, 60);
    // One reading signed twice (ECDSA signatures differ, the bytes do not) is not fraud.
    let r = env
        .staking()
        .report_fraud(eve, signed(&m, 5, t, 0, 100), signed(&m, 5, t, 0, 100))
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::NotFraud(_)));
    let before = env.token_balance(env.d.network_token, eve).await;
    env.staking()
        .report_fraud(eve, signed(&m, 5, t, 0, 100), signed(&m, 5, t, 0, 150))
        .await
        .expect("equivocation");
    // Half of the 200 staked is slashed; a tenth of that goes to the reporter.
    assert_eq!(
        env.token_balance(env.d.network_token, eve).await - before,
        tokens(10)
    );
    let state = env.staking().meter(m.id).await.expect("m");
    assert!(state.slashed && !state.attested);
    assert_eq!(state.stake, tokens(100));
    let r = env
        .staking()
        .report_fraud(eve, signed(&m, 7, t, 0, 300), signed(&m, 8, t, 0, 200))
        .await;
    assert!(matches!(revert_of::<E, _>(r), E::MeterSlashed(_)));
    // Counters going backwards in time, submitted in either order.
    let m2 = TestMeter::new("erin-pv");
    env.register(erin, &m2, tokens(100)).await;
    env.staking()
        .report_fraud(
            eve,
            signed(&m2, 10, env.time_in_epoch(0, 120), 0, 900),
            signed(&m2, 9, env.time_in_epoch(0, 60), 0, 1_000),
        )
        .await
        .expect("backwards counters");
    assert!(env.staking().meter(m2.id).await.expect("m").slashed);
    assert_staking_solvent(&env).await;
}

/// Attack: one proof after nine empty epochs is paid ten epochs of emission.
async fn empty_epochs_return_their_emission_to_the_treasury<C: Chain>(env: Env<C>) {
    let alice = actor(1);
    let (ma, mb) = env.neighbours("alice-pv", "bob-home").await;
    env.settle_sales(1, env.time_in_epoch(9, 60), &[(&ma, &mb, 5_000)])
        .await;
    env.end_epoch(9).await;
    let first = signed(&ma, 1, env.time_in_epoch(9, 0), 0, 0);
    let last = signed(&ma, 2, env.time_in_epoch(9, 86_399), 0, 5_000);
    let treasury_before = env.token_balance(env.d.network_token, env.deployer).await;
    prove(&env, alice, &ma, &first, &last).await.expect("prove");
    vest(&env, 9).await;
    let paid = claim(&env, alice, &ma, 9).await;
    // Epoch 9 emits 1 000 >> 4 = 62.5 tokens; nothing of the nine empty epochs before it.
    let e9 = tokens(1_000) >> 4;
    assert!(
        paid <= e9 && paid + U256::from(5_000u64) >= e9,
        "paid {paid}"
    );
    let mut schedule = U256::ZERO;
    for e in 0..10 {
        schedule += u(&env, MeterStaking::emissionCall { epoch: e }).await;
    }
    let returned = u(&env, MeterStaking::rewardsReturnedCall {}).await;
    assert_eq!(returned + paid, schedule);
    assert_eq!(
        env.token_balance(env.d.network_token, env.deployer).await - treasury_before,
        returned
    );
    assert_staking_solvent(&env).await;
}

async fn deployment_parameters_are_validated<C: Chain>(env: Env<C>) {
    let now = env.chain.timestamp().await.expect("now");
    let env = &env;
    let deploy = |p: StakingParams| async move {
        gridshare_contracts::Deployment::deploy(
            &env.chain,
            env.deployer,
            env.operator,
            Some(env.d.payment_token),
            tokens(1),
            &p,
        )
        .await
    };
    for (name, p) in [
        (
            "proofWindow",
            StakingParams {
                proof_window: 0,
                ..StakingParams::daily(now)
            },
        ),
        (
            "unbondingPeriod",
            StakingParams {
                unbonding_period: 0,
                ..StakingParams::daily(now)
            },
        ),
        (
            "minStake",
            StakingParams {
                min_stake: U256::ZERO,
                ..StakingParams::daily(now)
            },
        ),
        (
            "reporterBps",
            StakingParams {
                reporter_bps: 10_001,
                ..StakingParams::daily(now)
            },
        ),
    ] {
        let e = revert_of::<E, _>(deploy(p).await);
        assert!(
            matches!(&e, E::InvalidParameter(p) if p.name == name),
            "{name}: {e:?}"
        );
    }
}

/// Colluding neighbours at the production defaults: Alice and Bob trade a battery's worth of
/// energy back and forth only to be credited. Each kWh pays the community grid fee (1 000
/// units, the reference value of one token) and earns at most 0.5 token, even alone in the
/// network: they lose money.
mod colluding_neighbours_lose_money_to_fees {
    use super::*;
    use crate::harness::{anvil_daily, embedded_daily};
    use gridshare_contracts::REFERENCE_FEE_PER_KWH;

    async fn run<C: Chain>(env: Env<C>) {
        let (alice, bob) = (actor(1), actor(2));
        let (ma, mb) = env.neighbours("alice-pv", "bob-home").await;
        env.chain.advance_time(10).await.expect("advance");
        // 12 slots of 10 kWh each way: 240 kWh traded between them, all settled, exactly what
        // their 5 kW capacities let them be credited for in a day.
        let kwh_each_way = 120u64;
        for slot in 0..12u64 {
            let at = env.time_in_epoch(0, slot * 900);
            env.settle_sales(2 * slot, at, &[(&ma, &mb, 10_000)]).await;
            env.settle_sales(2 * slot + 1, at, &[(&mb, &ma, 10_000)])
                .await;
        }
        env.end_epoch(0).await;
        let mut paid = U256::ZERO;
        for (owner, m) in [(alice, &ma), (bob, &mb)] {
            let first = signed(m, 1, env.time_in_epoch(0, 0), 0, 0);
            let last = signed(
                m,
                2,
                env.time_in_epoch(0, 86_399),
                kwh_each_way * 1_000,
                kwh_each_way * 1_000,
            );
            prove(&env, owner, m, &first, &last).await.expect("prove");
        }
        vest(&env, 0).await;
        for (owner, m) in [(alice, &ma), (bob, &mb)] {
            paid += claim(&env, owner, m, 0).await;
        }
        // Rewards in token units of 10^-18; fees in payment units; one token = one kWh's fee.
        let fees_paid = U256::from(2 * kwh_each_way * REFERENCE_FEE_PER_KWH);
        let reward_value = paid * U256::from(REFERENCE_FEE_PER_KWH) / tokens(1);
        assert!(paid > U256::ZERO);
        assert!(
            reward_value * U256::from(2u64) <= fees_paid,
            "rewards worth {reward_value} against {fees_paid} paid in fees"
        );
        // Capacity caps each meter at 120 kWh a day: trading more only pays more fees.
        assert!(credited(&env, &ma, 0).await <= 120_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        run(embedded_daily().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anvil() {
        if let Some(env) = anvil_daily().await {
            run(env).await;
        }
    }
}

#[derive(Debug, Clone)]
enum StakeOp {
    Stake(usize, u64),
    Unstake(usize, u64),
    Wait,
    Withdraw(usize),
}

fn stake_op() -> impl Strategy<Value = StakeOp> {
    prop_oneof![
        (0..3usize, 1..500u64).prop_map(|(m, n)| StakeOp::Stake(m, n)),
        (0..3usize, 1..500u64).prop_map(|(m, n)| StakeOp::Unstake(m, n)),
        Just(StakeOp::Wait),
        (0..3usize).prop_map(StakeOp::Withdraw),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Total staked equals the sum of the meters' stakes, and the contract always holds what it
    /// owes, through any sequence of staking, unstaking and withdrawals.
    #[test]
    fn total_staked_is_the_sum_of_stakes(ops in prop::collection::vec(stake_op(), 1..20)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let env = embedded().await;
            let owner = actor(1);
            env.fund(owner, tokens(1_000_000)).await;
            let meters: Vec<TestMeter> = (0..3).map(|i| TestMeter::new(&format!("m{i}"))).collect();
            for m in &meters {
                env.register(owner, m, U256::ZERO).await;
            }
            for op in ops {
                let s = env.staking();
                let r = match op {
                    StakeOp::Stake(i, n) => s.stake(owner, meters[i].id, U256::from(n)).await.map(|_| ()),
                    StakeOp::Unstake(i, n) => s.unbond(owner, meters[i].id, U256::from(n)).await.map(|_| ()),
                    StakeOp::Wait => env.chain.advance_time(env.params.unbonding_period / 2).await,
                    StakeOp::Withdraw(i) => s.withdraw(owner, meters[i].id).await.map(|_| ()),
                };
                // Failing operations (unstaking too much, withdrawing early) must be reverts.
                if let Err(e) = r {
                    assert!(e.decode::<E>().is_some(), "{e}");
                }
                let mut stake = U256::ZERO;
                let mut unbonding = U256::ZERO;
                for m in &meters {
                    let r = s.meter(m.id).await.expect("m");
                    stake += r.stake;
                    unbonding += r.unbonding;
                }
                assert_eq!(u(&env, MeterStaking::totalStakedCall {}).await, stake);
                assert_eq!(u(&env, MeterStaking::totalUnbondingCall {}).await, unbonding);
                assert_staking_solvent(&env).await;
            }
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Whatever is sold, exported, funded and slashed, over any number of epochs with or
    /// without energy: rewards paid ≤ rewards funded; a slashed meter's claimable rewards are
    /// zero; credited energy per meter and epoch ≤ capacity × epoch; and when funding covers
    /// the schedule, every finalized epoch's emission is exactly allocated plus returned to the
    /// treasury.
    #[test]
    fn rewards_conserve_emission_and_respect_caps(
        epochs in prop::collection::vec(prop::collection::vec((0..200_000u64, 0..200_000u64), 3), 1..5),
        funding in prop_oneof![Just(100_000u64), 1..3_000u64],
        slash in prop::option::of(0..3usize),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let env = embedded().await;
            let owners: Vec<Address> = (1..=3).map(actor).collect();
            let meters: Vec<TestMeter> = (0..3).map(|i| TestMeter::new(&format!("pv-{i}"))).collect();
            for (o, m) in owners.iter().zip(&meters) {
                env.fund(*o, tokens(1_000)).await;
                env.register(*o, m, tokens(100)).await;
            }
            env.fund(actor(6), tokens(1)).await;
            env.fund_rewards(tokens(funding)).await;
            env.chain.advance_time(10).await.expect("advance");
            let mut last: Vec<Option<Signed>> = vec![None, None, None];
            let mut counters = [0u64; 3];
            let mut seqs = [0u64; 3];
            let n = u64::try_from(epochs.len()).expect("small");
            for (epoch, per_meter) in (0..n).zip(&epochs) {
                for (i, (sold, _)) in per_meter.iter().enumerate() {
                    if *sold != 0 {
                        let buyer = &meters[(i + 1) % 3];
                        let batch = epoch * 3 + u64::try_from(i).expect("small");
                        env.settle_sales(batch, env.time_in_epoch(epoch, 60), &[(&meters[i], buyer, *sold)]).await;
                    }
                }
                env.end_epoch(epoch).await;
                for (i, (_, exported)) in per_meter.iter().enumerate() {
                    if *exported == 0 {
                        continue;
                    }
                    let m = &meters[i];
                    let first = match &last[i] {
                        Some(_) => contiguous(),
                        None => { seqs[i] += 1; signed(m, seqs[i], env.time_in_epoch(epoch, 0), 0, counters[i]) }
                    };
                    seqs[i] += 1;
                    counters[i] += exported;
                    let end = signed(m, seqs[i], env.time_in_epoch(epoch, 86_000), 0, counters[i]);
                    prove(&env, owners[i], m, &first, &end).await.expect("prove");
                    last[i] = Some(end);
                    let c = credited(&env, m, epoch).await;
                    assert!(c <= 5_000 * 24, "credited {c} above 5 kW × 24 h");
                }
            }
            if let Some(i) = slash {
                let t = env.time_in_epoch(n, 1);
                let m = &meters[i];
                env.staking().report_fraud(actor(6), signed(m, 1_000, t, 0, 5), signed(m, 1_000, t, 0, 6)).await.expect("fraud");
            }
            vest(&env, n - 1).await;
            let mut paid = U256::ZERO;
            for (i, m) in meters.iter().enumerate() {
                if slash == Some(i) {
                    assert_eq!(env.staking().claimable(m.id, n - 1).await.expect("c"), U256::ZERO);
                    let r = env.staking().claim(owners[i], m.id, n - 1).await;
                    assert!(matches!(revert_of::<E, _>(r), E::MeterSlashed(_)));
                } else {
                    paid += claim(&env, owners[i], m, n - 1).await;
                }
            }
            assert_staking_solvent(&env).await;
            let funded = u(&env, MeterStaking::rewardsFundedCall {}).await;
            prop_assert!(paid <= funded);
            let mut schedule = U256::ZERO;
            for e in 0..n {
                schedule += u(&env, MeterStaking::emissionCall { epoch: e }).await;
            }
            if funded >= schedule {
                let allocated = u(&env, MeterStaking::rewardsAllocatedCall {}).await;
                let returned = u(&env, MeterStaking::rewardsReturnedCall {}).await;
                prop_assert_eq!(allocated + returned, schedule);
            }
            Ok(())
        })?;
    }
}
