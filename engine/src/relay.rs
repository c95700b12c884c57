//! A relay: list both sides, decide what to copy, and move it on the workers.
//!
//! The calling thread plans: it reads the source and destination listings page by
//! page and merge-joins them in key order, so memory holds a page per side whatever
//! the bucket size, and feeds a bounded lock-free queue. Worker threads, one per CPU
//! and pinned, each run their own event loop and pull objects from that queue. A
//! large object is split into parts that go on a second queue, so every worker helps
//! with it; the last part to finish completes the upload. Results come back on a
//! channel; the planner turns them into the report.

mod chain;
mod engine;
mod filter;
mod ordered;
mod parts;
mod plan;
mod progress;
mod spill;
mod throttle;
mod transfer;
mod verify;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use engine::{Engine, EngineOptions};
pub use filter::{Filter, FilterSpec};
pub use plan::Planned;
pub use progress::{ObjectProgress, Progress, Side, StoreCounts};
pub use throttle::Throttle;
pub use verify::{verify, Act, CheckOptions, Problem, ProblemKind, Unvouched, VerifyProgress, VerifyReport};

use crate::backend::Backend;
use crate::checksum::ChecksumAlgo;
use crate::error::{Error, Result};
use crate::runtime::{Driver, DriverChoice};

/// One side of a relay: a store and a prefix in it.
#[derive(Clone)]
pub struct Location {
    /// The store.
    pub backend: Arc<dyn Backend>,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// The path as given, when it could name one object (no trailing `/`): a relay
    /// from it copies just that object if it exists.
    pub object: Option<String>,
    /// How to show it to the operator (the URL as given, without secrets).
    pub display: String,
}

impl Location {
    /// A location; `prefix` is normalised so that `a/b` and `a/b/` mean the same.
    pub fn new(backend: Arc<dyn Backend>, prefix: &str, display: String) -> Location {
        let prefix = prefix.trim_start_matches('/');
        let object = (!prefix.is_empty() && !prefix.ends_with('/')).then(|| prefix.to_string());
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        Location { backend, prefix, object, display }
    }

    /// The remote's name for metric labels: `NAME` of `NAME:bucket/...`, or the
    /// scheme (`s3`, `file`) of a URL. Never a bucket, key or secret.
    pub fn remote_label(&self) -> &str {
        match self.display.split_once("://") {
            Some((scheme, _)) => scheme,
            None => self.display.split_once(':').map_or("", |(name, _)| name),
        }
    }
}

/// How a relay judges an object the destination already holds (rclone's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compare {
    /// Laminar's record of the source version the copy was made from, else
    /// comparable hashes in the listings, else a look at the destination.
    #[default]
    Version,
    /// Sizes alone: the same size is the same object (`--size-only`).
    SizeOnly,
    /// Anything there is left alone (`--ignore-existing`).
    IgnoreExisting,
    /// As `Version`, but a copy that differs is a failure, never overwritten
    /// (`--immutable`).
    Immutable,
    /// The size and the strongest hash both stores report (size alone where they
    /// share none), as rclone's `--checksum`: versions and times are not looked at.
    Checksum,
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Worker threads; None = one per allowed CPU.
    pub workers: Option<usize>,
    /// Total RAM tier, split evenly between workers.
    pub ram_buffer_bytes: u64,
    /// Size of each pool chunk.
    pub chunk_bytes: usize,
    /// Preferred part size for multipart uploads (grows for huge objects).
    pub part_size_bytes: u64,
    /// Objects of at least this size go multipart.
    pub multipart_cutoff_bytes: u64,
    /// Objects in flight across all workers.
    pub transfers: usize,
    /// Bytes per second read across the relay (`--bwlimit`), put in force at its start
    /// in [`Progress::rates`] unless an operator set them there first.
    pub bwlimit: Option<crate::rate::Bwlimit>,
    /// Requests per second to the relay's stores (`--tpslimit`), likewise.
    pub tpslimit: Option<f64>,
    /// Parts of large objects in flight across all workers; None = 4 per worker.
    /// Few large streams saturate a link; more only add load on the servers.
    pub part_streams: Option<usize>,
    /// The checksum computed in flight and sent to the destination.
    pub checksum: ChecksumAlgo,
    /// How an object the destination already holds is judged.
    pub compare: Compare,
    /// Also compute MD5 to check plain-MD5 ETags on both sides.
    pub verify_md5: bool,
    /// Fail an object that nothing at the source vouches for (no checksum, no MD5
    /// ETag, no provider hash) instead of landing it checked hop by hop only.
    pub require_end_to_end: bool,
    /// Attempts after the first, per object or part.
    pub retries: u32,
    /// Key filters.
    pub filter: Filter,
    /// Plan only.
    pub dry_run: bool,
    /// Event-loop driver.
    pub driver: DriverChoice,
    /// Use server-side copy when source and destination are the same store.
    pub server_side_copy: bool,
    /// Objects queued ahead of the workers.
    pub queue_depth: usize,
    /// Which path large objects take.
    pub route: Route,
    /// With `Route::Auto`: how long the source would sit idle in one part, waiting for
    /// a slower destination, before parts spill to the stage. Below that, spilling
    /// only adds stage writes and reads: the destination sets the pace either way.
    pub spill_wait: std::time::Duration,
    /// The NVMe stage (engine-wide: the engine a relay runs on brings its own).
    pub stage: Option<crate::stage::StageOptions>,
    /// What every connection gets (engine-wide).
    pub sockets: Option<laminar_tuning::socket::SocketPolicy>,
    /// Where uploads are recorded as they go, to be resumed after a crash; None: not
    /// recorded.
    pub journal: Option<crate::journal::Journal>,
    /// Go on with the uploads that a relay from the same source to the same
    /// destination left open (`false`: abort them and start those objects over).
    pub resume: bool,
    /// Uploads left open by a relay that died this long ago are aborted as orphans.
    pub orphan_age: std::time::Duration,
}

