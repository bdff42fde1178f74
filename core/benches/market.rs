//! Market benchmarks: continuous double auction throughput on a 10 000-order book, call
//! auction clearing time for 1 000 / 100 000 / 1 000 000 orders, memory per resting order.
//!
//! Run: `cargo bench -p gridshare-core --bench market`. The memory figures are printed before
//! the timings (resident-set growth per order, and the book's own capacity-based count).
//!
//! Measured on the shared 2-core development machine (other builds running), 2026-11-25:
//! CDA 8.6 M ops/s (insert : cancel : marketable = 5 : 3 : 2 on a 10 000-order book);
//! call auction 27 µs / 3.9 ms / 134 ms for 1 000 / 100 000 / 1 000 000 orders (before the
//! volume between different owners of issue 18; after it, alternating old and new binaries
//! on the machine at load 7–9 gave 408–689 ms old against 375–591 ms new for 1 000 000);
//! 49 B per resting order at 1 000 000 orders (65 B at 10 000 orders over 4 000 price levels).

#![allow(clippy::unwrap_used, reason = "benchmark setup on fixed, valid data")]

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gridshare_core::market::{
    AccountId, AreaId, AreaTree, AuctionEntry, Community, ContinuousBook, ContinuousKind,
    FeeProfile, ImbalancePrices, LEVEL_BYTES_ESTIMATE, Mechanism, Order, OrderId, PriceRule,
    RESTING_ORDER_BYTES, SlotCalendar, SlotTerms, Tariff, clear_call_auction,
};
use std::collections::HashMap;
use std::hint::black_box;

const RETAIL: u64 = 20_000;
const RESTING: usize = 10_000;
const SCRIPT_OPS: usize = 1_000_000;

fn terms() -> SlotTerms {
    Community {
        calendar: SlotCalendar::quarter_hourly(0),
        tariff: Tariff::flat(RETAIL, 0),
        imbalance: ImbalancePrices::default(),
        areas: AreaTree::new(FeeProfile::Free, AccountId(0)).unwrap(),
        utility: AccountId(0),
        mechanism: Mechanism::ContinuousDoubleAuction,
    }
    .terms(96)
    .unwrap()
}

/// xorshift64*: a fixed, dependency-free pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
enum Op {
    Submit(Order),
    Cancel(OrderId),
}

/// A passive order: bids in [8000, 9999], asks in [10001, 12000], 1 kWh each.
fn passive(rng: &mut Rng, id: u64) -> Order {
    let owner = AccountId(u32::try_from(rng.below(1000)).unwrap() + 1);
    if rng.below(2) == 0 {
        Order::bid(
            OrderId(id),
            owner,
            AreaId(0),
            8_000 + rng.below(2_000),
            1_000,
        )
    } else {
        Order::ask(
            OrderId(id),
            owner,
            AreaId(0),
            10_001 + rng.below(2_000),
            1_000,
        )
    }
}

/// A book with `RESTING` passive orders, and a script of insert / cancel / marketable-order
/// operations in the ratio 5 : 3 : 2. The script is generated against a copy of the book, so
/// every cancel targets a resting order and the book stays near `RESTING` orders (each
/// marketable 1 kWh order fills one resting order at the best price).
fn cda_setup() -> (ContinuousBook, Vec<Op>) {
    let t = terms();
    let now = t.slot.gate_closure - 1;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut book = ContinuousBook::with_capacity(t, ContinuousKind::TwoSided, 2 * RESTING);
    let mut live: Vec<OrderId> = Vec::new();
    let mut at: HashMap<OrderId, usize> = HashMap::new();
    let mut id = 0u64;
    while book.len() < RESTING {
        id += 1;
        book.submit(passive(&mut rng, id), now).unwrap();
        at.insert(OrderId(id), live.len());
        live.push(OrderId(id));
    }
    let start = book.clone();
    let forget = |live: &mut Vec<OrderId>, at: &mut HashMap<OrderId, usize>, gone: OrderId| {
        if let Some(i) = at.remove(&gone) {
            live.swap_remove(i);
            if let Some(&moved) = live.get(i) {
                at.insert(moved, i);
            }
        }
    };
    let mut script = Vec::with_capacity(SCRIPT_OPS);
    let mut trades = Vec::new();
    for _ in 0..SCRIPT_OPS {
        id += 1;
        let r = rng.below(10);
        let op = if r < 5 || live.is_empty() {
            Op::Submit(passive(&mut rng, id))
        } else if r < 8 {
            let victim = live[usize::try_from(rng.below(live.len() as u64)).unwrap()];
            Op::Cancel(victim)
        } else {
            let owner = AccountId(2_000);
            Op::Submit(if rng.below(2) == 0 {
                Order::bid(OrderId(id), owner, AreaId(0), RETAIL, 1_000)
            } else {
                Order::ask(OrderId(id), owner, AreaId(0), 0, 1_000)
            })
        };
        trades.clear();
        match op {
            Op::Submit(o) => {
                let s = book.submit_into(o, now, &mut trades).unwrap();
                if s.resting_wh > 0 {
                    at.insert(o.id, live.len());
                    live.push(o.id);
                }
            }
            Op::Cancel(victim) => {
                book.cancel(victim, now).unwrap();
                forget(&mut live, &mut at, victim);
            }
        }
        for t in &trades {
            for filled in [t.bid, t.ask] {
                if book.get(filled).is_none() {
                    forget(&mut live, &mut at, filled);
                }
            }
        }
        script.push(op);
    }
    (start, script)
}

