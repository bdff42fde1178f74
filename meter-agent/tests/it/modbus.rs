//! The Modbus layer against real servers over TCP: both framings, SunSpec discovery quirks,
//! register profiles, and devices that misbehave.

use std::time::{Duration, Instant};

use gridshare_testbed::register_server::{
    Fault, Framing, RegisterBank, RegisterServer, SERVER_DEVICE_FAILURE,
};
use gridshare_testbed::simulator::{Household, SimulatedDevice};
use meter_agent::device::{Device, ProfileDevice, Sample, SunSpecDevice, SunSpecOptions};
use meter_agent::profile::RegisterProfile;
use meter_agent::sunspec::block::BlockBuilder;
use meter_agent::sunspec::{self, SunSpecError};
use meter_agent::transport::{LinkConfig, LinkError, ModbusLink, Table, TransportKind};
use tokio_modbus::ExceptionCode;

fn link(addr: std::net::SocketAddr, transport: TransportKind) -> ModbusLink {
    ModbusLink::new(LinkConfig {
        transport,
        address: addr.to_string(),
        timeout_ms: 300,
        ..LinkConfig::default()
    })
}

#[tokio::test]
async fn rtu_over_tcp_reads_the_same_device_as_modbus_tcp() {
    let sim = SimulatedDevice::new(Household::default(), 12 * 3_600_000);
    let tcp = RegisterServer::start("127.0.0.1:0".parse().unwrap(), sim.bank(), 1, Framing::Tcp)
        .await
        .unwrap();
    let rtu = RegisterServer::start(
        "127.0.0.1:0".parse().unwrap(),
        sim.bank(),
        1,
        Framing::RtuOverTcp,
    )
    .await
    .unwrap();
    let mut a = link(tcp.addr, TransportKind::Tcp);
    let mut b = link(rtu.addr, TransportKind::RtuOverTcp);
    let da = SunSpecDevice::discover(&mut a, SunSpecOptions::default())
        .await
        .unwrap();
    let db = SunSpecDevice::discover(&mut b, SunSpecOptions::default())
        .await
        .unwrap();
    assert_eq!(da.map, db.map);
    assert_eq!(
        da.map.models.iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 103, 203, 160, 124]
    );
    assert!(da.map.end_marker);
    assert_eq!(da.identity.serial, "SIM-000001");
    let sa = da.poll(&mut a).await.unwrap();
    let sb = db.poll(&mut b).await.unwrap();
    assert_eq!(sa, sb);
    let (import, export) = sim.grid_counters_wh();
    assert_eq!(sa.import_wh, Sample::Value(i64::try_from(import).unwrap()));
    assert_eq!(sa.export_wh, Sample::Value(i64::try_from(export).unwrap()));
    assert!(matches!(sa.battery_charge_wh, Sample::Value(_)));
    assert!(matches!(sa.soc_bp, Sample::Value(bp) if (0..=10_000).contains(&bp)));
}

/// The hybrid inverter's solar and battery power (for the household's power-flow picture and
/// its self-sufficiency): PV strings and battery modules of model 160 told apart by their
/// labels, at noon with the battery charging and at night with it discharging.
#[tokio::test]
async fn solar_and_battery_power_come_from_the_mppt_modules() {
    for (hour, charging) in [(9, true), (22, false)] {
        let mut sim = SimulatedDevice::new(Household::default(), 0);
        sim.advance(hour * 3_600_000);
        let server =
            RegisterServer::start("127.0.0.1:0".parse().unwrap(), sim.bank(), 1, Framing::Tcp)
                .await
                .unwrap();
        let mut l = link(server.addr, TransportKind::Tcp);
        let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
            .await
            .unwrap();
        let snap = device.poll(&mut l).await.unwrap();
        let (pv_w, pv_wh, battery_w) = sim.flow();
        assert_eq!(snap.pv_power_w, Sample::Value(pv_w), "hour {hour}");
        assert_eq!(snap.pv_wh, Sample::Value(i64::try_from(pv_wh).unwrap()));
        assert_eq!(snap.battery_power_w, Sample::Value(battery_w));
        if charging {
            assert!(
                pv_w > 1_000 && battery_w > 0,
                "morning: {pv_w} W PV, {battery_w} W"
            );
        } else {
            assert!(
                pv_w == 0 && battery_w < 0,
                "night: {pv_w} W PV, {battery_w} W"
            );
        }
        server.stop();
    }
}

