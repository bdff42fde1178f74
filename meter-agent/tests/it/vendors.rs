//! The devices households own: every builtin register profile against a Modbus server serving
//! that vendor's documented register map (fixtures in `tests/fixtures/profiles/`), several
//! devices on one bus read in one poll, the SunSpec quirks of SolarEdge, Kostal and Fronius, and
//! the README's device list generated from the profiles.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use gridshare_testbed::register_server::{Framing, RegisterBank, RegisterServer};
use meter_agent::config::AgentConfig;
use meter_agent::device::{
    Device, ExtraDevice, ProfileDevice, Sample, Snapshot, SunSpecDevice, SunSpecOptions,
};
use meter_agent::profile::{Function, RegisterProfile};
use meter_agent::sunspec::block::BlockBuilder;
use meter_agent::transport::{LinkConfig, ModbusLink, TransportKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn link(addr: SocketAddr, unit: u8) -> ModbusLink {
    ModbusLink::new(LinkConfig {
        transport: TransportKind::Tcp,
        address: addr.to_string(),
        unit_id: unit,
        timeout_ms: 500,
        ..LinkConfig::default()
    })
}

async fn serve(bank: RegisterBank, unit: u8) -> RegisterServer {
    RegisterServer::start("127.0.0.1:0".parse().unwrap(), bank, unit, Framing::Tcp)
        .await
        .unwrap()
}

/// The words of one fixture register, encoded the way the vendor document says (this is the
/// encoder; the profile under test holds the decoder).
fn encode(reg: &toml::Table) -> Vec<u16> {
    let int = |k: &str| reg.get(k).map(|v| v.as_integer().unwrap());
    let mut words: Vec<u16> = if let Some(v) = int("u16") {
        vec![u16::try_from(v).unwrap()]
    } else if let Some(v) = int("i16") {
        vec![i16::try_from(v).unwrap() as u16]
    } else if let Some(v) = int("u32") {
        split(u64::from(u32::try_from(v).unwrap()), 2)
    } else if let Some(v) = int("i32") {
        // The fixtures write some i32 patterns (0x7FFFFFFF) as plain numbers.
        split(u64::from(i32::try_from(v).unwrap() as u32), 2)
    } else if let Some(v) = reg.get("u64") {
        let bits = match v {
            // -1 stands for all ones (see `fixture`).
            toml::Value::Integer(i) => u64::from_ne_bytes(i.to_ne_bytes()),
            other => panic!("u64 fixture value {other:?}"),
        };
        split(bits, 4)
    } else if let Some(v) = reg.get("f32") {
        let f = match v {
            toml::Value::Float(f) => *f as f32,
            other => panic!("f32 fixture value {other:?}"),
        };
        split(u64::from(f.to_bits()), 2)
    } else {
        panic!("fixture register without a value: {reg:?}");
    };
    if reg.get("word_order").and_then(|v| v.as_str()) == Some("little_endian") {
        words.reverse();
    }
    words
}

fn split(bits: u64, n: usize) -> Vec<u16> {
    (0..n)
        .rev()
        .map(|i| ((bits >> (16 * i)) & 0xFFFF) as u16)
        .collect()
}

fn expected(fixture: &toml::Table, key: &str) -> Sample {
    match fixture["expect"].get(key) {
        None => Sample::NotImplemented,
        Some(toml::Value::String(s)) if s == "not_implemented" => Sample::NotImplemented,
        Some(toml::Value::Integer(v)) => Sample::Value(*v),
        Some(other) => panic!("expect.{key}: {other:?}"),
    }
}

/// The fixture's text with `0xFFFFFFFFFFFFFFFF` (beyond TOML's i64) replaced by -1, which
/// `encode` reads back as all ones.
fn fixture(name: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "builtin profile {name} has no fixture {} ({e}): each profile is tested against its vendor's register map",
            path.display()
        )
    });
    text.replace("0xFFFFFFFFFFFFFFFF", "-1")
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn every_builtin_profile_reads_its_vendor_register_map() {
    let names = RegisterProfile::builtin_names();
    assert!(names.len() >= 14, "{names:?}");
    for name in names {
        let profile = RegisterProfile::builtin(name).unwrap();
        let fx = fixture(name);
        let bank = RegisterBank::new();
        // Registers a read spans between the documented ones exist on the device (as zeros).
        for span in profile.read_plan() {
            let zeros = vec![0; usize::from(span.count)];
            match span.function {
                Function::Holding => bank.set_holding(span.address, &zeros),
                Function::Input => bank.set_input(span.address, &zeros),
            }
        }
        let mut set: Vec<(Function, u16)> = Vec::new();
        for reg in fx["register"].as_array().unwrap() {
            let reg = reg.as_table().unwrap();
            let address = u16::try_from(reg["address"].as_integer().unwrap()).unwrap();
            let words = encode(reg);
            match reg["function"].as_str().unwrap() {
                "holding" => {
                    bank.set_holding(address, &words);
                    set.push((Function::Holding, address));
                }
                "input" => {
                    bank.set_input(address, &words);
                    set.push((Function::Input, address));
                }
                other => panic!("{name}: function {other}"),
            }
        }
        // Every register of the profile is one the vendor document (the fixture) describes.
        for r in &profile.registers {
            assert!(
                set.contains(&(r.function, r.address)),
                "{name}: profile register {:?} {} is not in the fixture",
                r.function,
                r.address
            );
        }
        let server = serve(bank, 1).await;
        let mut l = link(server.addr, 1);
        let device = Device::Profile(ProfileDevice {
            profile,
            identity: Default::default(),
        });
        let snap = device.poll(&mut l).await.unwrap();
        let want = Snapshot {
            import_wh: expected(&fx, "import_wh"),
            export_wh: expected(&fx, "export_wh"),
            battery_charge_wh: expected(&fx, "battery_charge_wh"),
            battery_discharge_wh: expected(&fx, "battery_discharge_wh"),
            power_w: expected(&fx, "power_w"),
            soc_bp: expected(&fx, "soc_bp"),
            pv_power_w: expected(&fx, "pv_power_w"),
            pv_wh: expected(&fx, "pv_wh"),
            battery_power_w: expected(&fx, "battery_power_w"),
        };
        assert_eq!(snap, want, "profile {name}");
        l.disconnect().await;
        server.stop();
    }
}