/// Default of [`RelayOptions::orphan_age`]: 7 days.
pub const DEFAULT_ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Which path large objects take (`--route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// RAM to RAM while the destination keeps up; through the stage when it is
    /// slower than the source, or takes one ordered stream.
    #[default]
    Auto,
    /// Always RAM to RAM.
    Ram,
    /// Always through the stage (while its quota lasts).
    Stage,
}

impl Route {
    /// Parses `auto`, `ram` or `stage`.
    pub fn parse(s: &str) -> Option<Route> {
        match s {
            "auto" => Some(Route::Auto),
            "ram" => Some(Route::Ram),
            "stage" => Some(Route::Stage),
            _ => None,
        }
    }

    /// The name [`Route::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Route::Auto => "auto",
            Route::Ram => "ram",
            Route::Stage => "stage",
        }
    }
}

/// The path one object took, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteDecision {
    /// Source key.
    pub key: String,
    /// `copy` (server-side), `ram` (small, whole), `stream` (large, RAM to RAM) or
    /// `stage` (large, through the NVMe stage).
    pub route: &'static str,
    /// Why.
    pub reason: String,
    /// The compressed format its first bytes show, if any.
    pub format: Option<&'static str>,
}

/// Route decisions kept in the report; later ones are counted only.
pub const DECISIONS_KEPT_MAX: usize = 1000;

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            workers: None,
            ram_buffer_bytes: laminar_tuning::default_ram_buffer_bytes(),
            chunk_bytes: 1 << 20,
            part_size_bytes: 16 << 20,
            multipart_cutoff_bytes: 32 << 20,
            transfers: 64,
            bwlimit: None,
            tpslimit: None,
            part_streams: None,
            checksum: ChecksumAlgo::Crc32c,
            compare: Compare::default(),
            verify_md5: true,
            require_end_to_end: false,
            retries: 4,
            filter: Filter::default(),
            dry_run: false,
            driver: DriverChoice::Auto,
            server_side_copy: true,
            queue_depth: 4096,
            route: Route::Auto,
            spill_wait: DEFAULT_SPILL_WAIT,
            stage: None,
            sockets: None,
            journal: None,
            resume: true,
            orphan_age: DEFAULT_ORPHAN_AGE,
        }
    }
}

/// One object that failed, and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// Source key.
    pub key: String,
    /// The last error, one line.
    pub reason: String,
}

