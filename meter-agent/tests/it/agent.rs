//! The agent end to end: simulated device → Modbus TCP → signed readings → MQTT broker.

use std::sync::Arc;
use std::time::Duration;

use gridshare_core::reading::ValueStatus;
use gridshare_testbed::register_server::{Framing, RegisterBank, RegisterServer};
use meter_agent::agent::{self, AgentStats};
use meter_agent::sunspec::block::BlockBuilder;
use tokio::sync::watch;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_of_the_simulated_device_arrive_signed_gap_free_and_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let community = community("e2e");
    let device = simulated_device(60_000).await;
    let config = agent_config(dir.path(), "home-01", &community, device.addr, &url);
    let key = public_key(&config);
    let mut rx = subscribe(
        &url,
        &format!("gridshare/v1/{community}/meters/#"),
        &format!("{community}-sub"),
        false,
    )
    .await;

    let (stop, stopped) = watch::channel(false);
    let stats = Arc::new(AgentStats::default());
    let task = tokio::spawn(agent::run(config.clone(), stopped, stats.clone()));
    let readings = collect_readings(&mut rx, &key, 20, Duration::from_secs(30)).await;
    assert_gap_free(&readings, 1);
    let mut last = (0, 0);
    for signed in &readings {
        let r = &signed.reading;
        assert_eq!(r.meter_id.as_str(), "home-01");
        assert_eq!(r.device.manufacturer, "Gridshare");
        assert_eq!(r.device.model, "SIM-HYBRID");
        assert_eq!(r.device.serial, "SIM-000001");
        let (import, export) = (
            r.import_wh.ok_value().unwrap(),
            r.export_wh.ok_value().unwrap(),
        );
        assert!(
            import >= last.0 && export >= last.1,
            "lifetime counters went backwards"
        );
        last = (import, export);
        assert!(
            r.battery_charge_wh.ok_value().is_some(),
            "battery from model 160 module 3"
        );
        assert!(r.battery_discharge_wh.ok_value().is_some());
        assert!(r.power_w.ok_value().is_some());
        let soc = r.soc_bp.ok_value().unwrap();
        assert!(soc <= 10_000);
    }
    // At 11:00 with 6 kWp of PV the home exports; a minute of simulated time per tick moves
    // the export counter.
    assert!(
        readings.last().unwrap().reading.export_wh.ok_value()
            > readings[0].reading.export_wh.ok_value()
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Graceful shutdown: retained status says offline, nothing left behind.
    let (outbox, state) =
        meter_agent::outbox::Outbox::open(&config.outbox_path(), &config.meter_id().unwrap())
            .await
            .unwrap();
    assert_eq!(
        outbox.len().await.unwrap(),
        0,
        "acknowledged readings are deleted"
    );
    assert!(state.next_seq > 20);
    let mut status = subscribe(
        &url,
        &format!("gridshare/v1/{community}/meters/home-01/status"),
        &format!("{community}-status"),
        false,
    )
    .await;
    let (_, payload) = tokio::time::timeout(Duration::from_secs(5), status.recv())
        .await
        .unwrap()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(status["state"], "offline");
}