#[test]
fn readme_device_list_is_generated_from_the_profiles() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let (_, rest) = readme.split_once("<!-- devices:begin -->\n").unwrap();
    let (list, _) = rest.split_once("<!-- devices:end -->").unwrap();
    assert_eq!(
        list,
        meter_agent::catalog::markdown(),
        "the README's device list is out of date: replace it with the output of `meter-agent devices`"
    );
}

/// A Modbus TCP gateway in front of several units (an RS-485 bus behind a TCP gateway, or a
/// Victron GX): routes each request by its unit id to that unit's server, and answers
/// exception 0x0B "gateway target device failed to respond" for a unit that is not there.
async fn gateway(units: BTreeMap<u8, SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let units = units.clone();
            tokio::spawn(async move {
                let mut upstream: BTreeMap<u8, TcpStream> = BTreeMap::new();
                loop {
                    let mut mbap = [0u8; 7];
                    if client.read_exact(&mut mbap).await.is_err() {
                        return;
                    }
                    let len = usize::from(u16::from_be_bytes([mbap[4], mbap[5]]));
                    let mut pdu = vec![0u8; len - 1];
                    if client.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let unit = mbap[6];
                    let Some(target) = units.get(&unit) else {
                        let mut reply = mbap.to_vec();
                        reply[4..6].copy_from_slice(&3u16.to_be_bytes());
                        reply.extend_from_slice(&[pdu[0] | 0x80, 0x0B]);
                        let _ = client.write_all(&reply).await;
                        continue;
                    };
                    if let std::collections::btree_map::Entry::Vacant(e) = upstream.entry(unit) {
                        e.insert(TcpStream::connect(target).await.unwrap());
                    }
                    let up = upstream.get_mut(&unit).unwrap();
                    up.write_all(&mbap).await.unwrap();
                    up.write_all(&pdu).await.unwrap();
                    let mut head = [0u8; 7];
                    up.read_exact(&mut head).await.unwrap();
                    let n = usize::from(u16::from_be_bytes([head[4], head[5]]));
                    let mut body = vec![0u8; n - 1];
                    up.read_exact(&mut body).await.unwrap();
                    if client.write_all(&head).await.is_err()
                        || client.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn several_units_behind_one_gateway_are_read_in_one_poll() {
    // A Victron GX: the system service on unit 100 (grid power, battery SoC) and the grid
    // meter service on unit 30 (lifetime import and export), one TCP connection.
    let system = RegisterBank::new();
    system.set_input(820, &[500, (-100i16) as u16, 0]);
    system.set_input(823, &[0; 20]);
    system.set_input(843, &[57]);
    let grid = RegisterBank::new();
    grid.set_input(2634, &split(123_456, 2));
    grid.set_input(2636, &split(654_321, 2));
    grid.set_input(2638, &split(1000, 2));
    grid.set_input(2640, &split(u64::from((-250i32) as u32), 2));
    grid.set_input(2642, &split(300, 2));
    let s100 = serve(system.clone(), 100).await;
    let s30 = serve(grid.clone(), 30).await;
    let gw = gateway(BTreeMap::from([(100, s100.addr), (30, s30.addr)])).await;

    // Configured as a household would, in TOML.
    let config = AgentConfig::parse(
        &format!(
            r#"
[modbus]
address = "{gw}"
unit_id = 100
[device]
kind = "profile"
profile = "victron-gx-system"
[[device.extra]]
unit_id = 30
profile = "victron-gx-grid"
quantities = ["import_wh", "export_wh"]
"#
        ),
        "test.toml",
    )
    .unwrap();
    config.validate().unwrap();
    let extra = config.extra_devices().unwrap();
    let main = Device::Profile(ProfileDevice {
        profile: config.profile().unwrap(),
        identity: Default::default(),
    });
    let mut l = ModbusLink::new(config.modbus.clone());
    let (before_sys, before_grid) = (system.requests(), grid.requests());
    let mut snap = main.poll(&mut l).await.unwrap();
    for e in &extra {
        e.poll_into(&mut l, 100, &mut snap).await.unwrap();
    }
    assert_eq!(snap.soc_bp, Sample::Value(5700));
    // Power from the system service (its own phase sum), not the meter's 1050 W.
    assert_eq!(snap.power_w, Sample::Value(400));
    assert_eq!(snap.import_wh, Sample::Value(1_234_560));
    assert_eq!(snap.export_wh, Sample::Value(6_543_210));
    assert_eq!(snap.battery_charge_wh, Sample::NotImplemented);
    // One connection, both units asked in the same poll, and the link back on unit 100.
    assert!(system.requests() > before_sys && grid.requests() > before_grid);
    assert_eq!(l.config().unit_id, 100);
    let again = main.poll(&mut l).await.unwrap();
    assert_eq!(again.soc_bp, Sample::Value(5700));

    // Without a quantity list the extra device fills only what the first one lacks.
    let fill = ExtraDevice {
        quantities: Vec::new(),
        ..extra[0].clone()
    };
    let mut snap = main.poll(&mut l).await.unwrap();
    fill.poll_into(&mut l, 100, &mut snap).await.unwrap();
    assert_eq!(snap.power_w, Sample::Value(400));
    assert_eq!(snap.import_wh, Sample::Value(1_234_560));

    // A unit that is not on the bus: the gateway's exception becomes device errors for what
    // that unit was to provide, nothing else is disturbed.
    let missing = ExtraDevice {
        unit_id: 31,
        ..extra[0].clone()
    };
    let mut snap = main.poll(&mut l).await.unwrap();
    missing.poll_into(&mut l, 100, &mut snap).await.unwrap();
    assert!(matches!(snap.import_wh, Sample::DeviceError(_)), "{snap:?}");
    assert_eq!(snap.soc_bp, Sample::Value(5700));

    // A config naming an unknown profile for an extra device names the key.
    let bad = AgentConfig::parse(
        "[device]\n[[device.extra]]\nunit_id = 30\nprofile = \"victron-gx-gird\"\n",
        "bad.toml",
    )
    .unwrap();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("device.extra[0].profile"), "{err}");
    assert!(err.contains("victron-gx-grid"), "{err}");
}

/// Registers of a SunSpec chain at 40000 built from `(model id, registers)`; an END marker when
/// `end` is set.
fn sunspec_chain(bank: &RegisterBank, models: &[(u16, Vec<u16>)], end: bool) {
    bank.set_holding(40000, &[0x5375, 0x6e53]);
    let mut at = 40002u16;
    for (id, regs) in models {
        let len = u16::try_from(regs.len()).unwrap();
        bank.set_holding(at, &[*id, len]);
        bank.set_holding(at + 2, regs);
        at += 2 + len;
    }
    if end {
        bank.set_holding(at, &[0xFFFF, 0]);
    }
}

fn common(manufacturer: &str, model: &str, serial: &str) -> Vec<u16> {
    let mut b = BlockBuilder::new(1).unwrap();
    b.set_text("Mn", manufacturer)
        .set_text("Md", model)
        .set_text("SN", serial);
    b.registers()
}

#[tokio::test]
async fn solaredge_meter_sub_device_after_the_inverter_with_export_positive_power() {
    let bank = RegisterBank::new();
    // SolarEdge: common model with L = 65 (no trailing pad), inverter 103, then the meter as a
    // sub-device: its own common model and model 203. W of the meter is positive for export.
    let mut inverter_common = common("SolarEdge ", "SE5000H", "7E1234AB");
    inverter_common.truncate(65);
    let inverter = {
        let mut b = BlockBuilder::new(103).unwrap();
        b.set_raw("W", 3200).set_raw("W_SF", 0);
        b.set_raw("WH", 9_000_000).set_raw("WH_SF", 0);
        b.registers()
    };
    let meter = {
        let mut b = BlockBuilder::new(203).unwrap();
        b.set_raw("W", 1500).set_raw("W_SF", 0);
        b.set_raw("TotWhImp", 123_456).set_raw("TotWhExp", 654_321);
        b.set_raw("TotWh_SF", 0);
        b.registers()
    };
    sunspec_chain(
        &bank,
        &[
            (1, inverter_common),
            (103, inverter),
            (1, common("SolarEdge", "SE-MTR-3Y", "M-0001")),
            (203, meter),
        ],
        true,
    );
    let server = serve(bank, 1).await;
    let mut l = link(server.addr, 1);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    assert_eq!(
        device.map.models.iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 103, 1, 203]
    );
    assert_eq!(device.identity.manufacturer, "SolarEdge");
    assert_eq!(device.identity.serial, "7E1234AB");
    assert!(device.quirks.meter_power_export_positive);
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.power_w, Sample::Value(-1500), "exporting 1500 W");
    assert_eq!(snap.import_wh, Sample::Value(123_456));
    assert_eq!(snap.export_wh, Sample::Value(654_321));

    // An explicit setting wins over the manufacturer's default.
    let options = SunSpecOptions {
        invert_power: Some(false),
        ..SunSpecOptions::default()
    };
    let device = SunSpecDevice::discover(&mut l, options).await.unwrap();
    assert_eq!(
        device.poll(&mut l).await.unwrap().power_w,
        Sample::Value(1500)
    );
}

#[tokio::test]
async fn kostal_signed_acc32_counters_are_read_as_their_magnitude() {
    let build = |manufacturer: &str| {
        let bank = RegisterBank::new();
        let meter = {
            let mut b = BlockBuilder::new(203).unwrap();
            // Kostal writes -5000 Wh of export as the acc32 pattern 2^32 - 5000.
            b.set_raw("TotWhExp", -5000).set_raw("TotWhImp", 7000);
            b.set_raw("TotWh_SF", 0)
                .set_raw("W", -300)
                .set_raw("W_SF", 0);
            b.registers()
        };
        sunspec_chain(
            &bank,
            &[
                (1, common(manufacturer, "PLENTICORE plus", "9012")),
                (203, meter),
            ],
            // Kostal: no END marker.
            false,
        );
        bank
    };
    let server = serve(build("KOSTAL"), 71).await;
    let mut l = link(server.addr, 71);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    assert!(device.quirks.signed_accumulators);
    assert!(!device.map.end_marker);
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.export_wh, Sample::Value(5000));
    assert_eq!(snap.import_wh, Sample::Value(7000));
    assert_eq!(snap.power_w, Sample::Value(-300));

    // Any other manufacturer: acc32 is unsigned, as the specification says.
    let server = serve(build("Other"), 1).await;
    let mut l = link(server.addr, 1);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.export_wh, Sample::Value(4_294_962_296));
}