/// What a relay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Objects seen at the source (after filters).
    pub objects_total: u64,
    /// Objects copied and verified.
    pub objects_copied: u64,
    /// Objects already at the destination.
    pub objects_skipped: u64,
    /// Objects that failed.
    pub objects_failed: u64,
    /// Objects the source holds in scope but has no bytes to give for (Drive: a Doc
    /// with no export format, a shortcut not followed); nothing is copied for them.
    pub objects_left_out: u64,
    /// Those objects with why, at most [`FAILURES_KEPT_MAX`].
    pub left_out: Vec<crate::backend::LeftOut>,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Bytes of skipped objects.
    pub bytes_skipped: u64,
    /// Wall time.
    pub seconds: f64,
    /// Failures, at most [`FAILURES_KEPT_MAX`].
    pub failures: Vec<Failure>,
    /// The driver the workers ran.
    pub driver: Option<Driver>,
    /// Worker threads.
    pub workers: usize,
    /// RAM tier in bytes.
    pub ram_buffer_bytes: u64,
    /// Objects that a dry run would copy.
    pub objects_planned: u64,
    /// Whether the relay was stopped before it finished (the caller set
    /// [`Progress::stop`]); objects it never began are counted in
    /// [`Report::objects_not_attempted`], not as failed.
    pub stopped: bool,
    /// Objects the relay never began because it was stopped (Ctrl-C, a cancel, a
    /// fatal error elsewhere): nothing of them is at the destination, and a run again
    /// copies them.
    pub objects_not_attempted: u64,
    /// Why they were not, from the first of them.
    pub not_attempted_because: Option<String>,
    /// Objects per route (`copy`, `ram`, `stream`, `stage`).
    pub routes: std::collections::BTreeMap<&'static str, u64>,
    /// Each object's route and why, at most [`DECISIONS_KEPT_MAX`].
    pub route_decisions: Vec<RouteDecision>,
    /// Bytes this relay wrote to the stage (each staged byte once; 0 when nothing
    /// spilled).
    pub stage_bytes_written: u64,
    /// Objects whose first bytes show an already-compressed format.
    pub objects_compressed: u64,
    /// Times a throttling store made the relay halve its objects in flight.
    pub throttle_cuts: u64,
    /// The fewest objects in flight a throttling store brought the relay down to.
    pub transfers_lowest: Option<usize>,
    /// Objects not started because the destination's allowance for the period is
    /// spent (see [`Report::waiting`]); a later run copies them.
    pub objects_deferred: u64,
    /// Bytes of the deferred objects.
    pub bytes_deferred: u64,
    /// Bytes a retried upload found the destination already held from the failed
    /// attempt (a part whose answer was lost, what a dropped resumable upload had
    /// committed), or a resumed upload from an earlier run, and did not send again.
    pub bytes_resumed: u64,
    /// Objects whose upload an earlier run began (and left open when it was killed or
    /// stopped) that this relay went on with.
    pub objects_resumed: u64,
    /// Objects read and sent again from the start because the bytes read disagreed
    /// with the source's whole-object hash (a byte corrupted on the way), or because
    /// they changed at the source while they were read (then from their new version).
    pub objects_restarted: u64,
    /// Which objects were started over, and why.
    pub restarted: Vec<Failure>,
    /// Objects landed that nothing at the source vouched for: checked hop by hop (each
    /// read and each upload by its own checksum), not end to end. `--require-end-to-end`
    /// fails them instead.
    pub objects_hop_by_hop: u64,
    /// Objects checked by each hash, by side: `source:content_hash`,
    /// `destination:md5`, ... (`source:none` where the source reports no hash the
    /// relay could compare).
    pub hashes_compared: std::collections::BTreeMap<String, u64>,
    /// Which hashes checked each copied object on each side, for the first
    /// [`DECISIONS_KEPT_MAX`] objects.
    pub checks: Vec<ObjectChecks>,
    /// Set when the relay ended early because the destination's allowance for a
    /// period is spent (Google Drive's daily upload limit): uploads in progress
    /// finished, nothing new started, and the rest can go on at `retry_at_unix_s`.
    pub waiting: Option<Waiting>,
}

/// Which hashes checked one object's bytes: on the way in, those the source reported
/// that were computed over the bytes read; on the way out, those the destination (or
/// its backend, after the upload) compared with the bytes sent. Names are
/// [`check_name`]s.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectChecks {
    /// Source key.
    pub key: String,
    /// Compared with what the source reports.
    pub source: Vec<&'static str>,
    /// Compared by or with the destination.
    pub destination: Vec<&'static str>,
    /// `end-to-end` when the bytes were checked against what the source vouches for,
    /// `hop-by-hop` when the source vouches for nothing (a multipart upload by another
    /// tool, with no checksum): then each hop's checksum was checked, not the object.
    pub verified: &'static str,
}

/// A checksum's name in reports: `crc32c`, `md5`, `sha256`, `content_hash` (Dropbox),
/// and `etag-md5` for an S3 ETag that is the MD5 of the object.
pub fn check_name(algo: crate::checksum::ChecksumAlgo) -> &'static str {
    match algo {
        crate::checksum::ChecksumAlgo::DropboxContentHash => "content_hash",
        other => other.name(),
    }
}

/// Why a relay stopped short and when it can go on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Waiting {
    /// The store's error, with its advice.
    pub reason: String,
    /// When the allowance resets, as far as the store says (Unix seconds).
    pub retry_at_unix_s: u64,
}

/// Default of [`RelayOptions::spill_wait`]: well under the idle timeouts at which
/// stores drop a stalled download, well over a part's time on a healthy path.
pub const DEFAULT_SPILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Score at which the destination counts as slower than the source.
pub(crate) const DST_BOUND_SCORE_SPILL: i32 = 2;

/// Failures of one relay logged at WARN as they happen; later ones at DEBUG (the
/// report keeps them, and -v shows them).
const FAILURES_LOGGED_MAX: u64 = 20;

/// Failures kept in the report; later ones are counted only.
pub const FAILURES_KEPT_MAX: usize = 10_000;

/// One step of one object, sent from workers to the planner: the object's end
/// (copied, skipped, failed), or a step on the way that a journal would persist
/// (its session begun, a part committed).
pub(crate) enum Outcome {
    Copied {
        bytes: u64,
    },
    Skipped {
        bytes: u64,
    },
    Failed {
        reason: String,
        fatal: bool,
    },
    /// Never begun: the relay was stopped first (why, in `reason`).
    NotAttempted {
        reason: String,
    },
    /// Not started (or refused at its start) because the destination's allowance
    /// for the period is spent; nothing of it is at the destination.
    Deferred {
        bytes: u64,
    },
    SessionBegun(Box<crate::backend::SessionState>),
    PartCommitted(Box<crate::backend::PartRecord>),
}

