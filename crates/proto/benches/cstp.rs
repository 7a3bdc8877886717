//! CSTP framing, the per-packet protocol work on the TLS path: encoding one DATA frame into a
//! reused buffer, and cutting a read buffer of back-to-back frames into frames.
//!
//! `cargo bench -p tunnel-proto --bench cstp`
// criterion's macros generate undocumented items; a bench binary has no public API.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tunnel_proto::cstp::{self, FrameType};

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("cstp_encode");
    for size in [64usize, 1400] {
        let payload = vec![0x45u8; size];
        let mut out = Vec::with_capacity(size + cstp::HEADER_LEN);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("data_{size}"), |b| {
            b.iter(|| {
                out.clear();
                cstp::encode(FrameType::Data, black_box(&payload), &mut out).ok();
                black_box(out.len())
            });
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("cstp_decode");
    for size in [64usize, 1400] {
        // 64 frames back to back, as one large TLS read delivers them.
        let mut buf = Vec::new();
        for _ in 0..64 {
            cstp::encode(FrameType::Data, &vec![0x45u8; size], &mut buf).ok();
        }
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("64_frames_of_{size}"), |b| {
            b.iter(|| {
                let mut rest = black_box(&buf[..]);
                let mut n = 0usize;
                while let Ok(Some((kind, payload, used))) = cstp::decode(rest, cstp::MAX_PAYLOAD) {
                    n += payload.len() + usize::from(kind == FrameType::Data);
                    rest = &rest[used..];
                }
                black_box(n)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
