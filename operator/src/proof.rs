//! Which readings prove a meter's epoch: its last reading in the epoch, after where the
//! contract's last proof ended (for a key's first proof, also a reading to start from). [`plan`]
//! picks the newest provable epoch (`gridshare prove`, run now and then by an owner);
//! [`plan_epoch`] proves a given one, so the engine can prove every epoch in turn. Pure: the
//! readings come from the agent's or the engine's store, the rest from the chain.

use gridshare_core::reading::{ClockSync, SignedReading, ValueStatus};

/// The staking contract's epoch schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Unix time (s) epoch 0 starts.
    pub genesis: u64,
    /// Epoch length, s.
    pub epoch_duration: u64,
    /// Seconds after an epoch during which it can be proven.
    pub proof_window: u64,
}

impl Schedule {
    /// The epoch of a reading timestamp (ms); `None` before genesis.
    pub fn epoch_of(&self, timestamp_ms: u64) -> Option<u64> {
        let s = timestamp_ms / 1000;
        (s >= self.genesis).then(|| (s - self.genesis) / self.epoch_duration.max(1))
    }

    /// Whether `epoch` can be proven at `now` (s): it has ended and its window is open.
    pub fn provable(&self, epoch: u64, now: u64) -> bool {
        let ends = self.genesis + (epoch + 1) * self.epoch_duration;
        now >= ends && now < ends + self.proof_window
    }
}

/// Where the contract's last proof of the meter ended (nothing: no proof with this key yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastProven {
    /// Sequence number.
    pub seq: u64,
    /// Timestamp, ms.
    pub timestamp_ms: u64,
    /// Lifetime export, Wh.
    pub export_wh: u64,
    /// Lifetime import, Wh.
    pub import_wh: u64,
}

/// The readings to submit.
#[derive(Debug, Clone)]
pub struct ProofPlan {
    /// The signed reading to start from, for a key's first proof only; later proofs start
    /// where the last one ended.
    pub start: Option<SignedReading>,
    /// Where it ends.
    pub end: SignedReading,
    /// The epoch credited.
    pub epoch: u64,
}

/// Why no proof can be made now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No usable reading to start from.
    #[error("no reading with a synchronised clock and good counters to start from")]
    NoStart,
    /// Nothing after the start lies in an epoch whose proof window is open.
    #[error("no reading after the last proven one lies in an epoch that can be proven now")]
    NothingToProve,
}

fn usable(r: &SignedReading) -> bool {
    let r = &r.reading;
    r.clock == ClockSync::Synchronised
        && r.import_wh.status() == ValueStatus::Ok
        && r.export_wh.status() == ValueStatus::Ok
}

fn counters(r: &SignedReading) -> (u64, u64) {
    (
        r.reading.export_wh.value().unwrap_or(0),
        r.reading.import_wh.value().unwrap_or(0),
    )
}

/// Picks the proof for the newest provable epoch, continuing from `last` (the contract's
/// record) or, for a key's first proof, from the earliest usable reading.
pub fn plan(
    readings: &[SignedReading],
    last: Option<LastProven>,
    schedule: Schedule,
    now: u64,
) -> Result<ProofPlan, PlanError> {
    let (start, from) = match last {
        Some(l) => (None, l),
        None => {
            let first = readings
                .iter()
                .filter(|r| usable(r))
                .min_by_key(|r| (r.reading.timestamp_ms, r.reading.seq))
                .ok_or(PlanError::NoStart)?;
            let (export_wh, import_wh) = counters(first);
            let from = LastProven {
                seq: first.reading.seq,
                timestamp_ms: first.reading.timestamp_ms,
                export_wh,
                import_wh,
            };
            (Some(first.clone()), from)
        }
    };
    readings
        .iter()
        .filter(|r| {
            let (export, import) = counters(r);
            usable(r)
                && r.reading.seq > from.seq
                && r.reading.timestamp_ms >= from.timestamp_ms
                && export >= from.export_wh
                && import >= from.import_wh
        })
        .filter_map(|r| {
            let epoch = schedule.epoch_of(r.reading.timestamp_ms)?;
            schedule.provable(epoch, now).then_some((epoch, r))
        })
        .max_by_key(|(epoch, r)| (*epoch, r.reading.seq))
        .map(|(epoch, end)| ProofPlan {
            start,
            end: end.clone(),
            epoch,
        })
        .ok_or(PlanError::NothingToProve)
}

