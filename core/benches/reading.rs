//! Signed-reading throughput: encode + sign (what a meter agent does per reading) and
//! parse + verify (what the market engine does per reading), on one core.
//!
//! ```sh
//! cargo bench --bench reading
//! ```

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gridshare_core::reading::{
    ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, PowerFlow, Reading, SignedReading,
};
use ring::rand::SystemRandom;
use std::hint::black_box;

fn reading(seq: u64) -> Reading {
    Reading {
        meter_id: MeterId::new("home-07").expect("valid id"),
        device: DeviceIdentity::new("Gridshare", "SIM-HYBRID", "SIM-000001").expect("valid"),
        seq,
        timestamp_ms: 1_764_028_800_000 + seq * 1000,
        clock: ClockSync::Synchronised,
        import_wh: Measured::ok(1_234_567 + seq),
        export_wh: Measured::ok(7_654_321),
        battery_charge_wh: Measured::ok(400_000),
        battery_discharge_wh: Measured::ok(380_000),
        power_w: Measured::ok(-2_350),
        soc_bp: Measured::ok(6_550),
        flow: PowerFlow::NOT_MEASURED,
    }
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let key = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("rng"), &rng)
        .expect("fresh key");
    let public = key.public_key();
    let mut group = c.benchmark_group("reading");
    group.throughput(Throughput::Elements(1));

    group.bench_function("encode", |b| {
        let r = reading(1);
        b.iter(|| black_box(&r).encode());
    });
    let mut seq = 0;
    group.bench_function("encode_and_sign", |b| {
        b.iter(|| {
            seq += 1;
            key.sign(reading(seq), &rng).expect("sign")
        });
    });
    let signed = key.sign(reading(1), &rng).expect("sign");
    let json = signed.to_json();
    group.bench_function("sign_and_envelope", |b| {
        b.iter(|| {
            seq += 1;
            key.sign(reading(seq), &rng).expect("sign").to_json()
        });
    });
    group.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            let s = SignedReading::from_json(black_box(&json)).expect("parse");
            s.verify(&public).expect("verify");
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
