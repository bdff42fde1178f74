//! Radial low-voltage feeders and their balanced AC power flow.
//!
//! A [`GridFile`] (the neutral JSON format, see [`format`]) compiles into a [`PowerFlow`]: buses
//! joined by closed bus–bus switches become one node, the slack (external grid) is the root,
//! every in-service line and transformer is a branch of a tree. Each branch is the two-port
//! pandapower builds for it:
//!
//! - **line**: π model, `z = (r + jx)·length / parallel`, shunt `(g + jωc)·length·parallel`
//!   split half to each end, per unit on the `from` bus's voltage base;
//! - **transformer**: pandapower's T model (short-circuit impedance referred to the LV side
//!   and scaled by the tap-adjusted LV voltage; magnetising admittance from `pfe_kw` and
//!   `i0_percent`; 50/50 leakage split) turned into an asymmetric π by the star–delta
//!   transform, with the off-nominal ratio `(vn_hv/vn_lv)/(V_hv bus/V_lv bus)·e^{j·shift}` on
//!   the HV side. A tap position counts only when `tap_changer_type` is set, as in
//!   pandapower 3;
//! - an **open line or transformer switch** disconnects that end: the branch stays energised
//!   from its other end through a dangling node, so its charging current is still counted.
//!
//! The solver is a backward/forward sweep over the tree with the exact two-port equations:
//! the backward pass sums each subtree's current from the leaves up (loads as constant power,
//! current or impedance), the forward pass sets each child's voltage from its parent's. It
//! converges linearly, in a handful of iterations on LV feeders when warm-started from the
//! previous time step. Results are per element, in pandapower's units (voltage p.u., line
//! loading as the larger end current over `max_i_ka·df·parallel`, transformer loading as
//! pandapower's `trafo_loading = "current"`).

mod complex;
pub mod format;

pub use complex::C64;
pub use format::{
    BusSpec, ExtGridSpec, GridFile, InjectionSpec, LineSpec, ReferenceResult, SwitchSpec, TrafoSpec,
};

use std::collections::{HashMap, VecDeque};
use std::f64::consts::PI;
use std::path::Path;

/// Why a grid could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// The file could not be read.
    #[error("cannot read grid file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The JSON does not match the grid format.
    #[error("grid file {path}: at `{at}`: {message}")]
    Format {
        /// The file.
        path: String,
        /// Where in the document (e.g. `lines[3].r_ohm_per_km`).
        at: String,
        /// What was wrong.
        message: String,
    },
    /// Two buses share an id.
    #[error("bus id {id} appears twice; bus ids must be unique")]
    DuplicateBus {
        /// The id.
        id: i64,
    },
    /// An element refers to a bus that does not exist.
    #[error("{element} refers to bus {bus}, which the grid does not have")]
    UnknownBus {
        /// The element, e.g. `line 4 "Line 1-2"`.
        element: String,
        /// The missing bus id.
        bus: i64,
    },
    /// A switch refers to a line or transformer that does not exist.
    #[error("switch at bus {bus} refers to {kind} {element}, which the grid does not have")]
    UnknownSwitchElement {
        /// The switch's bus.
        bus: i64,
        /// `line` or `trafo`.
        kind: &'static str,
        /// The missing id.
        element: i64,
    },
    /// A value is out of its range.
    #[error("{element}: {field} = {value} is invalid; {expected}")]
    InvalidValue {
        /// The element.
        element: String,
        /// The field.
        field: &'static str,
        /// The value found.
        value: f64,
        /// What is expected.
        expected: &'static str,
    },
    /// A branch has zero series impedance, which the power flow cannot represent.
    #[error(
        "{element} has zero series impedance (r = x = 0 over its length); give it an impedance or replace it by a closed bus-bus switch"
    )]
    ZeroImpedance {
        /// The element.
        element: String,
    },
    /// A branch closes a loop: the network is not radial.
    #[error(
        "{element} closes a loop between {from} and {to}: the grid is not radial; open a switch on the loop (an open switch in `switches`) or take the element out of service"
    )]
    NotRadial {
        /// The element that closes the loop.
        element: String,
        /// One end.
        from: String,
        /// The other end.
        to: String,
    },
    /// An in-service bus has no path to the external grid.
    #[error(
        "{bus} is in service but not connected to the external grid (bus {slack}); connect it or set it out of service"
    )]
    NotConnected {
        /// The bus.
        bus: String,
        /// The slack bus.
        slack: String,
    },
    /// A tap changer type this model does not know.
    #[error(
        "{element}: tap_changer_type {kind:?} is not supported; use \"Ratio\", \"Symmetrical\", \"Ideal\" or none"
    )]
    UnsupportedTapChanger {
        /// The transformer.
        element: String,
        /// The type found.
        kind: String,
    },
    /// Buses joined by a closed switch have different nominal voltages.
    #[error("closed switch joins {a} and {b}, whose nominal voltages differ")]
    VoltageMismatch {
        /// One bus.
        a: String,
        /// The other.
        b: String,
    },
}

/// Why a power flow failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerFlowError {
    /// The sweep did not reach the tolerance.
    #[error(
        "power flow did not converge after {iterations} iterations (largest voltage change {mismatch:e} p.u., worst at {bus}); the loading is probably beyond what the feeder can carry"
    )]
    NotConverged {
        /// Iterations run.
        iterations: u32,
        /// Last largest voltage update, p.u.
        mismatch: f64,
        /// The bus where it was largest.
        bus: String,
    },
    /// A load is not a finite number.
    #[error("the load at {bus} is not a finite number ({p_mw} MW, {q_mvar} Mvar)")]
    NonFiniteLoad {
        /// The bus.
        bus: String,
        /// Active power.
        p_mw: f64,
        /// Reactive power.
        q_mvar: f64,
    },
}

