//! Micro-benchmarks of the engine's hot paths: the buffer pool, checksums (and why
//! Laminar signs `UNSIGNED-PAYLOAD` with a CRC32C rather than hashing the payload with
//! SHA-256), HTTP response-head parsing and SigV4 signing.
//!
//! Each benchmark runs a closure in batches; the result is the median batch. `Full`
//! mode runs each for about a second (`cargo bench -p laminar-bench --bench micro`);
//! `Tiny` runs a few iterations so the test suite keeps every benchmark working. Every
//! call's result goes through `black_box`, so the work can't be optimised away, and each
//! result carries a checksum of what one call computed: the same in every run and mode,
//! so a run can be checked against another.

use std::hint::black_box;
use std::time::{Duration, Instant};

use laminar_engine::backend::s3::RequestSigner;
use laminar_engine::checksum::{crc32c_combine, ChecksumAlgo, Hasher};
use laminar_engine::http::ResponseHead;
use laminar_engine::pool::BufferPool;
use serde::{Deserialize, Serialize};

/// How long to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// About a second per benchmark, median of batches.
    Full,
    /// A few iterations, for the test suite.
    Tiny,
}

/// One benchmark's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroResult {
    /// What was measured.
    pub name: String,
    /// Iterations in the median batch.
    pub iterations: u64,
    /// Seconds of the median batch.
    pub seconds: f64,
    /// Nanoseconds per iteration.
    pub ns_per_op: f64,
    /// Bytes processed per second, where the benchmark processes bytes.
    pub bytes_per_second: Option<f64>,
    /// What one call computed (a CRC, a digest folded to 64 bits, a header count...):
    /// the same in every run and mode.
    pub checksum: u64,
}

const BATCHES: usize = 5;

/// Runs `op` in batches and keeps the median; `bytes_per_op` gives a throughput.
fn bench(mode: Mode, name: &str, bytes_per_op: Option<u64>, mut op: impl FnMut() -> u64) -> MicroResult {
    // The first call warms caches and gives the checksum; inputs are fixed, so every call
    // computes the same.
    let checksum = op();
    // Size a batch to ~1/BATCHES of a second (Full) or a handful of calls (Tiny).
    let per_batch = match mode {
        Mode::Tiny => 3,
        Mode::Full => {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < Duration::from_millis(50) {
                black_box(op());
                n += 1;
            }
            (n * 4).max(1)
        }
    };
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                black_box(op());
            }
            started.elapsed().as_secs_f64()
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    let seconds = batches[BATCHES / 2];
    MicroResult {
        name: name.to_string(),
        iterations: per_batch,
        seconds,
        ns_per_op: seconds * 1e9 / per_batch as f64,
        bytes_per_second: bytes_per_op.map(|b| (b * per_batch) as f64 / seconds.max(1e-12)),
        checksum,
    }
}

fn data(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(3).fill(&mut v);
    v
}

/// Runs every micro-benchmark.
pub fn run(mode: Mode) -> Vec<MicroResult> {
    let mut out = Vec::new();
    let mib = data(1 << 20);
    let kib64 = &mib[..64 << 10];

    // Checksums over one MiB: what each byte of a relay costs to verify.
    out.push(bench(mode, "crc32c 1 MiB (crc32c crate)", Some(1 << 20), || u64::from(crc32c::crc32c(black_box(&mib)))));
    out.push(bench(mode, "crc32c 64 KiB", Some(64 << 10), || u64::from(crc32c::crc32c(black_box(kib64)))));
    for algo in [ChecksumAlgo::Crc32c, ChecksumAlgo::Crc64nvme, ChecksumAlgo::Md5, ChecksumAlgo::Sha256] {
        out.push(bench(mode, &format!("Hasher {} 1 MiB", algo.name()), Some(1 << 20), || {
            let mut h = Hasher::new(algo);
            h.update(black_box(&mib));
            h.finish().bytes.iter().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)))
        }));
    }
    out.push(bench(mode, "crc32c_combine (16 MiB part)", None, || {
        u64::from(crc32c_combine(black_box(0x1234_5678), black_box(0x9abc_def0), 16 << 20))
    }));

    // The pool: what a part pays to take and give back its chunks.
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build();
    if let Ok(mut rt) = rt {
        rt.block_on(async {
            let pool = BufferPool::new(256 << 10, 256);
            for n in [1usize, 64] {
                // The pool's futures are ready at once when chunks are free; poll them in place.
                let r = bench(mode, &format!("pool acquire+release {n} chunk(s)"), None, || {
                    let chunks = futures_ready(pool.acquire(black_box(n)));
                    let k = chunks.len() as u64;
                    drop(chunks);
                    k
                });
                out.push(r);
            }
        });
    }

    // Response heads as S3 sends them.
    let get_head = b"HTTP/1.1 206 Partial Content\r\nAccept-Ranges: bytes\r\nContent-Length: 16777216\r\nContent-Range: bytes 0-16777215/268435456\r\nContent-Type: application/octet-stream\r\nETag: \"9b2cf535f27731c974343645a3985328-16\"\r\nLast-Modified: Mon, 02 Nov 2026 00:00:00 GMT\r\nServer: SeaweedFS\r\nX-Amz-Request-Id: 1820a6b4-7c1b-4b1a-8a45-5c4f3e0b9c21\r\nDate: Mon, 23 Nov 2026 05:00:00 GMT\r\n\r\n";
    let put_head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"d41d8cd98f00b204e9800998ecf8427e\"\r\nX-Amz-Checksum-Crc32c: yZRlqg==\r\nDate: Mon, 23 Nov 2026 05:00:00 GMT\r\n\r\n";
    for (name, head) in [("parse GET 206 response head", &get_head[..]), ("parse PUT 200 response head", &put_head[..])]
    {
        out.push(bench(mode, name, Some(head.len() as u64), || match ResponseHead::parse(black_box(head)) {
            Ok(Some((h, len))) => u64::from(h.status) + len as u64,
            _ => panic!("benchmark head does not parse"),
        }));
    }

    // SigV4 of an UploadPart (UNSIGNED-PAYLOAD): paid once per request.
    let signer = RequestSigner::sample();
    out.push(bench(mode, "SigV4 sign UploadPart", None, || {
        let headers = signer.sign_upload_part(black_box("data/g1-268435456/obj-000003")).expect("signs");
        headers.iter().map(|(_, v)| v.len() as u64).sum()
    }));
    out
}

/// Polls a future that is ready at once (the pool grants free chunks immediately).
fn futures_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the pool had free chunks but did not grant them"),
    }
}

/// The Markdown table.
pub fn table(results: &[MicroResult]) -> String {
    let mut out = String::from("| benchmark | ns per op | throughput | checksum |\n|---|---|---|---|\n");
    for r in results {
        let tput = match r.bytes_per_second {
            Some(b) => format!("{:.0} MiB/s", b / f64::from(1 << 20)),
            None => format!("{:.2} M ops/s", 1e3 / r.ns_per_op),
        };
        out.push_str(&format!("| {} | {:.1} | {tput} | {:016x} |\n", r.name, r.ns_per_op, r.checksum));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_mode_runs_every_benchmark() {
        let results = run(Mode::Tiny);
        assert!(results.len() >= 11, "{results:?}");
        assert!(results.iter().all(|r| r.iterations > 0 && r.seconds >= 0.0));
        assert!(table(&results).contains("SigV4"));
    }
}
