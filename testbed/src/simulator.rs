//! A simulated SunSpec hybrid inverter with a grid meter and a battery, served over Modbus TCP
//! (`meter-agent simulate-device`): for demos, for a first install without hardware, and for
//! the agent's own tests.
//!
//! The household has PV with a day-shaped curve (sunrise 06:00, sunset 18:00, passing clouds),
//! a load with morning and evening peaks, and a battery that stores surplus and covers deficit.
//! Lifetime counters advance exactly with the simulated power flows. Time can run faster than
//! the wall clock (`speed`), so a whole day passes in minutes.
//!
//! SunSpec map at 40000: `SunS`, common model 1, inverter 103, meter 203, multiple MPPT 160
//! (modules PV 1, PV 2, battery charge, battery discharge — as hybrid inverters report their
//! battery), storage 124, end marker.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::register_server::{Framing, RegisterBank, RegisterServer};
use gridshare_sunspec::block::BlockBuilder;
use gridshare_sunspec::{END_MODEL_ID, SUNS_MARKER};

/// Where the simulated map starts.
pub const BASE: u16 = 40000;

/// The household being simulated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Household {
    /// PV peak power, W.
    pub pv_peak_w: f64,
    /// Usable battery capacity, Wh (0: no battery).
    pub battery_wh: f64,
    /// Battery charge/discharge power limit, W.
    pub battery_max_w: f64,
    /// Load at night, W.
    pub base_load_w: f64,
    /// Seed that varies clouds and load between simulated homes.
    pub seed: u64,
    /// Serial number reported in model 1.
    pub serial: String,
}

impl Default for Household {
    fn default() -> Self {
        Self {
            pv_peak_w: 6000.0,
            battery_wh: 10_000.0,
            battery_max_w: 3000.0,
            base_load_w: 300.0,
            seed: 1,
            serial: "SIM-000001".into(),
        }
    }
}

/// Register addresses of the models in the simulated map (of each model's `ID` register).
#[derive(Debug, Clone, Copy)]
struct Layout {
    common: u16,
    inverter: u16,
    meter: u16,
    mppt: u16,
    storage: u16,
}

/// The simulated device: physical state plus the registers it exposes.
#[derive(Debug)]
pub struct SimulatedDevice {
    household: Household,
    bank: RegisterBank,
    layout: Layout,
    /// Simulated time, milliseconds since midnight of day 0.
    time_ms: u64,
    import_mwh: u64,
    export_mwh: u64,
    pv_mwh: [u64; 2],
    charge_mwh: u64,
    discharge_mwh: u64,
    soc_wh: f64,
    pv_w: [f64; 2],
    load_w: f64,
    battery_w: f64,
}

/// What a simulated device needs to carry on where it stopped: its clock, lifetime counters
/// and battery. A real inverter keeps its counters across a restart of whatever reads it; a
/// simulated one that started again from its initial counters would look, to the agent and
/// the engine, like a meter whose counters ran backwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Simulated time, ms since midnight of day 0.
    pub time_ms: u64,
    /// Grid import, mWh.
    pub import_mwh: u64,
    /// Grid export, mWh.
    pub export_mwh: u64,
    /// PV strings, mWh.
    pub pv_mwh: [u64; 2],
    /// Battery charge, mWh.
    pub charge_mwh: u64,
    /// Battery discharge, mWh.
    pub discharge_mwh: u64,
    /// Battery energy, Wh.
    pub soc_wh: f64,
}

/// Lifetime counters start high, as on a device that has run for years (and because SunSpec
/// accumulators use 0 for "not implemented").
const INITIAL_WH: u64 = 1_000_000;

