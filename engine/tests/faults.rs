//! A destination that acknowledges a part and then loses it (its `committed()` is
//! behind what it acknowledged), with the `mem` store wrapped in `faulty`: the one
//! case of the fault suite (tests/it/faults.rs) that no proxy can script, because a
//! real store that answered 200 to an UploadPart keeps the part.
//!
//! - A store that takes parallel parts (S3's shape) and loses one: completing names a
//!   part it never got and is refused; the relay asks the store what it holds
//!   (`committed()`), sends the part it lacks again (read from the source again, and
//!   checked to be the bytes sent before) and completes: the object lands in the same
//!   run, and nothing is left open.
//! - A store that takes one ordered stream (Dropbox's, Drive's) and loses a part in
//!   the middle: the next part meets the offset the store really holds, the stream
//!   steps back to it, and the object lands in the same run.
//!
//! (Losing the last part of an ordered stream is in model.rs, and random losses among
//! other faults are in its reference-model cases.)

// The engine's errors are large and cold, as in the engine itself.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use laminar_engine::backend::faulty::{Fault, FaultOp, Faults, Faulty, Rule};
use laminar_engine::backend::mem::{MemBackend, MemOptions};
use laminar_engine::relay::{relay, Location, Progress, RelayOptions, Report};
use laminar_engine::runtime::DriverChoice;

const KIB: usize = 1 << 10;
const PART_BYTES: u64 = 256 << 10;
/// Five parts, the last short.
const SIZE: usize = 1024 * KIB + 5;

fn drivers() -> Vec<DriverChoice> {
    let mut drivers = vec![DriverChoice::Epoll];
    if laminar_engine::runtime::probe_io_uring().is_none() {
        drivers.insert(0, DriverChoice::IoUring);
    }
    drivers
}

fn bytes(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; SIZE];
    rng.fill(&mut bytes);
    bytes
}

type Store = Arc<dyn laminar_engine::backend::Backend>;

fn run(src: &MemBackend, dst: Store, driver: DriverChoice) -> Report {
    let opts = RelayOptions {
        workers: Some(2),
        ram_buffer_bytes: 8 << 20,
        chunk_bytes: 64 << 10,
        part_size_bytes: PART_BYTES,
        multipart_cutoff_bytes: 2 * PART_BYTES,
        retries: 4,
        driver,
        ..RelayOptions::default()
    };
    let src = Location::new(Arc::new(src.clone()), "src/", "mem:src/".into());
    let dst = Location::new(dst, "dst/", "mem:dst/".into());
    relay(src, dst, opts, Arc::new(Progress::default()), &mut |_| {}).expect("the relay runs")
}

/// A source holding `src/k`, and a parallel destination (parts sent whole, or
/// streamed) that acknowledges the second part sent (whichever it is: parts go in
/// parallel) and loses it.
fn parallel_losing_a_part(streams: bool) -> (MemBackend, MemBackend, Faulty<MemBackend>) {
    let src = MemBackend::default();
    src.insert("src/k", bytes(1));
    let dst = MemBackend::new(MemOptions { streams, ..MemOptions::default() });
    let op = if streams { FaultOp::PutStream } else { FaultOp::Put };
    let faulty = Faulty::new(dst.clone(), Faults::script(vec![Rule::nth(op, 2, Fault::LosePart)]));
    (src, dst, faulty)
}

/// When completing is refused for a part the store does not hold (S3's
/// `InvalidPart`), the relay asks the store what it holds, sends again the part it
/// lacks, and completes: the object lands in the same run, byte for byte.
#[test]
fn an_acknowledged_part_a_parallel_store_lost_is_sent_again() {
    for driver in drivers() {
        for streams in [false, true] {
            let (src, dst, faulty) = parallel_losing_a_part(streams);
            let faulty = Arc::new(faulty);
            let report = run(&src, faulty.clone(), driver);
            assert_eq!(faulty.fired().len(), 1, "{driver:?} {streams}: a part was lost");
            assert_eq!((report.objects_copied, report.objects_failed), (1, 0), "{driver:?} {streams}: {report:#?}");
            assert!(dst.objects().get("dst/k") == Some(&bytes(1)));
            assert_eq!(dst.open_sessions(), 0);
        }
    }
}

#[test]
fn a_middle_part_an_ordered_store_lost_is_sent_again_in_the_same_run() {
    for driver in drivers() {
        for fault in [Fault::LosePart, Fault::CommitShort] {
            let src = MemBackend::default();
            src.insert("src/k", bytes(2));
            let dst = MemBackend::new(MemOptions::ordered(64 << 10));
            // The second of five parts: three more follow it, at offsets past what the
            // store holds.
            let faulty = Arc::new(Faulty::new(dst.clone(), Faults::script(vec![Rule::nth(FaultOp::Put, 2, fault)])));
            let report = run(&src, faulty.clone(), driver);
            assert_eq!(faulty.fired().len(), 1, "{driver:?} {fault:?}");
            assert_eq!((report.objects_copied, report.objects_failed), (1, 0), "{driver:?} {fault:?}: {report:#?}");
            assert!(dst.objects().get("dst/k") == Some(&bytes(2)), "{driver:?} {fault:?}: the source's bytes");
            assert_eq!(dst.open_sessions(), 0, "{driver:?} {fault:?}");
        }
    }
}
