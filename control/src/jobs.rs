//! Jobs: relays submitted to a running appliance, their lifecycle, and their checks.
//!
//! Every job runs on the appliance's one [`Engine`], from a thread of its own that
//! plans it and collects its results; the engine's workers take work from every job
//! in turn. The lifecycle is the explicit state machine in [`next_state`]: an action
//! that does not apply in the job's state is refused with the state named, and no
//! thread changes a job's state except through it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use laminar_engine::checksum::ChecksumAlgo;
use laminar_engine::relay::{self, Engine, Failure, Filter, Location, Progress, RelayOptions, VerifyProgress};

/// Jobs kept after they end; the oldest finished ones are forgotten beyond this.
pub const FINISHED_JOBS_KEPT_MAX: usize = 1000;
/// Failures listed per job (the counters count them all).
pub const FAILURES_SHOWN_MAX: usize = 1000;
/// Transfers a job may ask for.
pub const TRANSFERS_MAX: usize = 4096;
/// Throughput is averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// A job's state. Lowercase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    include: Vec<String>,
    exclude: Vec<String>,
    dry_run: bool,
    transfers: usize,
    route: &'static str,
    spill_wait: String,
}

/// A check's state and result, as shown on the job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyView {
    /// running, done or failed (could not run).
    pub state: &'static str,
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transition {
    /// The state entered.
    pub state: State,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
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
}

/// One job.
pub struct Job {
    /// Short unique id, `j-` and 8 hex digits.
    pub id: String,
    spec: JobSpec,
    opts: RelayOptions,
    src: Location,
    dst: Location,
    created_at: String,
    /// The engine's handle on the relay: counters and controls.
    pub progress: Arc<Progress>,
    inner: Mutex<Inner>,
    /// Wakes a waiting job's thread when it is resumed or cancelled.
    woken: std::sync::Condvar,
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
            inner.history.push(Transition { state: next, at: now() });
        }
        // The relay has ended when its thread says so, or at once when it never started.
        if matches!(action, Action::Finish { .. }) || (was == State::Pending && next == State::Cancelled) {
            inner.finished_at.get_or_insert_with(now);
        }
        Ok(next)
    }

    /// The job's state now.
    pub fn state(&self) -> State {
        self.lock().state
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
        let done = p.objects_done.load(Ordering::Relaxed);
        let skipped = p.objects_skipped.load(Ordering::Relaxed);
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
                include: self.spec.include.clone(),
                exclude: self.spec.exclude.clone(),
                dry_run: self.spec.dry_run,
                transfers: p.transfers.load(Ordering::Relaxed),
                route: self.opts.route.name(),
                spill_wait: humantime::format_duration(self.opts.spill_wait).to_string(),
            },
            "counters": {
                "objects_total": p.objects_total.load(Ordering::Relaxed),
                "objects_copied": done.saturating_sub(skipped),
                "objects_skipped": skipped,
                "objects_failed": p.objects_failed.load(Ordering::Relaxed),
                "objects_planned": inner.objects_planned,
                "bytes_total": p.bytes_total.load(Ordering::Relaxed),
                "bytes_copied": p.bytes_done.load(Ordering::Relaxed),
                "throttle_cuts": p.throttle.cuts(),
            },
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
}

/// Counters of jobs no longer listed.
#[derive(Debug, Default, Clone)]
pub struct ForgottenTotals {
    /// Bytes relayed.
    pub bytes: u64,
    /// Objects copied.
    pub copied: u64,
    /// Objects skipped.
    pub skipped: u64,
    /// Objects failed.
    pub failed: u64,
}

