//! Relays into a case-insensitive, case-preserving destination (as Dropbox is): the
//! listings are matched by keys folded to lower case, so an object there under
//! another case is the same object, and two source keys that differ only in case are
//! reported, not written onto one object.

use std::sync::Arc;

use laminar_engine::backend::mem::{MemBackend, MemOptions};
use laminar_engine::backend::ListOrder;
use laminar_engine::relay::{relay, Location, Progress, RelayOptions, Report};
use laminar_engine::runtime::DriverChoice;

fn drivers() -> Vec<DriverChoice> {
    let mut drivers = vec![DriverChoice::Epoll];
    if laminar_engine::runtime::probe_io_uring().is_none() {
        drivers.insert(0, DriverChoice::IoUring);
    }
    drivers
}

fn run(src: &MemBackend, dst: &MemBackend, driver: DriverChoice) -> Report {
    let opts = RelayOptions { workers: Some(2), ram_buffer_bytes: 8 << 20, driver, ..RelayOptions::default() };
    let src = Location::new(Arc::new(src.clone()), "", "mem:".into());
    let dst = Location::new(Arc::new(dst.clone()), "", "mem:".into());
    relay(src, dst, opts, Arc::new(Progress::default()), &mut |_| {}).expect("the relay runs")
}

#[test]
fn keys_are_matched_folded_and_case_twins_are_reported() {
    for driver in drivers() {
        for dst_order in [ListOrder::Sorted, ListOrder::Unordered] {
            let src = MemBackend::new(MemOptions::default());
            src.insert("Photos/A.jpg", b"upper".to_vec());
            src.insert("Photos/a.jpg", b"lower".to_vec());
            src.insert("Notes/b.txt", b"notes".to_vec());
            src.insert("Zed", b"z".to_vec());
            let dst = MemBackend::new(MemOptions {
                case_sensitive: false,
                list_order: dst_order,
                list_seed: 7,
                list_provenance: false,
                ..MemOptions::default()
            });
            // Already there under another case, with the same bytes (its ETag matches).
            dst.insert("notes/B.TXT", b"notes".to_vec());

            let first = run(&src, &dst, driver);
            assert_eq!((first.objects_copied, first.objects_skipped, first.objects_failed), (2, 1, 1), "{first:#?}");
            assert_eq!(first.failures.len(), 1);
            assert_eq!(first.failures[0].key, "Photos/a.jpg", "the second in folded order is the one refused");
            assert!(first.failures[0].reason.contains("differs only in case from \"Photos/A.jpg\""), "{first:#?}");
            let held = dst.objects();
            assert_eq!(held.len(), 3, "{held:?}");
            assert_eq!(held.get("Photos/A.jpg").map(Vec::as_slice), Some(&b"upper"[..]), "the first twin, whole");
            assert_eq!(held.get("notes/B.TXT").map(Vec::as_slice), Some(&b"notes"[..]), "kept, in its own case");
            assert_eq!(held.get("Zed").map(Vec::as_slice), Some(&b"z"[..]));
            assert_eq!(dst.open_sessions(), 0);

            let again = run(&src, &dst, driver);
            assert_eq!((again.objects_copied, again.objects_skipped, again.objects_failed), (0, 3, 1), "{again:#?}");
            assert_eq!(dst.objects(), held, "a re-run changes nothing");
        }
    }
}

#[test]
fn a_case_sensitive_destination_keeps_case_twins_apart() {
    let src = MemBackend::new(MemOptions {
        case_sensitive: false,
        list_order: ListOrder::Unordered,
        ..MemOptions::default()
    });
    src.insert("Photo.jpg", b"one".to_vec());
    let dst = MemBackend::new(MemOptions::default());
    dst.insert("photo.jpg", b"another object".to_vec());
    let report = run(&src, &dst, DriverChoice::Epoll);
    assert_eq!((report.objects_copied, report.objects_failed), (1, 0), "{report:#?}");
    let held = dst.objects();
    assert_eq!(held.get("Photo.jpg").map(Vec::as_slice), Some(&b"one"[..]));
    assert_eq!(held.get("photo.jpg").map(Vec::as_slice), Some(&b"another object"[..]), "a different object, untouched");
}