/// Iterations before the sweep gives up.
pub const MAX_ITERATIONS: u32 = 100;
/// Convergence tolerance on the voltages' remaining error, p.u.: four orders of magnitude
/// below the 1e-6 p.u. the validation against pandapower asks for. The error is bounded by
/// the largest voltage update, or, once the sweep has shown its rate of convergence, by what
/// that rate leaves of it (see [`PowerFlow::solve`]).
pub const TOLERANCE_PU: f64 = 1e-10;

/// Largest measured rate of convergence (ratio of successive largest updates) from which the
/// remaining error is estimated; slower sweeps stop on the update alone.
const MAX_RATE_FOR_ESTIMATE: f64 = 0.5;

/// The slack's node: nodes are numbered breadth first from it.
const ROOT: usize = 0;

/// The two-port of a branch, oriented parent → child, reduced to the four coefficients the sweep
/// needs: `I_parent = a·V_parent + b·J_child` and `V_child = c·J_child + d·V_parent`, where
/// `J_child` is the current the child's subtree draws.
#[derive(Debug, Clone, Copy)]
struct Sweep {
    a: C64,
    b: C64,
    c: C64,
    d: C64,
}

/// MATPOWER branch admittances `[Yff Yft; Ytf Ytt]`.
#[derive(Debug, Clone, Copy)]
struct TwoPort {
    ff: C64,
    ft: C64,
    tf: C64,
    tt: C64,
}

impl TwoPort {
    fn new(series: C64, shunt_from: C64, shunt_to: C64, tap: C64) -> Self {
        let ys = series.inv();
        Self {
            ff: (ys + shunt_from).scale(1.0 / tap.norm_sqr()),
            ft: -(ys / tap.conj()),
            tf: -(ys / tap),
            tt: ys + shunt_to,
        }
    }

    /// The two-port seen from `parent_is_from`'s side.
    fn oriented(self, parent_is_from: bool) -> Self {
        if parent_is_from {
            self
        } else {
            Self {
                ff: self.tt,
                ft: self.tf,
                tf: self.ft,
                tt: self.ff,
            }
        }
    }

    fn sweep(self) -> Sweep {
        // Child end: tf·Vp + tt·Vc = −J  ⇒  Vc = −(J + tf·Vp)/tt.
        let inv_tt = self.tt.inv();
        let c = -inv_tt;
        let d = -(self.tf * inv_tt);
        // Parent end: Ip = ff·Vp + ft·Vc = (ff + ft·d)·Vp + ft·c·J.
        Sweep {
            a: self.ff + self.ft * d,
            b: self.ft * c,
            c,
            d,
        }
    }
}

/// What kind of branch, for results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchKind {
    /// Index into the grid's lines.
    Line(usize),
    /// Index into the grid's transformers.
    Trafo(usize),
}

#[derive(Debug, Clone)]
struct Branch {
    kind: BranchKind,
    from: usize,
    to: usize,
    y: TwoPort,
}

/// An in-service line's branch and the factors that turn the squared magnitude of each end's
/// current (p.u.) into the squared loading (%): `(k / kV_end / rating × 100)²`.
#[derive(Debug, Clone, Copy)]
struct LineRating {
    branch: usize,
    from2: f64,
    to2: f64,
}

/// A compiled radial network, ready for repeated power flows.
#[derive(Debug, Clone)]
pub struct PowerFlow {
    grid: GridFile,
    /// Node of each grid bus (`None`: out of service).
    bus_node: Vec<Option<usize>>,
    /// Voltage base of each node, kV.
    node_kv: Vec<f64>,
    /// A display name per node.
    node_name: Vec<String>,
    slack_v: C64,
    /// The parent of each node (the root, node 0, is its own).
    ///
    /// Design: nodes are numbered breadth first from the root (node 0), so a parent's number
    /// is below its children's and the sweeps walk every per-node table front to back
    /// (forward) or back to front (backward) — plain sequential memory, with only the parent
    /// looked up — instead of a list of (node, parent) steps indexing the tables at random.
    /// The sweeps are most of a year's power-flow time.
    parent: Vec<usize>,
    /// Per node, the backward sweep's coefficients of the branch from its parent: `[a, b]`
    /// (see [`Sweep`]); the root's are unused.
    up: Vec<[C64; 2]>,
    /// Per node, the forward sweep's coefficients: `[c, d]`.
    down: Vec<[C64; 2]>,
    /// Per node, the squared voltage change of the last forward sweep (p.u.²).
    dv: Vec<f64>,
    branches: Vec<Branch>,
    /// Branch of each line / transformer, if in service.
    line_branch: Vec<Option<usize>>,
    /// Per in-service line, what turns its end currents into its loading.
    line_ratings: Vec<LineRating>,
    trafo_branch: Vec<Option<usize>>,
    /// Feeder of each node: the branches leaving the first node with more than one child (the
    /// transformer's LV busbar) are the feeders, numbered in breadth-first order.
    feeder: Vec<Option<usize>>,
    /// Present voltage per node (warm start for the next solve).
    v: Vec<C64>,
    /// Subtree currents of the last sweep.
    j: Vec<C64>,
    /// Loads per node as (constant power, constant current, constant impedance), p.u.
    load_p: Vec<C64>,
    load_i: Vec<C64>,
    load_z: Vec<C64>,
    /// Whether any load has a constant-current or constant-impedance part.
    zip_loads: bool,
    iterations: u32,
}

