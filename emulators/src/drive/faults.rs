//! Fault and profile switches: what they are ([`Faults`], set at start in
//! [`super::DriveOptions`] and live through the emulator or `POST /_emulator/faults`), and
//! the state that applies them (counters of "the next N", a seeded random source for
//! rates, the creates-per-second window, the day's upload bytes).
//!
//! Counted faults ("answer the next 2 requests 429") make deterministic tests; rates make
//! storms for benchmarks, from a seeded generator so a run can be repeated.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every API request (not the token endpoint, not the control endpoints).
    #[default]
    All,
    /// Requests that carry no file bytes: list, get metadata, create folders, update
    /// metadata, delete, about.
    Metadata,
    /// Requests that carry file bytes up: one-request uploads, session starts, chunks.
    Uploads,
    /// Requests that carry file bytes down: `alt=media` and exports.
    Downloads,
}

/// What kind of request one is, for [`Scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Metadata,
    Upload,
    Download,
}

impl Scope {
    fn covers(self, class: Class) -> bool {
        matches!(
            (self, class),
            (Scope::All, _)
                | (Scope::Metadata, Class::Metadata)
                | (Scope::Uploads, Class::Upload)
                | (Scope::Downloads, Class::Download)
        )
    }
}

/// Which throttling answer a storm sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKind {
    /// 403 `userRateLimitExceeded` (the per-user, per-minute quota).
    #[default]
    UserRateLimit,
    /// 403 `rateLimitExceeded`.
    #[serde(rename = "rate_limit_403")]
    RateLimit403,
    /// 429 `rateLimitExceeded`.
    #[serde(rename = "rate_limit_429")]
    RateLimit429,
}

/// A rate-limit storm: the next `next` requests in `scope`, then a `rate` fraction of them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Throttle {
    /// The answer.
    pub kind: ThrottleKind,
    /// How many of the next requests get it.
    pub next: u32,
    /// Then the fraction (0.0 to 1.0) of requests that get it.
    pub rate: f64,
    /// Which requests.
    pub scope: Scope,
}

/// Injected server errors: the next `next` requests in `scope`, then a `rate` fraction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerErrors {
    /// The status: 500, 502, 503 or 504.
    pub status: u16,
    /// How many of the next requests get it.
    pub next: u32,
    /// Then the fraction (0.0 to 1.0) of requests that get it.
    pub rate: f64,
    /// Which requests.
    pub scope: Scope,
}

impl Default for ServerErrors {
    fn default() -> ServerErrors {
        ServerErrors { status: 503, next: 0, rate: 0.0, scope: Scope::All }
    }
}

/// Connections dropped mid-body: the next `next` bodies are cut after `after_bytes`.
/// For an upload chunk, what arrived is kept down to a 256 KiB boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropAfter {
    /// Bytes of the body that get through.
    pub after_bytes: u64,
    /// How many bodies.
    pub next: u32,
}

/// Chunks committed short: the next `next` chunks of resumable uploads keep only their
/// first `keep_bytes` (down to a 256 KiB boundary of the file) and are answered 308
/// with the `Range` of what is kept, as Google's upload servers may persist less of a
/// chunk than it carried. A last chunk so cut does not complete the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShortCommit {
    /// Bytes of the chunk kept (then rounded down to a 256 KiB boundary of the file).
    pub keep_bytes: u64,
    /// How many chunks.
    pub next: u32,
    /// Also flip a bit of the first byte kept, as if it changed on the way up (Drive
    /// checks no checksum of an upload; only a client comparing `md5Checksum` finds out).
    pub corrupt: bool,
}

/// Every fault and profile switch. `Default` is a healthy Drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Lifetime of access tokens issued from now on (Google's is an hour; it answers
    /// `expires_in: 3599`).
    pub token_lifetime_s: u64,
    /// Delay before every API request is handled.
    pub latency_ms: u64,
    /// Cap on each connection's throughput, each direction (0: none).
    pub throughput_bytes_per_s: u64,
    /// A rate-limit storm.
    pub throttle: Option<Throttle>,
    /// Injected 5xx answers.
    pub server_errors: Option<ServerErrors>,
    /// Most files created per second (files.create of any kind, session starts
    /// included); past it creates get 403 `userRateLimitExceeded` (0: no limit). Drive
    /// applies such a limit to sustained writes.
    pub creates_per_s_max: u32,
    /// Downloads (`alt=media`, exports) cut mid-body.
    pub drop_downloads: Option<DropAfter>,
    /// Uploads (one-request bodies and resumable chunks) cut mid-body.
    pub drop_uploads: Option<DropAfter>,
    /// Resumable chunks committed short of what they carried.
    pub short_commits: Option<ShortCommit>,
    /// The next N uploads that complete a file (a one-request upload, the last chunk
    /// of a session, or a status query that completes one) make the file, then close
    /// the connection without answering, as when an answer is lost on the way back.
    pub lose_completion_answers: u32,
    /// The day's upload budget (Drive: 750 GB per user per day); once spent, new uploads
    /// get 403 `userRateLimitExceeded` "User rate limit exceeded." Uploads already under
    /// way complete, as on Drive. None: no budget.
    pub daily_upload_bytes_max: Option<u64>,
    /// Listing pages shorter than asked, some empty, each with a `nextPageToken` while
    /// more remain (Drive says partial and empty pages are possible before the end).
    pub short_pages: bool,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            token_lifetime_s: 3599,
            latency_ms: 0,
            throughput_bytes_per_s: 0,
            throttle: None,
            server_errors: None,
            creates_per_s_max: 0,
            drop_downloads: None,
            drop_uploads: None,
            short_commits: None,
            lose_completion_answers: 0,
            daily_upload_bytes_max: None,
            short_pages: false,
        }
    }
}