impl SimulatedDevice {
    /// A device at simulated time `start_ms` (ms since midnight), registers filled.
    pub fn new(household: Household, start_ms: u64) -> Self {
        let bank = RegisterBank::new();
        let mut address = BASE;
        bank.set_holding(address, &SUNS_MARKER);
        address += 2;
        let mut place = |len: usize| {
            let at = address;
            address += 2 + u16::try_from(len).unwrap_or(0);
            at
        };
        let layout = Layout {
            common: place(block(1, 0).len()),
            inverter: place(block(103, 0).len()),
            meter: place(block(203, 0).len()),
            mppt: place(block(160, 4).len()),
            storage: place(block(124, 0).len()),
        };
        bank.set_holding(address, &[END_MODEL_ID, 0]);
        let soc_wh = household.battery_wh * 0.5;
        let mut device = Self {
            household,
            bank,
            layout,
            time_ms: start_ms,
            import_mwh: INITIAL_WH * 1000,
            export_mwh: INITIAL_WH * 1000,
            pv_mwh: [INITIAL_WH * 1000; 2],
            charge_mwh: INITIAL_WH * 1000,
            discharge_mwh: INITIAL_WH * 1000,
            soc_wh,
            pv_w: [0.0; 2],
            load_w: 0.0,
            battery_w: 0.0,
        };
        device.step_power();
        device.write_registers();
        device
    }

    /// A device that carries on from `state` (saved by [`SimulatedDevice::state`]).
    pub fn resume(household: Household, state: &DeviceState) -> Self {
        let mut device = Self::new(household, state.time_ms);
        device.import_mwh = state.import_mwh;
        device.export_mwh = state.export_mwh;
        device.pv_mwh = state.pv_mwh;
        device.charge_mwh = state.charge_mwh;
        device.discharge_mwh = state.discharge_mwh;
        device.soc_wh = state.soc_wh.clamp(0.0, device.household.battery_wh);
        device.step_power();
        device.write_registers();
        device
    }

    /// Where the device stands now.
    pub fn state(&self) -> DeviceState {
        DeviceState {
            time_ms: self.time_ms,
            import_mwh: self.import_mwh,
            export_mwh: self.export_mwh,
            pv_mwh: self.pv_mwh,
            charge_mwh: self.charge_mwh,
            discharge_mwh: self.discharge_mwh,
            soc_wh: self.soc_wh,
        }
    }

    /// The registers, to serve or to inspect.
    pub fn bank(&self) -> RegisterBank {
        self.bank.clone()
    }

    /// Lifetime import and export at the grid meter, Wh (what a reading must show).
    pub fn grid_counters_wh(&self) -> (u64, u64) {
        (self.import_mwh / 1000, self.export_mwh / 1000)
    }

    /// What the registers say of solar and battery now, as a reader sums model 160's modules:
    /// PV power (W, each string rounded), lifetime PV energy (Wh, each string floored) and
    /// battery power (W, positive = charging: the charge module's power less the discharge
    /// module's).
    pub fn flow(&self) -> (i64, u64, i64) {
        #[allow(clippy::cast_possible_truncation)]
        let w = |v: f64| v.round() as i64;
        (
            w(self.pv_w[0]) + w(self.pv_w[1]),
            self.pv_mwh[0] / 1000 + self.pv_mwh[1] / 1000,
            w(self.battery_w.max(0.0)) - w((-self.battery_w).max(0.0)),
        )
    }

    /// Advances simulated time by `dt_ms`: integrates the current power flows, then computes
    /// the new ones, and publishes every register in one atomic update.
    pub fn advance(&mut self, dt_ms: u64) {
        // Integrate in steps of at most a minute so the battery limits hold at high speeds.
        let mut left = dt_ms;
        while left > 0 {
            let step = left.min(60_000);
            self.integrate(step);
            self.time_ms += step;
            self.step_power();
            left -= step;
        }
        self.write_registers();
    }