fn describe(kind: &str, id: i64, name: &str) -> String {
    if name.is_empty() {
        format!("{kind} {id}")
    } else {
        format!("{kind} {id} \"{name}\"")
    }
}

fn positive(element: &str, field: &'static str, value: f64) -> Result<(), GridError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(GridError::InvalidValue {
            element: element.to_owned(),
            field,
            value,
            expected: "expected a finite number above zero",
        })
    }
}

fn non_negative(element: &str, field: &'static str, value: f64) -> Result<(), GridError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(GridError::InvalidValue {
            element: element.to_owned(),
            field,
            value,
            expected: "expected a finite number, zero or above",
        })
    }
}

fn finite(element: &str, field: &'static str, value: f64) -> Result<(), GridError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(GridError::InvalidValue {
            element: element.to_owned(),
            field,
            value,
            expected: "expected a finite number",
        })
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
}

impl GridFile {
    /// Reads and parses a grid file; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<Self, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a grid document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, GridError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| GridError::Format {
            path: origin.to_owned(),
            at: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }
}

impl PowerFlow {
    /// Compiles a grid: checks every element, fuses switched buses, builds the tree from the
    /// external grid, and fails on loops, islands and zero impedances, naming the element.
    pub fn new(grid: GridFile) -> Result<Self, GridError> {
        positive("the grid", "sn_mva", grid.sn_mva)?;
        positive("the grid", "f_hz", grid.f_hz)?;
        let mut index: HashMap<i64, usize> = HashMap::new();
        for (i, b) in grid.buses.iter().enumerate() {
            if index.insert(b.id, i).is_some() {
                return Err(GridError::DuplicateBus { id: b.id });
            }
            positive(&describe("bus", b.id, &b.name), "vn_kv", b.vn_kv)?;
        }
        let bus_name = |i: usize| describe("bus", grid.buses[i].id, &grid.buses[i].name);
        let lookup = |element: &str, bus: i64| {
            index
                .get(&bus)
                .copied()
                .ok_or_else(|| GridError::UnknownBus {
                    element: element.to_owned(),
                    bus,
                })
        };

        // Open ends of lines and transformers, and bus fusion by closed bus–bus switches.
        let line_index: HashMap<i64, usize> = grid
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| (l.id, i))
            .collect();
        let trafo_index: HashMap<i64, usize> = grid
            .trafos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, i))
            .collect();
        let mut open_ends: Vec<(BranchKind, usize)> = Vec::new();
        let mut uf = UnionFind((0..grid.buses.len()).collect());
        for s in &grid.switches {
            let element = format!("switch at bus {} to {} {}", s.bus, s.et, s.element);
            let bus = lookup(&element, s.bus)?;
            match s.et.as_str() {
                "b" => {
                    let other = lookup(&element, s.element)?;
                    let both_in = grid.buses[bus].in_service && grid.buses[other].in_service;
                    if s.closed && both_in {
                        if (grid.buses[bus].vn_kv - grid.buses[other].vn_kv).abs() > 1e-9 {
                            return Err(GridError::VoltageMismatch {
                                a: bus_name(bus),
                                b: bus_name(other),
                            });
                        }
                        let (ra, rb) = (uf.find(bus), uf.find(other));
                        uf.0[ra] = rb;
                    }
                }
                "l" | "t" => {
                    let (kind, found) = if s.et == "l" {
                        (
                            "line",
                            line_index.get(&s.element).map(|&i| BranchKind::Line(i)),
                        )
                    } else {
                        (
                            "trafo",
                            trafo_index.get(&s.element).map(|&i| BranchKind::Trafo(i)),
                        )
                    };
                    let found = found.ok_or(GridError::UnknownSwitchElement {
                        bus: s.bus,
                        kind,
                        element: s.element,
                    })?;
                    if !s.closed {
                        open_ends.push((found, bus));
                    }
                }
                other => {
                    return Err(GridError::InvalidValue {
                        element,
                        field: "et",
                        value: f64::NAN,
                        expected: if other.is_empty() {
                            "expected \"b\", \"l\" or \"t\""
                        } else {
                            "expected \"b\" (bus-bus), \"l\" (line) or \"t\" (transformer)"
                        },
                    });
                }
            }
        }

        // Nodes: one per fused in-service bus group.
        let mut bus_node = vec![None; grid.buses.len()];
        let mut root_node: HashMap<usize, usize> = HashMap::new();
        let mut node_kv = Vec::new();
        let mut node_name = Vec::new();
        for (i, b) in grid.buses.iter().enumerate() {
            if !b.in_service {
                continue;
            }
            let r = uf.find(i);
            let n = *root_node.entry(r).or_insert_with(|| {
                node_kv.push(b.vn_kv);
                node_name.push(bus_name(i));
                node_kv.len() - 1
            });
            bus_node[i] = Some(n);
        }
        let slack_bus = lookup("ext_grid", grid.ext_grid.bus)?;
        let root = bus_node[slack_bus].ok_or_else(|| GridError::InvalidValue {
            element: format!("ext_grid at {}", bus_name(slack_bus)),
            field: "bus in_service",
            value: 0.0,
            expected: "the external grid's bus must be in service",
        })?;
        positive("ext_grid", "vm_pu", grid.ext_grid.vm_pu)?;
        finite("ext_grid", "va_degree", grid.ext_grid.va_degree)?;

        // Branches. An end at an out-of-service bus, or behind an open switch, dangles: with
        // the switch open the branch stays energised through an extra node, as in pandapower;
        // at an out-of-service bus without an open switch the branch is out of service.
        let mut branches = Vec::new();
        let mut line_branch = vec![None; grid.lines.len()];
        let mut trafo_branch = vec![None; grid.trafos.len()];
        let sn = grid.sn_mva;
        let omega = 2.0 * PI * grid.f_hz;
        let end_node = |kind: BranchKind,
                        bus: usize,
                        node_kv: &mut Vec<f64>,
                        node_name: &mut Vec<String>,
                        label: &str|
         -> Option<usize> {
            let open = open_ends.contains(&(kind, bus));
            if open {
                node_kv.push(grid.buses[bus].vn_kv);
                node_name.push(format!("open end of {label} at {}", bus_name(bus)));
                Some(node_kv.len() - 1)
            } else {
                bus_node[bus]
            }
        };
        for (li, l) in grid.lines.iter().enumerate() {
            let label = describe("line", l.id, &l.name);
            if !l.in_service {
                continue;
            }
            let f = lookup(&label, l.from_bus)?;
            let t = lookup(&label, l.to_bus)?;
            non_negative(&label, "length_km", l.length_km)?;
            non_negative(&label, "r_ohm_per_km", l.r_ohm_per_km)?;
            finite(&label, "x_ohm_per_km", l.x_ohm_per_km)?;
            non_negative(&label, "c_nf_per_km", l.c_nf_per_km)?;
            non_negative(&label, "g_us_per_km", l.g_us_per_km)?;
            positive(&label, "max_i_ka", l.max_i_ka)?;
            positive(&label, "df", l.df)?;
            if l.parallel == 0 {
                return Err(GridError::InvalidValue {
                    element: label,
                    field: "parallel",
                    value: 0.0,
                    expected: "expected at least 1",
                });
            }
            let kind = BranchKind::Line(li);
            let fnode = end_node(kind, f, &mut node_kv, &mut node_name, &label);
            let tnode = end_node(kind, t, &mut node_kv, &mut node_name, &label);
            let (Some(fnode), Some(tnode)) = (fnode, tnode) else {
                continue;
            };
            let par = f64::from(l.parallel);
            let base_r = grid.buses[f].vn_kv.powi(2) / sn;
            let series = C64::new(
                l.r_ohm_per_km * l.length_km / base_r / par,
                l.x_ohm_per_km * l.length_km / base_r / par,
            );
            if series.norm_sqr() == 0.0 {
                return Err(GridError::ZeroImpedance { element: label });
            }
            let shunt = C64::new(
                l.g_us_per_km * 1e-6 * base_r * l.length_km * par,
                omega * l.c_nf_per_km * 1e-9 * base_r * l.length_km * par,
            )
            .scale(0.5);
            line_branch[li] = Some(branches.len());
            branches.push(Branch {
                kind,
                from: fnode,
                to: tnode,
                y: TwoPort::new(series, shunt, shunt, C64::new(1.0, 0.0)),
            });
        }
        for (ti, t) in grid.trafos.iter().enumerate() {
            let label = describe("trafo", t.id, &t.name);
            if !t.in_service {
                continue;
            }
            let hv = lookup(&label, t.hv_bus)?;
            let lv = lookup(&label, t.lv_bus)?;
            let y = trafo_two_port(t, &label, grid.buses[hv].vn_kv, grid.buses[lv].vn_kv, sn)?;
            let kind = BranchKind::Trafo(ti);
            let fnode = end_node(kind, hv, &mut node_kv, &mut node_name, &label);
            let tnode = end_node(kind, lv, &mut node_kv, &mut node_name, &label);
            let (Some(fnode), Some(tnode)) = (fnode, tnode) else {
                continue;
            };
            trafo_branch[ti] = Some(branches.len());
            branches.push(Branch {
                kind,
                from: fnode,
                to: tnode,
                y,
            });
        }

        // The tree, breadth first from the slack.
        let nodes = node_kv.len();
        let mut adjacent: Vec<Vec<usize>> = vec![Vec::new(); nodes];
        for (bi, b) in branches.iter().enumerate() {
            adjacent[b.from].push(bi);
            adjacent[b.to].push(bi);
        }
        let mut parent: Vec<Option<(usize, Sweep)>> = vec![None; nodes];
        let mut via: Vec<Option<usize>> = vec![None; nodes];
        let mut seen = vec![false; nodes];
        let mut order = Vec::with_capacity(nodes);
        let mut queue = VecDeque::from([root]);
        seen[root] = true;
        let branch_label = |b: &Branch| match b.kind {
            BranchKind::Line(i) => describe("line", grid.lines[i].id, &grid.lines[i].name),
            BranchKind::Trafo(i) => describe("trafo", grid.trafos[i].id, &grid.trafos[i].name),
        };
        while let Some(n) = queue.pop_front() {
            order.push(n);
            for &bi in &adjacent[n] {
                if via[n] == Some(bi) {
                    continue;
                }
                let b = &branches[bi];
                let (child, parent_is_from) = if b.from == n {
                    (b.to, true)
                } else {
                    (b.from, false)
                };
                if child == n || seen[child] {
                    return Err(GridError::NotRadial {
                        element: branch_label(b),
                        from: node_name[b.from].clone(),
                        to: node_name[b.to].clone(),
                    });
                }
                seen[child] = true;
                via[child] = Some(bi);
                parent[child] = Some((n, b.y.oriented(parent_is_from).sweep()));
                queue.push_back(child);
            }
        }
        if let Some(n) = (0..nodes).find(|&n| !seen[n]) {
            return Err(GridError::NotConnected {
                bus: node_name[n].clone(),
                slack: bus_name(slack_bus),
            });
        }
        let mut children = vec![0usize; nodes];
        for p in parent.iter().flatten() {
            children[p.0] += 1;
        }
        let busbar = order.iter().copied().find(|&n| children[n] > 1);
        let mut feeder: Vec<Option<usize>> = vec![None; nodes];
        let mut feeders = 0;
        for &n in &order {
            if let Some((p, _)) = parent[n] {
                feeder[n] = if Some(p) == busbar {
                    feeders += 1;
                    Some(feeders - 1)
                } else {
                    feeder[p]
                };
            }
        }
        let slack_v = C64::polar(grid.ext_grid.vm_pu, grid.ext_grid.va_degree.to_radians());
        // Renumber the nodes in breadth-first order: `order[k]` becomes node `k`.
        let mut number = vec![0usize; nodes];
        for (k, &n) in order.iter().enumerate() {
            number[n] = k;
        }
        let renumbered = |n: usize| number[n];
        for b in &mut branches {
            b.from = renumbered(b.from);
            b.to = renumbered(b.to);
        }
        for n in bus_node.iter_mut().flatten() {
            *n = renumbered(*n);
        }
        let node_name: Vec<String> = order.iter().map(|&n| node_name[n].clone()).collect();
        let node_kv: Vec<f64> = order.iter().map(|&n| node_kv[n]).collect();
        let feeder: Vec<Option<usize>> = order.iter().map(|&n| feeder[n]).collect();
        let flat = C64::new(1.0, 0.0);
        let (mut parents, mut up, mut down) = (
            Vec::with_capacity(nodes),
            Vec::with_capacity(nodes),
            Vec::with_capacity(nodes),
        );
        for &n in &order {
            let (p, s) = parent[n].map_or((0, None), |(p, s)| (renumbered(p), Some(s)));
            parents.push(p);
            up.push(s.map_or([flat, flat], |s| [s.a, s.b]));
            down.push(s.map_or([flat, flat], |s| [s.c, s.d]));
        }
        let k = grid.sn_mva / 3f64.sqrt();
        let line_ratings = line_branch
            .iter()
            .enumerate()
            .filter_map(|(li, b)| {
                let (branch, l) = ((*b)?, &grid.lines[li]);
                let end = |node: usize| (k / node_kv[node] / l.rated_i_ka() * 100.0).powi(2);
                Some(LineRating {
                    branch,
                    from2: end(branches[branch].from),
                    to2: end(branches[branch].to),
                })
            })
            .collect();
        let mut pf = Self {
            grid,
            line_ratings,
            bus_node,
            node_kv,
            node_name,
            slack_v,
            parent: parents,
            up,
            down,
            dv: vec![0.0; nodes],
            branches,
            feeder,
            line_branch,
            trafo_branch,
            v: vec![slack_v; nodes],
            j: vec![C64::default(); nodes],
            load_p: vec![C64::default(); nodes],
            load_i: vec![C64::default(); nodes],
            load_z: vec![C64::default(); nodes],
            zip_loads: false,
            iterations: 0,
        };
        // Flat start: the slack voltage everywhere, turned by each transformer's shift.
        pf.reset();
        Ok(pf)
    }

    /// The feeder (numbered from 0 in breadth-first order) that supplies the bus at position
    /// `bus`; `None` for the busbar and everything upstream of it, or an out-of-service bus.
    #[must_use]
    pub fn feeder_of_bus(&self, bus: usize) -> Option<usize> {
        self.bus_node
            .get(bus)
            .copied()
            .flatten()
            .and_then(|n| self.feeder[n])
    }

    /// The grid this was compiled from.
    #[must_use]
    pub fn grid(&self) -> &GridFile {
        &self.grid
    }

    /// Removes every load.
    pub fn clear_loads(&mut self) {
        for x in self
            .load_p
            .iter_mut()
            .chain(self.load_i.iter_mut())
            .chain(self.load_z.iter_mut())
        {
            *x = C64::default();
        }
        self.zip_loads = false;
    }

    /// Adds a constant-power load of `p_mw + j·q_mvar` (negative: generation) at the bus at
    /// position `bus` of the grid's bus list. Returns `false` if that bus is out of service.
    pub fn add_load(&mut self, bus: usize, p_mw: f64, q_mvar: f64) -> bool {
        match self.bus_node.get(bus).copied().flatten() {
            Some(n) => {
                self.load_p[n] += C64::new(p_mw, q_mvar).scale(1.0 / self.grid.sn_mva);
                true
            }
            None => false,
        }
    }

    /// Loads every in-service load, static generator and storage of the grid file with its
    /// own power (the grid's base case).
    pub fn add_base_case(&mut self) {
        let sn = self.grid.sn_mva;
        let mut adds = Vec::new();
        let kinds: [(&[InjectionSpec], f64); 3] = [
            (&self.grid.loads, 1.0),
            (&self.grid.sgens, -1.0),
            (&self.grid.storages, 1.0),
        ];
        for (list, sign) in kinds {
            for e in list.iter().filter(|e| e.in_service) {
                let Some(&Some(n)) = self
                    .grid
                    .buses
                    .iter()
                    .position(|b| b.id == e.bus)
                    .map(|i| &self.bus_node[i])
                else {
                    continue;
                };
                let p = e.p_mw * e.scaling * sign / sn;
                let q = e.q_mvar * e.scaling * sign / sn;
                let (zp, ip) = (e.const_z_p_percent / 100.0, e.const_i_p_percent / 100.0);
                let (zq, iq) = (e.const_z_q_percent / 100.0, e.const_i_q_percent / 100.0);
                adds.push((
                    n,
                    C64::new(p * (1.0 - zp - ip), q * (1.0 - zq - iq)),
                    C64::new(p * ip, q * iq),
                    C64::new(p * zp, q * zq),
                ));
            }
        }
        for (n, sp, si, sz) in adds {
            self.zip_loads |= si != C64::default() || sz != C64::default();
            self.load_p[n] += sp;
            self.load_i[n] += si;
            self.load_z[n] += sz;
        }
    }

    /// Solves the power flow for the present loads, starting from the last solution.
    pub fn solve(&mut self) -> Result<u32, PowerFlowError> {
        for n in 0..self.load_p.len() {
            let s = self.load_p[n] + self.load_i[n] + self.load_z[n];
            if !(s.re.is_finite() && s.im.is_finite()) {
                return Err(PowerFlowError::NonFiniteLoad {
                    bus: self.node_name[n].clone(),
                    p_mw: s.re * self.grid.sn_mva,
                    q_mvar: s.im * self.grid.sn_mva,
                });
            }
        }
        self.v[ROOT] = self.slack_v;
        // The largest update of the last sweep, p.u.
        let mut last_step = f64::INFINITY;
        for it in 1..=MAX_ITERATIONS {
            // Backward: each node's own load current, then its children's subtree currents.
            // Design: the sweeps work on local slices, so the loops index plain memory rather
            // than re-reading the vectors behind `self` after every store.
            let (v, j) = (&mut self.v[..], &mut self.j[..]);
            if self.zip_loads {
                for (((jn, &vn), &p), (&i, &z)) in j
                    .iter_mut()
                    .zip(v.iter())
                    .zip(&self.load_p)
                    .zip(self.load_i.iter().zip(&self.load_z))
                {
                    let m = vn.abs();
                    *jn = load_current(p + i.scale(m) + z.scale(m * m), vn);
                }
            } else {
                for ((jn, &vn), &p) in j.iter_mut().zip(v.iter()).zip(&self.load_p) {
                    *jn = load_current(p, vn);
                }
            }
            // Children come after their parents, so walking back from the last node adds
            // every subtree's current before its root's is passed on.
            for k in (1..j.len()).rev() {
                let (p, [a, b]) = (self.parent[k], self.up[k]);
                let up = a * v[p] + b * j[k];
                j[p] += up;
            }
            // Forward: each child's voltage from its parent's (already updated).
            let mut worst = 0.0f64;
            let mut total = 0.0f64;
            for k in 1..v.len() {
                let (p, [c, d]) = (self.parent[k], self.down[k]);
                let new = c * j[k] + d * v[p];
                let dv = (new - v[k]).norm_sqr();
                self.dv[k] = dv;
                worst = worst.max(dv);
                // NaN and infinity reach the total (every term is ≥ 0).
                total += dv;
                v[k] = new;
            }
            let finite = total.is_finite() || self.dv.iter().all(|d| d.is_finite());
            // Design: the sweep converges linearly, each update about `rate` times the one
            // before; the error left after an update `step` is then at most
            // `step · rate / (1 − rate)`. Stopping when that is below the tolerance, with the
            // rate measured from the last two updates, saves the sweep that only confirms a
            // small update (about one in five of a year's sweeps).
            let step = worst.sqrt();
            // No rate before the second sweep (NaN after an update of zero: not below).
            let rate = step / last_step;
            let left = if it > 1 && rate < MAX_RATE_FOR_ESTIMATE {
                step * rate / (1.0 - rate)
            } else {
                step
            };
            if finite && (step < TOLERANCE_PU || left < TOLERANCE_PU) {
                self.iterations = it;
                return Ok(it);
            }
            last_step = step;
            if it == MAX_ITERATIONS || !finite {
                // The node that changed most (the last one that turned NaN, if any).
                let (mut mismatch, mut at) = (0.0f64, ROOT);
                for (k, &dv) in self.dv.iter().enumerate().skip(1) {
                    if dv > mismatch || dv.is_nan() {
                        (mismatch, at) = (dv, k);
                    }
                }
                let mismatch = mismatch.sqrt();
                let bus = self.node_name[at].clone();
                // Start the next solve from flat rather than from a diverged state.
                self.reset();
                return Err(PowerFlowError::NotConverged {
                    iterations: it,
                    mismatch,
                    bus,
                });
            }
        }
        unreachable!("the loop returns on its last iteration")
    }

    /// Forgets the last solution: the next solve starts flat.
    pub fn reset(&mut self) {
        self.v[ROOT] = self.slack_v;
        for k in 1..self.v.len() {
            self.v[k] = self.down[k][1] * self.v[self.parent[k]];
        }
    }

    /// Iterations of the last successful solve.
    #[must_use]
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Voltage magnitude of the bus at position `bus`, p.u. (`None`: out of service).
    #[must_use]
    pub fn bus_vm_pu(&self, bus: usize) -> Option<f64> {
        self.bus_node
            .get(bus)
            .copied()
            .flatten()
            .map(|n| self.v[n].abs())
    }

    /// Voltage angle of the bus at position `bus`, degrees.
    #[must_use]
    pub fn bus_va_degree(&self, bus: usize) -> Option<f64> {
        self.bus_node
            .get(bus)
            .copied()
            .flatten()
            .map(|n| self.v[n].arg().to_degrees())
    }

    /// Currents into a branch at both ends, p.u.
    fn end_currents_pu(&self, b: &Branch) -> (C64, C64) {
        let (vf, vt) = (self.v[b.from], self.v[b.to]);
        (b.y.ff * vf + b.y.ft * vt, b.y.tf * vf + b.y.tt * vt)
    }

    /// Currents at both ends of a branch, kA.
    fn end_currents_ka(&self, b: &Branch) -> (f64, f64) {
        let (i_f, i_t) = self.end_currents_pu(b);
        let k = self.grid.sn_mva / 3f64.sqrt();
        (
            i_f.abs() * k / self.node_kv[b.from],
            i_t.abs() * k / self.node_kv[b.to],
        )
    }

    /// Current of line `line` (position in the grid's line list), the larger end, kA; `None`
    /// when out of service.
    #[must_use]
    pub fn line_i_ka(&self, line: usize) -> Option<f64> {
        let b = &self.branches[(*self.line_branch.get(line)?)?];
        let (f, t) = self.end_currents_ka(b);
        Some(f.max(t))
    }

    /// Loading of line `line`, % of `max_i_ka·df·parallel`.
    #[must_use]
    pub fn line_loading_percent(&self, line: usize) -> Option<f64> {
        let l = &self.grid.lines[line];
        self.line_i_ka(line).map(|i| i / l.rated_i_ka() * 100.0)
    }

    /// Loading of transformer `trafo`, % (pandapower's current-based loading).
    #[must_use]
    pub fn trafo_loading_percent(&self, trafo: usize) -> Option<f64> {
        let t = &self.grid.trafos[trafo];
        let b = &self.branches[(*self.trafo_branch.get(trafo)?)?];
        let (hv, lv) = self.end_currents_ka(b);
        let ld = (hv * t.vn_hv_kv).max(lv * t.vn_lv_kv) * 3f64.sqrt() / t.sn_mva * 100.0;
        Some(ld / f64::from(t.parallel) / t.df)
    }

    /// Power drawn from the external grid, `(MW, Mvar)` (negative: fed back).
    #[must_use]
    pub fn ext_grid_power(&self) -> (f64, f64) {
        // The root's subtree current is everything the slack supplies.
        let s = self.v[ROOT] * self.j[ROOT].conj();
        (s.re * self.grid.sn_mva, s.im * self.grid.sn_mva)
    }

    /// Lowest and highest voltage over in-service buses, p.u.
    #[must_use]
    pub fn voltage_range(&self) -> (f64, f64) {
        let (lo, hi, _) = self.voltage_summary(0.0, f64::INFINITY);
        (lo, hi)
    }

    /// Lowest and highest voltage over in-service buses, p.u., and the buses outside
    /// `[lo, hi]` p.u., in one pass.
    ///
    /// Design: on squared magnitudes (no square root per bus and slot); the root of the
    /// smallest and largest is the smallest and largest root, the root being monotonic.
    #[must_use]
    pub fn voltage_summary(&self, lo: f64, hi: f64) -> (f64, f64, usize) {
        let (lo2, hi2) = (lo * lo, hi * hi);
        let (mut min, mut max, mut outside) = (f64::INFINITY, f64::NEG_INFINITY, 0);
        for &n in self.bus_node.iter().flatten() {
            let m2 = self.v[n].norm_sqr();
            min = min.min(m2);
            max = max.max(m2);
            outside += usize::from(m2 < lo2 || m2 > hi2);
        }
        (min.sqrt(), max.sqrt(), outside)
    }

    /// The highest line loading, % (0 without lines).
    #[must_use]
    pub fn max_line_loading_percent(&self) -> f64 {
        (0..self.grid.lines.len())
            .filter_map(|l| self.line_loading_percent(l))
            .fold(0.0, f64::max)
    }

    /// The highest line loading, % (0 without lines), and the lines above 100 %, in one pass.
    ///
    /// Design: on squared loadings (no square root or division per line and slot, see
    /// [`LineRating`]); the same figures as [`Self::line_loading_percent`] up to rounding.
    #[must_use]
    pub fn line_loading_summary(&self) -> (f64, usize) {
        let (mut max2, mut over) = (0.0f64, 0);
        for r in &self.line_ratings {
            let (i_f, i_t) = self.end_currents_pu(&self.branches[r.branch]);
            let loading2 = (i_f.norm_sqr() * r.from2).max(i_t.norm_sqr() * r.to2);
            max2 = max2.max(loading2);
            over += usize::from(loading2 > 100.0 * 100.0);
        }
        (max2.sqrt(), over)
    }

    /// The highest transformer loading, % (0 without transformers).
    #[must_use]
    pub fn max_trafo_loading_percent(&self) -> f64 {
        (0..self.grid.trafos.len())
            .filter_map(|t| self.trafo_loading_percent(t))
            .fold(0.0, f64::max)
    }
}