impl Outcome {
    /// Whether this ends the object.
    pub(crate) fn is_end(&self) -> bool {
        matches!(
            self,
            Outcome::Copied { .. }
                | Outcome::Skipped { .. }
                | Outcome::Failed { .. }
                | Outcome::NotAttempted { .. }
                | Outcome::Deferred { .. }
        )
    }
}

pub(crate) struct ObjectResult {
    key: String,
    outcome: Outcome,
}

/// State shared by the planner and the workers of one relay: what it moves, the
/// work in hand ([`Queues`]), how it is sized ([`Policy`]), and what it measured
/// ([`Stats`]).
pub(crate) struct Shared {
    pub(crate) opts: RelayOptions,
    pub(crate) src: Location,
    pub(crate) dst: Location,
    pub(crate) progress: Arc<Progress>,
    /// The first error that stops the whole relay.
    pub(crate) fatal: std::sync::Mutex<Option<String>>,
    /// Set once the destination's allowance for a period is spent: nothing new
    /// starts; what is in flight finishes.
    pub(crate) waiting: std::sync::Mutex<Option<Waiting>>,
    /// Whether `waiting` is set, read without its lock by every object's start.
    pub(crate) quota_spent: AtomicBool,
    pub(crate) queues: Queues,
    pub(crate) policy: Policy,
    pub(crate) stats: Stats,
    /// Where this relay records its uploads, if anywhere.
    pub(crate) journal: Option<crate::journal::RelayJournal>,
    /// Uploads an earlier run left open that this relay may go on with, by source key;
    /// each is taken by its object's start, and what is left at the end is aborted.
    pub(crate) resumable: std::sync::Mutex<std::collections::HashMap<String, crate::journal::Resumable>>,
}

/// The work of a relay in hand, every queue bounded.
pub(crate) struct Queues {
    /// Objects planned and not yet taken by a worker (`--queue-depth`).
    pub(crate) objects: crossbeam_queue::ArrayQueue<Arc<transfer::ObjectJob>>,
    /// Parts of large objects ready to send. Each open large object has at most
    /// [`Policy::part_window`] parts queued or in flight at once, and at most
    /// [`Policy::large_open_max`] objects are open, so this holds at most their product.
    pub(crate) parts: crossbeam_queue::ArrayQueue<transfer::PartTask>,
    /// Parts of staged objects waiting to be read from the source into the stage;
    /// bounded like `parts` (a part is in one of the two at a time).
    pub(crate) stage_fills: crossbeam_queue::ArrayQueue<transfer::PartTask>,
    /// The engine's event: woken on every push, on the end of the listing, and on
    /// each finished object.
    pub(crate) event: Arc<event_listener::Event>,
    pub(crate) listing_done: AtomicBool,
    /// Objects handed to workers and not yet finished.
    pub(crate) outstanding: AtomicUsize,
    /// Each object's steps and end, to the planner. Unbounded: it holds at most a few
    /// steps per object in flight between two drains by the planner, which drains it
    /// whenever the object queue is full and after every page it plans.
    pub(crate) results: crossbeam_channel::Sender<ObjectResult>,
}

/// How a relay's work is sized on its engine.
pub(crate) struct Policy {
    /// Workers of the engine the relay runs on.
    pub(crate) workers: usize,
    pub(crate) pool_chunks_per_worker: usize,
    pub(crate) parts_in_flight_per_worker: usize,
    /// The engine's stage, if it has one.
    pub(crate) stage: Option<Arc<crate::stage::Stage>>,
    /// The engine's live-worker count and death flag, shared.
    pub(crate) health: Arc<engine::Health>,
}

impl Policy {
    /// Most large objects open at once: enough to keep every part stream busy (each
    /// has at least two parts), so that a tree of large objects does not open an
    /// upload, and reserve stage space, for every one of them up front.
    pub(crate) fn large_open_max(&self) -> usize {
        (self.parts_in_flight_per_worker * self.workers).max(1)
    }

    /// Most parts of one object queued or in flight at once: every part stream, so
    /// that one large object alone can keep them all busy.
    pub(crate) fn part_window(&self) -> u32 {
        (self.parts_in_flight_per_worker * self.workers).max(1) as u32
    }

    /// The bound of the part queues.
    pub(crate) fn parts_queued_max(&self) -> usize {
        self.large_open_max() * self.part_window() as usize
    }
}

