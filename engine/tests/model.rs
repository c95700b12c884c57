//! Reference-model tests of whole relays: random trees between in-memory stores with
//! random capabilities, through random faults, checked against the model (the source
//! itself) after each run. mountpoint-s3's `tests/reftests/` are the model.
//!
//! Each case runs on both drivers (io_uring where the kernel allows it, and epoll),
//! three relays each: one through the faults, then two without. Afterwards:
//!
//! - the report's counts add up (copied + skipped + failed = total; bytes copied are
//!   the sizes of what was copied; every failure is listed);
//! - every object the report counts as copied is at the destination byte for byte,
//!   with its provenance and the metadata the destination keeps;
//! - an object reported failed is as it was before the relay (absent, or the stale
//!   object the destination held), or whole and equal to the source (the store did
//!   it, but its answer was lost): never partial, never corrupt;
//! - no upload session is left open, but for those whose beginning's answer was lost
//!   (the relay never learnt their id);
//! - nothing else at the destination changed;
//! - when every fault that fired was one the relay can get through, nothing failed;
//! - the second relay copies exactly what the first left different, and the third
//!   copies nothing, skips everything and writes nothing.
//!
//! Bounded: `LAMINAR_MODEL_CASES` cases (16 by default), trees of at most 10 objects
//! of at most 3 MiB, at most 4 fault rules per side, each hitting at most 2 calls.

// The engine's errors are large and cold, as in the engine itself.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use laminar_engine::backend::faulty::{Chaos, Fault, FaultOp, Faults, Faulty, Fired, Rule};
use laminar_engine::backend::mem::{MemBackend, MemOptions};
use laminar_engine::backend::{HashFamily, ListOrder, ObjectMeta, UploadMode};
use laminar_engine::checksum::ChecksumAlgo;
use laminar_engine::relay::{relay, Location, Progress, RelayOptions, Report};
use laminar_engine::runtime::DriverChoice;
use proptest::prelude::*;
use proptest::sample::{select, Index};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PART_BYTES: u64 = 256 << 10;
const CUTOFF_BYTES: u64 = 512 << 10;

/// One source object: its size and the seed of its bytes.
#[derive(Debug, Clone)]
struct Obj {
    size: usize,
    seed: u64,
    content_type: Option<&'static str>,
}

impl Obj {
    fn bytes(&self) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut bytes = vec![0u8; self.size];
        rng.fill(&mut bytes);
        bytes
    }
}

/// What one side's store declares.
#[derive(Debug, Clone)]
struct Side {
    ordered: bool,
    alignment_bytes: u64,
    min_part_bytes: u64,
    max_parts: u32,
    max_single_put_bytes: u64,
    page_entries: usize,
    /// Lists in no order (shuffled by this seed), as Dropbox and Drive do.
    unordered: Option<u64>,
    /// Case-insensitive, as Dropbox is (the keys generated are all lower case, so the
    /// model is the same; the relay then matches listings folded).
    case_insensitive: bool,
    reports_etag: bool,
    reports_crc: bool,
    /// The ETag is the MD5 of the MD5s of parts of this size (an S3 object uploaded in
    /// parts), which the relay checks through the layout the store gives.
    etag_parts_bytes: Option<u64>,
    list_provenance: bool,
    verifies: Vec<ChecksumAlgo>,
    streams: bool,
    content_headers: bool,
    server_side_copy: bool,
}

impl Side {
    fn options(&self) -> MemOptions {
        let upload = if self.ordered { UploadMode::Ordered } else { UploadMode::Parallel };
        let mut o = MemOptions { upload, ..MemOptions::default() };
        o.parts.part_alignment_bytes = self.alignment_bytes;
        o.parts.min_part_bytes = self.min_part_bytes;
        o.parts.max_parts = self.max_parts;
        o.parts.max_single_put_bytes = self.max_single_put_bytes;
        o.case_sensitive = !self.case_insensitive;
        match self.unordered {
            Some(seed) => {
                o.list_order = ListOrder::Unordered;
                o.list_seed = seed;
            }
            None => o.list_order = ListOrder::Sorted,
        }
        o.list_page_entries = self.page_entries;
        o.list_provenance = self.list_provenance;
        o.reports = [(self.reports_etag, HashFamily::EtagMd5), (self.reports_crc, HashFamily::Crc32c)]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
        o.etag_parts_bytes = self.etag_parts_bytes;
        o.verifies = self.verifies.clone();
        o.streams = self.streams && !self.ordered;
        o.metadata.content_headers = self.content_headers;
        o.server_side_copy = self.server_side_copy;
        o
    }