    fn integrate(&mut self, dt_ms: u64) {
        let mwh = |w: f64| {
            let v = w.max(0.0) * dt_ms as f64 / 3600.0;
            // Power is bounded by the household's ratings; the cast cannot overflow.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let v = v.round() as u64;
            v
        };
        let grid = self.grid_w();
        self.import_mwh += mwh(grid);
        self.export_mwh += mwh(-grid);
        self.pv_mwh[0] += mwh(self.pv_w[0]);
        self.pv_mwh[1] += mwh(self.pv_w[1]);
        self.charge_mwh += mwh(self.battery_w);
        self.discharge_mwh += mwh(-self.battery_w);
        self.soc_wh = (self.soc_wh + self.battery_w * dt_ms as f64 / 3_600_000.0)
            .clamp(0.0, self.household.battery_wh);
    }

    /// Grid power, W, positive = import.
    fn grid_w(&self) -> f64 {
        self.load_w - self.pv_w[0] - self.pv_w[1] + self.battery_w
    }

    fn step_power(&mut self) {
        let h = (self.time_ms % 86_400_000) as f64 / 3_600_000.0;
        let day = (self.time_ms / 86_400_000) as f64;
        let seed = (self.household.seed % 1000) as f64;
        let sun = if (6.0..18.0).contains(&h) {
            (PI * (h - 6.0) / 12.0).sin()
        } else {
            0.0
        };
        // Passing clouds: a smooth, deterministic wobble that differs per home and per day.
        let clouds = 0.75 + 0.25 * (h * 2.3 + seed * 0.7 + day * 1.9).sin();
        let pv = self.household.pv_peak_w * sun * clouds;
        self.pv_w = [pv * 0.55, pv * 0.45];
        let morning = 900.0 * (-((h - 7.5) * (h - 7.5)) / 0.8).exp();
        let evening = 1500.0 * (-((h - 19.5) * (h - 19.5)) / 2.0).exp();
        let wobble = 120.0 * (h * 7.1 + seed).sin();
        self.load_w = (self.household.base_load_w + morning + evening + wobble).max(50.0);
        let surplus = pv - self.load_w;
        let cap = self.household.battery_wh;
        self.battery_w = if cap <= 0.0 {
            0.0
        } else if surplus > 0.0 && self.soc_wh < cap * 0.95 {
            surplus.min(self.household.battery_max_w)
        } else if surplus < 0.0 && self.soc_wh > cap * 0.10 {
            surplus.max(-self.household.battery_max_w)
        } else {
            0.0
        };
    }