/// What a relay measured and decided, for routing and the report.
#[derive(Default)]
pub(crate) struct Stats {
    /// Whether recent parts found the destination slower than the source: each
    /// streamed part moves it up (destination-bound) or down, within ±8.
    pub(crate) dst_bound_score: std::sync::atomic::AtomicI32,
    /// Bytes of this relay's parts written to the stage.
    pub(crate) stage_bytes_written: std::sync::atomic::AtomicU64,
    /// Bytes a retried upload found the destination already held from the failed
    /// attempt, and did not send again.
    pub(crate) bytes_resumed: std::sync::atomic::AtomicU64,
    /// Objects whose upload was resumed from the journal.
    pub(crate) objects_resumed: std::sync::atomic::AtomicU64,
    /// Objects landed that nothing at the source vouched for.
    pub(crate) objects_hop_by_hop: std::sync::atomic::AtomicU64,
    /// Objects started over after their whole-object check against the source failed,
    /// or because they changed at the source while read.
    pub(crate) objects_restarted: std::sync::atomic::AtomicU64,
    /// Which objects were started over and why (the first [`DECISIONS_KEPT_MAX`]).
    pub(crate) restarted: std::sync::Mutex<Vec<Failure>>,
    /// The size from which an object goes in parts (set when the listing starts), for
    /// an object started over at a new size.
    pub(crate) multipart_cutoff_bytes: std::sync::atomic::AtomicU64,
    /// Large objects begun (session begun, parts queued) and not yet finished.
    pub(crate) large_open: std::sync::atomic::AtomicUsize,
    /// Which hashes checked each object, for the report: counts by side and name, and
    /// the first [`DECISIONS_KEPT_MAX`] objects.
    pub(crate) checks: std::sync::Mutex<(std::collections::BTreeMap<String, u64>, Vec<ObjectChecks>)>,
    /// Route decisions, for the report.
    pub(crate) decisions: std::sync::Mutex<(std::collections::BTreeMap<&'static str, u64>, Vec<RouteDecision>, u64)>,
}

impl Shared {
    /// Whether the relay is stopping (fatal error, or the caller asked).
    pub(crate) fn stopped(&self) -> bool {
        // Pairs with the Release stores that set it.
        self.progress.stop.load(Ordering::Acquire)
    }

    /// Whether the destination's allowance is spent: objects not yet started wait
    /// for a later run.
    pub(crate) fn quota_spent(&self) -> bool {
        // Pairs with the Release store in `defer`.
        self.quota_spent.load(Ordering::Acquire)
    }

    /// Ends an object refused, or not started, because the destination's allowance
    /// is spent; the first such error sets when the relay can go on.
    pub(crate) fn defer(&self, key: String, bytes: u64, err: Option<&crate::Error>) {
        if let Some(err) = err {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            if waiting.is_none() {
                let after = err.retry_after().unwrap_or_default();
                let retry_at = std::time::SystemTime::now() + after;
                let retry_at_unix_s = retry_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                *waiting = Some(Waiting { reason: err.to_string(), retry_at_unix_s });
                // Pairs with the Acquire load in `quota_spent`.
                self.quota_spent.store(true, Ordering::Release);
                tracing::warn!("{err}; waiting: uploads in progress finish, nothing new starts");
            }
        }
        self.finish(key, Outcome::Deferred { bytes });
    }

    /// Objects each worker may move at once for this relay: its share of
    /// [`Progress::transfers`], read live so that a relay can be scaled while it runs.
    pub(crate) fn objects_in_flight_per_worker(&self) -> usize {
        self.objects_allowed().div_ceil(self.policy.workers)
    }

    /// Objects in flight allowed now: `--transfers`, less while a store throttles,
    /// and no more than the byte limit can feed.
    pub(crate) fn objects_allowed(&self) -> usize {
        let p = &self.progress;
        p.throttle.limit(p.transfers.load(Ordering::Relaxed)).min(p.objects_the_byte_limit_feeds())
    }

    /// Records an object's route (and logs it at TRACE, `-vv`).
    /// Records which hashes checked an object's bytes on each side.
    pub(crate) fn checked(&self, key: &str, source: Vec<&'static str>, destination: Vec<&'static str>) {
        let mut c = self.stats.checks.lock().expect("checks lock");
        for (side, names) in [("source", &source), ("destination", &destination)] {
            if names.is_empty() {
                *c.0.entry(format!("{side}:none")).or_default() += 1;
            }
            for name in names.iter() {
                *c.0.entry(format!("{side}:{name}")).or_default() += 1;
            }
        }
        if source.is_empty() {
            self.stats.objects_hop_by_hop.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if c.1.len() < DECISIONS_KEPT_MAX {
            let verified = if source.is_empty() { "hop-by-hop" } else { "end-to-end" };
            c.1.push(ObjectChecks { key: key.to_string(), source, destination, verified });
        }
    }

    /// What the destination compares for an upload whose parts carried `sent` (and,
    /// for a single put, MD5 too when `md5` was computed).
    pub(crate) fn destination_checks(
        &self,
        caps: &crate::backend::Capabilities,
        sent: crate::checksum::ChecksumAlgo,
        md5: bool,
    ) -> Vec<&'static str> {
        let mut names = Vec::new();
        if caps.verifies(sent) {
            names.push(check_name(sent));
        }
        if md5 && caps.reports.contains(&crate::backend::HashFamily::EtagMd5) {
            names.push("etag-md5");
        }
        for algo in caps.checks_after_upload {
            if !names.contains(&check_name(*algo)) {
                names.push(check_name(*algo));
            }
        }
        names
    }

