//! The devices the agent reads, for people: the builtin register profiles and the SunSpec
//! families whose deviations the agent handles. `meter-agent devices` prints this list, and the
//! README's device list is [`markdown`] (a test keeps the two equal, so neither drifts from the
//! profiles).

use crate::profile::RegisterProfile;

/// A manufacturer whose devices are read through SunSpec discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SunSpecFamily {
    /// Manufacturer as people know it.
    pub manufacturer: &'static str,
    /// Models or series.
    pub models: &'static str,
    /// `meter`, `inverter`, `hybrid inverter` or `gateway`.
    pub category: &'static str,
    /// The vendor document the layout and quirks come from.
    pub datasheet: &'static str,
    /// How the device is usually reached.
    pub connection: &'static str,
    /// What the agent does differently for it.
    pub handling: &'static str,
}

/// SunSpec families with their documented quirks (reference notes, sections 1.1, 1.2, 2.2-2.3, 5).
pub const SUNSPEC_FAMILIES: &[SunSpecFamily] = &[
    SunSpecFamily {
        manufacturer: "Any SunSpec device",
        models: "inverters, meters and batteries with models 1, 101-103, 111-113, 124, 160, 201-204, 211-214, 802",
        category: "inverter",
        datasheet: "SunSpec Information Model Specification 1.2 and the SunSpec model JSON (models 1-802)",
        connection: "Modbus TCP or RTU; `SunS` found at 40000, 0 or 50000",
        handling: "whole model read in one request (value and scale factor agree); not-implemented values reported, never 0",
    },
    SunSpecFamily {
        manufacturer: "SolarEdge",
        models: "HD-Wave, StorEdge, three-phase SE..K with SE-MTR-3Y / WND meters",
        category: "hybrid inverter",
        datasheet: "SolarEdge Technical Note: SunSpec Logging in SolarEdge Inverters",
        connection: "Modbus TCP port 1502 (LCD) or 502 (SetApp), unit id 1; one client at a time",
        handling: "meters are sub-devices after the inverter (their own model 1); meter power is export-positive and negated; common model L = 65",
    },
    SunSpecFamily {
        manufacturer: "SMA",
        models: "Sunny Boy, Sunny Tripower, Sunny Boy Storage (SunSpec profile)",
        category: "inverter",
        datasheet: "SMA SunSpec Modbus Interface technical information (SunSpec-Modbus-TI)",
        connection: "Modbus TCP port 502, unit id 126 for SunSpec (unit id 3 is the SMA profile: `sma-inverter`)",
        handling: "no end marker: the walk stops at the first unreadable address; inverter models only, so production counts as export",
    },
    SunSpecFamily {
        manufacturer: "Fronius",
        models: "Symo, Primo, Gen24 with Fronius Smart Meter",
        category: "hybrid inverter",
        datasheet: "Fronius Datamanager / Gen24 Modbus TCP & RTU (SunSpec) operating instructions",
        connection: "Modbus TCP port 502: inverter unit id 1, smart meter unit id 200 (201... for more meters)",
        handling: "float models (111-113, 211-213) and int+SF models alike; scale factors change at run time, so each model is read in one request",
    },
    SunSpecFamily {
        manufacturer: "Kostal",
        models: "Plenticore plus, Plenticore G2/G3, Piko IQ with KSEM",
        category: "hybrid inverter",
        datasheet: "KOSTAL Interface description MODBUS (TCP) & SunSpec (ba_kostal_interface_modbus-tcp_sunspec)",
        connection: "Modbus TCP port 1502, unit id 71",
        handling: "acc32 counters written as signed numbers: a value above 2^31 is read as the magnitude of the negative number (mbmd FixKostal); partial chain without end marker tolerated",
    },
];

/// The device list as a Markdown table: builtin profiles (by manufacturer) then SunSpec families.
pub fn markdown() -> String {
    let mut out = String::from(
        "| Manufacturer | Models | Kind | Configure | Connection | Source document | What is read / handled |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut rows: Vec<[String; 7]> = Vec::new();
    for name in RegisterProfile::builtin_names() {
        // Builtins are checked by a unit test in `profile`; one that fails to load is skipped.
        let Ok(p) = RegisterProfile::builtin(name) else {
            continue;
        };
        let a = p.about;
        rows.push([
            a.manufacturer,
            a.models,
            a.category,
            format!("`profile = \"{name}\"`"),
            a.connection,
            a.datasheet,
            p.description,
        ]);
    }
    rows.sort();
    for f in SUNSPEC_FAMILIES {
        rows.push([
            f.manufacturer.to_owned(),
            f.models.to_owned(),
            f.category.to_owned(),
            "`kind = \"sunspec\"`".to_owned(),
            f.connection.to_owned(),
            f.datasheet.to_owned(),
            f.handling.to_owned(),
        ]);
    }
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// Number of manufacturers covered: of builtin profiles and of SunSpec families (the generic
/// SunSpec entry not counted).
pub fn families() -> usize {
    let mut names: Vec<String> = RegisterProfile::builtin_names()
        .into_iter()
        .filter_map(|n| RegisterProfile::builtin(n).ok())
        .map(|p| p.about.manufacturer)
        .collect();
    names.extend(
        SUNSPEC_FAMILIES
            .iter()
            .skip(1)
            .map(|f| f.manufacturer.to_owned()),
    );
    names.sort();
    names.dedup();
    names.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_covers_at_least_twelve_families_and_names_every_builtin() {
        assert!(families() >= 12, "only {} manufacturers", families());
        let md = markdown();
        for name in RegisterProfile::builtin_names() {
            assert!(md.contains(&format!("`profile = \"{name}\"`")), "{name}");
        }
        for f in SUNSPEC_FAMILIES {
            assert!(md.contains(f.manufacturer));
        }
    }
}