/// A PV inverter with a grid meter and no battery: the inverter's DC power and lifetime
/// energy are the solar production.
#[tokio::test]
async fn a_pv_inverter_without_battery_reports_its_dc_side_as_solar() {
    let bank = RegisterBank::new();
    let common = BlockBuilder::new(1).unwrap().registers();
    let inverter = {
        let mut b = BlockBuilder::new(103).unwrap();
        b.set_raw("W", 1_950)
            .set_raw("W_SF", 0)
            .set_raw("DCW", 2_010)
            .set_raw("DCW_SF", 0)
            .set_raw("WH", 123_456)
            .set_raw("WH_SF", 0);
        b.registers()
    };
    let meter = {
        let mut b = BlockBuilder::new(203).unwrap();
        b.set_raw("W", -1_500).set_raw("W_SF", 0);
        b.registers()
    };
    let len = |r: &Vec<u16>| u16::try_from(r.len()).unwrap();
    bank.set_holding(40000, &[0x5375, 0x6e53]);
    let mut at = 40002;
    for (id, regs) in [(1, &common), (103, &inverter), (203, &meter)] {
        bank.set_holding(at, &[id, len(regs)]);
        bank.set_holding(at + 2, regs);
        at += 2 + len(regs);
    }
    bank.set_holding(at, &[0xFFFF, 0]);
    let server = RegisterServer::start("127.0.0.1:0".parse().unwrap(), bank, 1, Framing::Tcp)
        .await
        .unwrap();
    let mut l = link(server.addr, TransportKind::Tcp);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(
        snap.power_w,
        Sample::Value(-1_500),
        "grid power from the meter"
    );
    assert_eq!(snap.pv_power_w, Sample::Value(2_010));
    assert_eq!(snap.pv_wh, Sample::Value(123_456));
    assert_eq!(snap.battery_power_w, Sample::NotImplemented);
}

#[tokio::test]
async fn discovery_at_base_zero_without_end_marker_reports_unknown_models() {
    let bank = RegisterBank::new();
    let common = BlockBuilder::new(1).unwrap().registers();
    let meter = {
        let mut b = BlockBuilder::new(203).unwrap();
        b.set_raw("TotWhImp", 42).set_raw("TotWh_SF", 3);
        b.registers()
    };
    let len = |r: &Vec<u16>| u16::try_from(r.len()).unwrap();
    bank.set_holding(0, &[0x5375, 0x6e53]);
    bank.set_holding(2, &[1, len(&common)]);
    bank.set_holding(4, &common);
    let unknown_at = 4 + len(&common);
    bank.set_holding(unknown_at, &[64_999, 4, 1, 2, 3, 4]);
    let meter_at = unknown_at + 6;
    bank.set_holding(meter_at, &[203, len(&meter)]);
    bank.set_holding(meter_at + 2, &meter);
    // No end marker: the address space simply ends (SMA, Kostal).
    let server = RegisterServer::start("127.0.0.1:0".parse().unwrap(), bank, 1, Framing::Tcp)
        .await
        .unwrap();
    let mut l = link(server.addr, TransportKind::Tcp);
    let map = sunspec::discover(&mut l).await.unwrap();
    assert_eq!(map.base, 0);
    assert!(!map.end_marker);
    assert_eq!(
        map.models.iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 64_999, 203]
    );
    assert_eq!(map.unknown_models(), [64_999]);
    let device = SunSpecDevice::discover(&mut l, SunSpecOptions::default())
        .await
        .unwrap();
    let snap = device.poll(&mut l).await.unwrap();
    // 42 × 10^3 Wh.
    assert_eq!(snap.import_wh, Sample::Value(42_000));
    assert_eq!(snap.export_wh, Sample::NotImplemented);
}

#[tokio::test]
async fn a_device_without_sunspec_is_named_as_such() {
    let bank = RegisterBank::new();
    bank.set_holding(40000, &[1, 2]);
    let server = RegisterServer::start("127.0.0.1:0".parse().unwrap(), bank, 1, Framing::Tcp)
        .await
        .unwrap();
    let err = sunspec::discover(&mut link(server.addr, TransportKind::Tcp))
        .await
        .unwrap_err();
    assert!(matches!(err, SunSpecError::NotSunSpec(_)), "{err}");
    assert!(err.to_string().contains("wrong unit id"));
}