#[tokio::test]
async fn fronius_float_meter_on_unit_200_beside_the_inverter_on_unit_1() {
    // Fronius Datamanager / Gen24: the inverter on unit 1 and its smart meter on unit 200,
    // both SunSpec in float mode (models 113 and 213), behind one TCP port.
    let inverter = RegisterBank::new();
    let inv = {
        let mut b = BlockBuilder::new(113).unwrap();
        b.set_f32("W", 2500.0).set_f32("WH", 1_000_000.0);
        b.registers()
    };
    sunspec_chain(
        &inverter,
        &[(1, common("Fronius", "Symo 8.2-3-M", "3141")), (113, inv)],
        true,
    );
    let meter = RegisterBank::new();
    let m = {
        let mut b = BlockBuilder::new(213).unwrap();
        b.set_f32("W", -1200.5)
            .set_f32("TotWhImp", 2_345_678.0)
            .set_f32("TotWhExp", 8_765.25);
        b.registers()
    };
    sunspec_chain(
        &meter,
        &[
            (1, common("Fronius", "Smart Meter TS 65A-3", "5")),
            (213, m),
        ],
        true,
    );
    let s1 = serve(inverter, 1).await;
    let s200 = serve(meter, 200).await;
    let gw = gateway(BTreeMap::from([(1, s1.addr), (200, s200.addr)])).await;

    let mut l = link(gw, 200);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.power_w, Sample::Value(-1201));
    assert_eq!(snap.import_wh, Sample::Value(2_345_678));
    assert_eq!(snap.export_wh, Sample::Value(8_765));

    // The inverter on unit 1 of the same gateway: production is export, output power negative.
    l.set_unit(1);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.power_w, Sample::Value(-2500));
    assert_eq!(snap.export_wh, Sample::Value(1_000_000));
}
