//! The signed reading: committed vectors, round trips, and rejection of every tampering.

use gridshare_core::reading::*;
use proptest::prelude::*;
use ring::rand::SystemRandom;

const VECTORS: &str = include_str!("../vectors/reading-v1.json");

fn vectors() -> serde_json::Value {
    serde_json::from_str(VECTORS).unwrap()
}

fn vector_key() -> (MeterKey, PublicKey) {
    let doc = vectors();
    let rng = SystemRandom::new();
    let pkcs8 = hex::decode(doc["private_key_pkcs8_hex"].as_str().unwrap()).unwrap();
    let key = MeterKey::from_pkcs8(&pkcs8, &rng).unwrap();
    let public = PublicKey::from_hex(doc["public_key_sec1_hex"].as_str().unwrap()).unwrap();
    (key, public)
}

#[test]
fn committed_vectors_encode_hash_and_verify() {
    let doc = vectors();
    let (key, public) = vector_key();
    assert_eq!(key.public_key(), public, "PKCS#8 key and public key differ");
    assert_eq!(public.key_id().to_string(), doc["key_id"].as_str().unwrap());
    let cases = doc["vectors"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let signed = SignedReading::from_json(&case["envelope"].to_string()).unwrap();
        assert_eq!(
            hex::encode(signed.encoded()),
            case["encoded_hex"].as_str().unwrap(),
            "{}",
            case["description"]
        );
        assert_eq!(
            hex::encode(signed.digest()),
            case["sha256_hex"].as_str().unwrap()
        );
        assert_eq!(
            signed.signature.to_hex(),
            case["signature_hex"].as_str().unwrap()
        );
        signed.verify(&public).unwrap();
        let bytes = hex::decode(case["encoded_hex"].as_str().unwrap()).unwrap();
        assert_eq!(Reading::decode(&bytes).unwrap(), signed.reading);
    }
}

#[test]
fn encoding_layout_matches_the_documented_offsets() {
    let doc = vectors();
    let case = &doc["vectors"][0];
    let bytes = hex::decode(case["encoded_hex"].as_str().unwrap()).unwrap();
    assert_eq!(bytes.len(), ENCODED_LEN);
    assert_eq!(ENCODED_LEN, 222);
    assert_eq!(&bytes[..23], b"GRIDSHARE/METER-READING");
    assert_eq!(bytes[32], 1, "version");
    assert_eq!(&bytes[33..40], b"home-07");
    assert_eq!(
        u64::from_be_bytes(bytes[161..169].try_into().unwrap()),
        1,
        "seq"
    );
    assert_eq!(bytes[177], ClockSync::Synchronised as u8);
    assert_eq!(bytes[178], 0, "import status ok");
    assert_eq!(
        u64::from_be_bytes(bytes[179..187].try_into().unwrap()),
        1_234_567
    );
    assert_eq!(
        i32::from_be_bytes(bytes[215..219].try_into().unwrap()),
        -2_350
    );
    assert_eq!(
        u16::from_be_bytes(bytes[220..222].try_into().unwrap()),
        6_550
    );
}

#[test]
fn wrong_key_is_rejected() {
    let rng = SystemRandom::new();
    let doc = vectors();
    let signed = SignedReading::from_json(&doc["vectors"][0]["envelope"].to_string()).unwrap();
    let other = MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).unwrap(), &rng).unwrap();
    assert!(matches!(
        signed.verify(&other.public_key()),
        Err(ReadingError::KeyIdMismatch { .. })
    ));
    // Same key id claimed but another key's signature: the signature check catches it.
    let forged = other.sign(signed.reading.clone(), &rng).unwrap();
    let forged = SignedReading {
        key_id: signed.key_id,
        ..forged
    };
    let (_, public) = vector_key();
    assert!(matches!(
        forged.verify(&public),
        Err(ReadingError::BadSignature { .. })
    ));
}