#[tokio::test]
async fn exceptions_timeouts_malformed_replies_and_a_vanishing_device() {
    let bank = RegisterBank::new();
    bank.set_holding(100, &[7, 8, 9]);
    let server = RegisterServer::start(
        "127.0.0.1:0".parse().unwrap(),
        bank.clone(),
        1,
        Framing::Tcp,
    )
    .await
    .unwrap();
    let mut l = link(server.addr, TransportKind::Tcp);
    assert_eq!(l.read(Table::Holding, 100, 3).await.unwrap(), [7, 8, 9]);

    // A missing register is an exception, and the connection stays up.
    let err = l.read(Table::Holding, 200, 1).await.unwrap_err();
    assert!(
        matches!(err, LinkError::Exception(ExceptionCode::IllegalDataAddress)),
        "{err}"
    );
    assert!(l.is_connected());
    bank.set_fault(Fault::Exception(SERVER_DEVICE_FAILURE));
    let err = l.read(Table::Holding, 100, 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::Exception(ExceptionCode::ServerDeviceFailure)
        ),
        "{err}"
    );

    // Silence: the request times out within the configured time and the link reconnects.
    bank.set_fault(Fault::Silence);
    let started = Instant::now();
    let err = l.read(Table::Holding, 100, 3).await.unwrap_err();
    assert!(matches!(err, LinkError::Timeout(300)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!l.is_connected());

    // A reply whose byte count does not match.
    bank.set_fault(Fault::Malformed);
    let err = l.read(Table::Holding, 100, 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::Transport(_) | LinkError::WrongCount { .. } | LinkError::Timeout(_)
        ),
        "{err}"
    );

    // The device closes the connection.
    bank.set_fault(Fault::Disconnect);
    assert!(l.read(Table::Holding, 100, 3).await.is_err());

    // It recovers: the next read reconnects and succeeds.
    bank.set_fault(Fault::None);
    assert_eq!(l.read(Table::Holding, 100, 3).await.unwrap(), [7, 8, 9]);

    // The device disappears entirely.
    let addr = server.addr;
    server.stop();
    l.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = l.read(Table::Holding, 100, 3).await.unwrap_err();
    assert!(matches!(err, LinkError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()));
}

#[tokio::test]
async fn a_model_that_answers_with_an_exception_yields_device_errors_not_zeros() {
    let sim = SimulatedDevice::new(Household::default(), 12 * 3_600_000);
    let bank = sim.bank();
    let server = RegisterServer::start(
        "127.0.0.1:0".parse().unwrap(),
        bank.clone(),
        1,
        Framing::Tcp,
    )
    .await
    .unwrap();
    let mut l = link(server.addr, TransportKind::Tcp);
    let device = Device::SunSpec(
        SunSpecDevice::discover(&mut l, SunSpecOptions::default())
            .await
            .unwrap(),
    );
    bank.set_fault(Fault::Exception(SERVER_DEVICE_FAILURE));
    let snap = device.poll(&mut l).await.unwrap();
    assert!(matches!(snap.import_wh, Sample::DeviceError(_)), "{snap:?}");
    assert!(matches!(snap.soc_bp, Sample::DeviceError(_)), "{snap:?}");
}

#[tokio::test]
async fn eastron_profile_with_word_swapped_twin_reads_input_registers() {
    fn f32_words(v: f32) -> [u16; 2] {
        let b = v.to_bits();
        [
            u16::try_from(b >> 16).unwrap(),
            u16::try_from(b & 0xFFFF).unwrap(),
        ]
    }
    let bank = RegisterBank::new();
    let profile = RegisterProfile::builtin("eastron-sdm630").unwrap();
    // The registers the plan reads over exist on the device (zero), then the values.
    for span in profile.read_plan() {
        bank.set_input(span.address, &vec![0; usize::from(span.count)]);
    }
    // SDM630: power 0x34, import 0x48, export 0x4A, IEEE754 big-endian words, kWh.
    bank.set_input(0x34, &f32_words(-1523.4));
    bank.set_input(0x48, &f32_words(12_345.5));
    bank.set_input(0x4A, &f32_words(678.5));
    let server = RegisterServer::start(
        "127.0.0.1:0".parse().unwrap(),
        bank.clone(),
        1,
        Framing::Tcp,
    )
    .await
    .unwrap();
    let mut l = link(server.addr, TransportKind::Tcp);
    let device = Device::Profile(ProfileDevice {
        profile,
        identity: gridshare_core::reading::DeviceIdentity::new("Eastron", "SDM630", "1").unwrap(),
    });
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.power_w, Sample::Value(-1523));
    assert_eq!(snap.import_wh, Sample::Value(12_345_500));
    assert_eq!(snap.export_wh, Sample::Value(678_500));

    // The same meter with swapped words, described by a profile file.
    let swapped = RegisterProfile::from_toml(
        r#"
name = "swapped"
description = "SDM630 behind a gateway that swaps words"
[[register]]
quantity = "import_wh"
function = "input"
address = 0x48
type = "f32"
word_order = "little_endian"
scale = 3
"#,
    );
    let swapped = match swapped {
        Ok(p) => p,
        Err(e) => panic!("profile: {e}"),
    };
    let [hi, lo] = f32_words(12_345.5);
    bank.set_input(0x48, &[lo, hi]);
    let device = Device::Profile(ProfileDevice {
        profile: swapped,
        identity: Default::default(),
    });
    let snap = device.poll(&mut l).await.unwrap();
    assert_eq!(snap.import_wh, Sample::Value(12_345_500));
}
