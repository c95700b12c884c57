//! Large objects are checked against the source's own hash on the way in, even when
//! it is not the relay's checksum and the object goes as parallel ranged reads: a
//! Dropbox-style content_hash is combined from the parts' 4 MiB block digests. A byte
//! changed on the way in that only the source's hash can catch fails the object, and
//! nothing of it is left at the destination. The report says which hashes checked
//! each object on each side.

use std::sync::Arc;

use laminar_engine::backend::faulty::{Fault, FaultOp, Faults, Faulty, Rule};
use laminar_engine::backend::mem::{MemBackend, MemOptions};
use laminar_engine::backend::HashFamily;
use laminar_engine::relay::{relay, Location, Progress, RelayOptions, Report};
use laminar_engine::runtime::DriverChoice;

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn run(src: Location, dst: &MemBackend) -> Report {
    let opts = RelayOptions {
        workers: Some(2),
        ram_buffer_bytes: 64 << 20,
        driver: DriverChoice::Epoll,
        part_size_bytes: 8 << 20,
        multipart_cutoff_bytes: 8 << 20,
        retries: 0,
        ..RelayOptions::default()
    };
    let dst = Location::new(Arc::new(dst.clone()), "", "mem:".into());
    relay(src, dst, opts, Arc::new(Progress::default()), &mut |_| {}).expect("the relay runs")
}

fn source() -> MemBackend {
    // Reports only Dropbox's content_hash: the relay's CRC32C is no check of the source.
    let src = MemBackend::new(MemOptions { reports: vec![HashFamily::DropboxContentHash], ..MemOptions::default() });
    src.insert("big", pattern(40 * MIB + 12_345, 1));
    src.insert("small", pattern(70_000, 2));
    src
}

#[test]
fn parts_are_checked_against_the_sources_content_hash_and_the_report_says_so() {
    let src = source();
    let dst = MemBackend::new(MemOptions::default());
    let report = run(Location::new(Arc::new(src.clone()), "", "mem:".into()), &dst);
    assert_eq!((report.objects_copied, report.objects_failed), (2, 0), "{report:#?}");
    assert_eq!(dst.objects(), src.objects());
    for c in &report.checks {
        assert_eq!(c.source, vec!["content_hash"], "{c:?}");
        assert_eq!(c.destination, vec!["crc32c"], "{c:?}");
    }
    assert_eq!(report.hashes_compared.get("source:content_hash"), Some(&2), "{:?}", report.hashes_compared);
}

#[test]
fn a_part_changed_on_the_way_in_fails_the_object_and_leaves_nothing() {
    let src = source();
    let dst = MemBackend::new(MemOptions::default());
    // The second ranged read of `big` has a byte flipped before the relay hashes it: its
    // CRC32C is of the wrong bytes, so the destination takes the part; only the
    // source's content_hash can tell.
    let faulty = Faulty::new(src.clone(), Faults::script(vec![Rule::on_key(FaultOp::Read, "big", 2, Fault::Corrupt)]));
    let report = run(Location::new(Arc::new(faulty), "", "mem:".into()), &dst);
    assert_eq!((report.objects_copied, report.objects_failed), (1, 1), "{report:#?}");
    assert_eq!(report.failures[0].key, "big");
    let reason = &report.failures[0].reason;
    assert!(reason.contains("checksum mismatch: the source reports dropbox"), "{reason}");
    let held = dst.objects();
    assert!(!held.contains_key("big"), "nothing of the object is left at the destination");
    assert_eq!(held.get("small"), src.objects().get("small"));
    assert_eq!(dst.open_sessions(), 0, "its upload was aborted");
}