    fn write_registers(&self) {
        let watts = |w: f64| -> i64 {
            #[allow(clippy::cast_possible_truncation)]
            let w = w.round() as i64;
            w
        };
        let wh = |mwh: u64| i64::try_from(mwh / 1000).unwrap_or(i64::MAX);
        let pv_total = self.pv_w[0] + self.pv_w[1];

        let mut common = builder(1, 0);
        common
            .set_text("Mn", "Gridshare")
            .set_text("Md", "SIM-HYBRID")
            .set_text("Opt", "simulated")
            .set_text("Vr", env!("CARGO_PKG_VERSION"))
            .set_text("SN", &self.household.serial)
            .set_raw("DA", 1);

        let mut inverter = builder(103, 0);
        inverter
            .set_raw("W", watts(pv_total - self.battery_w))
            .set_raw("W_SF", 0)
            .set_raw("WH", wh(self.pv_mwh[0] + self.pv_mwh[1]))
            .set_raw("WH_SF", 0)
            .set_raw("DCW", watts(pv_total))
            .set_raw("DCW_SF", 0)
            .set_raw("St", 4)
            .set_raw(
                "A",
                watts((pv_total - self.battery_w).abs() / 690.0 * 100.0),
            )
            .set_raw("A_SF", -2)
            .set_raw("PhVphA", 2301)
            .set_raw("PhVphB", 2298)
            .set_raw("PhVphC", 2305)
            .set_raw("V_SF", -1)
            .set_raw("Hz", 5000)
            .set_raw("Hz_SF", -2);

        let mut meter = builder(203, 0);
        meter
            .set_raw("W", watts(self.grid_w()))
            .set_raw("W_SF", 0)
            .set_raw("TotWhImp", wh(self.import_mwh))
            .set_raw("TotWhExp", wh(self.export_mwh))
            .set_raw("TotWh_SF", 0)
            .set_raw("A", watts(self.grid_w().abs() / 690.0 * 100.0))
            .set_raw("A_SF", -2)
            .set_raw("PhVphA", 2302)
            .set_raw("PhVphB", 2299)
            .set_raw("PhVphC", 2304)
            .set_raw("V_SF", -1)
            .set_raw("Hz", 5000)
            .set_raw("Hz_SF", -2);

        let mut mppt = builder(160, 4);
        mppt.set_raw("DCW_SF", 0).set_raw("DCWH_SF", 0);
        let modules = [
            ("PV 1", self.pv_w[0], self.pv_mwh[0]),
            ("PV 2", self.pv_w[1], self.pv_mwh[1]),
            ("BAT CHARGE", self.battery_w.max(0.0), self.charge_mwh),
            (
                "BAT DISCHARGE",
                (-self.battery_w).max(0.0),
                self.discharge_mwh,
            ),
        ];
        for (i, (label, w, mwh)) in modules.into_iter().enumerate() {
            mppt.set_group_raw(i, "ID", i64::try_from(i + 1).unwrap_or(0))
                .set_group_text(i, "IDStr", label)
                .set_group_raw(i, "DCW", watts(w))
                .set_group_raw(i, "DCWH", wh(mwh));
        }

        let mut storage = builder(124, 0);
        let soc_permille = if self.household.battery_wh > 0.0 {
            watts(self.soc_wh / self.household.battery_wh * 1000.0)
        } else {
            0
        };
        storage
            .set_raw("WChaMax", watts(self.household.battery_max_w))
            .set_raw("WChaMax_SF", 0)
            .set_raw("ChaState", soc_permille)
            .set_raw("ChaState_SF", -1);

        let l = self.layout;
        self.bank.update(|write| {
            for (address, id, b) in [
                (l.common, 1, &common),
                (l.inverter, 103, &inverter),
                (l.meter, 203, &meter),
                (l.mppt, 160, &mppt),
                (l.storage, 124, &storage),
            ] {
                let regs = b.registers();
                write(address, &[id, u16::try_from(regs.len()).unwrap_or(0)]);
                write(address + 2, &regs);
            }
        });
    }
}

/// Serves a simulated device over TCP on `listen` (unit id 1) and advances its clock in the
/// background: every `tick_ms` of wall-clock time, by `tick_ms × speed` of simulated time.
/// The device lives until the runtime ends; [`RegisterServer::stop`] stops serving it.
pub async fn serve(
    household: Household,
    start_ms: u64,
    listen: std::net::SocketAddr,
    framing: Framing,
    tick_ms: u64,
    speed: f64,
) -> std::io::Result<RegisterServer> {
    serve_device(
        SimulatedDevice::new(household, start_ms),
        listen,
        framing,
        tick_ms,
        speed,
        None,
    )
    .await
}

/// As [`serve`], but the device's state is kept in `state_file`: read at start if it exists
/// (the device carries on where it stopped), and written after every tick in a crash-safe way
/// (a temporary file renamed over it).
pub async fn serve_persistent(
    household: Household,
    start_ms: u64,
    listen: std::net::SocketAddr,
    framing: Framing,
    tick_ms: u64,
    speed: f64,
    state_file: std::path::PathBuf,
) -> std::io::Result<RegisterServer> {
    let device = match std::fs::read(&state_file) {
        Ok(bytes) => {
            let state: DeviceState = serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", state_file.display()),
                )
            })?;
            SimulatedDevice::resume(household, &state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            SimulatedDevice::new(household, start_ms)
        }
        Err(e) => return Err(e),
    };
    save_state(&state_file, &device.state())?;
    serve_device(device, listen, framing, tick_ms, speed, Some(state_file)).await
}