    /// Whether the store verifies the relay's checksum, so a part corrupted after the
    /// relay hashed it is refused.
    fn verifies_relay_checksum(&self) -> bool {
        self.verifies.contains(&ChecksumAlgo::Crc32c)
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// Keys relative to the prefixes.
    tree: BTreeMap<String, Obj>,
    /// Keys whose destination holds a stale object before the relay.
    stale: Vec<String>,
    src: Side,
    dst: Side,
    /// Source and destination are one store (prefixes `src/` and `dst/`), which
    /// copies server-side.
    same_store: bool,
    src_faults: Faults,
    dst_faults: Faults,
}

fn side() -> impl Strategy<Value = Side> {
    let parts = (
        any::<bool>(),
        select(vec![1u64, 64 << 10, 96 << 10]),
        select(vec![1u64, 128 << 10, 320 << 10]),
        select(vec![10_000u32, 4]),
        select(vec![u64::MAX, 128 << 10]),
    );
    let hashes = (1usize..5, any::<bool>(), any::<bool>(), any::<bool>());
    let verifies = select(vec![
        vec![],
        vec![ChecksumAlgo::Crc32c],
        vec![ChecksumAlgo::Md5],
        vec![ChecksumAlgo::Crc32c, ChecksumAlgo::Md5, ChecksumAlgo::Sha256],
    ]);
    let listing = (prop::option::weighted(0.4, any::<u64>()), prop::bool::weighted(0.3));
    let etag_parts = select(vec![None, None, Some(64u64 << 10), Some(200 << 10)]);
    (parts, hashes, verifies, (any::<bool>(), etag_parts), any::<bool>(), listing).prop_map(
        |(
            (ordered, alignment_bytes, min_part_bytes, max_parts, max_single_put_bytes),
            (page_entries, reports_etag, reports_crc, list_provenance),
            verifies,
            (streams, etag_parts_bytes),
            content_headers,
            (unordered, case_insensitive),
        )| Side {
            ordered,
            alignment_bytes,
            min_part_bytes,
            max_parts,
            max_single_put_bytes,
            page_entries,
            unordered,
            case_insensitive,
            reports_etag,
            reports_crc,
            etag_parts_bytes,
            list_provenance,
            verifies,
            streams,
            content_headers,
            server_side_copy: false,
        },
    )
}

/// Keys with `/`, a few of them directory markers (ending in `/`, zero bytes).
fn key() -> impl Strategy<Value = String> {
    let segments = prop::collection::vec(select(vec!["a", "b", "c d", "é", "x+y", "0"]), 1..=3);
    (segments, prop::bool::weighted(0.1)).prop_map(|(s, marker)| s.join("/") + if marker { "/" } else { "" })
}

fn obj() -> impl Strategy<Value = Obj> {
    let size = prop_oneof![
        6 => 0..16 * KIB,
        3 => 16 * KIB..CUTOFF_BYTES as usize,
        2 => CUTOFF_BYTES as usize..3 * MIB,
    ];
    (size, any::<u64>(), select(vec![None, Some("text/plain"), Some("application/octet-stream")]))
        .prop_map(|(size, seed, content_type)| Obj { size, seed, content_type })
}

/// The faults an operation can meet on the source.
fn src_faults(op: FaultOp, src: &Side) -> Vec<Fault> {
    let mut faults =
        vec![Fault::Reset, Fault::AnswerLost, Fault::ServerError, Fault::Throttle, Fault::ExpiredCredential];
    if matches!(op, FaultOp::Read | FaultOp::ReadStream) {
        faults.extend([Fault::ShortRead, Fault::ShortEnd]);
    }
    if op == FaultOp::Read {
        // A byte flipped before the relay hashes it is caught only against a checksum
        // the source reports, or its ETag of parts.
        if src.reports_crc || (src.reports_etag && src.etag_parts_bytes.is_some()) {
            faults.push(Fault::Corrupt);
        }
    }
    faults
}

/// The faults an operation can meet on the destination.
fn dst_faults(op: FaultOp, dst: &Side) -> Vec<Fault> {
    let mut faults =
        vec![Fault::Reset, Fault::AnswerLost, Fault::ServerError, Fault::Throttle, Fault::ExpiredCredential];
    if op == FaultOp::PutStream {
        faults.push(Fault::LosePart);
    }
    if op == FaultOp::Put {
        faults.extend([Fault::LosePart, Fault::DuplicatePart]);
        // A byte flipped after the relay hashed it is caught only by a store that
        // verifies the relay's checksum.
        if dst.verifies_relay_checksum() {
            faults.push(Fault::Corrupt);
        }
        if dst.ordered {
            faults.push(Fault::CommitShort);
        }
    }
    faults
}

/// (operation, nth call, calls hit, fault, the key whose calls count, if one).
type RuleSeed = (Index, u64, u64, Index, Option<Index>);

fn rule_seeds() -> impl Strategy<Value = Vec<RuleSeed>> {
    let on_key = prop::option::weighted(0.3, any::<Index>());
    prop::collection::vec((any::<Index>(), 1u64..=6, 1u64..=2, any::<Index>(), on_key), 0..=4)
}

/// Seeded faults: the seed, if the side has any.
fn chaos_seed() -> impl Strategy<Value = Option<u64>> {
    prop::option::weighted(0.25, any::<u64>())
}

/// Every fault that can happen to the operations of a side, each at 2% a call.
fn chaos(seed: u64, ops: &[FaultOp], faults_of: impl Fn(FaultOp) -> Vec<Fault>) -> Chaos {
    let mut rates: Vec<(Fault, f64)> = Vec::new();
    for fault in ops.iter().flat_map(|op| faults_of(*op)) {
        if !rates.iter().any(|(f, _)| *f == fault) {
            rates.push((fault, 0.02));
        }
    }
    Chaos { seed, rates, ops: ops.to_vec(), max_faults: 3 }
}

const SRC_OPS: [FaultOp; 4] = [FaultOp::List, FaultOp::Stat, FaultOp::Read, FaultOp::ReadStream];
const DST_OPS: [FaultOp; 13] = [
    FaultOp::List,
    FaultOp::Stat,
    FaultOp::Begin,
    FaultOp::Put,
    FaultOp::Put,
    FaultOp::Put,
    FaultOp::PutStream,
    FaultOp::Committed,
    FaultOp::Finish,
    FaultOp::Abort,
    FaultOp::DirMarker,
    FaultOp::CopyObject,
    FaultOp::CopyPart,
];

fn rules(
    seeds: Vec<RuleSeed>,
    ops: &[FaultOp],
    keys: &[String],
    faults_of: impl Fn(FaultOp) -> Vec<Fault>,
) -> Vec<Rule> {
    seeds
        .into_iter()
        .map(|(op, nth, count, fault, key)| {
            let op = *op.get(ops);
            let fault = *fault.get(&faults_of(op));
            let rule = match key {
                Some(key) => Rule::on_key(op, key.get(keys).as_str(), nth.min(3), fault),
                None => Rule::nth(op, nth, fault),
            };
            rule.times(count)
        })
        .collect()
}

fn case() -> impl Strategy<Value = Case> {
    let tree = prop::collection::btree_map(key(), obj(), 1..=10).prop_map(|mut tree| {
        for (key, obj) in tree.iter_mut() {
            if key.ends_with('/') {
                obj.size = 0;
            }
        }
        tree
    });
    let faults = (rule_seeds(), rule_seeds(), chaos_seed(), chaos_seed());
    (tree, prop::collection::vec(any::<Index>(), 0..3), side(), side(), prop::bool::weighted(0.15), faults).prop_map(
        |(tree, stale, src, dst, same_store, (src_seeds, dst_seeds, src_chaos, dst_chaos))| {
            let keys: Vec<&String> = tree.keys().collect();
            let mut stale: Vec<String> = stale.iter().map(|i| i.get(&keys).to_string()).collect();
            stale.sort();
            stale.dedup();
            // One store: the source's options, copying server-side.
            let src = Side { server_side_copy: same_store, ..src };
            let dst = if same_store { src.clone() } else { dst };
            let src_keys: Vec<String> = keys.iter().map(|k| format!("src/{k}")).collect();
            let dst_keys: Vec<String> = keys.iter().map(|k| format!("dst/{k}")).collect();
            let src_fault_of = |op| src_faults(op, &src);
            let dst_fault_of = |op| dst_faults(op, &dst);
            let mut src_faults = Faults::script(rules(src_seeds, &SRC_OPS, &src_keys, src_fault_of));
            src_faults.chaos = src_chaos.map(|seed| chaos(seed, &SRC_OPS, src_fault_of));
            let mut dst_faults = Faults::script(rules(dst_seeds, &DST_OPS, &dst_keys, dst_fault_of));
            dst_faults.chaos = dst_chaos.map(|seed| chaos(seed, &DST_OPS, dst_fault_of));
            Case { tree, stale, src, dst, same_store, src_faults, dst_faults }
        },
    )
}

fn options(driver: DriverChoice) -> RelayOptions {
    RelayOptions {
        workers: Some(2),
        ram_buffer_bytes: 8 << 20,
        chunk_bytes: 64 << 10,
        part_size_bytes: PART_BYTES,
        multipart_cutoff_bytes: CUTOFF_BYTES,
        transfers: 8,
        retries: 6,
        driver,
        ..RelayOptions::default()
    }
}

type Store = Arc<dyn laminar_engine::backend::Backend>;

fn run(src: Store, dst: Store, driver: DriverChoice) -> laminar_engine::Result<Report> {
    let src = Location::new(src, "src/", "mem:src/".into());
    let dst = Location::new(dst, "dst/", "mem:dst/".into());
    relay(src, dst, options(driver), Arc::new(Progress::default()), &mut |_| {})
}

/// A stale destination object: the source's bytes, changed.
fn stale_bytes(source: &[u8]) -> Vec<u8> {
    let mut b = source.to_vec();
    match b.first_mut() {
        Some(first) => *first ^= 0xff,
        None => b.push(0),
    }
    b
}

/// Whether every fault that fired is one a relay gets through, with its retries.
fn survivable(case: &Case, fired: &[Fired], dst_fired: &[Fired]) -> bool {
    let large = |key: &str| {
        let rel = key.strip_prefix("src/").or_else(|| key.strip_prefix("dst/")).unwrap_or(key);
        case.tree
            .get(rel)
            .is_some_and(|o| o.size as u64 >= CUTOFF_BYTES.min(case.dst.max_single_put_bytes.saturating_add(1)))
    };
    // No retry loop can meet more faults than it has retries.
    let few = fired.len() <= options(DriverChoice::Epoll).retries as usize;
    let each = fired.iter().all(|f| {
        let on_dst = dst_fired.contains(f);
        match (on_dst, f.op, f.fault) {
            // Parts are read in ranges, which carry no checksum: the object is checked
            // against the source's whole-object checksum at the end, and fails.
            (false, _, Fault::Corrupt) => !large(&f.key),
            // The store completed the upload; asked again, it no longer knows the
            // session (a real S3 answers NoSuchUpload too).
            (true, FaultOp::Finish, Fault::AnswerLost) => !large(&f.key),
            // Completing names a part the store never got.
            (true, _, Fault::LosePart) => case.dst.ordered,
            _ => true,
        }
    });
    few && each
}

/// One line on what a case did, with `LAMINAR_MODEL_STATS=1`.
fn stats(case: &Case, driver: DriverChoice, report: Option<&Report>, fired: &[Fired]) {
    if std::env::var_os("LAMINAR_MODEL_STATS").is_none() {
        return;
    }
    let faults: Vec<String> = fired.iter().map(|f| format!("{:?}:{:?}", f.op, f.fault)).collect();
    let failures: Vec<String> = report.map_or(vec!["relay failed".into()], |r| {
        r.failures.iter().map(|f| format!("{}: {}", f.key, f.reason)).collect()
    });
    let large = case.tree.values().filter(|o| o.size as u64 >= CUTOFF_BYTES).count();
    eprintln!(
        "model: {driver:?} {} objects ({large} large) ordered={} same_store={} faults={faults:?} failures={failures:?}",
        case.tree.len(),
        case.dst.ordered,
        case.same_store,
    );
}

fn check_case(case: &Case, driver: DriverChoice) -> Result<(), TestCaseError> {
    let src = MemBackend::new(case.src.options());
    let dst = if case.same_store { src.clone() } else { MemBackend::new(case.dst.options()) };
    let mut before = BTreeMap::new();
    for (rel, obj) in &case.tree {
        let meta = ObjectMeta { content_type: obj.content_type.map(str::to_string), ..ObjectMeta::default() };
        src.insert_with(&format!("src/{rel}"), obj.bytes(), meta, None);
    }
    for rel in &case.stale {
        let bytes = stale_bytes(&case.tree[rel].bytes());
        dst.insert(&format!("dst/{rel}"), bytes.clone());
        before.insert(format!("dst/{rel}"), bytes);
    }
    let source_before: BTreeMap<String, Vec<u8>> =
        src.objects().into_iter().filter(|(k, _)| k.starts_with("src/")).collect();
    let fsrc = Arc::new(Faulty::new(src.clone(), case.src_faults.clone()));
    let fdst = Arc::new(Faulty::new(dst.clone(), case.dst_faults.clone()));
    let result = run(fsrc.clone(), fdst.clone(), driver);
    let dst_fired = fdst.fired();
    let fired: Vec<Fired> = fsrc.fired().into_iter().chain(dst_fired.iter().cloned()).collect();
    stats(case, driver, result.as_ref().ok(), &fired);
    let why = || format!("{driver:?}: result {result:#?}\nfired {fired:#?}");
    let total = case.tree.len() as u64;
    let failed: std::collections::BTreeSet<String> = match &result {
        Ok(report) => {
            // The report's counts add up.
            prop_assert_eq!(report.objects_total, total, "{}", why());
            prop_assert_eq!(report.objects_copied + report.objects_skipped + report.objects_failed, total, "{}", why());
            prop_assert_eq!(report.objects_skipped, 0, "every destination object was stale: {}", why());
            prop_assert_eq!(report.failures.len() as u64, report.objects_failed, "{}", why());
            let failed: std::collections::BTreeSet<String> =
                report.failures.iter().map(|f| f.key.strip_prefix("src/").expect("a source key").to_string()).collect();
            prop_assert_eq!(failed.len(), report.failures.len(), "an object failed twice: {}", why());
            let copied_bytes: u64 =
                case.tree.iter().filter(|(rel, _)| !failed.contains(*rel)).map(|(_, o)| o.size as u64).sum();
            prop_assert_eq!(report.bytes_copied, copied_bytes, "{}", why());
            if survivable(case, &fired, &dst_fired) {
                prop_assert_eq!(report.objects_failed, 0, "only survivable faults fired: {}", why());
            }
            failed
        }
        // A relay stops when its listing fails for good: only after more faults than
        // retries. Then no object counts as copied.
        Err(_) => {
            prop_assert!(fired.len() > options(driver).retries as usize, "{}", why());
            case.tree.keys().cloned().collect()
        }
    };

    // Each object is as the model says.
    let mut left_different = 0;
    for (rel, obj) in &case.tree {
        let key = format!("dst/{rel}");
        let held = dst.object(&key);
        let equal = held.as_ref().is_some_and(|h| *h.bytes == obj.bytes() && h.provenance.is_some());
        if failed.contains(rel) {
            let unchanged = held.as_ref().map(|h| h.bytes.to_vec()) == before.get(&key).cloned();
            prop_assert!(unchanged || equal, "{rel:?} failed, and was left partial or corrupt: {}", why());
        } else {
            prop_assert!(equal, "{rel:?} was reported copied but is not the source's: {}", why());
            let held = held.expect("checked above");
            // Directory markers carry only their provenance.
            let kept = case.src.content_headers && case.dst.content_headers && !rel.ends_with('/');
            let content_type = obj.content_type.filter(|_| kept).map(str::to_string);
            prop_assert_eq!(&held.meta.content_type, &content_type, "{:?}: {}", rel, why());
        }
        if !equal {
            left_different += 1;
        }
    }
    let expected_keys: Vec<String> = case.tree.keys().map(|rel| format!("dst/{rel}")).collect();
    for key in dst.objects().keys().filter(|k| !k.starts_with("src/")) {
        prop_assert!(expected_keys.contains(key), "{key:?} appeared at the destination: {}", why());
    }
    let orphans = dst_fired.iter().filter(|f| f.op == FaultOp::Begin && f.fault == Fault::AnswerLost).count();
    let open_after_first = dst.open_sessions();
    prop_assert!(
        open_after_first <= orphans,
        "{open_after_first} upload sessions left open ({orphans} begun with their answer lost): {}",
        why()
    );

    // Without faults, a second relay copies exactly what the first left different,
    // and a third copies nothing.
    let again = run(Arc::new(src.clone()), Arc::new(dst.clone()), driver).expect("a relay without faults runs");
    prop_assert_eq!(again.objects_failed, 0, "{:#?}", again);
    prop_assert_eq!(again.objects_copied, left_different, "{:#?}", again);
    prop_assert_eq!(again.objects_skipped, total - left_different, "{:#?}", again);
    for (rel, obj) in &case.tree {
        let held = dst.object(&format!("dst/{rel}")).map(|h| h.bytes.to_vec());
        prop_assert!(held == Some(obj.bytes()), "{rel:?} differs after the second relay");
    }
    let writes = |dst: &MemBackend| {
        let r = dst.requests();
        ["put", "upload-part", "create-multipart", "complete-multipart", "copy", "copy-part"]
            .iter()
            .map(|k| r.get(k).copied().unwrap_or(0))
            .sum::<u64>()
    };
    let writes_before = writes(&dst);
    let third = run(Arc::new(src.clone()), Arc::new(dst.clone()), driver).expect("a relay without faults runs");
    prop_assert_eq!((third.objects_copied, third.objects_skipped, third.objects_failed), (0, total, 0), "{:#?}", third);
    prop_assert_eq!(writes(&dst), writes_before, "a relay with nothing to copy wrote");
    prop_assert_eq!(dst.open_sessions(), open_after_first, "relays without faults left sessions open");
    let source_after: BTreeMap<String, Vec<u8>> =
        src.objects().into_iter().filter(|(k, _)| k.starts_with("src/")).collect();
    prop_assert!(source_after == source_before, "the source changed");
    Ok(())
}

fn drivers() -> Vec<DriverChoice> {
    let mut drivers = vec![DriverChoice::Epoll];
    match laminar_engine::runtime::probe_io_uring() {
        None => drivers.insert(0, DriverChoice::IoUring),
        Some(why) => eprintln!("model: io_uring is unavailable ({why}); running the cases on epoll only"),
    }
    drivers
}

fn cases() -> u32 {
    std::env::var("LAMINAR_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Each case runs six relays: keep shrinking short.
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn relays_through_faults_match_the_model(case in case()) {
        for driver in drivers() {
            check_case(&case, driver)?;
        }
    }
}

/// An ordered stream that goes back into a part reads the bytes the store holds (to
/// hash them) and then the rest; streams doing so at once on one worker must not hold
/// pool chunks while they wait for more, or they wait on each other for ever. Four
/// 3 MiB objects in 1 MiB parts on one worker whose pool holds 23 chunks of 64 KiB
/// (two half parts held and a third wanted would not fit), the store losing half of
/// a dozen parts, both stores slow enough that the streams step back together.
#[test]
fn ordered_streams_stepping_back_do_not_wait_on_each_other_for_memory() {
    let latency = std::time::Duration::from_millis(2);
    let src = MemBackend::new(MemOptions { latency, ..MemOptions::default() });
    let bytes: Vec<Vec<u8>> = (0..4u64).map(|i| Obj { size: 3 * MIB, seed: i, content_type: None }.bytes()).collect();
    for (i, b) in bytes.iter().enumerate() {
        src.insert(&format!("src/{i}"), b.clone());
    }
    let mut ordered = MemOptions::ordered(64 << 10);
    ordered.parts.max_parts = 4;
    ordered.latency = latency;
    let dst = MemBackend::new(ordered);
    let rules = vec![Rule::nth(FaultOp::Put, 1, Fault::CommitShort).times(12)];
    let faulty: Store = Arc::new(Faulty::new(dst.clone(), Faults::script(rules)));
    let (tx, rx) = std::sync::mpsc::channel();
    let source: Store = Arc::new(src);
    std::thread::spawn(move || {
        let opts = RelayOptions { workers: Some(1), ram_buffer_bytes: 23 << 16, ..options(DriverChoice::Epoll) };
        let src = Location::new(source, "src/", "mem:src/".into());
        let dst = Location::new(faulty, "dst/", "mem:dst/".into());
        let _ = tx.send(relay(src, dst, opts, Arc::new(Progress::default()), &mut |_| {}));
    });
    // Far more than the relay needs; a deadlock never ends.
    let report = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the relay ends").expect("it runs");
    assert_eq!((report.objects_copied, report.objects_failed), (4, 0), "{report:#?}");
    for (i, b) in bytes.iter().enumerate() {
        assert_eq!(dst.objects().get(&format!("dst/{i}")), Some(b));
    }
}

/// Runs one relay from `src/` to `dst/` on every driver, each time into a fresh
/// destination made by `dst`; returns the last report and destination.
fn relay_each_driver(src: &MemBackend, dst: impl Fn() -> (Store, MemBackend), check: impl Fn(&Report, &MemBackend)) {
    for driver in drivers() {
        let (faulty, inner) = dst();
        let report = run(Arc::new(src.clone()), faulty, driver).expect("the relay runs");
        check(&report, &inner);
    }
}

/// An object below the multipart cutoff but over the most the destination takes in
/// one request goes in parts (it used to be refused with EntityTooLarge).
#[test]
fn objects_over_the_single_put_limit_go_in_parts() {
    let src = MemBackend::default();
    let bytes = Obj { size: 200 * KIB, seed: 1, content_type: None }.bytes();
    src.insert("src/k", bytes.clone());
    let dst = || {
        let mut options = MemOptions::default();
        options.parts.max_single_put_bytes = 100 * KIB as u64;
        let mem = MemBackend::new(options);
        (Arc::new(mem.clone()) as Store, mem)
    };
    relay_each_driver(&src, dst, |report, dst| {
        assert_eq!(report.objects_copied, 1, "{report:#?}");
        assert_eq!(dst.objects().get("dst/k"), Some(&bytes));
        assert_eq!((dst.request_count("put"), dst.request_count("complete-multipart")), (0, 1));
    });
}

/// An ordered store that acknowledges the last part and keeps less of it (or none):
/// no later part would find out, so the stream asks before finishing, and sends the
/// rest again (the object used to fail at the finish, IncompleteUpload).
#[test]
fn an_ordered_stream_sends_again_what_the_store_lost_of_its_last_part() {
    let src = MemBackend::default();
    let bytes = Obj { size: 600 * KIB, seed: 2, content_type: None }.bytes();
    src.insert("src/k", bytes.clone());
    for fault in [Fault::LosePart, Fault::CommitShort] {
        let dst = || {
            let mem = MemBackend::new(MemOptions::ordered(64 << 10));
            // 256 KiB parts: the third put is the last part.
            let rules = vec![Rule::nth(FaultOp::Put, 3, fault)];
            (Arc::new(Faulty::new(mem.clone(), Faults::script(rules))) as Store, mem)
        };
        relay_each_driver(&src, dst, |report, dst| {
            assert_eq!(report.objects_copied, 1, "{fault:?}: {report:#?}");
            assert_eq!(dst.objects().get("dst/k"), Some(&bytes), "{fault:?}");
            assert_eq!(dst.open_sessions(), 0);
        });
    }
}

/// An ordered store that also copies server-side (Dropbox or Drive, within one
/// account) takes a large object's bytes from the relay, as any ordered stream does:
/// they are checked against the source's checksum like any other. The relay used to
/// take the object for a server-side copy and skip the check, so bytes corrupted on
/// their way from the source completed and counted as copied; now the mismatch starts
/// the object over, and the source's bytes land.
#[test]
fn bytes_sent_to_an_ordered_store_are_checked_even_where_it_copies_server_side() {
    let options = MemOptions { server_side_copy: true, ..MemOptions::ordered(64 << 10) };
    for driver in drivers() {
        let store = MemBackend::new(options.clone());
        let bytes = Obj { size: 600 * KIB, seed: 3, content_type: None }.bytes();
        store.insert("src/k", bytes.clone());
        // The first reads include a small one for the format sniffer: corrupt a few.
        let rules = vec![Rule::on_key(FaultOp::Read, "src/k", 1, Fault::Corrupt).times(4)];
        let src: Store = Arc::new(Faulty::new(store.clone(), Faults::script(rules)));
        let report = run(src, Arc::new(store.clone()), driver).expect("the relay runs");
        // The mismatch was caught (the object was started over), and what landed is
        // the source's bytes.
        assert!(report.objects_restarted >= 1, "{report:#?}");
        assert!(report.restarted[0].reason.contains("checksum mismatch"), "{report:#?}");
        assert_eq!(report.objects_failed, 0, "{report:#?}");
        assert_eq!(store.objects().get("dst/k"), Some(&bytes));
    }
}