fn run_script(book: &mut ContinuousBook, script: &[Op], now: i64) -> usize {
    let mut trades = Vec::with_capacity(16);
    let mut filled = 0;
    for op in script {
        match *op {
            Op::Submit(o) => {
                trades.clear();
                // Submits in the script are valid by construction; a rejection would only
                // mean a duplicate id, which the script never produces.
                if book.submit_into(o, now, &mut trades).is_ok() {
                    filled += trades.len();
                }
            }
            Op::Cancel(id) => {
                black_box(book.cancel(id, now).is_ok());
            }
        }
    }
    filled
}

fn continuous_double_auction(c: &mut Criterion) {
    let (book, script) = cda_setup();
    let now = book.terms().slot.gate_closure - 1;
    {
        let mut b = book.clone();
        let fills = run_script(&mut b, &script, now);
        eprintln!(
            "cda: {} ops on a {}-order book -> {} fills, {} orders resting at the end",
            script.len(),
            RESTING,
            fills,
            b.len()
        );
    }
    let mut g = c.benchmark_group("cda");
    g.throughput(Throughput::Elements(script.len() as u64));
    g.sample_size(10);
    g.bench_function("insert_cancel_match_10k_book", |bench| {
        bench.iter_batched(
            || book.clone(),
            |mut b| black_box(run_script(&mut b, &script, now)),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn auction_entries(n: usize) -> Vec<AuctionEntry> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..n)
        .map(|i| {
            let i64_ = i as u64;
            let owner = AccountId(u32::try_from(i % 100_000).unwrap());
            let price = 500 + rng.below(2_500);
            let energy = 100 + rng.below(4_900);
            let order = if rng.below(2) == 0 {
                Order::bid(OrderId(i64_), owner, AreaId(0), price, energy)
            } else {
                Order::ask(OrderId(i64_), owner, AreaId(0), price, energy)
            };
            AuctionEntry {
                order,
                sequence: i64_,
            }
        })
        .collect()
}

fn call_auction(c: &mut Criterion) {
    let t = terms();
    let mut g = c.benchmark_group("call_auction_clear");
    g.sample_size(10);
    for n in [1_000usize, 100_000, 1_000_000] {
        let entries = auction_entries(n);
        let r = clear_call_auction(&entries, &t, PriceRule::default()).unwrap();
        eprintln!(
            "call auction {n} orders: price {:?}, {} trades, {} Wh",
            r.clearing_price,
            r.trades.len(),
            r.traded_wh()
        );
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &entries, |bench, e| {
            bench.iter(|| black_box(clear_call_auction(e, &t, PriceRule::default()).unwrap()));
        });
    }
    g.finish();
}

/// Resident set size in bytes, from /proc (Linux); None elsewhere.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_per_resting_order(_: &mut Criterion) {
    let t = terms();
    let now = t.slot.gate_closure - 1;
    for n in [RESTING, 1_000_000] {
        let mut rng = Rng(7);
        let orders: Vec<Order> = (0..n as u64).map(|i| passive(&mut rng, i)).collect();
        let before = resident_bytes();
        let mut book = ContinuousBook::new(t.clone(), ContinuousKind::TwoSided);
        for o in &orders {
            book.submit(*o, now).unwrap();
        }
        let after = resident_bytes();
        let rss = match (before, after) {
            (Some(b), Some(a)) => format!("{:.1}", a.saturating_sub(b) as f64 / n as f64),
            _ => "n/a".to_owned(),
        };
        eprintln!(
            "memory, {n} resting orders: {} B/order by container capacity (slot {RESTING_ORDER_BYTES} B, level estimate {LEVEL_BYTES_ESTIMATE} B), {rss} B/order resident-set growth",
            book.heap_bytes() / n,
        );
        black_box(&book);
    }
}

criterion_group!(
    benches,
    memory_per_resting_order,
    continuous_double_auction,
    call_auction
);
criterion_main!(benches);
