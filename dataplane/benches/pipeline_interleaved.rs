//! Per-packet cost of each gateway path at small and large tables, measured interleaved:
//! small and large batches alternate (A B A B ...) and the medians are compared, so the
//! machine's drift between fast and slow phases cancels out of the ratios.
//!
//! Run: `cargo bench -p sluice-dataplane --bench pipeline_interleaved` (or through
//! `scripts/bench-pipeline.sh`). Prints a Markdown table and one JSON line.

use std::hint::black_box;
use std::time::Instant;

use sluice_dataplane::pipeline::{process, process_batch, Frame, Local, Verdict};
use sluice_dataplane::tables::Tables;
use sluice_dataplane::testkit::*;

const FLOWS: usize = 1_000;
const ROUNDS: usize = 31;
/// Passes over the flow set per timed sample.
const PASSES: usize = 20;
/// Frames per call of `process_batch`, as an RX batch of the engine.
const BATCH: usize = 32;

struct Case {
    buffers: Vec<Vec<u8>>,
    pristine: Vec<Vec<u8>>,
    len: Vec<usize>,
}

impl Case {
    fn new(world: &ScaledWorld, path: BenchPath) -> Self {
        let packets = world.flows(path, FLOWS, 0x5eed);
        let pristine: Vec<Vec<u8>> = packets.iter().map(|p| with_headroom(p)).collect();
        Self {
            buffers: pristine.clone(),
            len: packets.iter().map(Vec::len).collect(),
            pristine,
        }
    }

    /// ns per packet for `PASSES` passes, restoring packets between passes (untimed);
    /// one packet at a time, or in batches through `process_batch`.
    fn sample(&mut self, tables: &Tables, local: &Local, batched: bool) -> f64 {
        let mut elapsed = 0u128;
        let mut verdicts = [Verdict::Forward; BATCH];
        for _ in 0..PASSES {
            for (buf, pristine) in self.buffers.iter_mut().zip(&self.pristine) {
                buf.copy_from_slice(pristine);
            }
            let mut frames: Vec<Frame<'_>> = self
                .buffers
                .iter_mut()
                .zip(&self.len)
                .map(|(buf, len)| Frame::new(buf, HEADROOM, *len).expect("fits"))
                .collect();
            let start = Instant::now();
            if batched {
                for chunk in frames.chunks_mut(BATCH) {
                    process_batch(tables, local, chunk, &mut verdicts[..chunk.len()]);
                    black_box(&verdicts);
                }
            } else {
                for frame in frames.iter_mut() {
                    black_box(process(tables, local, frame));
                }
            }
            elapsed += start.elapsed().as_nanos();
        }
        elapsed as f64 / (PASSES * FLOWS) as f64
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects paths by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let local = local();
    eprintln!("building tables: small (10 endpoints, 10 services) and large (1,000,000 endpoints, 10,000 services x 100 backends)");
    let small_world = ScaledWorld::new(10, 10, 100);
    let large_world = ScaledWorld::new(1_000_000, 10_000, 100);
    let small_tables = small_world.tables().snapshot();
    let large_tables = large_world.tables().snapshot();

    println!("| path | mode | small ns/pkt | large ns/pkt | large/small |");
    println!("|---|---|---|---|---|");
    let mut json = Vec::new();
    for path in BenchPath::ALL {
        if !filter.is_empty() && !filter.iter().any(|f| path.name().contains(f.as_str())) {
            continue;
        }
        let mut small = Case::new(&small_world, path);
        let mut large = Case::new(&large_world, path);
        let want = if path == BenchPath::Arp {
            Verdict::Reply
        } else {
            Verdict::Forward
        };
        for (case, tables) in [(&mut small, &small_tables), (&mut large, &large_tables)] {
            for (buf, len) in case.buffers.iter_mut().zip(&case.len) {
                let mut frame = Frame::new(buf, HEADROOM, *len).expect("fits");
                assert_eq!(process(tables, &local, &mut frame), want, "{}", path.name());
            }
        }
        for (mode, batched) in [("one by one", false), ("batches of 32", true)] {
            let (mut s, mut l, mut r) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let a = small.sample(&small_tables, &local, batched);
                let b = large.sample(&large_tables, &local, batched);
                s.push(a);
                l.push(b);
                r.push(b / a);
            }
            let (s, l, r) = (median(&mut s), median(&mut l), median(&mut r));
            println!("| {} | {mode} | {s:.1} | {l:.1} | {r:.2} |", path.name());
            json.push(format!(
                "\"{}{}\":{{\"small_ns\":{s:.2},\"large_ns\":{l:.2},\"ratio\":{r:.3}}}",
                path.name(),
                if batched { "_batched" } else { "" }
            ));
        }
    }
    println!();
    println!("{{{}}}", json.join(","));
}
