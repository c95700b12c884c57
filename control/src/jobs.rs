//! Jobs: relays submitted to a running appliance, their lifecycle, and their checks.
//!
//! Every job runs on the appliance's one [`Engine`], from a thread of its own that
//! plans it and collects its results; the engine's workers take work from every job
//! in turn. The lifecycle is the explicit state machine in [`next_state`]: an action
//! that does not apply in the job's state is refused with the state named, and no
//! thread changes a job's state except through it.
//!
//! Jobs outlive the process ([`store`]): every change is written to the appliance's
//! database before the API answers, and `laminar serve` started again lists every job
//! as it was. Jobs that were running go on (their relays resume half-copied objects
//! from the engine's journal), paused ones stay paused, waiting ones wait for the
//! same time, and terminal ones keep their results. A shutdown stops relays without
//! cancelling their jobs, so that they go on at the next start.

mod store;

pub use store::SavedCounters;
use store::{JobRecord, SavedJob, SavedRates, StoreCounters};
pub use store::{JobStore, ServeLock};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use laminar_engine::checksum::ChecksumAlgo;
use laminar_engine::rate::Bwlimit;
use laminar_engine::relay::{
    self, Engine, Failure, FilterSpec, Location, Progress, RelayOptions, Side, VerifyProgress,
};

/// Jobs kept after they end; the oldest finished ones are forgotten beyond this.
pub const FINISHED_JOBS_KEPT_MAX: usize = 1000;
/// Failures listed per job (the counters count them all).
pub const FAILURES_SHOWN_MAX: usize = 1000;
/// Failures named in the log line of a job's end (the job's view keeps more).
const FAILURES_LOGGED_MAX: usize = 10;
/// Transfers a job may ask for.
pub const TRANSFERS_MAX: usize = 4096;
/// Throughput is averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// A job's state. Lowercase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Accepted, not started yet.
    Pending,
    /// Relaying.
    Running,
    /// Paused by an operator: nothing new starts; transfers in flight finish.
    Paused,
    /// The destination's allowance for the period is spent (Google Drive's daily
    /// upload limit): what was copied is verified, and the job goes on by itself at
    /// the time its `waiting` says (or at once when resumed).
    Waiting,
    /// An integrity check of the destination is running.
    Verifying,
    /// Every object relayed and verified (and, after a check, found intact).
    Succeeded,
    /// Some object failed, the relay could not run, or a check found differences.
    Failed,
    /// Cancelled by an operator or by the appliance shutting down.
    Cancelled,
}

impl State {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Paused => "paused",
            State::Waiting => "waiting",
            State::Verifying => "verifying",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    /// Every state, for metrics.
    pub const ALL: [State; 8] = [
        State::Pending,
        State::Running,
        State::Paused,
        State::Waiting,
        State::Verifying,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
    ];

    /// Whether the job's relay has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }
}

/// What can happen to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Its thread starts the relay.
    Start,
    /// Operator: pause.
    Pause,
    /// Operator: resume.
    Resume,
    /// Operator or shutdown: cancel.
    Cancel,
    /// Operator: change the transfers in flight.
    Scale,
    /// The relay ended; `ok` when every object made it.
    Finish { ok: bool },
    /// The relay stopped at the destination's allowance for the period.
    Wait,
    /// The wait is over: the job's thread runs the relay again.
    Retry,
    /// Operator: check the destination.
    Verify,
    /// The check ended; `ok` when everything matched. `before` is the state the job
    /// was in when the check started.
    Verified { ok: bool, before: State },
}

impl Action {
    /// The operator-facing name, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Scale => "scale",
            Action::Finish { .. } => "finish",
            Action::Wait => "wait",
            Action::Retry => "retry",
            Action::Verify => "verify",
            Action::Verified { .. } => "finish verifying",
        }
    }
}

/// The lifecycle: the state after `action` in `state`, or None if it does not apply.
pub fn next_state(state: State, action: Action) -> Option<State> {
    use State::*;
    match (state, action) {
        (Pending, Action::Start) => Some(Running),
        (Running, Action::Pause) => Some(Paused),
        // A waiting job resumed goes on at once instead of at its retry time.
        (Paused | Waiting, Action::Resume) => Some(Running),
        (Pending | Running | Paused | Waiting, Action::Cancel) => Some(Cancelled),
        (Pending | Running | Paused | Waiting, Action::Scale) => Some(state),
        (Running | Paused, Action::Finish { ok }) => Some(if ok { Succeeded } else { Failed }),
        (Running | Paused, Action::Wait) => Some(Waiting),
        (Waiting, Action::Retry) => Some(Running),
        // Resumed or cancelled while the relay wound down: the later action stands.
        (Running | Cancelled, Action::Retry) => Some(state),
        // A cancelled job's relay still drains; its end does not change the verdict.
        (Cancelled, Action::Finish { .. }) => Some(Cancelled),
        (Succeeded | Failed | Cancelled, Action::Verify) => Some(Verifying),
        (Verifying, Action::Verified { ok, before }) => Some(if ok { before } else { Failed }),
        _ => None,
    }
}

/// Why a request about a job was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job has this id.
    #[error("no job {0:?}; GET /v1/jobs lists the jobs")]
    NotFound(String),
    /// The action does not apply in the job's state.
    #[error("cannot {action} job {id}: it is {state}")]
    Conflict {
        /// The job.
        id: String,
        /// What was asked.
        action: &'static str,
        /// Its state.
        state: &'static str,
    },
    /// The request names something that does not exist or is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The appliance is shutting down.
    #[error("the appliance is shutting down and takes no new work")]
    ShuttingDown,
}