/// The proof of one given `epoch` (the engine proves every epoch in turn, oldest first, so that
/// each is credited its own export): it ends at the meter's last usable reading in the epoch
/// after `last`, the contract's record. For a key's first proof it starts at the last usable
/// reading before the epoch (the whole epoch is then covered), or failing that at the epoch's
/// first one. Whether the epoch can be proven now is the caller's question
/// ([`Schedule::provable`]); `readings` may be any subset of the meter's readings that holds
/// those near the epoch's boundaries.
pub fn plan_epoch(
    readings: &[SignedReading],
    last: Option<LastProven>,
    schedule: Schedule,
    epoch: u64,
) -> Result<ProofPlan, PlanError> {
    let starts_ms = (schedule.genesis + epoch * schedule.epoch_duration) * 1000;
    let ends_ms = starts_ms + schedule.epoch_duration * 1000;
    let follows = |r: &SignedReading, from: &LastProven| {
        let (export, import) = counters(r);
        r.reading.seq > from.seq
            && r.reading.timestamp_ms >= from.timestamp_ms
            && export >= from.export_wh
            && import >= from.import_wh
    };
    let end = readings
        .iter()
        .filter(|r| usable(r))
        .filter(|r| (starts_ms..ends_ms).contains(&r.reading.timestamp_ms))
        .filter(|r| last.as_ref().is_none_or(|l| follows(r, l)))
        .max_by_key(|r| (r.reading.timestamp_ms, r.reading.seq))
        .ok_or(PlanError::NothingToProve)?;
    if last.is_some() {
        return Ok(ProofPlan {
            start: None,
            end: end.clone(),
            epoch,
        });
    }
    let (end_export, end_import) = counters(end);
    let precedes = |r: &&SignedReading| {
        let (export, import) = counters(r);
        usable(r)
            && r.reading.seq < end.reading.seq
            && r.reading.timestamp_ms <= end.reading.timestamp_ms
            && export <= end_export
            && import <= end_import
    };
    let before = readings
        .iter()
        .filter(precedes)
        .filter(|r| r.reading.timestamp_ms < starts_ms)
        .max_by_key(|r| (r.reading.timestamp_ms, r.reading.seq));
    let start = before
        .or_else(|| {
            readings
                .iter()
                .filter(precedes)
                .filter(|r| r.reading.timestamp_ms >= starts_ms)
                .min_by_key(|r| (r.reading.timestamp_ms, r.reading.seq))
        })
        .ok_or(PlanError::NoStart)?;
    Ok(ProofPlan {
        start: Some(start.clone()),
        end: end.clone(),
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridshare_core::reading::{DeviceIdentity, Measured, MeterId, MeterKey, Reading};
    use ring::rand::SystemRandom;

    #[test]
    fn picks_the_last_reading_of_the_newest_provable_epoch_from_the_last_proven() {
        let rng = SystemRandom::new();
        let key =
            MeterKey::from_pkcs8(&MeterKey::generate_pkcs8(&rng).expect("g"), &rng).expect("k");
        let at = |seq: u64, t_s: u64, export: u64| {
            key.sign(
                Reading {
                    meter_id: MeterId::new("home-07").expect("id"),
                    device: DeviceIdentity::new("Gridshare", "SIM", "SN-1").expect("d"),
                    seq,
                    timestamp_ms: t_s * 1000,
                    clock: ClockSync::Synchronised,
                    import_wh: Measured::ok(0),
                    export_wh: Measured::ok(export),
                    battery_charge_wh: Measured::not_implemented(),
                    battery_discharge_wh: Measured::not_implemented(),
                    power_w: Measured::ok(0),
                    soc_bp: Measured::not_implemented(),
                    flow: gridshare_core::reading::PowerFlow::NOT_MEASURED,
                },
                &rng,
            )
            .expect("sign")
        };
        let schedule = Schedule {
            genesis: 1_000,
            epoch_duration: 100,
            proof_window: 100,
        };
        // Epochs 0 (1000..1100), 1 (1100..1200), 2 (1200..).
        let readings = vec![
            at(1, 1_010, 0),
            at(2, 1_090, 10),
            at(3, 1_150, 20),
            at(4, 1_199, 30),
            at(5, 1_210, 40),
        ];
        // At 1 250 epoch 1 is provable (window until 1 300), epoch 2 is not over.
        let p = plan(&readings, None, schedule, 1_250).expect("plan");
        assert_eq!(
            (p.start.map(|s| s.reading.seq), p.end.reading.seq, p.epoch),
            (Some(1), 4, 1)
        );
        let after = |seq: u64, t_s: u64, export_wh: u64| LastProven {
            seq,
            timestamp_ms: t_s * 1000,
            export_wh,
            import_wh: 0,
        };
        let p = plan(&readings, Some(after(2, 1_090, 10)), schedule, 1_250).expect("plan");
        assert_eq!((p.start.is_none(), p.end.reading.seq), (true, 4));
        assert_eq!(
            plan(&readings, Some(after(4, 1_199, 30)), schedule, 1_250).unwrap_err(),
            PlanError::NothingToProve
        );
        // One epoch at a time, oldest first: epoch 0 ends at seq 2; a first proof of epoch 1
        // starts at the last reading before it, so the whole epoch is covered.
        let p = plan_epoch(&readings, None, schedule, 0).expect("epoch 0");
        assert_eq!(
            (p.start.map(|s| s.reading.seq), p.end.reading.seq),
            (Some(1), 2)
        );
        let p = plan_epoch(&readings, None, schedule, 1).expect("epoch 1");
        assert_eq!(
            (p.start.map(|s| s.reading.seq), p.end.reading.seq),
            (Some(2), 4)
        );
        let p = plan_epoch(&readings, Some(after(2, 1_090, 10)), schedule, 1).expect("next");
        assert_eq!((p.start.is_none(), p.end.reading.seq), (true, 4));
        // Proven through seq 4: epoch 1 has nothing more, epoch 2 goes on from there.
        assert_eq!(
            plan_epoch(&readings, Some(after(4, 1_199, 30)), schedule, 1).unwrap_err(),
            PlanError::NothingToProve
        );
        assert_eq!(
            plan_epoch(&readings, Some(after(4, 1_199, 30)), schedule, 2)
                .expect("epoch 2")
                .end
                .reading
                .seq,
            5
        );
        // A single reading in the epoch and none before it: nothing to start from.
        assert_eq!(
            plan_epoch(&readings[4..], None, schedule, 2).unwrap_err(),
            PlanError::NoStart
        );
        // Counters below the last proven ones are never an end.
        assert_eq!(
            plan(&readings, Some(after(2, 1_090, 35)), schedule, 1_250).unwrap_err(),
            PlanError::NothingToProve
        );
    }
}