impl Jobs {
    /// A job list running on `engine`, resolving remotes through `config`; each job
    /// starts from `defaults` (the relay options `laminar serve` was given).
    pub fn new(
        engine: Arc<Engine>,
        config: Config,
        defaults: RelayOptions,
        waiting_retry_max: Option<Duration>,
    ) -> Arc<Jobs> {
        let seed = fastrand::u64(..) & 0xffff_ff00;
        Arc::new(Jobs {
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

    /// Validates a spec and starts its job.
    pub fn submit(self: &Arc<Self>, spec: JobSpec) -> Result<Arc<Job>, JobError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(JobError::ShuttingDown);
        }
        let src = self.config.location(&spec.source).map_err(|e| JobError::Invalid(format!("source: {e}")))?;
        let dst =
            self.config.location(&spec.destination).map_err(|e| JobError::Invalid(format!("destination: {e}")))?;
        let mut opts = self.defaults.clone();
        if let Some(c) = &spec.checksum {
            opts.checksum = ChecksumAlgo::parse(c).ok_or_else(|| {
                JobError::Invalid(format!("checksum {c:?}: use crc32c, crc64nvme, sha256, sha1 or md5"))
            })?;
        }
        opts.filter = Filter::new(&spec.include, &spec.exclude).map_err(|e| JobError::Invalid(e.to_string()))?;
        opts.dry_run = spec.dry_run;
        if let Some(t) = spec.transfers {
            check_transfers(t)?;
            opts.transfers = t;
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
        let id = format!("j-{:08x}", self.next_id.fetch_add(1, Ordering::Relaxed) as u32);
        let created_at = now();
        let job = Arc::new(Job {
            id,
            spec,
            opts,
            src,
            dst,
            progress: Arc::new(Progress::default()),
            inner: Mutex::new(Inner {
                state: State::Pending,
                history: vec![Transition { state: State::Pending, at: created_at.clone() }],
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
            }),
            woken: std::sync::Condvar::new(),
            created_at,
        });
        job.progress.transfers.store(job.opts.transfers, Ordering::Relaxed);
        self.remember(job.clone());
        // Jobs start at once: the engine's workers share themselves between them. The
        // transition happens here, not on the job's thread, so that an action sent
        // right after the 201 finds the job running.
        job.apply(Action::Start).map_err(|_| JobError::ShuttingDown)?;
        let me = self.clone();
        let runner = job.clone();
        let handle = std::thread::Builder::new()
            .name(format!("laminar-{}", job.id))
            .spawn(move || me.run(&runner))
            .expect("spawn job thread");
        self.keep_thread(handle);
        Ok(job)
    }

    fn remember(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.push(job);
        let finished = jobs.iter().filter(|j| j.state().is_terminal()).count();
        if finished > FINISHED_JOBS_KEPT_MAX {
            if let Some(i) = jobs.iter().position(|j| j.state().is_terminal()) {
                let old = jobs.remove(i);
                let p = &old.progress;
                let mut f = self.forgotten.lock().expect("forgotten lock");
                let done = p.objects_done.load(Ordering::Relaxed);
                let skipped = p.objects_skipped.load(Ordering::Relaxed);
                f.bytes += p.bytes_done.load(Ordering::Relaxed);
                f.copied += done.saturating_sub(skipped);
                f.skipped += skipped;
                f.failed += p.objects_failed.load(Ordering::Relaxed);
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
    fn run(&self, job: &Job) {
        let mut planned = 0u64;
        let result = loop {
            let result =
                self.engine.run(job.src.clone(), job.dst.clone(), job.opts.clone(), job.progress.clone(), &mut |_| {
                    planned += 1
                });
            let waiting = match &result {
                Ok(report) if report.objects_failed == 0 && !report.stopped => report.waiting.clone(),
                _ => None,
            };
            let Some(waiting) = waiting else { break result };
            if !self.wait(job, waiting) {
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

    /// Waits out `waiting`: the job shows it, and its thread sleeps until the retry
    /// time (at most the appliance's `--waiting-retry`), a resume or a cancel. Returns
    /// whether to run the relay again.
    fn wait(&self, job: &Job, waiting: relay::Waiting) -> bool {
        let retry_at = UNIX_EPOCH + Duration::from_secs(waiting.retry_at_unix_s);
        let until = match self.waiting_retry_max {
            Some(max) => retry_at.min(SystemTime::now() + max),
            None => retry_at,
        };
        eprintln!(
            "laminar: job {} waiting until {}: {}",
            job.id,
            humantime::format_rfc3339_seconds(until),
            waiting.reason
        );
        if job.apply(Action::Wait).is_err() {
            return false; // Cancelled meanwhile.
        }
        let mut inner = job.lock();
        inner.waiting = Some(relay::Waiting { retry_at_unix_s: unix_s(until), ..waiting });
        while inner.state == State::Waiting {
            let left = until.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() {
                break;
            }
            inner = job.woken.wait_timeout(inner, left).expect("job lock").0;
        }
        drop(inner);
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

    /// Changes the transfers in flight of a job, live.
    pub fn scale(&self, id: &str, transfers: usize) -> Result<Arc<Job>, JobError> {
        check_transfers(transfers)?;
        let job = self.get(id)?;
        job.apply(Action::Scale)?;
        job.progress.transfers.store(transfers, Ordering::Release);
        self.engine.wake();
        Ok(job)
    }

    /// Starts an integrity check of a finished job's destination.
    pub fn verify(self: &Arc<Self>, id: &str, download: bool) -> Result<Arc<Job>, JobError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(JobError::ShuttingDown);
        }
        let job = self.get(id)?;
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
            inner.verify = Some(VerifyView {
                state: "running",
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
        }
        let runner = job.clone();
        let handle = std::thread::Builder::new()
            .name(format!("laminar-{}-verify", job.id))
            .spawn(move || {
                let result = relay::verify(&runner.src, &runner.dst, &runner.opts, download, &progress);
                let ok = matches!(&result, Ok(r) if r.ok());
                {
                    let mut inner = runner.lock();
                    let view = inner.verify.as_mut().expect("set before the check started");
                    view.finished_at = Some(now());
                    match result {
                        Ok(r) => {
                            view.state = if r.stopped { "stopped" } else { "done" };
                            view.objects_checked = r.objects_checked;
                            view.objects_matched = r.objects_matched;
                            view.objects_missing = r.objects_missing;
                            view.objects_mismatched = r.objects_mismatched;
                            let intact = r.ok();
                            view.problems = r.problems.into_iter().take(FAILURES_SHOWN_MAX).collect();
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
                            view.state = "failed";
                            view.error = Some(e.to_string());
                            inner.error = Some(format!("verification could not run: {e}"));
                        }
                    }
                    inner.verify_progress = None;
                }
                let _ = runner.apply(Action::Verified { ok, before });
            })
            .expect("spawn verify thread");
        self.keep_thread(handle);
        Ok(job)
    }

    /// Takes throughput samples of running jobs until `stop` is set.
    pub fn sample_loop(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            for job in self.list() {
                if job.state() == State::Running {
                    job.sample();
                }
            }
            std::thread::park_timeout(Duration::from_millis(500));
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
                let _ = job.apply(Action::Cancel);
                job.lock().error.get_or_insert_with(|| "cancelled: the appliance shut down".to_string());
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