/// A job as submitted: the same options as `laminar relay`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// NAME:bucket/prefix, s3://bucket/prefix or file:///abs/path.
    pub source: String,
    /// Same forms.
    pub destination: String,
    /// crc32c (default), crc64nvme, sha256, sha1 or md5.
    #[serde(default)]
    pub checksum: Option<String>,
    /// Filter rules in rclone's syntax (`+ GLOB`, `- GLOB`, `!`), in order, after
    /// `include` and `exclude`; the first that matches decides.
    #[serde(default)]
    pub filter: Vec<String>,
    /// Globs of keys (relative to the source) to include.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of keys to skip.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Plan only.
    #[serde(default)]
    pub dry_run: bool,
    /// Objects in flight across the workers (default 64).
    #[serde(default)]
    pub transfers: Option<usize>,
    /// Bytes per second read, in `--bwlimit`'s forms ("100M", "off", "08:00,10M 19:00,off").
    #[serde(default)]
    pub bwlimit: Option<String>,
    /// Requests per second to the stores (0: no limit).
    #[serde(default)]
    pub tpslimit: Option<f64>,
    /// Preferred part size, e.g. "16MiB".
    #[serde(default)]
    pub part_size: Option<String>,
    /// Retries per object or part.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Path of large objects: auto (default), ram or stage.
    #[serde(default)]
    pub route: Option<String>,
    /// With route auto: how long a part may keep the source idle before parts spill
    /// to the stage, e.g. "5s" (the default).
    #[serde(default)]
    pub spill_wait: Option<String>,
}

/// The options a job runs with, as shown back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobOptions {
    checksum: String,
    filter: Vec<String>,
    include: Vec<String>,
    exclude: Vec<String>,
    dry_run: bool,
    transfers: usize,
    /// The byte limit in force now, as given (None: none).
    bwlimit: Option<String>,
    /// The requests-per-second limit in force now.
    tpslimit: Option<f64>,
    route: &'static str,
    spill_wait: String,
}

/// A check's state and result, as shown on the job.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyView {
    /// running, done, stopped, or failed (could not run).
    pub state: String,
    /// Whether contents are re-read.
    pub download: bool,
    /// Objects checked so far.
    pub objects_checked: u64,
    /// Objects intact.
    pub objects_matched: u64,
    /// Objects missing at the destination.
    pub objects_missing: u64,
    /// Objects that differ.
    pub objects_mismatched: u64,
    /// What differs.
    pub problems: Vec<Failure>,
    /// Why the check could not run.
    pub error: Option<String>,
    /// When it started and ended.
    pub started_at: String,
    /// None while running.
    pub finished_at: Option<String>,
}

/// A state change and when it happened.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Transition {
    /// The state entered.
    pub state: State,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// Why, when it was not an operator's action (the appliance restarting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

struct Inner {
    state: State,
    history: Vec<Transition>,
    error: Option<String>,
    failures: Vec<Failure>,
    /// What the source's listing left out, with why.
    left_out: Vec<laminar_engine::backend::LeftOut>,
    objects_planned: u64,
    finished_at: Option<String>,
    verify: Option<VerifyView>,
    verify_progress: Option<Arc<VerifyProgress>>,
    /// (when, bytes done) samples for the throughput.
    samples: VecDeque<(Instant, u64)>,
    report_seconds: Option<f64>,
    /// Why the job waits and until when, while it is waiting.
    waiting: Option<relay::Waiting>,
    /// The state a running check started from.
    verify_before: Option<State>,
}

/// One job.
pub struct Job {
    /// Short unique id, `j-` and 8 hex digits.
    pub id: String,
    /// Its place in the order of submission, across restarts.
    seq: u64,
    spec: JobSpec,
    opts: RelayOptions,
    /// Where it relays; an error when a restored job's remote no longer resolves.
    ends: Result<(Location, Location), String>,
    created_at: String,
    /// What runs before this process counted (restored jobs); zero for new ones.
    baseline: Baseline,
    /// Where the job is kept (None: in memory only).
    store: Option<Arc<JobStore>>,
    /// The engine's handle on the relay: counters and controls.
    pub progress: Arc<Progress>,
    inner: Mutex<Inner>,
    /// Wakes a waiting job's thread when it is resumed or cancelled.
    woken: std::sync::Condvar,
}

/// Counters a restored job had, to which this process's counts are added.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    counters: SavedCounters,
    /// Whether its relay runs again in this process (then it lists the source again,
    /// and what it copied before is now skipped).
    rerun: bool,
}

