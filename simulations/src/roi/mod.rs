//! "Should I join?": a household's return on PV, a battery, the meter box and the stake, inside
//! a neighbourhood trading through the gridshare market, with the network token's volatility
//! in it. `simulate roi <household.toml>` and the engine's `POST /api/v1/roi` both call
//! [`evaluate`] (or [`energy::simulate`] once and [`project`] per request), so the page and the
//! terminal show the same numbers.
//!
//! - [`input`]: what the household says (three numbers, the rest defaulted);
//! - [`energy`]: its year simulated three ways by [`crate::sim`] (joined, solo, baseline);
//! - [`emission`]: the token emission and minimum stake from the contracts' deployment;
//! - [`finance`]: NPV, IRR, payback (checked against numpy-financial);
//! - this module: the yearly cash flows, the Monte Carlo over token price paths, the stress
//!   scenarios and the quantiles; [`report`]: the terminal table and the HTML report.
//!
//! The cash flows of year `t` (`t = 0` now, `1..=L` at each year's end), in the currency:
//!
//! ```text
//! CF_0 = −(PV + battery + meter box + installation) − stake × P_0
//! CF_t = own_t + local_t + feed_in_t − operation − replacement_t + tokens_t × P_t   (+ stake × P_L at t = L)
//! ```
//!
//! `own_t`, `local_t`, `feed_in_t` are the simulated year's parts, shrunk by PV degradation
//! `(1 − d)^(t−1)` and grown with the retail tariff's change (own use), the feed-in tariff's
//! (feed-in) and their mean (local trades, priced between the two). `tokens_t` is the year's
//! network emission (from the contracts) times the household's share: its Σ positive daily net
//! export (what `MeterStaking` pays by, one epoch a day) over that of the network's meters,
//! each counted as the neighbourhood's mean household. `P_t` is the token price at the end of
//! year `t`, drawn per path.

pub mod emission;
pub mod energy;
pub mod finance;
pub mod input;
pub mod report;

use crate::rng::SplitMix64;
pub use emission::EmissionSchedule;
pub use energy::{EnergyYear, Neighbourhood};
pub use input::{PriceModel, RoiError, RoiInput};
use serde::Serialize;

/// Three quantiles of an outcome over the price paths: `p10` is the outcome 90 % of paths do
/// better than (for payback: sooner), `p90` the one only 10 % do better than.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Pessimistic.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// Optimistic.
    pub p90: f64,
}

/// Like [`Spread`] for an outcome that may not exist on a path (`None`: no IRR, or not paid
/// back within the lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MaybeSpread {
    /// Pessimistic.
    pub p10: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// Optimistic.
    pub p90: Option<f64>,
    /// Paths on which the outcome exists.
    pub paths_with_value: u32,
}

/// The first year's money, in the currency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct YearOne {
    /// Saved against buying everything at retail, joined (battery, local trading).
    pub saving: f64,
    /// Saved with PV alone, no battery, no local trading.
    pub saving_baseline: f64,
    /// Saved with the battery but no local trading.
    pub saving_solo: f64,
    /// What the battery and local trading add to PV alone.
    pub joining_adds: f64,
    /// Of the saving: own use of own energy, at retail.
    pub own_use: f64,
    /// Of the saving: local trades.
    pub local_trading: f64,
    /// Of the saving: feed-in.
    pub feed_in: f64,
    /// Reward tokens earned.
    pub reward_tokens: f64,
    /// Their value at today's token price.
    pub rewards_at_todays_price: f64,
}

/// Where the return comes from: present values over the lifetime, token at today's price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReturnSplit {
    /// Own use of own energy.
    pub own_use: f64,
    /// Local trades.
    pub local_trading: f64,
    /// Feed-in.
    pub feed_in: f64,
    /// Token rewards.
    pub token_rewards: f64,
    /// Stake returned at the end less bought now.
    pub stake: f64,
    /// Hardware, installation, replacement and running costs.
    pub costs: f64,
    /// Token rewards as a share of the four returns, 0..=1.
    pub token_share: f64,
}

/// A named stress scenario's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stress {
    /// Short identifier.
    pub id: &'static str,
    /// What happens.
    pub name: &'static str,
    /// Net present value.
    pub npv: f64,
    /// Internal rate of return.
    pub irr: Option<f64>,
    /// Years to pay back.
    pub payback_years: Option<f64>,
    /// Cumulative cash flow at the end of each year (index 0: now).
    pub cumulative: Vec<f64>,
}