fn save_state(path: &std::path::Path, state: &DeviceState) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn serve_device(
    mut device: SimulatedDevice,
    listen: std::net::SocketAddr,
    framing: Framing,
    tick_ms: u64,
    speed: f64,
    state_file: Option<std::path::PathBuf>,
) -> std::io::Result<RegisterServer> {
    let server = RegisterServer::start(listen, device.bank(), 1, framing).await?;
    // A bounded, positive speed (checked by the callers' argument parsing) times a tick of
    // milliseconds fits easily in a u64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let step = (tick_ms as f64 * speed.max(0.0)) as u64;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(tick_ms.max(1)));
        loop {
            tick.tick().await;
            device.advance(step);
            // Saved after every change of the registers, so a reader never saw a counter
            // that the saved state does not reach.
            if let Some(path) = &state_file
                && let Err(e) = save_state(path, &device.state())
            {
                tracing::warn!(target: "simulator", "cannot save {}: {e}", path.display());
            }
        }
    });
    Ok(server)
}

fn builder(id: u16, groups: usize) -> BlockBuilder {
    let b = if groups == 0 {
        BlockBuilder::new(id)
    } else {
        BlockBuilder::with_groups(id, groups)
    };
    // The simulator only builds models that are part of the generated definitions.
    b.unwrap_or_else(|| panic!("SunSpec model {id} has no definition"))
}

fn block(id: u16, groups: usize) -> Vec<u16> {
    builder(id, groups).registers()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridshare_sunspec::block::ModelBlock;

    fn read_block(bank: &RegisterBank, address: u16) -> ModelBlock {
        let header = bank.holding(address, 2).unwrap();
        let regs = bank.holding(address + 2, header[1]).unwrap();
        ModelBlock::decode(header[0], &regs).unwrap()
    }

    #[test]
    fn without_a_battery_nights_import_and_noons_export() {
        let household = Household {
            battery_wh: 0.0,
            ..Household::default()
        };
        let mut sim = SimulatedDevice::new(household, 0);
        let (imp0, exp0) = sim.grid_counters_wh();
        sim.advance(4 * 3_600_000);
        let (imp1, exp1) = sim.grid_counters_wh();
        assert!(imp1 > imp0, "the night load is imported");
        assert_eq!(exp1, exp0, "nothing exported at night");
        sim.advance(8 * 3_600_000);
        let meter = read_block(&sim.bank(), sim.layout.meter);
        assert!(meter.value("W").unwrap().mantissa < 0, "exporting at noon");
        sim.advance(2 * 3_600_000);
        let (_, exp2) = sim.grid_counters_wh();
        assert!(exp2 > exp1);
        let meter = read_block(&sim.bank(), sim.layout.meter);
        assert_eq!(
            meter.value("TotWhExp").unwrap().floor_int().unwrap(),
            i64::try_from(exp2).unwrap()
        );
    }

    #[test]
    fn the_battery_covers_the_night_and_fills_at_noon() {
        let mut sim = SimulatedDevice::new(Household::default(), 0);
        let discharged0 = sim.discharge_mwh;
        sim.advance(4 * 3_600_000);
        assert!(
            sim.discharge_mwh > discharged0,
            "the battery discharges at night"
        );
        let soc_night = sim.soc_wh;
        sim.advance(8 * 3_600_000);
        assert!(
            sim.soc_wh > soc_night,
            "the battery charges from the noon surplus"
        );
        let storage = read_block(&sim.bank(), sim.layout.storage);
        let soc = storage.value("ChaState").unwrap();
        assert_eq!(soc.exponent, -1);
        assert!((0..=1000).contains(&soc.mantissa));
        let mppt = read_block(&sim.bank(), sim.layout.mppt);
        assert_eq!(mppt.group_count(), 4);
        assert_eq!(mppt.group_text(2, "IDStr").unwrap(), "BAT CHARGE");
        assert_eq!(
            mppt.group_value(2, "DCWH").unwrap().floor_int().unwrap(),
            i64::try_from(sim.charge_mwh / 1000).unwrap()
        );
    }
}
