//! The gateway's per-packet work outside TLS: validating an upstream packet (version, length,
//! source address), reading a downstream packet's destination, and finding its session in the
//! lock-free table, alone and while a second thread looks up and reconnects sessions (the data
//! plane and the tunnel tasks share the table on two cores here).
//!
//! `cargo bench -p tunnel-gateway --bench hot_path`
// criterion's macros generate undocumented items; a bench binary has no public API.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use tunnel_gateway::packet::{check_upstream, destination, OwnAddrs};
use tunnel_gateway::pool::Pool;
use tunnel_gateway::table::{Route, SessionStats, SessionTable};

fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(4000, 5000)
        .write(&mut out, &vec![0u8; len - 28])
        .ok();
    out
}

fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .udp(4000, 5000)
        .write(&mut out, &vec![0u8; len - 48])
        .ok();
    out
}

fn validation(c: &mut Criterion) {
    let own = OwnAddrs {
        v4: Ipv4Addr::new(198, 18, 128, 7),
        v6: Some("fd00:198:18:128::7".parse().unwrap_or(Ipv6Addr::LOCALHOST)),
    };
    let v4 = udp_v4(own.v4, Ipv4Addr::new(198, 18, 2, 10), 1400);
    let spoofed = udp_v4(
        Ipv4Addr::new(198, 18, 128, 8),
        Ipv4Addr::new(198, 18, 2, 10),
        1400,
    );
    let v6 = udp_v6(
        own.v6.unwrap_or(Ipv6Addr::LOCALHOST),
        Ipv6Addr::LOCALHOST,
        1400,
    );
    let mut g = c.benchmark_group("packet_validation");
    g.throughput(Throughput::Elements(1));
    g.bench_function("upstream_ipv4_ok", |b| {
        b.iter(|| check_upstream(black_box(&v4), &own))
    });
    g.bench_function("upstream_ipv4_spoofed", |b| {
        b.iter(|| check_upstream(black_box(&spoofed), &own))
    });
    g.bench_function("upstream_ipv6_ok", |b| {
        b.iter(|| check_upstream(black_box(&v6), &own))
    });
    g.bench_function("downstream_destination_ipv4", |b| {
        b.iter(|| destination(black_box(&v4)))
    });
    g.finish();
}

/// A table for a /16 pool with every address holding a live route.
fn full_table() -> (Arc<SessionTable>, Vec<IpAddr>) {
    let pool = Pool::new("198.19.0.0/16".parse().unwrap_or_default(), None);
    let table = Arc::new(SessionTable::new(Arc::clone(&pool)));
    let mut addrs = Vec::new();
    for i in 0..pool.size() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        table.install(
            i,
            Arc::new(Route {
                session_id: u64::from(i),
                tx,
                stats: Arc::new(SessionStats::default()),
                thread: 0,
            }),
        );
        addrs.push(IpAddr::V4(pool.ipv4_of(i)));
    }
    (table, addrs)
}

/// Times `iters` lookups on this thread while `other` runs on a second thread.
fn lookups_with(
    table: &Arc<SessionTable>,
    addrs: &[IpAddr],
    iters: u64,
    other: impl FnOnce(Arc<SessionTable>, Vec<IpAddr>, Arc<AtomicBool>) + Send + 'static,
) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (t, a, s) = (Arc::clone(table), addrs.to_vec(), Arc::clone(&stop));
        std::thread::spawn(move || other(t, a, s))
    };
    let n = addrs.len();
    let start = Instant::now();
    for i in 0..iters as usize {
        let dst = addrs[(i * 7919) % n];
        black_box(table.lookup(black_box(dst)).map(|r| r.session_id));
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    elapsed
}

fn table_lookup(c: &mut Criterion) {
    let (table, addrs) = full_table();
    let mut g = c.benchmark_group("session_table_lookup");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_thread", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % addrs.len();
            table.lookup(black_box(addrs[i])).map(|r| r.session_id)
        });
    });
    g.bench_function("two_threads_both_looking_up", |b| {
        b.iter_custom(|iters| {
            lookups_with(&table, &addrs, iters, |t, a, stop| {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 104_729) % a.len();
                    black_box(t.lookup(a[i]).map(|r| r.session_id));
                }
            })
        });
    });
    g.bench_function("two_threads_other_reconnecting", |b| {
        b.iter_custom(|iters| {
            lookups_with(&table, &addrs, iters, |t, a, stop| {
                // Replace routes as reconnects do: install a new one, remove it only if still ours.
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % a.len() as u32;
                    let (tx, _rx) = tokio::sync::mpsc::channel(1);
                    let r = Arc::new(Route {
                        session_id: u64::from(i),
                        tx,
                        stats: Arc::new(SessionStats::default()),
                        thread: 0,
                    });
                    black_box(t.install(i, Arc::clone(&r)));
                }
            })
        });
    });
    g.finish();
}

criterion_group!(benches, validation, table_lookup);
criterion_main!(benches);