/// The fan of cumulative cash flow: quantiles over the paths at the end of each year.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fan {
    /// Years, 0 = now.
    pub years: Vec<u32>,
    /// 10th percentile.
    pub p10: Vec<f64>,
    /// 25th.
    pub p25: Vec<f64>,
    /// Median.
    pub p50: Vec<f64>,
    /// 75th.
    pub p75: Vec<f64>,
    /// 90th.
    pub p90: Vec<f64>,
}

/// The calculator's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoiResult {
    /// The input, defaults filled in.
    pub input: RoiInput,
    /// The currency of every amount.
    pub currency: String,
    /// The simulated year.
    pub energy: EnergyYear,
    /// The token emission and stake, from the contracts.
    pub emission: EmissionSchedule,
    /// Tokens staked.
    pub stake_tokens: f64,
    /// Paid now: hardware, installation and the stake at today's price.
    pub investment: f64,
    /// The first year's money.
    pub year_one: YearOne,
    /// Net present value.
    pub npv: Spread,
    /// Share of paths with a negative NPV.
    pub probability_of_loss: f64,
    /// Internal rate of return.
    pub irr: MaybeSpread,
    /// Years until the cumulative cash flow stays positive.
    pub payback_years: MaybeSpread,
    /// The same, discounted.
    pub discounted_payback_years: MaybeSpread,
    /// The constant token price at which the NPV is zero: 0 when it pays even with a
    /// worthless token, `None` when no token price makes it pay.
    pub break_even_token_price: Option<f64>,
    /// Where the return comes from.
    pub split: ReturnSplit,
    /// Named stress scenarios.
    pub stress: Vec<Stress>,
    /// Cumulative cash flow over the years.
    pub fan: Fan,
}

/// Simulates the household's year in its neighbourhood and projects it: the whole answer.
/// `base_dir` is where a `community.scenario` file is looked up (`None`: shipped
/// neighbourhoods only).
pub fn evaluate(
    input: &RoiInput,
    base_dir: Option<&std::path::Path>,
) -> Result<RoiResult, RoiError> {
    input.check()?;
    let n = Neighbourhood::for_input(input, base_dir)?;
    let energy = energy::simulate(&n, input)?;
    project(input, &energy, &EmissionSchedule::deployed())
}

/// The deterministic part of the cash flows, and the reward tokens of each year.
struct Flows {
    /// Everything but the token's price-dependent parts, index = year.
    fixed: Vec<f64>,
    /// Same, with the solo year's energy from year 2 on (the network stopped).
    fixed_after_stop: Vec<f64>,
    /// Reward tokens earned in each year (index 0: none).
    tokens: Vec<f64>,
    own: Vec<f64>,
    local: Vec<f64>,
    feed: Vec<f64>,
    costs: Vec<f64>,
    stake: f64,
}