    pub(crate) fn decided(&self, decision: RouteDecision) {
        tracing::trace!(
            "route {} -> {} ({}{})",
            decision.key,
            decision.route,
            decision.reason,
            decision.format.map(|f| format!(", {f} data")).unwrap_or_default()
        );
        let mut d = self.stats.decisions.lock().expect("decisions lock");
        *d.0.entry(decision.route).or_default() += 1;
        if decision.format.is_some() {
            d.2 += 1;
        }
        if d.1.len() < DECISIONS_KEPT_MAX {
            d.1.push(decision);
        }
    }

    /// Whether the destination has recently been the slower side.
    pub(crate) fn destination_slower(&self) -> bool {
        self.stats.dst_bound_score.load(Ordering::Relaxed) >= DST_BOUND_SCORE_SPILL
    }

    /// Whether the engine still has every worker (none died).
    pub(crate) fn workers_alive(&self) -> bool {
        !self.policy.health.dead.load(Ordering::Acquire)
    }

    /// Whether the listing is done and every object handed out has finished.
    pub(crate) fn finished(&self) -> bool {
        // Pair with the Release store after planning and the AcqRel decrement in `finish`.
        self.queues.listing_done.load(Ordering::Acquire) && self.queues.outstanding.load(Ordering::Acquire) == 0
    }

    /// The upload an earlier run left open for `src_key`, if the journal has one.
    pub(crate) fn take_resumable(&self, src_key: &str) -> Option<crate::journal::Resumable> {
        self.resumable.lock().expect("resumable lock").remove(src_key)
    }

    /// Reports a step on an object's way that does not end it.
    pub(crate) fn emit(&self, key: &str, outcome: Outcome) {
        assert!(!outcome.is_end(), "an object's end goes through `finish`");
        let _ = self.queues.results.send(ObjectResult { key: key.to_string(), outcome });
    }

