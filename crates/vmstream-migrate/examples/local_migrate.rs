//! Migrates a synthetic guest between two threads of this process over unix
//! socket pairs, and prints how long it took.
//!
//! `cargo run --release -p vmstream-migrate --example local_migrate -- [MiB] [DATA_CHANNELS] [DIRTY_PAGES_PER_S]`

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use vmstream_migrate::destination::{incoming, local};
use vmstream_migrate::link::{Cancel, Connections};
use vmstream_migrate::source::{migrate, Params};
use vmstream_migrate::stats::Stats;
use vmstream_migrate::synthetic::{Fill, Synthetic};
use vmstream_migrate::vm::Vcpus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let mib = args.first().copied().unwrap_or(1024);
    let channels = args.get(1).copied().unwrap_or(2) as usize;
    let rate = args.get(2).copied().unwrap_or(0);
    let source = Arc::new(Synthetic::new(mib << 20, Fill::Random, 4, 1));
    let dest = Arc::new(Synthetic::new(mib << 20, Fill::Zero, 4, 2));
    source.start_workload(rate);
    dest.start_workload(rate);
    source.resume()?;

    let (a, b) = UnixStream::pair()?;
    let mut src = Connections {
        main: Box::new(a),
        data: vec![],
        one_way: false,
    };
    let mut dst = Connections {
        main: Box::new(b),
        data: vec![],
        one_way: false,
    };
    for _ in 0..channels {
        let (a, b) = UnixStream::pair()?;
        src.data.push(Box::new(a));
        dst.data.push(Box::new(b));
    }
    let (svm, dvm) = (source.vm(), dest.vm());
    let loc = local(&dvm, 64, &["zstd", "lz4"])?;
    let (ss, ds) = (Stats::new(), Stats::new());
    let params = Params {
        max_bandwidth: 0,
        ..Params::default()
    };
    let t = Instant::now();
    let (s, d) = std::thread::scope(|scope| {
        let h = scope.spawn(|| incoming(&dvm, dst, &loc, &ds, &Cancel::new()));
        let s = migrate(&svm, src, &params, &ss, &Cancel::new());
        (s, h.join())
    });
    let secs = t.elapsed().as_secs_f64();
    let d = d.map_err(|_| "destination thread panicked")?;
    if s.is_err() || d.is_err() {
        return Err(format!("source: {s:?}, destination: {d:?}").into());
    }
    let st = ss.snapshot();
    println!(
        "{mib} MiB, {channels} data channels: {secs:.3} s, {:.2} GB/s, {} rounds, downtime {} ms, checksums {}",
        st.transferred as f64 / secs / 1e9,
        st.dirty_sync_count,
        st.downtime_ms.unwrap_or(0),
        if source.checksum() == dest.checksum() { "equal" } else { "DIFFER" }
    );
    Ok(())
}