impl Flows {
    fn new(input: &RoiInput, e: &EnergyYear, emission: &EmissionSchedule) -> Self {
        let lifetime = input.finance.lifetime_years as usize;
        let c = &input.costs;
        let t = &input.tariffs;
        let per = e.units_per_currency.max(1) as f64;
        let money = |v: i64| v as f64 / per;
        let upfront = input.pv_kwp * c.pv_per_kwp
            + input.battery_kwh * c.battery_per_kwh
            + c.meter_box
            + c.installation;
        let mut costs = vec![0.0; lifetime + 1];
        costs[0] = upfront;
        let life = c.battery_life_years as usize;
        for (year, cost) in costs.iter_mut().enumerate().skip(1) {
            *cost += c.operation_per_year;
            if input.battery_kwh > 0.0 && year % life == 0 && year < lifetime {
                *cost += input.battery_kwh * c.battery_replacement_per_kwh;
            }
        }
        let grow = |rate: f64, year: usize| {
            (1.0 + rate).powi(i32::try_from(year - 1).unwrap_or(0))
                * (1.0 - input.finance.degradation).powi(i32::try_from(year - 1).unwrap_or(0))
        };
        let mid = 0.5 * (t.retail_change + t.feed_in_change);
        let series = |y: &energy::HouseholdYear| {
            let mut own = vec![0.0; lifetime + 1];
            let mut local = vec![0.0; lifetime + 1];
            let mut feed = vec![0.0; lifetime + 1];
            for year in 1..=lifetime {
                own[year] = money(y.own_use) * grow(t.retail_change, year);
                local[year] = money(y.local_trading) * grow(mid, year);
                feed[year] = money(y.feed_in) * grow(t.feed_in_change, year);
            }
            (own, local, feed)
        };
        let (own, local, feed) = series(&e.joined);
        let (solo_own, solo_local, solo_feed) = series(&e.solo);
        // Rewards: the year's emission times the household's share of the network's basis.
        let emitted = emission.tokens_per_year(0, input.finance.lifetime_years);
        let n = &input.network;
        let mine = e.joined.net_export_days_wh as f64;
        let per_meter = if e.neighbour_net_export_days_wh > 0 {
            e.neighbour_net_export_days_wh as f64
        } else {
            mine
        };
        let mut tokens = vec![0.0; lifetime + 1];
        for year in 1..=lifetime {
            let meters = (n.meters * (1.0 + n.growth).powi(i32::try_from(year - 1).unwrap_or(0)))
                .clamp(1.0, n.max_meters);
            let deg = (1.0 - input.finance.degradation).powi(i32::try_from(year - 1).unwrap_or(0));
            let share = if per_meter > 0.0 {
                // The household is one of the meters: its basis over (the others' + its own).
                (mine * deg / ((meters - 1.0).max(0.0) * per_meter * deg + mine * deg)).min(1.0)
            } else {
                0.0
            };
            tokens[year] = emitted[year - 1] * share;
        }
        let stake = input
            .token
            .stake_tokens
            .unwrap_or(emission.min_stake_tokens);
        let fixed: Vec<f64> = (0..=lifetime)
            .map(|y| own[y] + local[y] + feed[y] - costs[y])
            .collect();
        let fixed_after_stop: Vec<f64> = (0..=lifetime)
            .map(|y| {
                if y >= 2 {
                    solo_own[y] + solo_local[y] + solo_feed[y] - costs[y]
                } else {
                    fixed[y]
                }
            })
            .collect();
        Self {
            fixed,
            fixed_after_stop,
            tokens,
            own,
            local,
            feed,
            costs,
            stake,
        }
    }

    /// The cash flows of one price path (`prices[t]`: end of year `t`, `prices[0]`: now).
    fn cash_flows(&self, fixed: &[f64], prices: &[f64], out: &mut [f64]) {
        let last = fixed.len() - 1;
        for (t, o) in out.iter_mut().enumerate() {
            *o = fixed[t] + self.tokens[t] * prices[t];
        }
        out[0] -= self.stake * prices[0];
        out[last] += self.stake * prices[last];
    }
}

/// Token price paths: a standard normal from the generator (Box–Muller, both values used).
struct Normal {
    rng: SplitMix64,
    spare: Option<f64>,
}

impl Normal {
    fn next(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.rng.next_f64(); // (0, 1]: ln is finite
        let u2 = self.rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// A log price never moves more than this from today's in a path: e^±50, so every cash flow
/// stays finite whatever the drift and volatility (both bounded by [`RoiInput::check`]).
const MAX_LOG_MOVE: f64 = 50.0;

fn cumulative(cf: &[f64]) -> Vec<f64> {
    cf.iter()
        .scan(0.0, |acc, c| {
            *acc += c;
            Some(*acc)
        })
        .collect()
}

fn spread_of(values: &mut [f64]) -> Spread {
    values.sort_unstable_by(f64::total_cmp);
    Spread {
        p10: finance::quantile(values, 0.1),
        p50: finance::quantile(values, 0.5),
        p90: finance::quantile(values, 0.9),
    }
}

/// Quantiles of an outcome that may be missing; `worst` is where a missing value ranks
/// (`f64::NEG_INFINITY` for IRR, `INFINITY` for payback); `higher_is_better` orients P10.
fn maybe_spread_of(values: &mut [f64], higher_is_better: bool) -> MaybeSpread {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    // Nearest rank: interpolating towards a missing value would invent one.
    let at = |q: f64| {
        let q = if higher_is_better { q } else { 1.0 - q };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "in 0..n"
        )]
        let i = (q * (n.saturating_sub(1)) as f64).round() as usize;
        values.get(i).copied().filter(|v| v.is_finite())
    };
    MaybeSpread {
        p10: at(0.1),
        p50: at(0.5),
        p90: at(0.9),
        paths_with_value: u32::try_from(values.iter().filter(|v| v.is_finite()).count())
            .unwrap_or(u32::MAX),
    }
}

