//! Signed readings from `core` verify on chain through P256VERIFY, and nothing else does.

use crate::harness::{Env, TestMeter};
use crate::on_both_chains;
use alloy::primitives::{B256, Bytes};
use gridshare_contracts::Chain;
use gridshare_contracts::bindings::MeterStaking;
use gridshare_contracts::chain::ChainExt;

on_both_chains!(
    core_vectors_verify_on_chain,
    fresh_meter_signature_verifies_on_chain,
    p256_precompile_is_detected,
);

fn unhex(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

async fn verify<C: Chain>(env: &Env<C>, encoded: &[u8], sig: &[u8], x: B256, y: B256) -> bool {
    env.chain
        .view(
            env.d.staking,
            MeterStaking::verifyReadingCall {
                encoded: Bytes::copy_from_slice(encoded),
                signature: Bytes::copy_from_slice(sig),
                keyX: x,
                keyY: y,
            },
        )
        .await
        .expect("verifyReading")
}

/// The committed vectors of both encodings verify on chain: version 1 (every reading signed
/// before solar and battery power were added) and version 2 (with them).
async fn core_vectors_verify_on_chain<C: Chain>(env: Env<C>) {
    for (file, len) in [("reading-v1.json", 222), ("reading-v2.json", 241)] {
        let path = format!(
            "{}/../core/tests/vectors/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
        let key = unhex(&file["public_key_sec1_hex"]);
        let (x, y) = (
            B256::from_slice(&key[1..33]),
            B256::from_slice(&key[33..65]),
        );
        let vectors = file["vectors"].as_array().expect("vectors");
        assert!(!vectors.is_empty());
        for v in vectors {
            let encoded = unhex(&v["encoded_hex"]);
            let sig = unhex(&v["signature_hex"]);
            assert_eq!(encoded.len(), len);
            assert!(
                verify(&env, &encoded, &sig, x, y).await,
                "{}",
                v["description"]
            );

            // One flipped bit in the last field breaks the signature.
            let mut tampered = encoded.clone();
            tampered[len - 1] ^= 1;
            assert!(!verify(&env, &tampered, &sig, x, y).await);
            // Another key does not verify it.
            let other = TestMeter::new("other");
            assert!(!verify(&env, &encoded, &sig, other.x(), other.y()).await);
            // A version byte that does not match the length is refused before the signature.
            let mut swapped = encoded.clone();
            swapped[32] = if len == 222 { 2 } else { 1 };
            let err = env
                .chain
                .view(
                    env.d.staking,
                    MeterStaking::verifyReadingCall {
                        encoded: swapped.into(),
                        signature: Bytes::copy_from_slice(&sig),
                        keyX: x,
                        keyY: y,
                    },
                )
                .await;
            assert!(matches!(
                crate::harness::revert_of::<MeterStaking::MeterStakingErrors, _>(err),
                MeterStaking::MeterStakingErrors::ReadingUnsupportedVersion(_)
            ));
        }
    }
}

async fn fresh_meter_signature_verifies_on_chain<C: Chain>(env: Env<C>) {
    let meter = TestMeter::new("home-07");
    let (encoded, sig) = meter.sign(meter.reading(1, 1_764_028_800_000, 1_234_567, 7_654_321));
    assert!(verify(&env, &encoded, &sig, meter.x(), meter.y()).await);
    // The domain tag and version are checked before the signature.
    let mut wrong_version = encoded.to_vec();
    wrong_version[32] = 2;
    let err = env
        .chain
        .view(
            env.d.staking,
            MeterStaking::verifyReadingCall {
                encoded: wrong_version.into(),
                signature: sig,
                keyX: meter.x(),
                keyY: meter.y(),
            },
        )
        .await;
    assert!(matches!(
        crate::harness::revert_of::<MeterStaking::MeterStakingErrors, _>(err),
        MeterStaking::MeterStakingErrors::ReadingUnsupportedVersion(_)
    ));
}

async fn p256_precompile_is_detected<C: Chain>(env: Env<C>) {
    assert!(
        gridshare_contracts::p256_precompile_available(&env.chain)
            .await
            .expect("probe")
    );
}
