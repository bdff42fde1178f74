//! Writes the committed reading test vectors (`core/tests/vectors/reading-v1.json`, and with
//! the argument `2` the power-flow readings of `reading-v2.json`) to stdout: a fresh key,
//! several readings, their encodings, digests and signatures. Run it only to replace the
//! vectors on purpose; the integration tests check the committed files.
//!
//! ```sh
//! cargo run --example reading_vectors > core/tests/vectors/reading-v1.json
//! cargo run --example reading_vectors -- 2 > core/tests/vectors/reading-v2.json
//! ```

use gridshare_core::reading::{
    ClockSync, DeviceIdentity, Measured, MeterId, MeterKey, PowerFlow, Reading, SignedReading,
};
use ring::rand::SystemRandom;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rng = SystemRandom::new();
    let pkcs8 = MeterKey::generate_pkcs8(&rng)?;
    let key = MeterKey::from_pkcs8(&pkcs8, &rng)?;
    let device = DeviceIdentity::new("Gridshare", "SIM-HYBRID-5K", "GS-000042")?;
    let base = Reading {
        meter_id: MeterId::new("home-07")?,
        device,
        seq: 1,
        timestamp_ms: 1_764_028_800_000,
        clock: ClockSync::Synchronised,
        import_wh: Measured::ok(1_234_567),
        export_wh: Measured::ok(7_654_321),
        battery_charge_wh: Measured::ok(400_000),
        battery_discharge_wh: Measured::ok(380_000),
        power_w: Measured::ok(-2_350),
        soc_bp: Measured::ok(6_550),
        flow: PowerFlow::NOT_MEASURED,
    };
    let version_2 = std::env::args().nth(1).as_deref() == Some("2");
    let v1_cases = [
        ("all values present, exporting", base.clone()),
        (
            "not implemented battery, device error on power, unsynchronised clock",
            Reading {
                seq: 2,
                timestamp_ms: 1_764_028_801_000,
                clock: ClockSync::Unsynchronised,
                battery_charge_wh: Measured::not_implemented(),
                battery_discharge_wh: Measured::not_implemented(),
                power_w: Measured::device_error(),
                soc_bp: Measured::not_implemented(),
                ..base.clone()
            },
        ),
        (
            "import counter went backwards: last good value flagged implausible; max-width fields",
            Reading {
                meter_id: MeterId::new("a-meter-id-of-exactly-32-bytes.x")?,
                device: DeviceIdentity::new(
                    "Manufacturer name thirty-two byt",
                    "Mödel with UTF-8",
                    "SN-18446744073709551615",
                )?,
                seq: u64::MAX,
                timestamp_ms: u64::MAX,
                clock: ClockSync::Relative,
                import_wh: Measured::implausible(u64::MAX),
                power_w: Measured::ok(i32::MIN),
                soc_bp: Measured::ok(10_000),
                ..base.clone()
            },
        ),
    ];
    let v2_cases = [
        (
            "solar at noon: PV power and energy, battery charging",
            Reading {
                seq: 3,
                flow: PowerFlow {
                    pv_power_w: Measured::ok(4_120),
                    pv_wh: Measured::ok(9_876_543),
                    battery_power_w: Measured::ok(1_500),
                },
                ..base.clone()
            },
        ),
        (
            "PV only (no battery power), battery power not implemented",
            Reading {
                seq: 4,
                battery_charge_wh: Measured::not_implemented(),
                battery_discharge_wh: Measured::not_implemented(),
                soc_bp: Measured::not_implemented(),
                flow: PowerFlow {
                    pv_power_w: Measured::ok(0),
                    pv_wh: Measured::implausible(u64::MAX),
                    battery_power_w: Measured::not_implemented(),
                },
                ..base.clone()
            },
        ),
        (
            "battery discharging at night, PV counter unreadable",
            Reading {
                seq: 5,
                power_w: Measured::ok(i32::MAX),
                flow: PowerFlow {
                    pv_power_w: Measured::device_error(),
                    pv_wh: Measured::device_error(),
                    battery_power_w: Measured::ok(i32::MIN),
                },
                ..base
            },
        ),
    ];
    let cases = if version_2 { v2_cases } else { v1_cases };
    let mut vectors = Vec::new();
    for (description, reading) in cases {
        let signed = key.sign(reading, &rng)?;
        let envelope: serde_json::Value = serde_json::from_str(&signed.to_json())?;
        // The vector must verify before it is written.
        SignedReading::from_json(&signed.to_json())?.verify(&key.public_key())?;
        vectors.push(serde_json::json!({
            "description": description,
            "envelope": envelope,
            "encoded_hex": hex::encode(signed.encoded()),
            "sha256_hex": hex::encode(signed.digest()),
            "signature_hex": signed.signature.to_hex(),
        }));
    }
    let doc = serde_json::json!({
        "about": format!("Gridshare signed meter reading, encoding version {}: ECDSA P-256 over SHA-256 of encoded_hex; signature is r||s. ECDSA signatures are randomised: check that they verify, do not expect to reproduce them.", if version_2 { 2 } else { 1 }),
        "private_key_pkcs8_hex": hex::encode(&pkcs8),
        "public_key_sec1_hex": key.public_key().to_hex(),
        "key_id": key.public_key().key_id().to_string(),
        "vectors": vectors,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