/// Creates in the last second, to hold a creates-per-second limit.
#[derive(Default)]
pub(crate) struct CreateWindow {
    recent: VecDeque<Instant>,
}

impl CreateWindow {
    /// Whether a create at `now` is within `max` per second; records it if so.
    pub(crate) fn allow(&mut self, now: Instant, max: u32) -> bool {
        let max = usize::try_from(max).expect("u32 fits usize");
        while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1)) {
            self.recent.pop_front();
        }
        // Bounded: a lowered limit trims at once.
        while self.recent.len() > max {
            self.recent.pop_front();
        }
        if self.recent.len() < max {
            self.recent.push_back(now);
            true
        } else {
            false
        }
    }
}

/// The live faults.
pub(crate) struct FaultState {
    faults: Mutex<Faults>,
    /// A copy of `throughput_bytes_per_s` that connections read on every poll
    /// (Relaxed: a cap that applies a few polls late is fine).
    throughput: AtomicU64,
    rng: Mutex<fastrand::Rng>,
    creates: Mutex<CreateWindow>,
    uploaded_today: AtomicU64,
}

impl FaultState {
    pub(crate) fn new(faults: Faults, seed: u64) -> FaultState {
        let throughput = AtomicU64::new(faults.throughput_bytes_per_s);
        FaultState {
            faults: Mutex::new(faults),
            throughput,
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed_fa17)),
            creates: Mutex::new(CreateWindow::default()),
            uploaded_today: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().expect("no panics while holding the faults")
    }

    pub(crate) fn get(&self) -> Faults {
        self.lock().clone()
    }

    pub(crate) fn set(&self, f: Faults) {
        self.throughput.store(f.throughput_bytes_per_s, Ordering::Relaxed);
        *self.lock() = f;
    }

    pub(crate) fn throughput(&self) -> u64 {
        self.throughput.load(Ordering::Relaxed)
    }

    fn roll(&self, rate: f64) -> bool {
        rate > 0.0 && self.rng.lock().expect("no panics holding the rng").f64() < rate
    }

    /// The injected answer for a request of `class`, if one is due: 5xx first, then a
    /// throttle.
    pub(crate) fn injected(&self, class: Class) -> Option<ApiError> {
        let mut f = self.lock();
        if let Some(e) = f.server_errors.as_mut().filter(|e| e.scope.covers(class)) {
            let hit = if e.next > 0 {
                e.next -= 1;
                true
            } else {
                self.roll(e.rate)
            };
            if hit {
                let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Some(ApiError::backend(status));
            }
        }
        if let Some(t) = f.throttle.as_mut().filter(|t| t.scope.covers(class)) {
            let hit = if t.next > 0 {
                t.next -= 1;
                true
            } else {
                self.roll(t.rate)
            };
            if hit {
                return Some(match t.kind {
                    ThrottleKind::UserRateLimit => ApiError::user_rate_limit(),
                    ThrottleKind::RateLimit403 => ApiError::rate_limit_403(),
                    ThrottleKind::RateLimit429 => ApiError::rate_limit_429(),
                });
            }
        }
        None
    }

    /// If the next download (or upload) body is to be cut, after how many bytes.
    pub(crate) fn take_drop(&self, upload: bool) -> Option<u64> {
        let mut f = self.lock();
        let d = if upload { f.drop_uploads.as_mut() } else { f.drop_downloads.as_mut() }?;
        if d.next == 0 {
            return None;
        }
        d.next -= 1;
        Some(d.after_bytes)
    }

    /// If the next chunk is to be committed short: how many of its bytes are kept,
    /// and whether the first is corrupted.
    pub(crate) fn take_short_commit(&self) -> Option<(u64, bool)> {
        let mut f = self.lock();
        let c = f.short_commits.as_mut().filter(|c| c.next > 0)?;
        c.next -= 1;
        Some((c.keep_bytes, c.corrupt))
    }

    /// Whether the answer to an upload that just completed a file is to be lost.
    pub(crate) fn take_lost_answer(&self) -> bool {
        let mut f = self.lock();
        if f.lose_completion_answers == 0 {
            return false;
        }
        f.lose_completion_answers -= 1;
        true
    }

    /// Whether a create is allowed now.
    pub(crate) fn allow_create(&self) -> bool {
        let max = self.lock().creates_per_s_max;
        max == 0 || self.creates.lock().expect("no panics holding the window").allow(Instant::now(), max)
    }

    /// Whether the day's upload budget is spent.
    pub(crate) fn daily_budget_spent(&self) -> bool {
        let max = self.lock().daily_upload_bytes_max;
        max.is_some_and(|m| self.uploaded_today.load(Ordering::Relaxed) >= m)
    }

    /// Counts bytes committed by an upload towards the day.
    pub(crate) fn count_uploaded(&self, n: u64) {
        self.uploaded_today.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn uploaded_today(&self) -> u64 {
        self.uploaded_today.load(Ordering::Relaxed)
    }

    /// A new day: the upload budget is whole again.
    pub(crate) fn new_day(&self) {
        self.uploaded_today.store(0, Ordering::Relaxed);
    }

    pub(crate) fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.lock().token_lifetime_s)
    }

    pub(crate) fn short_pages(&self) -> bool {
        self.lock().short_pages
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.lock().latency_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_then_rates() {
        let f = Faults {
            throttle: Some(Throttle { kind: ThrottleKind::RateLimit429, next: 2, rate: 0.0, scope: Scope::Uploads }),
            ..Faults::default()
        };
        let s = FaultState::new(f, 1);
        assert_eq!(s.injected(Class::Metadata), None, "out of scope");
        assert_eq!(s.injected(Class::Upload).map(|e| e.status.as_u16()), Some(429));
        assert_eq!(s.injected(Class::Upload).map(|e| e.reason), Some("rateLimitExceeded"));
        assert_eq!(s.injected(Class::Upload), None, "two only");
        s.set(Faults {
            server_errors: Some(ServerErrors { status: 500, next: 0, rate: 1.0, scope: Scope::All }),
            ..Faults::default()
        });
        assert_eq!(s.injected(Class::Download).map(|e| (e.status.as_u16(), e.reason)), Some((500, "backendError")));
    }

    #[test]
    fn faults_as_json() {
        let f: Faults = serde_json::from_str(r#"{"throttle": {"kind": "rate_limit_429", "next": 1}}"#).unwrap();
        assert_eq!(f.throttle.map(|t| (t.kind, t.next, t.scope)), Some((ThrottleKind::RateLimit429, 1, Scope::All)));
        assert_eq!(f.token_lifetime_s, 3599, "unnamed switches keep their defaults");
        assert!(serde_json::from_str::<Faults>(r#"{"no_such_switch": 1}"#).is_err());
        let back: Faults = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn creates_per_second_window() {
        let mut w = CreateWindow::default();
        let t0 = Instant::now();
        assert!(w.allow(t0, 2));
        assert!(w.allow(t0 + Duration::from_millis(10), 2));
        assert!(!w.allow(t0 + Duration::from_millis(20), 2), "a third within the second");
        assert!(w.allow(t0 + Duration::from_millis(1000), 2), "the first left the window");
        assert!(!w.allow(t0 + Duration::from_millis(1001), 2));
        assert!(w.allow(t0 + Duration::from_millis(1011), 2));
    }

    #[test]
    fn daily_budget() {
        let s = FaultState::new(Faults { daily_upload_bytes_max: Some(100), ..Faults::default() }, 1);
        assert!(!s.daily_budget_spent());
        s.count_uploaded(99);
        assert!(!s.daily_budget_spent(), "an upload that starts under the budget may finish over it");
        s.count_uploaded(50);
        assert!(s.daily_budget_spent());
        s.new_day();
        assert!(!s.daily_budget_spent());
        let e = ApiError::daily_upload_limit();
        assert_eq!(
            (e.status.as_u16(), e.reason, e.message.as_str()),
            (403, "userRateLimitExceeded", "User rate limit exceeded.")
        );
    }

    #[test]
    fn drops_count_down() {
        let s = FaultState::new(
            Faults { drop_uploads: Some(DropAfter { after_bytes: 10, next: 1 }), ..Faults::default() },
            1,
        );
        assert_eq!(s.take_drop(false), None);
        assert_eq!(s.take_drop(true), Some(10));
        assert_eq!(s.take_drop(true), None);
        let s = FaultState::new(
            Faults {
                short_commits: Some(ShortCommit { keep_bytes: 5, next: 1, corrupt: false }),
                lose_completion_answers: 1,
                ..Faults::default()
            },
            1,
        );
        assert_eq!((s.take_short_commit(), s.take_short_commit()), (Some((5, false)), None));
        assert_eq!((s.take_lost_answer(), s.take_lost_answer()), (true, false));
    }
}