/// Each store's failed attempts: this process's counts over what earlier runs counted.
fn store_counters(base: &SavedCounters, p: &Progress) -> [StoreCounters; 2] {
    [Side::Source, Side::Destination].map(|side| {
        let (b, s) = (base.stores[side as usize], p.store(side));
        StoreCounters {
            retries: b.retries + s.retries.load(Ordering::Relaxed),
            throttled: b.throttled + s.throttled.load(Ordering::Relaxed),
            errors: b.errors + s.errors.load(Ordering::Relaxed),
        }
    })
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Job {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("job lock")
    }

    /// Applies `action` through the state machine, recording the change.
    fn apply(&self, action: Action) -> Result<State, JobError> {
        let mut inner = self.lock();
        let next = next_state(inner.state, action).ok_or(JobError::Conflict {
            id: self.id.clone(),
            action: action.name(),
            state: inner.state.name(),
        })?;
        let was = inner.state;
        // The engine's controls change under the same lock as the state, so a pause
        // and a resume racing each other can't leave them disagreeing.
        match action {
            Action::Pause => self.progress.paused.store(true, Ordering::Release),
            Action::Resume | Action::Retry => self.progress.paused.store(false, Ordering::Release),
            _ => {}
        }
        if was == State::Waiting && next != State::Waiting {
            inner.waiting = None;
            self.woken.notify_all();
        }
        if next != was {
            inner.state = next;
            inner.history.push(Transition { state: next, at: now(), note: None });
            self.log_change(&inner, was);
        }
        // The relay has ended when its thread says so, or at once when it never started.
        if matches!(action, Action::Finish { .. }) || (was == State::Pending && next == State::Cancelled) {
            inner.finished_at.get_or_insert_with(now);
        }
        self.persist(&inner);
        Ok(next)
    }

    /// Logs a change of state: the start with what the job moves, the end with its
    /// counters (and its first failures), every other change by name.
    fn log_change(&self, inner: &Inner, was: State) {
        let (id, state) = (self.id.as_str(), inner.state.name());
        let c = self.counters();
        match inner.state {
            State::Running if was == State::Pending => tracing::info!(
                job = %id,
                source = %self.spec.source,
                destination = %self.spec.destination,
                dry_run = self.spec.dry_run,
                "job started"
            ),
            State::Succeeded | State::Cancelled => tracing::info!(
                job = %id,
                objects_copied = c.objects_copied,
                objects_skipped = c.objects_skipped,
                bytes_copied = c.bytes_copied,
                seconds = inner.report_seconds.unwrap_or_default(),
                "job {state}"
            ),
            State::Failed => {
                for f in inner.failures.iter().take(FAILURES_LOGGED_MAX) {
                    tracing::warn!(job = %id, key = %f.key, "failed: {}", f.reason);
                }
                tracing::error!(
                    job = %id,
                    objects_copied = c.objects_copied,
                    objects_failed = c.objects_failed,
                    bytes_copied = c.bytes_copied,
                    "job failed: {}",
                    inner.error.as_deref().unwrap_or("unknown error")
                );
            }
            _ => tracing::info!(job = %id, from = was.name(), "job {state}"),
        }
    }

    /// The job's counters: this process's counts over what earlier runs counted.
    pub fn counters(&self) -> SavedCounters {
        let p = &self.progress;
        let base = self.baseline.counters;
        let done = p.objects_done.load(Ordering::Relaxed);
        let skipped = p.objects_skipped.load(Ordering::Relaxed);
        let copied = done.saturating_sub(skipped);
        if !self.baseline.rerun {
            return SavedCounters {
                objects_total: base.objects_total.max(p.objects_total.load(Ordering::Relaxed)),
                objects_copied: base.objects_copied + copied,
                objects_skipped: base.objects_skipped + skipped,
                objects_failed: base.objects_failed + p.objects_failed.load(Ordering::Relaxed),
                bytes_total: base.bytes_total.max(p.bytes_total.load(Ordering::Relaxed)),
                bytes_copied: base.bytes_copied + p.bytes_done.load(Ordering::Relaxed),
                throttle_cuts: base.throttle_cuts + p.throttle.cuts(),
                stores: store_counters(&base, p),
            };
        }
        // Run again: what earlier runs copied is skipped now, so only skips beyond
        // those are new; failures are retried, so only this run's count.
        let skipped_before = base.objects_copied + base.objects_skipped;
        SavedCounters {
            objects_total: p.objects_total.load(Ordering::Relaxed),
            objects_copied: base.objects_copied + copied,
            objects_skipped: base.objects_skipped + skipped.saturating_sub(skipped_before),
            objects_failed: p.objects_failed.load(Ordering::Relaxed),
            bytes_total: p.bytes_total.load(Ordering::Relaxed),
            bytes_copied: base.bytes_copied + p.bytes_done.load(Ordering::Relaxed),
            throttle_cuts: base.throttle_cuts + p.throttle.cuts(),
            stores: store_counters(&base, p),
        }
    }

    /// The job's stores as the API shows them: each one's remote and what its
    /// failed attempts cost the job.
    fn stores_view(&self, c: &SavedCounters) -> serde_json::Value {
        let remotes = self.stores();
        let mut out = serde_json::Map::new();
        for side in [Side::Source, Side::Destination] {
            let s = c.stores[side as usize];
            let view = serde_json::json!({
                "remote": remotes[side as usize],
                "retries": s.retries,
                "throttled": s.throttled,
                "errors": s.errors,
            });
            out.insert(side.name().to_string(), view);
        }
        serde_json::Value::Object(out)
    }

    /// The remote labels of the job's source and destination (empty when a restored
    /// job's remote no longer resolves).
    pub fn stores(&self) -> [String; 2] {
        match &self.ends {
            Ok((src, dst)) => [src.remote_label().to_string(), dst.remote_label().to_string()],
            Err(_) => [String::new(), String::new()],
        }
    }

    /// The job's row as kept.
    fn record(&self, inner: &Inner) -> JobRecord {
        JobRecord {
            created_at: self.created_at.clone(),
            history: inner.history.clone(),
            error: inner.error.clone(),
            failures: inner.failures.clone(),
            left_out: inner.left_out.clone(),
            objects_planned: inner.objects_planned,
            finished_at: inner.finished_at.clone(),
            verify: inner.verify.clone(),
            verify_before: inner.verify_before,
            report_seconds: inner.report_seconds,
            waiting: inner.waiting.clone(),
            counters: self.counters(),
            transfers: self.progress.transfers.load(Ordering::Relaxed),
            rates: Some(SavedRates {
                bwlimit: self.progress.rates.bwlimit().map(|b| b.to_string()),
                tpslimit: self.progress.rates.requests.get(),
            }),
        }
    }

    /// Writes the job through to its store (called with its lock held, so that rows
    /// are written in the order of the changes).
    fn persist(&self, inner: &Inner) {
        if let Some(store) = &self.store {
            let finished = inner.state.is_terminal().then(|| unix_s(SystemTime::now()));
            store.save(&self.id, self.seq, &self.spec, inner.state, &self.record(inner), finished);
        }
    }

    /// Writes the job's counters through, with the rest of its row.
    fn save(&self) {
        let inner = self.lock();
        self.persist(&inner);
    }

    /// The job's state now.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// How long ago the job ended (None while it has not).
    pub fn finished_ago(&self) -> Option<Duration> {
        let inner = self.lock();
        if !inner.state.is_terminal() {
            return None;
        }
        let at = humantime::parse_rfc3339_weak(inner.finished_at.as_deref()?).ok()?;
        Some(SystemTime::now().duration_since(at).unwrap_or_default())
    }

    /// Bytes per second over the last few seconds (0 unless running).
    fn throughput(inner: &Inner) -> f64 {
        if inner.state != State::Running {
            return 0.0;
        }
        match (inner.samples.front(), inner.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Records a throughput sample (called by the sampler about twice a second).
    fn sample(&self) {
        let bytes = self.progress.bytes_done.load(Ordering::Relaxed);
        let mut inner = self.lock();
        let t = Instant::now();
        inner.samples.push_back((t, bytes));
        while inner.samples.front().is_some_and(|s| t - s.0 > RATE_WINDOW) {
            inner.samples.pop_front();
        }
    }

    /// The job as JSON.
    pub fn view(&self) -> serde_json::Value {
        let inner = self.lock();
        let p = &self.progress;
        let c = self.counters();
        let mut verify = inner.verify.clone();
        if let (Some(v), Some(vp)) = (verify.as_mut(), inner.verify_progress.as_ref()) {
            if v.state == "running" {
                v.objects_checked = vp.objects_checked.load(Ordering::Relaxed);
            }
        }
        serde_json::json!({
            "id": self.id,
            "state": inner.state,
            "source": self.spec.source,
            "destination": self.spec.destination,
            "options": JobOptions {
                checksum: self.opts.checksum.name().to_string(),
                filter: self.spec.filter.clone(),
                include: self.spec.include.clone(),
                exclude: self.spec.exclude.clone(),
                dry_run: self.spec.dry_run,
                transfers: p.transfers.load(Ordering::Relaxed),
                bwlimit: p.rates.bwlimit().map(|b| b.to_string()),
                tpslimit: p.rates.requests.get(),
                route: self.opts.route.name(),
                spill_wait: humantime::format_duration(self.opts.spill_wait).to_string(),
            },
            "counters": {
                "objects_total": c.objects_total,
                "objects_copied": c.objects_copied,
                "objects_skipped": c.objects_skipped,
                "objects_failed": c.objects_failed,
                "objects_not_attempted": p.objects_not_attempted.load(Ordering::Relaxed),
                "objects_planned": inner.objects_planned,
                "bytes_total": c.bytes_total,
                "bytes_copied": c.bytes_copied,
                // Bytes moved so far, counted as they stream from the source (what a
                // progress bar shows); bytes_copied counts only what landed.
                "bytes_streamed": crate::progress::streamed(
                    c.bytes_copied,
                    self.baseline.counters.bytes_copied + p.rates.bytes_read(),
                    c.bytes_total,
                ),
                "throttle_cuts": c.throttle_cuts,
            },
            "stores": self.stores_view(&c),
            // Whether the source's listing is still growing the totals (an ETA means
            // little until it is done). A job restored after it ended never listed here.
            "listing": !inner.state.is_terminal() && !p.listing_done.load(Ordering::Relaxed),
            "transfers_allowed": p.throttle.limit(p.transfers.load(Ordering::Relaxed)),
            "throughput_bytes_per_second": Job::throughput(&inner),
            "seconds": inner.report_seconds,
            "failures": inner.failures,
            "left_out": inner.left_out,
            "error": inner.error,
            "waiting": inner.waiting.as_ref().map(|w| serde_json::json!({
                "reason": w.reason,
                "retry_at": humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(w.retry_at_unix_s))
                    .to_string(),
            })),
            "history": inner.history,
            "created_at": self.created_at,
            "finished_at": inner.finished_at,
            "verify": verify,
        })
    }
}

/// Every job of the appliance, and the engine they run on.
pub struct Jobs {
    engine: Arc<Engine>,
    config: Config,
    /// What a job runs with unless its spec says otherwise: `laminar serve`'s engine
    /// flags over the plan.
    defaults: RelayOptions,
    jobs: Mutex<Vec<Arc<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    closing: AtomicBool,
    next_id: AtomicU64,
    /// Totals of jobs forgotten (beyond [`FINISHED_JOBS_KEPT_MAX`]), so that counters
    /// never go down.
    pub forgotten: Mutex<ForgottenTotals>,
    /// The longest a waiting job waits before trying again (None: until the time the
    /// store gave).
    waiting_retry_max: Option<Duration>,
    /// Where jobs are kept across restarts (None: in memory only).
    store: Option<Arc<JobStore>>,
    /// How long terminal jobs are kept (`--keep-jobs`).
    keep_jobs: Duration,
}

/// How jobs are kept.
pub struct Keeping {
    /// The store (None: in memory only, `--no-journal`).
    pub store: Option<Arc<JobStore>>,
    /// How long terminal jobs are kept.
    pub keep_jobs: Duration,
}

/// Counters of jobs no longer listed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForgottenTotals {
    /// Bytes relayed.
    pub bytes: u64,
    /// Objects copied.
    pub copied: u64,
    /// Objects skipped.
    pub skipped: u64,
    /// Objects failed.
    pub failed: u64,
    /// Objects never attempted.
    pub not_attempted: u64,
}