/// The current a load of power `s` (p.u.) draws at voltage `v`: `conj(s / v)`; none without
/// load (most junctions of a feeder), without a division.
///
/// Design: `conj(s / v) = conj(s) · v / |v|²`, one division per load node and sweep instead
/// of the two a complex inverse takes — divisions are the slowest arithmetic of the sweep.
#[inline]
fn load_current(s: C64, v: C64) -> C64 {
    if s == C64::default() {
        s
    } else {
        (s.conj() * v).scale(1.0 / v.norm_sqr())
    }
}

/// pandapower's transformer: tap-adjusted voltages, T model on the LV base, star–delta to π.
fn trafo_two_port(
    t: &TrafoSpec,
    label: &str,
    hv_bus_kv: f64,
    lv_bus_kv: f64,
    sn: f64,
) -> Result<TwoPort, GridError> {
    for (field, v) in [
        ("sn_mva", t.sn_mva),
        ("vn_hv_kv", t.vn_hv_kv),
        ("vn_lv_kv", t.vn_lv_kv),
        ("vk_percent", t.vk_percent),
        ("df", t.df),
    ] {
        positive(label, field, v)?;
    }
    for (field, v) in [
        ("vkr_percent", t.vkr_percent),
        ("pfe_kw", t.pfe_kw),
        ("i0_percent", t.i0_percent),
    ] {
        non_negative(label, field, v)?;
    }
    for (field, v) in [
        ("shift_degree", t.shift_degree),
        ("tap_pos", t.tap_pos),
        ("tap_neutral", t.tap_neutral),
        ("tap_step_percent", t.tap_step_percent),
        ("tap_step_degree", t.tap_step_degree),
    ] {
        finite(label, field, v)?;
    }
    if t.vkr_percent > t.vk_percent {
        return Err(GridError::InvalidValue {
            element: label.to_owned(),
            field: "vkr_percent",
            value: t.vkr_percent,
            expected: "expected at most vk_percent",
        });
    }
    if t.parallel == 0 {
        return Err(GridError::InvalidValue {
            element: label.to_owned(),
            field: "parallel",
            value: 0.0,
            expected: "expected at least 1",
        });
    }
    let (mut vn_hv, mut vn_lv, mut shift) = (t.vn_hv_kv, t.vn_lv_kv, t.shift_degree);
    let side = t.tap_side.as_deref();
    let diff = t.tap_pos - t.tap_neutral;
    match t.tap_changer_type.as_deref() {
        None => {}
        Some(kind @ ("Ratio" | "Symmetrical" | "Ideal")) => {
            let (vn, direction) = match side {
                Some("hv") => (&mut vn_hv, 1.0),
                Some("lv") => (&mut vn_lv, -1.0),
                _ => {
                    return Err(GridError::InvalidValue {
                        element: label.to_owned(),
                        field: "tap_side",
                        value: f64::NAN,
                        expected: "a tap changer needs tap_side \"hv\" or \"lv\"",
                    });
                }
            };
            if kind == "Ideal" {
                shift += if t.tap_step_degree != 0.0 {
                    direction * diff * t.tap_step_degree
                } else {
                    direction
                        * 2.0
                        * (diff * t.tap_step_percent / 100.0 / 2.0)
                            .asin()
                            .to_degrees()
                };
            } else {
                let du = *vn * t.tap_step_percent * diff / 100.0;
                let angle = t.tap_step_degree.to_radians();
                let u1 = *vn;
                *vn = ((u1 + du * angle.cos()).powi(2) + (du * angle.sin()).powi(2)).sqrt();
                shift += (direction * du * angle.sin() / (u1 + du * angle.cos()))
                    .atan()
                    .to_degrees();
            }
        }
        Some(other) => {
            return Err(GridError::UnsupportedTapChanger {
                element: label.to_owned(),
                kind: other.to_owned(),
            });
        }
    }
    let ratio = (vn_hv / vn_lv) / (hv_bus_kv / lv_bus_kv);
    let par = f64::from(t.parallel);
    let tap_lv = (vn_lv / lv_bus_kv).powi(2) * sn;
    let z = t.vk_percent / 100.0 / t.sn_mva * tap_lv;
    let r = t.vkr_percent / 100.0 / t.sn_mva * tap_lv;
    let x = (z * z - r * r).sqrt();
    let (r, x) = (r / par, x / par);
    if r == 0.0 && x == 0.0 {
        return Err(GridError::ZeroImpedance {
            element: label.to_owned(),
        });
    }
    let base_z = lv_bus_kv.powi(2) / sn;
    let pfe_mw = t.pfe_kw * 1e-3;
    let ym = t.i0_percent / 100.0 * t.sn_mva;
    let b_mva = -(ym * ym - pfe_mw * pfe_mw).max(0.0).sqrt();
    let k = base_z * par / (vn_lv / t.vn_lv_kv).powi(2) / t.vn_lv_kv.powi(2);
    let (g, b) = (pfe_mw * k, b_mva * k);
    let tap = C64::polar(ratio, shift.to_radians());
    if g == 0.0 && b == 0.0 {
        let none = C64::default();
        return Ok(TwoPort::new(C64::new(r, x), none, none, tap));
    }
    // Star–delta with the leakage split half to each side (pandapower's default).
    let za = C64::new(r * 0.5, x * 0.5);
    let zb = za;
    let zc = C64::new(g, b).inv();
    let sum = za * zb + za * zc + zb * zc;
    let zab = sum / zc;
    let zac = sum / zb;
    let zbc = sum / za;
    Ok(TwoPort::new(zab, zac.inv(), zbc.inv(), tap))
}