/// Projects a simulated year over the lifetime: Monte Carlo over token price paths, stress
/// scenarios, break-even, split. Pure and deterministic for a given input (seeded).
pub fn project(
    input: &RoiInput,
    energy: &EnergyYear,
    emission: &EmissionSchedule,
) -> Result<RoiResult, RoiError> {
    input.check()?;
    let flows = Flows::new(input, energy, emission);
    let lifetime = input.finance.lifetime_years as usize;
    let rate = input.finance.discount_rate;
    let k = &input.token;
    let p0 = k.price;
    let paths = k.paths as usize;

    // Yearly log returns drawn per path.
    let history_returns: Vec<f64> = k.history.windows(2).map(|w| (w[1] / w[0]).ln()).collect();
    let mut normal = Normal {
        rng: SplitMix64::new(k.seed),
        spare: None,
    };
    let mut picker = SplitMix64::new(k.seed ^ 0x5EED_B007_57A9_0000);
    let gbm_mu = k.drift - 0.5 * k.volatility * k.volatility;

    let mut npvs = Vec::with_capacity(paths);
    let mut irrs = Vec::with_capacity(paths);
    let mut paybacks = Vec::with_capacity(paths);
    let mut discounted = Vec::with_capacity(paths);
    // Cumulative cash flow, year-major: cum[t * paths + path].
    let mut cum = vec![0.0; (lifetime + 1) * paths];
    let mut prices = vec![0.0; lifetime + 1];
    let mut cf = vec![0.0; lifetime + 1];
    for path in 0..paths {
        let mut log_move = 0.0f64;
        prices[0] = p0;
        for p in prices.iter_mut().skip(1) {
            let step = match k.model {
                PriceModel::Gbm => gbm_mu + k.volatility * normal.next(),
                PriceModel::Bootstrap => (0..k.history_per_year)
                    .map(|_| history_returns[picker.below(history_returns.len())])
                    .sum(),
            };
            log_move = (log_move + step).clamp(-MAX_LOG_MOVE, MAX_LOG_MOVE);
            *p = p0 * log_move.exp();
        }
        flows.cash_flows(&flows.fixed, &prices, &mut cf);
        npvs.push(finance::npv(rate, &cf));
        irrs.push(finance::irr(&cf).unwrap_or(f64::NEG_INFINITY));
        paybacks.push(finance::payback(&cf, None).unwrap_or(f64::INFINITY));
        discounted.push(finance::payback(&cf, Some(rate)).unwrap_or(f64::INFINITY));
        let mut acc = 0.0;
        for (t, c) in cf.iter().enumerate() {
            acc += c;
            cum[t * paths + path] = acc;
        }
    }
    let probability_of_loss = npvs.iter().filter(|v| **v < 0.0).count() as f64 / paths as f64;

    let mut fan = Fan {
        years: (0..=input.finance.lifetime_years).collect(),
        p10: Vec::with_capacity(lifetime + 1),
        p25: Vec::with_capacity(lifetime + 1),
        p50: Vec::with_capacity(lifetime + 1),
        p75: Vec::with_capacity(lifetime + 1),
        p90: Vec::with_capacity(lifetime + 1),
    };
    for year in cum.chunks_mut(paths) {
        year.sort_unstable_by(f64::total_cmp);
        fan.p10.push(finance::quantile(year, 0.1));
        fan.p25.push(finance::quantile(year, 0.25));
        fan.p50.push(finance::quantile(year, 0.5));
        fan.p75.push(finance::quantile(year, 0.75));
        fan.p90.push(finance::quantile(year, 0.9));
    }

    // A constant token price p: NPV(p) = a + b·p.
    let zero = vec![0.0; lifetime + 1];
    let one = vec![1.0; lifetime + 1];
    flows.cash_flows(&flows.fixed, &zero, &mut cf);
    let a = finance::npv(rate, &cf);
    flows.cash_flows(&flows.fixed, &one, &mut cf);
    let b = finance::npv(rate, &cf) - a;
    let break_even_token_price = if a >= 0.0 {
        Some(0.0)
    } else if b > 0.0 {
        Some(-a / b)
    } else {
        None
    };

    let scenario = |id, name, fixed: &[f64], prices: &[f64]| {
        let mut cf = vec![0.0; lifetime + 1];
        flows.cash_flows(fixed, prices, &mut cf);
        Stress {
            id,
            name,
            npv: finance::npv(rate, &cf),
            irr: finance::irr(&cf),
            payback_years: finance::payback(&cf, None),
            cumulative: cumulative(&cf),
        }
    };
    let flat = vec![p0; lifetime + 1];
    let crash: Vec<f64> = (0..=lifetime)
        .map(|t| if t == 0 { p0 } else { 0.1 * p0 })
        .collect();
    let stopped: Vec<f64> = (0..=lifetime)
        .map(|t| if t <= 1 { p0 } else { 0.0 })
        .collect();
    let stress = vec![
        scenario("flat", "token price stays at today's", &flows.fixed, &flat),
        scenario(
            "crash-90",
            "token −90 % in year 1 and never recovers",
            &flows.fixed,
            &crash,
        ),
        scenario(
            "network-stops",
            "the network stops paying after year 1: no rewards, the stake is worthless, no local trading (the battery still serves the home)",
            &flows.fixed_after_stop,
            &stopped,
        ),
        scenario(
            "token-worthless",
            "the token is worth nothing from the start",
            &flows.fixed,
            &zero,
        ),
    ];

    let x = 1.0 / (1.0 + rate);
    let present = |v: &[f64]| finance::npv(rate, v);
    let token_rewards: f64 = flows
        .tokens
        .iter()
        .enumerate()
        .map(|(t, n)| n * p0 * x.powi(i32::try_from(t).unwrap_or(0)))
        .sum();
    let (own, local, feed) = (
        present(&flows.own),
        present(&flows.local),
        present(&flows.feed),
    );
    let returns = own + local + feed + token_rewards;
    let split = ReturnSplit {
        own_use: own,
        local_trading: local,
        feed_in: feed,
        token_rewards,
        stake: flows.stake * p0 * (x.powi(i32::try_from(lifetime).unwrap_or(0)) - 1.0),
        costs: -present(&flows.costs),
        token_share: if returns > 0.0 {
            (token_rewards / returns).clamp(0.0, 1.0)
        } else {
            0.0
        },
    };
    let per = energy.units_per_currency.max(1) as f64;
    let money = |v: i64| v as f64 / per;
    let year_one = YearOne {
        saving: money(energy.joined.saving()),
        saving_baseline: money(energy.baseline.saving()),
        saving_solo: money(energy.solo.saving()),
        joining_adds: money(energy.joined.saving() - energy.baseline.saving()),
        own_use: money(energy.joined.own_use),
        local_trading: money(energy.joined.local_trading),
        feed_in: money(energy.joined.feed_in),
        reward_tokens: flows.tokens.get(1).copied().unwrap_or(0.0),
        rewards_at_todays_price: flows.tokens.get(1).copied().unwrap_or(0.0) * p0,
    };
    let result = RoiResult {
        input: input.clone(),
        currency: energy.currency.clone(),
        energy: energy.clone(),
        emission: *emission,
        stake_tokens: flows.stake,
        investment: flows.costs[0] + flows.stake * p0,
        year_one,
        npv: spread_of(&mut npvs),
        probability_of_loss,
        irr: maybe_spread_of(&mut irrs, true),
        payback_years: maybe_spread_of(&mut paybacks, false),
        discounted_payback_years: maybe_spread_of(&mut discounted, false),
        break_even_token_price,
        split,
        stress,
        fan,
    };
    result.check_finite()?;
    Ok(result)
}

impl RoiResult {
    /// Refuses to hand out a non-finite number: a bug, or an input the checks let through.
    fn check_finite(&self) -> Result<(), RoiError> {
        let s = &self.split;
        let mut named: Vec<(&str, f64)> = vec![
            ("investment", self.investment),
            ("npv.p10", self.npv.p10),
            ("npv.p50", self.npv.p50),
            ("npv.p90", self.npv.p90),
            ("split.own_use", s.own_use),
            ("split.local_trading", s.local_trading),
            ("split.feed_in", s.feed_in),
            ("split.token_rewards", s.token_rewards),
            ("split.stake", s.stake),
            ("split.costs", s.costs),
        ];
        named.extend(self.stress.iter().map(|st| ("stress.npv", st.npv)));
        let fan = &self.fan;
        named.extend(
            [&fan.p10, &fan.p25, &fan.p50, &fan.p75, &fan.p90]
                .into_iter()
                .flatten()
                .map(|v| ("fan", *v)),
        );
        match named.into_iter().find(|(_, v)| !v.is_finite()) {
            Some((field, v)) => Err(input::invalid(
                field,
                v,
                "a finite result: the inputs drive it out of range (lower token.price, token.drift or network figures)",
            )),
            None => Ok(()),
        }
    }
}