/// Writes a meter model 203 at 40002 behind a SunS marker, with the given raw points.
fn meter_map(bank: &RegisterBank, points: &[(&str, i64)]) {
    let mut common = BlockBuilder::new(1).unwrap();
    common
        .set_text("Mn", "Test")
        .set_text("Md", "Meter")
        .set_text("SN", "T-1");
    let mut meter = BlockBuilder::new(203).unwrap();
    for (name, raw) in points {
        meter.set_raw(name, *raw);
    }
    let common = common.registers();
    let meter = meter.registers();
    bank.update(|write| {
        write(40000, &[0x5375, 0x6e53]);
        write(40002, &[1, u16::try_from(common.len()).unwrap()]);
        write(40004, &common);
        let at = 40004 + u16::try_from(common.len()).unwrap();
        write(at, &[203, u16::try_from(meter.len()).unwrap()]);
        write(at + 2, &meter);
        write(at + 2 + u16::try_from(meter.len()).unwrap(), &[0xFFFF, 0]);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_registers_not_implemented_backwards_counters_and_bad_scale_factors() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let community = community("registers");
    let bank = RegisterBank::new();
    meter_map(
        &bank,
        &[
            ("TotWhImp", 5000),
            ("TotWhExp", 0),
            ("TotWh_SF", 0),
            ("W", 1234),
            ("W_SF", 0),
        ],
    );
    let server = RegisterServer::start(
        "127.0.0.1:0".parse().unwrap(),
        bank.clone(),
        1,
        Framing::Tcp,
    )
    .await
    .unwrap();
    let mut config = agent_config(dir.path(), "home-02", &community, server.addr, &url);
    config.poll_interval_ms = 200;
    let key = public_key(&config);
    let mut rx = subscribe(
        &url,
        &format!("gridshare/v1/{community}/meters/+/reading"),
        &format!("{community}-sub"),
        false,
    )
    .await;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(agent::run(config, stopped, Arc::new(AgentStats::default())));

    let first = collect_readings(&mut rx, &key, 1, Duration::from_secs(10)).await;
    let r = &first[0].reading;
    assert_eq!(r.import_wh.ok_value(), Some(5000));
    // acc32 0 is SunSpec's "not implemented": reported as such, never as 0 Wh.
    assert_eq!(r.export_wh.status(), ValueStatus::NotImplemented);
    assert_eq!(r.export_wh.value(), None);
    assert_eq!(r.power_w.ok_value(), Some(1234));
    // No battery models on this device.
    assert_eq!(r.soc_bp.status(), ValueStatus::NotImplemented);

    // The counter goes backwards: the last good value is kept and flagged.
    meter_map(
        &bank,
        &[
            ("TotWhImp", 4000),
            ("TotWh_SF", 0),
            ("W", 1234),
            ("W_SF", 0),
        ],
    );
    let r = wait_for(&mut rx, &key, |r| {
        r.import_wh.status() == ValueStatus::Implausible
    })
    .await;
    assert_eq!(r.import_wh.value(), Some(5000));

    // A scale factor outside -10..10 is refused, not applied.
    meter_map(
        &bank,
        &[
            ("TotWhImp", 6000),
            ("TotWh_SF", 0),
            ("W", 1234),
            ("W_SF", 11),
        ],
    );
    let r = wait_for(&mut rx, &key, |r| r.import_wh.ok_value() == Some(6000)).await;
    assert_eq!(r.power_w.status(), ValueStatus::DeviceError);

    // Value and scale factor change together between polls: 12340 × 10^-1 and 1234 × 10^0 are
    // the same power; a reader that mixed them would see 123.4 W or 12340 W.
    let flipper = {
        let bank = bank.clone();
        tokio::spawn(async move {
            for i in 0..200u32 {
                let (w, sf) = if i % 2 == 0 { (12340, -1) } else { (1234, 0) };
                meter_map(
                    &bank,
                    &[("TotWhImp", 6000), ("TotWh_SF", 0), ("W", w), ("W_SF", sf)],
                );
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
        })
    };
    let mut checked = 0;
    while !flipper.is_finished() {
        let r = wait_for(&mut rx, &key, |_| true).await;
        assert_eq!(
            r.power_w.ok_value(),
            Some(1234),
            "value and scale factor from different instants"
        );
        checked += 1;
    }
    assert!(checked >= 3);
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    key: &gridshare_core::reading::PublicKey,
    pred: impl Fn(&gridshare_core::reading::Reading) -> bool,
) -> gridshare_core::reading::Reading {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("expected reading")
            .unwrap();
        let signed = gridshare_core::reading::SignedReading::from_json_bytes(&payload).unwrap();
        signed.verify(key).unwrap();
        if pred(&signed.reading) {
            return signed.reading;
        }
    }
}

#[tokio::test]
async fn agent_refuses_a_world_readable_key_and_a_bad_config() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        dir.path(),
        "home-03",
        "c",
        "127.0.0.1:1".parse().unwrap(),
        "mqtt://127.0.0.1:1",
    );
    std::fs::set_permissions(&config.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_stop, stopped) = watch::channel(false);
    let err = agent::run(
        config.clone(),
        stopped.clone(),
        Arc::new(AgentStats::default()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");

    let mut bad = config;
    bad.modbus.timeout_ms = 0;
    let err = agent::run(bad, stopped, Arc::new(AgentStats::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("modbus.timeout_ms"), "{err}");
}