#[test]
fn malformed_and_truncated_envelopes_are_rejected_with_a_reason() {
    let doc = vectors();
    let json = doc["vectors"][0]["envelope"].to_string();
    for cut in [0, 1, json.len() / 2, json.len() - 1] {
        let err = SignedReading::from_json(&json[..cut]).unwrap_err();
        assert!(matches!(err, ReadingError::Malformed { .. }), "{err}");
    }
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["format"] = "gridshare-reading/3".into();
    assert!(matches!(
        SignedReading::from_json(&value.to_string()),
        Err(ReadingError::UnsupportedFormat { .. })
    ));

    let cases: [(&str, serde_json::Value, &str); 8] = [
        ("meter_id", "home/07".into(), "meter_id"),
        ("seq", (-1).into(), "seq"),
        ("signature", "abcd".into(), "signature"),
        ("key_id", "zz".into(), "key_id"),
        (
            "soc_bp",
            serde_json::json!({"value": 10_001, "status": "ok"}),
            "soc_bp",
        ),
        (
            "import_wh",
            serde_json::json!({"value": null, "status": "ok"}),
            "import_wh",
        ),
        (
            "export_wh",
            serde_json::json!({"value": 5, "status": "not_implemented"}),
            "export_wh",
        ),
        ("extra_field", 1.into(), "extra_field"),
    ];
    for (field, bad, mention) in cases {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v[field] = bad;
        let err = SignedReading::from_json(&v.to_string()).unwrap_err();
        assert!(
            err.to_string().contains(mention),
            "error for {field} does not name it: {err}"
        );
    }
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_ENVELOPE_LEN));
    assert!(matches!(
        SignedReading::from_json(&huge),
        Err(ReadingError::Malformed { .. })
    ));
}

const VECTORS_V2: &str = include_str!("../vectors/reading-v2.json");

/// Readings with solar and battery power (encoding version 2) verify from their committed
/// envelopes and bytes; the committed version-1 vectors above still verify unchanged, so every
/// reading signed before version 2 existed stays valid.
#[test]
fn committed_power_flow_vectors_encode_hash_and_verify() {
    let doc: serde_json::Value = serde_json::from_str(VECTORS_V2).unwrap();
    let public = PublicKey::from_hex(doc["public_key_sec1_hex"].as_str().unwrap()).unwrap();
    let cases = doc["vectors"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        assert_eq!(case["envelope"]["format"], ENVELOPE_FORMAT_POWER_FLOW);
        let signed = SignedReading::from_json(&case["envelope"].to_string()).unwrap();
        assert!(signed.reading.flow.is_measured());
        let bytes = hex::decode(case["encoded_hex"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), ENCODED_LEN_V2);
        assert_eq!(bytes[32], ENCODING_VERSION_POWER_FLOW);
        assert_eq!(signed.encoded(), bytes, "{}", case["description"]);
        assert_eq!(
            hex::encode(signed.digest()),
            case["sha256_hex"].as_str().unwrap()
        );
        signed.verify(&public).unwrap();
        assert_eq!(Reading::decode(&bytes).unwrap(), signed.reading);
    }
    // The first vector: PV 4 120 W, 9 876 543 Wh, battery charging at 1 500 W.
    let bytes = hex::decode(cases[0]["encoded_hex"].as_str().unwrap()).unwrap();
    assert_eq!(bytes[222], 0, "pv power status ok");
    assert_eq!(
        i32::from_be_bytes(bytes[223..227].try_into().unwrap()),
        4_120
    );
    assert_eq!(bytes[227], 0, "pv energy status ok");
    assert_eq!(
        u64::from_be_bytes(bytes[228..236].try_into().unwrap()),
        9_876_543
    );
    assert_eq!(bytes[236], 0, "battery power status ok");
    assert_eq!(
        i32::from_be_bytes(bytes[237..241].try_into().unwrap()),
        1_500
    );
    // The version-1 part is laid out as in version 1.
    let v1 = vectors();
    let old = hex::decode(v1["vectors"][0]["encoded_hex"].as_str().unwrap()).unwrap();
    assert_eq!(
        &bytes[178..222],
        &old[178..222],
        "same counters at the same offsets"
    );
}