    pub(crate) fn finish(&self, key: String, outcome: Outcome) {
        assert!(outcome.is_end(), "only an object's end finishes it");
        match &outcome {
            Outcome::Copied { bytes } => {
                tracing::debug!(key = %key, bytes, "copied");
                self.progress.objects_done.fetch_add(1, Ordering::Relaxed);
                self.progress.throttle.succeeded(self.progress.transfers.load(Ordering::Relaxed));
            }
            Outcome::Skipped { bytes } => {
                tracing::debug!(key = %key, bytes, "skipped: the destination has it");
                self.progress.objects_done.fetch_add(1, Ordering::Relaxed);
                self.progress.objects_skipped.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed { fatal, reason } => {
                let failed = self.progress.objects_failed.fetch_add(1, Ordering::Relaxed) + 1;
                // The first failures of a relay as they happen; all of them at -v.
                if failed <= FAILURES_LOGGED_MAX {
                    tracing::warn!(key = %key, "failed: {reason}");
                } else {
                    tracing::debug!(key = %key, "failed: {reason}");
                }
                if *fatal {
                    self.fatal.lock().expect("fatal lock").get_or_insert_with(|| reason.clone());
                    // Pairs with the Acquire loads in `stopped`.
                    self.progress.request_stop();
                }
            }
            Outcome::Deferred { .. } => {
                tracing::debug!(key = %key, "deferred: the destination's allowance for the period is spent");
                self.progress.objects_deferred.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::NotAttempted { reason } => {
                tracing::debug!(key = %key, "not attempted: {reason}");
                self.progress.objects_not_attempted.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::SessionBegun(_) | Outcome::PartCommitted(_) => unreachable!("asserted above"),
        }
        let _ = self.queues.results.send(ObjectResult { key, outcome });
        // Pairs with the Acquire load in the workers' exit check.
        self.queues.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.queues.event.notify(usize::MAX);
        // The throttle's limit may have climbed; waiting operations look again.
        self.progress.changed.notify(usize::MAX);
    }
}

/// Runs a relay from `src` to `dst` on an engine of its own, started for it and
/// stopped after it. `on_plan` sees each object a dry run would copy. Errors are
/// returned for problems that stop the whole relay (bad location, no server, bad
/// credentials); per-object failures are in the report.
pub fn relay(
    src: Location,
    dst: Location,
    opts: RelayOptions,
    progress: Arc<Progress>,
    on_plan: &mut dyn FnMut(&Planned),
) -> Result<Report> {
    let started = Instant::now();
    let engine = Engine::start(&EngineOptions::from(&opts))?;
    let result = engine.run(src, dst, opts, progress, on_plan);
    engine.shutdown();
    let mut report = result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Who an operation's failed attempts are counted against, in the metrics (by
/// remote) and in a relay's [`Progress::stores`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Blame<'a> {
    /// An operation outside a relay's counts (a listing page, a check, an abort): the
    /// remote label, for the metrics alone.
    Remote(&'a str),
    /// An operation on one store: its side and remote label.
    One(Side, &'a str),
    /// An operation that reads the source and writes the destination (a whole
    /// object, a part): a failure of the read is the source's, the rest the
    /// destination's.
    Both {
        /// The source's remote label.
        src: &'a str,
        /// The destination's remote label.
        dst: &'a str,
    },
}

impl Blame<'_> {
    /// The side (if counted by side) and remote label `e` is counted against.
    fn of(&self, e: &Error) -> (Option<Side>, &str) {
        match *self {
            Blame::Remote(remote) => (None, remote),
            Blame::One(side, remote) => (Some(side), remote),
            Blame::Both { src, dst } => {
                let read = matches!(e, Error::Changed { .. } | Error::Unvouched { .. })
                    || matches!(e.op(), Some("get" | "export"));
                if read {
                    (Some(Side::Source), src)
                } else {
                    (Some(Side::Destination), dst)
                }
            }
        }
    }
}

/// Runs `op` until it succeeds, fails with an error retrying can't help, `stop` is
/// set, or `retries` retries are spent; waits with exponential backoff and jitter
/// between attempts, longer when the server sent Retry-After. Failed attempts are
/// counted against `blame`'s remote in the metrics.
pub(crate) async fn retry<T, F, Fut>(retries: u32, stop: &AtomicBool, blame: Blame<'_>, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    retry_with(retries, stop, None, blame, op).await
}

/// As [`retry`], for a relay's work outside its transfers (listing, checks): failed
/// attempts are counted in the relay's [`Progress::stores`] too.
pub(crate) async fn retry_counted<T, F, Fut>(retries: u32, progress: &Progress, blame: Blame<'_>, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    retry_with(retries, &progress.stop, Some((progress, false)), blame, op).await
}

/// As [`retry_counted`], for a relay's transfers: a throttled attempt (429, 503,
/// `SlowDown`) also cuts the relay's objects in flight ([`Throttle`]); while a cut is
/// in force, each operation (and each retry of a throttled one) waits until fewer
/// operations than the limit are under way, across workers, parts included. A
/// throttled attempt counts against `retries` only once the limit is down to one,
/// or after [`throttle::free_attempts`] of them, so that the objects begun before
/// the store pushed back are not failed for it.
pub(crate) async fn retry_throttled<T, F, Fut>(retries: u32, progress: &Progress, blame: Blame<'_>, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    retry_with(retries, &progress.stop, Some((progress, true)), blame, op).await
}

/// The retry loop; `relay` is the relay counting the failures and whether its
/// throttle applies.
async fn retry_with<T, F, Fut>(
    retries: u32,
    stop: &AtomicBool,
    relay: Option<(&Progress, bool)>,
    blame: Blame<'_>,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let throttle = relay.and_then(|(p, throttled)| throttled.then_some(p));
    let record = |e: &Error, will_retry: bool| {
        let (side, remote) = blame.of(e);
        crate::metrics::record_error(e, will_retry, remote);
        if let (Some((p, _)), Some(side)) = (relay, side) {
            p.store(side).record(e, will_retry);
        }
    };
    // `attempt` counts against `retries`; `tries` sets the backoff; `free` counts the
    // throttled attempts that were not counted.
    let (mut attempt, mut tries, mut free_used) = (0, 0, 0);
    let mut reauthenticated = false;
    let mut last: Option<Error> = None;
    loop {
        let result = match throttle {
            Some(p) => {
                let Some(_operation) = Operation::begin(p, stop, last.as_ref().is_some_and(Error::is_throttle)).await
                else {
                    // Stopped while waiting for room: the last error stands.
                    let e = last.take().expect("only a retry waits");
                    record(&e, false);
                    return Err(e);
                };
                op().await
            }
            None => op().await,
        };
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // Acquire pairs with the Release stores that set `stop`.
        let retryable = e.is_retryable() && !stop.load(Ordering::Acquire);
        // A throttled attempt is free while the limit can still come down, a few times
        // per operation at most.
        let free = match throttle {
            Some(p) if retryable && e.is_throttle() => {
                let transfers = p.transfers.load(Ordering::Relaxed);
                p.throttle.throttled(transfers);
                !p.throttle.at_floor(transfers) && free_used < throttle::free_attempts(transfers)
            }
            _ => false,
        };
        if !retryable || (attempt >= retries && !free) {
            record(&e, false);
            return Err(e);
        }
        record(&e, true);
        tracing::debug!(attempt = tries + 1, "retrying: {e}");
        // An expired credential is fixed by the backend fetching a new one, not by
        // waiting: the first retry goes at once.
        let reauth_now = e.class() == crate::error::ErrorClass::Reauthenticate && !reauthenticated;
        reauthenticated |= reauth_now;
        if !reauth_now {
            let delay = crate::error::backoff_delay(
                tries,
                Duration::from_millis(100),
                Duration::from_secs(10),
                e.retry_after(),
            );
            backoff(delay, stop, throttle).await;
            // A retry of a refused attempt takes its turn under the pace too, as a new
            // start would: refused for too many a second, it is one more of them.
            if let Some(p) = throttle.filter(|_| e.is_throttle()) {
                p.throttle.wait_turn(stop).await;
            }
        }
        tries += 1;
        if free {
            free_used += 1;
        } else {
            attempt += 1;
        }
        last = Some(e);
    }
}

/// Waits out a retry's backoff, cut short when the relay stops (cancel, shutdown),
/// so that a long Retry-After never holds up a stop.
async fn backoff(delay: Duration, stop: &AtomicBool, progress: Option<&Progress>) {
    let until = std::time::Instant::now() + delay;
    match progress {
        Some(p) => loop {
            let listener = p.changed.listen();
            let left = until.saturating_duration_since(std::time::Instant::now());
            if p.stopping() || left.is_zero() {
                return;
            }
            monoio::select! {
                _ = monoio::time::sleep(left) => return,
                _ = listener => {}
            }
        },
        // No relay to wake this one (an integrity check, an abort): the stop flag is
        // looked at in steps.
        None => {
            // Acquire pairs with the Release stores that set `stop`.
            while !stop.load(Ordering::Acquire) {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                monoio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
        }
    }
}

/// One store operation of a relay's transfers, counted in [`Progress::operations`]
/// until it is dropped.
struct Operation<'a>(&'a Progress);

impl<'a> Operation<'a> {
    /// Counts an operation in. While a cut is in force, and for the retry of a
    /// throttled attempt, first waits until fewer operations than the limit are under
    /// way; None if the relay stopped meanwhile (a first attempt then goes ahead, as
    /// it would unthrottled, and meets the stop itself).
    async fn begin(p: &'a Progress, stop: &AtomicBool, throttled: bool) -> Option<Operation<'a>> {
        let ops = &p.operations;
        if !throttled && !p.throttle.cut_in_force() {
            ops.fetch_add(1, Ordering::Relaxed);
            return Some(Operation(p));
        }
        loop {
            // Listening first, so that an operation ending after the check below
            // still wakes this one.
            let listener = p.changed.listen();
            let limit = p.throttle.limit(p.transfers.load(Ordering::Relaxed));
            // Taken in one step, so that workers never overshoot the limit together.
            if ops.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_ok() {
                return Some(Operation(p));
            }
            if stop.load(Ordering::Acquire) {
                if throttled {
                    return None;
                }
                ops.fetch_add(1, Ordering::Relaxed);
                return Some(Operation(p));
            }
            listener.await;
        }
    }
}

impl Drop for Operation<'_> {
    fn drop(&mut self) {
        self.0.operations.fetch_sub(1, Ordering::Relaxed);
        // Wakes the operations waiting for room (a no-op when none listens).
        self.0.changed.notify(usize::MAX);
    }
}

/// Reads one page of a listing after another until `f` has seen every entry.
/// Used by `laminar ls`.
/// Lists the objects under a location that pass `filter`, each with its key relative
/// to the location's prefix, in the store's listing order.
pub fn list(
    location: &Location,
    driver: DriverChoice,
    filter: &Filter,
    f: &mut dyn FnMut(&str, &crate::backend::Entry),
) -> Result<()> {
    let (driver, _) = crate::runtime::select(driver).map_err(Error::Usage)?;
    crate::runtime::block_on(driver, async {
        let ctx = crate::backend::WorkerCtx::new(crate::http::HttpClient::default());
        let source = location.backend.open_source(&ctx)?;
        source.check(false).await?;
        let mut token = None;
        loop {
            let page = source.list(&location.prefix, token).await?;
            for entry in &page.entries {
                let Some(rel) = entry.key.get(location.prefix.len()..).filter(|r| !r.is_empty()) else { continue };
                if filter.accepts_entry(rel, entry) {
                    f(rel, entry);
                }
            }
            token = page.next;
            if token.is_none() {
                return Ok(());
            }
        }
    })
    .map_err(|e| Error::io("start", "runtime", e))?
}

/// Makes the folder `location` names, with its parents (`laminar mkdir`); on a
/// store without folders (S3), its bucket.
pub fn mkdir(location: &Location, driver: DriverChoice) -> Result<crate::backend::Made> {
    let (driver, _) = crate::runtime::select(driver).map_err(Error::Usage)?;
    let key = match &location.object {
        Some(object) => format!("{object}/"),
        None => location.prefix.clone(),
    };
    crate::runtime::block_on(driver, async {
        let ctx = crate::backend::WorkerCtx::new(crate::http::HttpClient::default());
        let sink = location.backend.open_sink(&ctx)?;
        let retries = RelayOptions::default().retries;
        retry(retries, &AtomicBool::new(false), Blame::Remote(location.remote_label()), || sink.mkdir(&key)).await
    })
    .map_err(|e| Error::io("start", "runtime", e))?
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send + Sync>() {}
    is_send::<Shared>();
    is_send::<AtomicU64>();
}