impl Jobs {
    /// A job list running on `engine`, resolving remotes through `config`; each job
    /// starts from `defaults` (the relay options `laminar serve` was given).
    pub fn new(
        engine: Arc<Engine>,
        config: Config,
        defaults: RelayOptions,
        waiting_retry_max: Option<Duration>,
        keeping: Keeping,
    ) -> Arc<Jobs> {
        let seed = fastrand::u64(..) & 0xffff_ff00;
        Arc::new(Jobs {
            store: keeping.store,
            keep_jobs: keeping.keep_jobs,
            engine,
            config,
            defaults,
            jobs: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(seed),
            forgotten: Mutex::new(ForgottenTotals::default()),
            waiting_retry_max,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().expect("jobs lock").clone()
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Arc<Job>, JobError> {
        self.list().into_iter().find(|j| j.id == id).ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Validates a spec: where it relays and with which options.
    fn build(&self, spec: &JobSpec) -> Result<(RelayOptions, Location, Location), JobError> {
        let src = self.config.location(&spec.source).map_err(|e| JobError::Invalid(format!("source: {e}")))?;
        let dst =
            self.config.location(&spec.destination).map_err(|e| JobError::Invalid(format!("destination: {e}")))?;
        let mut opts = self.defaults.clone();
        if let Some(c) = &spec.checksum {
            opts.checksum = ChecksumAlgo::parse(c).ok_or_else(|| {
                JobError::Invalid(format!("checksum {c:?}: use crc32c, crc64nvme, sha256, sha1 or md5"))
            })?;
        }
        let filter = FilterSpec { filter: spec.filter.clone(), ..FilterSpec::globs(&spec.include, &spec.exclude) };
        opts.filter = filter.build("").map_err(|e| JobError::Invalid(e.to_string()))?;
        opts.dry_run = spec.dry_run;
        if let Some(t) = spec.transfers {
            check_transfers(t)?;
            opts.transfers = t;
        }
        if let Some(b) = &spec.bwlimit {
            opts.bwlimit = Some(bwlimit(b)?);
        }
        if let Some(t) = spec.tpslimit {
            opts.tpslimit = tpslimit(t)?;
        }
        if let Some(p) = &spec.part_size {
            opts.part_size_bytes = laminar_tuning::parse_size(p)
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| JobError::Invalid(format!("part_size {p:?}: give a size such as \"16MiB\"")))?;
        }
        if let Some(r) = spec.retries {
            opts.retries = r;
        }
        if let Some(r) = &spec.route {
            opts.route = laminar_engine::relay::Route::parse(r)
                .ok_or_else(|| JobError::Invalid(format!("route {r:?}: use auto, ram or stage")))?;
        }
        if let Some(w) = &spec.spill_wait {
            opts.spill_wait = humantime::parse_duration(w)
                .map_err(|e| JobError::Invalid(format!("spill_wait {w:?}: {e}; give a duration such as \"5s\"")))?;
        }
        if opts.dry_run {
            // A plan writes nothing: nothing to journal.
            opts.journal = None;
        }
        Ok((opts, src, dst))
    }

    /// Validates a spec and starts its job.
    pub fn submit(self: &Arc<Self>, spec: JobSpec) -> Result<Arc<Job>, JobError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(JobError::ShuttingDown);
        }
        let (opts, src, dst) = self.build(&spec)?;
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("j-{:08x}", seq as u32);
        let created_at = now();
        let job = Arc::new(Job {
            id,
            seq,
            spec,
            opts,
            ends: Ok((src, dst)),
            baseline: Baseline::default(),
            store: self.store.clone(),
            progress: Arc::new(Progress::default()),
            inner: Mutex::new(Inner {
                state: State::Pending,
                history: vec![Transition { state: State::Pending, at: created_at.clone(), note: None }],
                error: None,
                failures: Vec::new(),
                left_out: Vec::new(),
                objects_planned: 0,
                finished_at: None,
                verify: None,
                verify_progress: None,
                samples: VecDeque::new(),
                report_seconds: None,
                waiting: None,
                verify_before: None,
            }),
            woken: std::sync::Condvar::new(),
            created_at,
        });
        job.progress.transfers.store(job.opts.transfers, Ordering::Relaxed);
        // In force (and shown) from the submit on, not only once the relay starts.
        job.progress.rates.start_with(job.opts.bwlimit.clone(), job.opts.tpslimit);
        self.remember(job.clone());
        // Jobs start at once: the engine's workers share themselves between them. The
        // transition happens here, not on the job's thread, so that an action sent
        // right after the 201 finds the job running.
        job.apply(Action::Start).map_err(|_| JobError::ShuttingDown)?;
        self.spawn_run(&job, None);
        Ok(job)
    }

    fn spawn_run(self: &Arc<Self>, job: &Arc<Job>, waiting: Option<relay::Waiting>) {
        let me = self.clone();
        let runner = job.clone();
        let handle = std::thread::Builder::new()
            .name(format!("laminar-{}", job.id))
            .spawn(move || me.run(&runner, waiting))
            .expect("spawn job thread");
        self.keep_thread(handle);
    }

    /// Lists the jobs the store kept and sets them going again: running ones run,
    /// paused ones run paused, waiting ones wait out the same time, a check that was
    /// under way is marked stopped; terminal ones are only listed. Returns how many
    /// jobs were restored and how many go on.
    pub fn restore(self: &Arc<Self>) -> Result<(usize, usize), String> {
        let Some(store) = &self.store else { return Ok((0, 0)) };
        let pruned = store.prune(unix_s(SystemTime::now()).saturating_sub(self.keep_jobs.as_secs()));
        if !pruned.is_empty() {
            let n = pruned.len();
            tracing::info!("pruned {n} job{} that ended over --keep-jobs ago", if n == 1 { "" } else { "s" });
        }
        let saved = store.load()?;
        let restored = saved.len();
        let mut going_on = 0;
        if let Some(last) = saved.iter().map(|j| j.seq).max() {
            self.next_id.fetch_max(last + 1, Ordering::Relaxed);
        }
        for saved in saved {
            let job = self.revive(saved);
            self.remember(job.clone());
            let state = job.state();
            if state.is_terminal() {
                continue;
            }
            going_on += 1;
            let waiting = job.lock().waiting.clone();
            self.spawn_run(&job, if state == State::Waiting { waiting } else { None });
        }
        Ok((restored, going_on))
    }

    /// A job from its row.
    fn revive(&self, saved: SavedJob) -> Arc<Job> {
        let SavedJob { id, seq, spec, mut state, record: r } = saved;
        let built = self.build(&spec);
        let mut error = r.error;
        let mut history = r.history;
        let mut finished_at = r.finished_at;
        let mut verify = r.verify;
        let restart = "the appliance restarted".to_string();
        if state == State::Verifying {
            // The check ended with the process: the job is as it was before it.
            if let Some(v) = verify.as_mut() {
                v.state = "stopped".into();
                v.finished_at = Some(now());
                v.error = Some("stopped: the appliance restarted; ask for the check again".into());
            }
            state = r.verify_before.unwrap_or(State::Failed);
            history.push(Transition { state, at: now(), note: Some(restart.clone()) });
        }
        let (opts, ends) = match built {
            Ok((opts, src, dst)) => (opts, Ok((src, dst))),
            Err(e) => (self.defaults.clone(), Err(e.to_string())),
        };
        if let (Err(why), false) = (&ends, state.is_terminal()) {
            // It cannot run here any more (its remote is gone from laminar.toml).
            error = Some(format!("cannot go on after the appliance restarted: {why}"));
            state = State::Failed;
            finished_at = Some(now());
            history.push(Transition { state, at: now(), note: Some(restart.clone()) });
        } else if !state.is_terminal() {
            if state == State::Pending {
                state = State::Running;
            }
            history.push(Transition { state, at: now(), note: Some(restart) });
        }
        let job = Arc::new(Job {
            id,
            seq,
            opts,
            ends: ends.map_err(|e| e.to_string()),
            baseline: Baseline { counters: r.counters, rerun: !state.is_terminal() },
            store: self.store.clone(),
            progress: Arc::new(Progress::default()),
            inner: Mutex::new(Inner {
                state,
                history,
                error,
                failures: if state.is_terminal() { r.failures } else { Vec::new() },
                left_out: r.left_out,
                objects_planned: r.objects_planned,
                finished_at,
                verify,
                verify_progress: None,
                samples: VecDeque::new(),
                report_seconds: r.report_seconds,
                waiting: if state == State::Waiting { r.waiting } else { None },
                verify_before: None,
            }),
            woken: std::sync::Condvar::new(),
            created_at: r.created_at,
            spec,
        });
        job.progress.transfers.store(r.transfers.max(1), Ordering::Relaxed);
        // The limits in force when the appliance stopped, which a scale may have set.
        if let Some(rates) = &r.rates {
            job.progress.rates.set_bwlimit(rates.bwlimit.as_deref().and_then(|b| Bwlimit::parse(b).ok()));
            job.progress.rates.set_tpslimit(rates.tpslimit);
        }
        if state == State::Paused {
            job.progress.paused.store(true, Ordering::Release);
        }
        job.save();
        job
    }

    fn remember(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.push(job);
        let finished = jobs.iter().filter(|j| j.state().is_terminal()).count();
        if finished > FINISHED_JOBS_KEPT_MAX {
            if let Some(i) = jobs.iter().position(|j| j.state().is_terminal()) {
                let old = jobs.remove(i);
                let c = old.counters();
                let mut f = self.forgotten.lock().expect("forgotten lock");
                f.bytes += c.bytes_copied;
                f.copied += c.objects_copied;
                f.skipped += c.objects_skipped;
                f.failed += c.objects_failed;
                f.not_attempted += old.progress.objects_not_attempted.load(Ordering::Relaxed);
                if let Some(store) = &self.store {
                    store.forget(&old.id);
                }
            }
        }
    }

    fn keep_thread(&self, handle: std::thread::JoinHandle<()>) {
        let mut threads = self.threads.lock().expect("threads lock");
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }

    /// The job's thread: runs the relay and records how it ended. A relay that stops
    /// at the destination's allowance for the period waits, then runs again (what it
    /// copied is skipped), until it ends otherwise.
    fn run(&self, job: &Job, waiting_at_start: Option<relay::Waiting>) {
        let Ok((src, dst)) = job.ends.clone() else { return };
        if let Some(waiting) = waiting_at_start {
            if !self.wait(job, waiting, false) {
                self.wound_down(job);
                return;
            }
        }
        let mut planned = 0u64;
        let result = loop {
            let result = self
                .engine
                .run(src.clone(), dst.clone(), job.opts.clone(), job.progress.clone(), &mut |_| planned += 1);
            let waiting = match &result {
                Ok(report) if report.objects_failed == 0 && !report.stopped => report.waiting.clone(),
                _ => None,
            };
            let Some(waiting) = waiting else { break result };
            if !self.wait(job, waiting, true) {
                break result;
            }
            // The next run plans the whole source again; the counters of what was
            // copied and skipped keep adding up.
            job.progress.objects_total.store(0, Ordering::Relaxed);
            job.progress.bytes_total.store(0, Ordering::Relaxed);
            job.progress.objects_deferred.store(0, Ordering::Relaxed);
        };
        let ok = match &result {
            Ok(report) => report.objects_failed == 0 && !report.stopped && report.waiting.is_none(),
            Err(_) => false,
        };
        if self.closing() && !job.state().is_terminal() {
            // Stopped by the appliance's shutdown, not by its operator: the job stays
            // as it is and goes on at the next start.
            self.wound_down(job);
            return;
        }
        {
            let mut inner = job.lock();
            inner.objects_planned = planned;
            match result {
                Ok(report) => {
                    inner.failures = report.failures.into_iter().take(FAILURES_SHOWN_MAX).collect();
                    inner.left_out = report.left_out.into_iter().take(FAILURES_SHOWN_MAX).collect();
                    inner.report_seconds = Some(report.seconds);
                    if report.objects_failed > 0 {
                        inner.error =
                            Some(format!("{} of {} objects failed", report.objects_failed, report.objects_total));
                    } else if let Some(w) = &report.waiting {
                        inner.error = Some(format!("ended while waiting: {}", w.reason));
                    }
                }
                Err(e) => inner.error = Some(e.to_string()),
            }
        }
        let _ = job.apply(Action::Finish { ok });
    }

    /// A job whose relay the shutdown stopped: its row keeps its state and counters.
    fn wound_down(&self, job: &Job) {
        job.save();
    }

    /// Waits out `waiting`: the job shows it, and its thread sleeps until the retry
    /// time (at most the appliance's `--waiting-retry`), a resume, a cancel or the
    /// shutdown. `enter` is false for a job restored while waiting (it is in that
    /// state already). Returns whether to run the relay again.
    fn wait(&self, job: &Job, waiting: relay::Waiting, enter: bool) -> bool {
        let retry_at = UNIX_EPOCH + Duration::from_secs(waiting.retry_at_unix_s);
        let until = match self.waiting_retry_max {
            Some(max) => retry_at.min(SystemTime::now() + max),
            None => retry_at,
        };
        tracing::warn!("job {} waiting until {}: {}", job.id, humantime::format_rfc3339_seconds(until), waiting.reason);
        if enter && job.apply(Action::Wait).is_err() {
            return false; // Cancelled meanwhile.
        }
        let mut inner = job.lock();
        inner.waiting = Some(relay::Waiting { retry_at_unix_s: unix_s(until), ..waiting });
        job.persist(&inner);
        while inner.state == State::Waiting && !self.closing() {
            let left = until.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() {
                break;
            }
            inner = job.woken.wait_timeout(inner, left).expect("job lock").0;
        }
        drop(inner);
        if self.closing() {
            return false;
        }
        job.apply(Action::Retry).is_ok_and(|state| state == State::Running) && !job.progress.stopping()
    }

    /// Pauses a running job.
    pub fn pause(&self, id: &str) -> Result<Arc<Job>, JobError> {
        let job = self.get(id)?;
        job.apply(Action::Pause)?;
        Ok(job)
    }

    /// Resumes a paused job.
    pub fn resume(&self, id: &str) -> Result<Arc<Job>, JobError> {
        let job = self.get(id)?;
        job.apply(Action::Resume)?;
        self.engine.wake();
        Ok(job)
    }

    /// Cancels a job: nothing new starts, transfers in flight finish or are aborted,
    /// and no partial object is left looking complete.
    pub fn cancel(&self, id: &str) -> Result<Arc<Job>, JobError> {
        let job = self.get(id)?;
        job.apply(Action::Cancel)?;
        job.progress.request_stop();
        self.engine.wake();
        Ok(job)
    }

    /// Changes a job's transfers in flight and rate limits, live.
    pub fn scale(&self, id: &str, scale: &Scale) -> Result<Arc<Job>, JobError> {
        if scale.transfers.is_none() && scale.bwlimit.is_none() && scale.tpslimit.is_none() {
            return Err(JobError::Invalid("scale: give transfers, bwlimit or tpslimit".into()));
        }
        if let Some(t) = scale.transfers {
            check_transfers(t)?;
        }
        let bw = scale.bwlimit.as_deref().map(bwlimit).transpose()?;
        let tps = scale.tpslimit.map(tpslimit).transpose()?;
        let job = self.get(id)?;
        job.apply(Action::Scale)?;
        if let Some(t) = scale.transfers {
            job.progress.transfers.store(t, Ordering::Release);
        }
        if let Some(b) = bw {
            job.progress.rates.set_bwlimit(Some(b));
        }
        if let Some(t) = tps {
            job.progress.rates.set_tpslimit(t);
        }
        job.save();
        self.engine.wake();
        Ok(job)
    }

    /// Starts an integrity check of a finished job's destination.
    pub fn verify(self: &Arc<Self>, id: &str, download: bool) -> Result<Arc<Job>, JobError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(JobError::ShuttingDown);
        }
        let job = self.get(id)?;
        if let Err(why) = &job.ends {
            return Err(JobError::Invalid(format!("job {}: its locations no longer resolve: {why}", job.id)));
        }
        let before = job.state();
        if before.is_terminal() && job.lock().finished_at.is_none() {
            // Cancelled, but its transfers are still winding down: the destination is
            // still changing, so a check now would report a moving target.
            return Err(JobError::Conflict {
                id: job.id.clone(),
                action: "verify",
                state: "cancelled and still winding down",
            });
        }
        job.apply(Action::Verify)?;
        let progress = Arc::new(VerifyProgress::default());
        {
            let mut inner = job.lock();
            inner.verify_before = Some(before);
            inner.verify = Some(VerifyView {
                state: "running".into(),
                download,
                objects_checked: 0,
                objects_matched: 0,
                objects_missing: 0,
                objects_mismatched: 0,
                problems: Vec::new(),
                error: None,
                started_at: now(),
                finished_at: None,
            });
            inner.verify_progress = Some(progress.clone());
            job.persist(&inner);
        }
        let runner = job.clone();
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("laminar-{}-verify", job.id))
            .spawn(move || {
                let (src, dst) = runner.ends.as_ref().expect("checked before the check started");
                let result = relay::verify(
                    src,
                    dst,
                    &runner.opts,
                    &relay::CheckOptions::report(download, relay::Unvouched::Differs),
                    &progress,
                );
                let ok = matches!(&result, Ok(r) if r.ok());
                {
                    let mut inner = runner.lock();
                    let view = inner.verify.as_mut().expect("set before the check started");
                    view.finished_at = Some(now());
                    match result {
                        Ok(r) => {
                            view.state = if r.stopped { "stopped" } else { "done" }.into();
                            view.objects_checked = r.objects_checked;
                            view.objects_matched = r.objects_matched;
                            view.objects_missing = r.objects_missing;
                            view.objects_mismatched = r.objects_mismatched;
                            let intact = r.ok();
                            // A relay never deletes: what else the destination holds is no problem of the job's.
                            view.problems = r
                                .problems
                                .into_iter()
                                .filter(|p| p.kind != relay::ProblemKind::Extra)
                                .take(FAILURES_SHOWN_MAX)
                                .map(|p| Failure { key: p.key, reason: p.reason })
                                .collect();
                            if r.stopped {
                                inner.error = Some("verification was stopped before it covered every object".into());
                            } else if !intact {
                                inner.error = Some(format!(
                                    "verification found {} objects missing and {} differing at the destination",
                                    r.objects_missing, r.objects_mismatched
                                ));
                            }
                        }
                        Err(e) => {
                            view.state = "failed".into();
                            view.error = Some(e.to_string());
                            inner.error = Some(format!("verification could not run: {e}"));
                        }
                    }
                    inner.verify_progress = None;
                    inner.verify_before = None;
                }
                if me.closing() {
                    // Stopped by the shutdown: the row still says verifying, and the
                    // next start puts the job back as it was before the check.
                    return;
                }
                let _ = runner.apply(Action::Verified { ok, before });
            })
            .expect("spawn verify thread");
        self.keep_thread(handle);
        Ok(job)
    }

    /// Takes throughput samples of running jobs until `stop` is set.
    /// Takes throughput samples of running jobs until `stop` is set; writes the
    /// counters of jobs in flight through about once a second, and prunes jobs past
    /// `--keep-jobs` once an hour.
    pub fn sample_loop(&self, stop: &AtomicBool) {
        let mut tick = 0u64;
        while !stop.load(Ordering::Acquire) {
            tick += 1;
            for job in self.list() {
                let state = job.state();
                if state == State::Running {
                    job.sample();
                }
                if tick.is_multiple_of(2) && matches!(state, State::Running | State::Paused | State::Verifying) {
                    job.save();
                }
            }
            if tick.is_multiple_of(7200) {
                self.prune();
            }
            std::thread::park_timeout(Duration::from_millis(500));
        }
    }

    /// Forgets terminal jobs that ended longer than `--keep-jobs` ago.
    fn prune(&self) {
        let Some(store) = &self.store else { return };
        let pruned = store.prune(unix_s(SystemTime::now()).saturating_sub(self.keep_jobs.as_secs()));
        if !pruned.is_empty() {
            self.jobs.lock().expect("jobs lock").retain(|j| !pruned.contains(&j.id));
        }
    }

    /// Whether new jobs are refused.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Refuses new jobs, cancels every job still running, and waits up to `grace` for
    /// their threads, or until `give_up` is set (a second signal). Returns whether they
    /// all ended.
    pub fn shutdown(&self, grace: Duration, give_up: &AtomicBool) -> bool {
        self.closing.store(true, Ordering::Release);
        for job in self.list() {
            if matches!(job.state(), State::Pending | State::Running | State::Paused | State::Waiting) {
                if self.store.is_none() {
                    // Kept nowhere: the job ends with the process.
                    let _ = job.apply(Action::Cancel);
                    job.lock().error.get_or_insert_with(|| "cancelled: the appliance shut down".to_string());
                } else {
                    // Kept: it goes on at the next start, so it is stopped, not cancelled.
                    job.woken.notify_all();
                }
            }
            job.progress.request_stop();
            if let Some(vp) = &job.lock().verify_progress {
                vp.stop.store(true, Ordering::Release);
            }
        }
        self.engine.wake();
        let deadline = Instant::now() + grace;
        loop {
            let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
            let (done, pending): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
            for t in done {
                let _ = t.join();
            }
            if pending.is_empty() {
                return true;
            }
            self.threads.lock().expect("threads lock").extend(pending);
            if Instant::now() >= deadline || give_up.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What a scale changes (the PATCH body the API reads and the CLI client sends);
/// what it leaves out stays as it is.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Objects in flight across the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<usize>,
    /// A new byte limit, in `--bwlimit`'s forms ("off" lifts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<String>,
    /// A new requests-per-second limit (0 lifts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpslimit: Option<f64>,
}

fn bwlimit(text: &str) -> Result<Bwlimit, JobError> {
    Bwlimit::parse(text).map_err(|e| JobError::Invalid(e.replacen("--bwlimit", "bwlimit", 1)))
}

fn tpslimit(per_s: f64) -> Result<Option<f64>, JobError> {
    laminar_engine::rate::tpslimit(per_s).map_err(|e| JobError::Invalid(e.replacen("--tpslimit", "tpslimit", 1)))
}

fn check_transfers(t: usize) -> Result<(), JobError> {
    if t == 0 || t > TRANSFERS_MAX {
        return Err(JobError::Invalid(format!("transfers {t}: give a number from 1 to {TRANSFERS_MAX}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_allows_only_what_it_names() {
        use State::*;
        let ok = |s, a| next_state(s, a);
        assert_eq!(ok(Pending, Action::Start), Some(Running));
        assert_eq!(ok(Running, Action::Pause), Some(Paused));
        assert_eq!(ok(Paused, Action::Resume), Some(Running));
        assert_eq!(ok(Paused, Action::Cancel), Some(Cancelled));
        assert_eq!(ok(Running, Action::Finish { ok: false }), Some(Failed));
        assert_eq!(ok(Cancelled, Action::Finish { ok: true }), Some(Cancelled));
        assert_eq!(ok(Succeeded, Action::Verify), Some(Verifying));
        assert_eq!(ok(Verifying, Action::Verified { ok: true, before: Succeeded }), Some(Succeeded));
        assert_eq!(ok(Verifying, Action::Verified { ok: false, before: Succeeded }), Some(Failed));
        assert_eq!(ok(Running, Action::Wait), Some(Waiting));
        assert_eq!(ok(Waiting, Action::Retry), Some(Running));
        assert_eq!(ok(Waiting, Action::Resume), Some(Running), "goes on at once");
        assert_eq!(ok(Waiting, Action::Cancel), Some(Cancelled));
        assert_eq!(ok(Cancelled, Action::Retry), Some(Cancelled), "a cancel while waiting stands");
        // Refused: each names the state in the 409.
        for (s, a) in [
            (Running, Action::Resume),
            (Paused, Action::Pause),
            (Succeeded, Action::Cancel),
            (Succeeded, Action::Pause),
            (Running, Action::Verify),
            (Verifying, Action::Cancel),
            (Cancelled, Action::Scale),
            (Pending, Action::Pause),
            (Waiting, Action::Pause),
            (Waiting, Action::Finish { ok: true }),
            (Succeeded, Action::Retry),
        ] {
            assert_eq!(next_state(s, a), None, "{s:?} + {a:?}");
        }
        // Every terminal state is left only by a check.
        for s in State::ALL.into_iter().filter(|s| s.is_terminal()) {
            for a in [Action::Start, Action::Pause, Action::Resume, Action::Cancel, Action::Scale, Action::Wait] {
                assert_eq!(next_state(s, a), None);
            }
        }
    }
}