/// One reading, one encoding: the version follows from the fields, so a version-2 encoding or
/// envelope without a power-flow value, or a version-1 envelope with one, is refused.
#[test]
fn power_flow_encoding_is_canonical() {
    let doc: serde_json::Value = serde_json::from_str(VECTORS_V2).unwrap();
    let signed = SignedReading::from_json(&doc["vectors"][0]["envelope"].to_string()).unwrap();
    let mut without = signed.reading.clone();
    without.flow = PowerFlow::NOT_MEASURED;
    assert_eq!(without.encode().len(), ENCODED_LEN);
    assert_eq!(without.encoding_version(), ENCODING_VERSION);
    // Version-2 bytes whose power-flow values all say "not implemented".
    let mut bytes = signed.encoded();
    for at in [222, 227, 236] {
        bytes[at] = ValueStatus::NotImplemented as u8;
    }
    bytes[223..227].fill(0);
    bytes[228..236].fill(0);
    bytes[237..241].fill(0);
    assert!(matches!(
        Reading::decode(&bytes),
        Err(ReadingError::InvalidField { field: "flow", .. })
    ));
    // A version byte that does not match the length.
    let mut version = signed.encoded();
    version[32] = ENCODING_VERSION;
    assert_eq!(
        Reading::decode(&version),
        Err(ReadingError::UnsupportedVersion(1))
    );
    assert!(matches!(
        Reading::decode(&version[..ENCODED_LEN_V2 - 1]),
        Err(ReadingError::WrongLength { .. })
    ));
    // Envelopes: version 1 with a power-flow field, version 2 without one.
    let mut v: serde_json::Value = serde_json::from_str(&signed.to_json()).unwrap();
    v["format"] = ENVELOPE_FORMAT.into();
    let err = SignedReading::from_json(&v.to_string()).unwrap_err();
    assert!(err.to_string().contains("format"), "{err}");
    let old = vectors();
    let mut v = old["vectors"][0]["envelope"].clone();
    v["format"] = ENVELOPE_FORMAT_POWER_FLOW.into();
    let err = SignedReading::from_json(&v.to_string()).unwrap_err();
    assert!(err.to_string().contains("format"), "{err}");
    // Negative solar power is not a reading.
    let mut v: serde_json::Value = serde_json::from_str(&signed.to_json()).unwrap();
    v["pv_power_w"] = serde_json::json!({"value": -1, "status": "ok"});
    let err = SignedReading::from_json(&v.to_string()).unwrap_err();
    assert!(err.to_string().contains("pv_power_w"), "{err}");
}

#[test]
fn binary_decode_rejects_bad_tag_version_and_length() {
    let doc = vectors();
    let bytes = hex::decode(doc["vectors"][0]["encoded_hex"].as_str().unwrap()).unwrap();
    assert!(matches!(
        Reading::decode(&bytes[..ENCODED_LEN - 1]),
        Err(ReadingError::WrongLength { .. })
    ));
    let mut tag = bytes.clone();
    tag[0] ^= 1;
    assert_eq!(Reading::decode(&tag), Err(ReadingError::BadDomainTag));
    let mut version = bytes.clone();
    version[32] = 2;
    assert_eq!(
        Reading::decode(&version),
        Err(ReadingError::UnsupportedVersion(2))
    );
    let mut status = bytes;
    status[178] = 9;
    assert!(matches!(
        Reading::decode(&status),
        Err(ReadingError::InvalidField {
            field: "import_wh",
            ..
        })
    ));
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::char::range(' ', '~'), 0..=max)
        .prop_map(|c| c.into_iter().collect())
}

fn measured<T: Copy + std::fmt::Debug + 'static>(
    value: impl Strategy<Value = T> + Clone + 'static,
) -> impl Strategy<Value = Measured<T>> {
    prop_oneof![
        4 => value.clone().prop_map(Measured::ok),
        1 => value.prop_map(Measured::implausible),
        1 => Just(Measured::not_implemented()),
        1 => Just(Measured::device_error()),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        "[a-zA-Z0-9._-]{1,32}",
        (text(32), text(32), text(32)),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![
            Just(ClockSync::Unsynchronised),
            Just(ClockSync::Informative),
            Just(ClockSync::Synchronised),
            Just(ClockSync::Relative)
        ],
        (
            measured(any::<u64>()),
            measured(any::<u64>()),
            measured(any::<u64>()),
            measured(any::<u64>()),
        ),
        measured(any::<i32>()),
        measured(0..=MAX_SOC_BP),
        prop_oneof![
            1 => Just(PowerFlow::NOT_MEASURED),
            3 => (measured(0..=i32::MAX), measured(any::<u64>()), measured(any::<i32>()))
                .prop_map(|(pv_power_w, pv_wh, battery_power_w)| PowerFlow {
                    pv_power_w,
                    pv_wh,
                    battery_power_w,
                }),
        ],
    )
        .prop_map(
            |(id, (mn, md, sn), seq, ts, clock, (imp, exp, ch, dis), p, soc, flow)| Reading {
                meter_id: MeterId::new(id).unwrap(),
                device: DeviceIdentity::new(mn, md, sn).unwrap(),
                seq,
                timestamp_ms: ts,
                clock,
                import_wh: imp,
                export_wh: exp,
                battery_charge_wh: ch,
                battery_discharge_wh: dis,
                power_w: p,
                soc_bp: soc,
                flow,
            },
        )
}

/// Changes exactly one field of the reading (index `which` modulo the field count) so that
/// the result is still a valid reading but differs from the original.
fn mutate(r: &Reading, which: usize) -> Reading {
    fn bump_counter(m: Measured<u64>) -> Measured<u64> {
        match m.value() {
            Some(v) if m.status() == ValueStatus::Ok => Measured::ok(v.wrapping_add(1)),
            Some(v) => Measured::ok(v),
            None => Measured::ok(0),
        }
    }
    fn bump_power(m: Measured<i32>) -> Measured<i32> {
        match m.ok_value() {
            Some(p) if p < i32::MAX => Measured::ok(p + 1),
            Some(_) => Measured::ok(0),
            None => Measured::ok(1),
        }
    }
    let mut m = r.clone();
    match which % 16 {
        0 => {
            let mut id = r.meter_id.as_str().to_owned();
            let last = id.pop().unwrap();
            id.push(if last == 'a' { 'b' } else { 'a' });
            m.meter_id = MeterId::new(id).unwrap();
        }
        1 => m.device.manufacturer = flip_text(&r.device.manufacturer),
        2 => m.device.model = flip_text(&r.device.model),
        3 => m.device.serial = flip_text(&r.device.serial),
        4 => m.seq = r.seq.wrapping_add(1),
        5 => m.timestamp_ms = r.timestamp_ms ^ 1,
        6 => {
            m.clock = if r.clock == ClockSync::Synchronised {
                ClockSync::Unsynchronised
            } else {
                ClockSync::Synchronised
            }
        }
        7 => m.import_wh = bump_counter(r.import_wh),
        8 => m.export_wh = bump_counter(r.export_wh),
        9 => m.battery_charge_wh = bump_counter(r.battery_charge_wh),
        10 => m.battery_discharge_wh = bump_counter(r.battery_discharge_wh),
        13 => m.flow.pv_power_w = bump_power(r.flow.pv_power_w),
        14 => m.flow.pv_wh = bump_counter(r.flow.pv_wh),
        15 => m.flow.battery_power_w = bump_power(r.flow.battery_power_w),
        11 => {
            m.power_w = match r.power_w.ok_value() {
                Some(p) => Measured::ok(p.wrapping_add(1)),
                None => Measured::ok(0),
            }
        }
        _ => {
            m.soc_bp = match r.soc_bp.ok_value() {
                Some(s) => Measured::ok(if s == 0 { 1 } else { s - 1 }),
                None => Measured::not_implemented(),
            };
            if m.soc_bp == r.soc_bp {
                m.soc_bp = Measured::device_error();
            }
        }
    }
    m
}

fn flip_text(s: &str) -> String {
    if s.is_empty() {
        "x".into()
    } else {
        let mut t = s[..s.len() - 1].to_owned();
        t.push(if s.ends_with('x') { 'y' } else { 'x' });
        t
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_verify_round_trip_through_json_and_bytes(r in reading()) {
        let rng = SystemRandom::new();
        let (key, public) = vector_key();
        let signed = key.sign(r.clone(), &rng).unwrap();
        let back = SignedReading::from_json(&signed.to_json()).unwrap();
        prop_assert_eq!(&back, &signed);
        back.verify(&public).unwrap();
        prop_assert_eq!(Reading::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn every_single_field_mutation_is_rejected(r in reading(), which in 0usize..16) {
        let rng = SystemRandom::new();
        let (key, public) = vector_key();
        let signed = key.sign(r.clone(), &rng).unwrap();
        let mutated = mutate(&r, which);
        prop_assert_ne!(&mutated, &r);
        let tampered = SignedReading { reading: mutated, ..signed.clone() };
        // Through the JSON envelope too, as a receiver would see it.
        let tampered = SignedReading::from_json(&tampered.to_json()).unwrap();
        let rejected = matches!(tampered.verify(&public), Err(ReadingError::BadSignature { .. }));
        prop_assert!(rejected);
        // And a flipped signature bit.
        let mut bad_sig = signed;
        bad_sig.signature.0[which % 64] ^= 0x01;
        prop_assert!(bad_sig.verify(&public).is_err());
    }
}

/// Regression (issue 10, item 9): a "public key" that is not a point on P-256 was accepted and
/// registered, squatting a meter id with a key that can never verify anything.
#[test]
fn a_public_key_off_the_curve_is_refused() {
    let (_, public) = vector_key();
    let mut bytes = *public.as_bytes();
    // Flip the last bit of y: (x, y') is not on the curve.
    bytes[64] ^= 1;
    let err = PublicKey::from_sec1(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("not a point on the P-256 curve"),
        "{err}"
    );
    // The point at infinity has no uncompressed form; all zeros is no point either.
    let mut zeros = [0u8; 65];
    zeros[0] = 4;
    assert!(PublicKey::from_sec1(&zeros).is_err());
    assert!(PublicKey::from_sec1(public.as_bytes()).is_ok());
}
