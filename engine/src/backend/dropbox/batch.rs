//! Commits of small files, many at once, through `files/upload_session/finish_batch_v2`.
//!
//! Every commit into a Dropbox namespace takes the namespace's lock, and commits that
//! arrive together (one `files/upload` per file from many workers) contend for it and
//! come back `too_many_write_operations`. Dropbox's answer for many small files is to
//! send each one's bytes on its own (`upload_session/start` with `close: true`) and
//! commit up to 1,000 of them in one call, which takes the lock once. `finish_batch_v2`
//! answers synchronously, each entry with its own success (the file's metadata) or
//! failure, in the order sent.
//!
//! One [`Batcher`] serves every worker of an account (workers are threads with event
//! loops of their own, so it is shared like the token cache: an `Arc` with a `Mutex`,
//! never held across a request). An upload hands its entry in and waits on its own
//! slot (a result and an [`Event`]); there is no batching thread. The first waiter to
//! find no batch under way leads: it waits out the window, takes up to 1,000 entries,
//! sends them on its own worker's connection, fills each entry's slot, and wakes the
//! first entry still waiting, which leads the next batch. So one batch is in flight per
//! account at a time (batches committed in parallel would contend for the same lock
//! again), and what arrives meanwhile goes in the next one (group commit).
//!
//! The window: an idle batcher's first entry waits [`WINDOW`] (2 ms) for others to
//! join, so that the uploads that many workers finish together go in one batch rather
//! than the first alone. It bounds what batching adds to a relay of one small file
//! (next to the round trip of the batch call itself). Entries that came while a batch
//! was in flight have usually waited longer than that already, and go at once. On the
//! emulator with 20 ms round trips, 2 ms beat 0 and 0.5 ms (fewer, fuller batches);
//! with none, 0.5 ms did better, but real round trips are tens of milliseconds.
//!
//! A waiter that is dropped (its relay stopped) takes its entry out of the queue; a
//! leader that is dropped fails the entries it took with a retryable error and hands
//! the lead on, so nothing waits for a batch that will never be sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;
use serde_json::{json, Value};

use super::DropboxStore;
use crate::error::{Error, Result};
use crate::http::ResponseHead;

/// The most entries one `finish_batch_v2` takes (Dropbox's limit).
pub(super) const BATCH_ENTRIES_MAX: usize = 1000;
/// How long an idle batcher's first entry waits for others (see the module's docs).
const WINDOW: Duration = Duration::from_millis(2);
/// Entries waiting at most: one per small upload in flight, which the relay's transfer
/// limit bounds well below this; past it an upload is refused (and retried).
const PENDING_MAX: usize = 1 << 16;
const _: () = assert!(BATCH_ENTRIES_MAX <= PENDING_MAX);

const ROUTE: &str = "files/upload_session/finish_batch_v2";
const OP: &str = "commit-batch";

/// Where one entry's outcome lands.
#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Result<Value>>>,
    /// Notified when the outcome is set, or when the lead is free and this entry is
    /// the first waiting.
    wake: Event,
}

impl Slot {
    fn set(&self, outcome: Result<Value>) {
        *self.outcome.lock().expect("slot lock") = Some(outcome);
        self.wake.notify(1);
    }

    fn take(&self) -> Option<Result<Value>> {
        self.outcome.lock().expect("slot lock").take()
    }
}

struct Waiting {
    key: String,
    /// The `UploadSessionFinishArg`, taken out when the entry is sent.
    entry: Value,
    slot: Arc<Slot>,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    pending: VecDeque<Waiting>,
    /// A waiter is leading: waiting out the window or with a batch in flight.
    leading: bool,
}

impl Inner {
    /// Wakes the first entry waiting, to lead, when nobody does.
    fn pass_lead(&self) {
        if !self.leading {
            if let Some(first) = self.pending.front() {
                first.slot.wake.notify(1);
            }
        }
    }
}

/// The account's commit batches, shared by every worker's handle.
#[derive(Default)]
pub struct Batcher {
    inner: Mutex<Inner>,
}

/// Takes a dropped waiter's entry out of the queue (or, when it is done, only passes
/// the lead on).
struct WaitGuard<'a> {
    batcher: &'a Batcher,
    slot: &'a Arc<Slot>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.batcher.lock();
        if let Some(i) = inner.pending.iter().position(|w| Arc::ptr_eq(&w.slot, self.slot)) {
            inner.pending.remove(i);
        }
        inner.pass_lead();
    }
}

/// The lead, given up when dropped: entries taken and not answered fail retryably.
struct LeadGuard<'a> {
    batcher: &'a Batcher,
    taken: Vec<Waiting>,
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        for w in self.taken.drain(..) {
            w.slot.set(Err(Error::protocol(OP, &w.key, "the commit batch that carried it was abandoned")));
        }
        let mut inner = self.batcher.lock();
        assert!(inner.leading, "only the leader gives up the lead");
        inner.leading = false;
        inner.pass_lead();
    }
}

impl Batcher {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("no panic holds the batcher lock")
    }

    /// Commits one closed upload session through the next batch: `entry` is its
    /// `UploadSessionFinishArg`. The file's metadata, or the error its entry (or the
    /// whole call) came back with, classified like a single call's.
    pub(super) async fn commit(&self, store: &DropboxStore, key: &str, entry: Value) -> Result<Value> {
        let slot = Arc::new(Slot::default());
        {
            let mut inner = self.lock();
            if inner.pending.len() >= PENDING_MAX {
                return Err(Error::protocol(OP, key, format!("over {PENDING_MAX} commits are waiting for a batch")));
            }
            let waiting = Waiting { key: key.to_string(), entry, slot: slot.clone(), since: Instant::now() };
            inner.pending.push_back(waiting);
        }
        let _guard = WaitGuard { batcher: self, slot: &slot };
        loop {
            // Listening before looking: a wake between the two is not lost.
            let woken = slot.wake.listen();
            if let Some(outcome) = slot.take() {
                return outcome;
            }
            let lead = {
                let mut inner = self.lock();
                let free = !inner.leading && !inner.pending.is_empty();
                inner.leading |= free;
                free
            };
            if lead {
                self.lead(store).await;
                continue;
            }
            woken.await;
        }
    }

    /// Sends one batch: after the window, up to [`BATCH_ENTRIES_MAX`] entries from the
    /// front of the queue.
    async fn lead(&self, store: &DropboxStore) {
        let mut guard = LeadGuard { batcher: self, taken: Vec::new() };
        let wait = {
            let inner = self.lock();
            let first = inner.pending.front().map_or_else(Instant::now, |w| w.since);
            let full = inner.pending.len() >= BATCH_ENTRIES_MAX;
            if full {
                Duration::ZERO
            } else {
                (first + WINDOW).saturating_duration_since(Instant::now())
            }
        };
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
        {
            let mut inner = self.lock();
            let n = inner.pending.len().min(BATCH_ENTRIES_MAX);
            guard.taken.extend(inner.pending.drain(..n));
        }
        if guard.taken.is_empty() {
            // Every entry's waiter went away meanwhile.
            return;
        }
        let entries: Vec<Value> = guard.taken.iter_mut().map(|w| std::mem::take(&mut w.entry)).collect();
        let target = format!("{} ({} files)", guard.taken[0].key, entries.len());
        let answer = store.rpc(ROUTE, OP, &target, &json!({ "entries": entries })).await;
        let results = answer.and_then(|a| match a.get("entries").and_then(Value::as_array) {
            Some(list) if list.len() == guard.taken.len() => Ok(list.clone()),
            _ => Err(Error::protocol(
                OP,
                &target,
                format!("{ROUTE} did not answer one entry for each of the {} sent", guard.taken.len()),
            )),
        });
        match results {
            Ok(list) => {
                for (w, result) in guard.taken.drain(..).zip(list) {
                    w.slot.set(entry_outcome(store, &w.key, result));
                }
            }
            Err(e) => {
                for w in guard.taken.drain(..) {
                    w.slot.set(Err(for_entry(&e, &w.key)));
                }
            }
        }
    }
}

/// One entry of the answer: its metadata, or its failure as the error a single
/// `upload_session/finish` would have answered (a 409 with the failure as `error`).
fn entry_outcome(store: &DropboxStore, key: &str, result: Value) -> Result<Value> {
    match result.get(".tag").and_then(Value::as_str) {
        Some("success") => Ok(result),
        Some("failure") => {
            let failure = result.get("failure").cloned().unwrap_or(Value::Null);
            let body = json!({ "error_summary": summary(&failure), "error": failure });
            let head = ResponseHead { status: 409, headers: Vec::new() };
            Err(store.http_error(OP, key, &head, body.to_string().as_bytes(), None))
        }
        _ => Err(Error::protocol(OP, key, format!("{ROUTE} answered an entry that is neither success nor failure"))),
    }
}

/// The `error_summary` Dropbox writes for an error value: its tags, outer first
/// (`path/conflict/folder/`).
fn summary(error: &Value) -> String {
    let mut out = String::new();
    let mut at = error;
    for _ in 0..8 {
        let Some(tag) = at.get(".tag").and_then(Value::as_str) else { break };
        out.push_str(tag);
        out.push('/');
        match at.get(tag) {
            Some(inner) if inner.is_object() => at = inner,
            _ => break,
        }
    }
    out
}

/// The error of a whole batch call, as one entry's.
fn for_entry(e: &Error, key: &str) -> Error {
    match e {
        Error::Http { op, status, code, message, hint, retry_after, class, .. } => Error::Http {
            op,
            target: key.to_string(),
            status: *status,
            code: code.clone(),
            message: message.clone(),
            hint: hint.clone(),
            retry_after: *retry_after,
            class: *class,
        },
        Error::Usage(m) => Error::Usage(m.clone()),
        Error::Tls { op, endpoint, detail, .. } => {
            Error::Tls { op, target: key.to_string(), endpoint: endpoint.clone(), detail: detail.clone() }
        }
        // Connections, timeouts and unreadable answers: retryable, as the original.
        other => Error::protocol(OP, key, format!("the commit batch failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn summaries_name_the_tags_outer_first() {
        let conflict = json!({ ".tag": "path", "path": { ".tag": "conflict", "conflict": { ".tag": "folder" } } });
        assert_eq!(summary(&conflict), "path/conflict/folder/");
        assert_eq!(summary(&json!({ ".tag": "too_many_write_operations" })), "too_many_write_operations/");
        let lookup =
            json!({ ".tag": "lookup_failed", "lookup_failed": { ".tag": "incorrect_offset", "correct_offset": 3 } });
        assert_eq!(summary(&lookup), "lookup_failed/incorrect_offset/");
        assert_eq!(summary(&Value::Null), "");
    }

    #[test]
    fn a_whole_call_error_keeps_its_class_for_each_entry() {
        let e = Error::Http {
            op: OP,
            target: "batch".into(),
            status: 429,
            code: "too_many_write_operations".into(),
            message: "too_many_write_operations".into(),
            hint: String::new(),
            retry_after: Some(Duration::from_secs(2)),
            class: ErrorClass::Throttled,
        };
        let one = for_entry(&e, "a/b");
        assert!(one.is_throttle() && one.retry_after() == Some(Duration::from_secs(2)));
        assert!(one.to_string().contains("a/b"), "{one}");
        let io = Error::io(OP, "batch", std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(for_entry(&io, "k").class(), ErrorClass::Retryable);
        assert!(for_entry(&Error::Usage("fix it".into()), "k").is_fatal());
    }
}

#[cfg(test)]
mod proptests {
    //! The entries of a `finish_batch_v2` answer: any value gives its outcome or an
    //! error, never a panic, and a failure keeps the tags of its error, outer first.

    use std::sync::Arc;

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::super::auth::Credentials;
    use super::super::DropboxConfig;
    use super::*;
    use crate::http::{Endpoint, HttpClient};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0xba7c),
            ..ProptestConfig::default()
        }
    }

    thread_local! {
        static IDLE: std::rc::Rc<DropboxStore> = std::rc::Rc::new(make_store());
    }

    /// A store made once (a client is costly to make).
    fn store() -> std::rc::Rc<DropboxStore> {
        IDLE.with(std::rc::Rc::clone)
    }

    fn make_store() -> DropboxStore {
        let at = Endpoint { tls: false, host: "127.0.0.1".into(), port: 1 };
        let cfg = DropboxConfig {
            remote: "d".into(),
            root: String::new(),
            api: at.clone(),
            content: at.clone(),
            token_endpoint: at,
            token_path: "/oauth2/token".into(),
            credentials: Credentials::Token("tok".into()),
            batch_commits: true,
        };
        DropboxStore {
            cfg: Arc::new(cfg),
            tokens: Arc::default(),
            template: Arc::default(),
            batcher: Arc::default(),
            http: HttpClient::default(),
        }
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(&[".tag", "success", "failure", "path", "conflict", "lookup_failed", "reason"][..])
                .prop_map(str::to_string),
            "\\PC{0,10}",
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            word().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((word(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(config(384))]

        #[test]
        fn arbitrary_entries_never_panic(v in json(), failure in json()) {
            let _ = summary(&v);
            let s = store();
            for entry in [v.clone(), json!({ ".tag": "failure", "failure": failure }), json!({ ".tag": "success", "x": v })] {
                let is_success = entry.get(".tag").and_then(Value::as_str) == Some("success");
                match entry_outcome(&s, "k", entry) {
                    Ok(_) => prop_assert!(is_success),
                    Err(e) => {
                        prop_assert!(!is_success);
                        let _ = (e.to_string(), e.class());
                    }
                }
            }
        }

        #[test]
        fn failures_keep_their_tags(tags in prop::collection::vec("[a-z][a-z_]{0,16}", 1..12)) {
            let mut failure = json!({ ".tag": tags[tags.len() - 1] });
            for t in tags.iter().rev().skip(1) {
                failure = json!({ ".tag": t, t.as_str(): failure });
            }
            let kept: Vec<&str> = tags.iter().take(8).map(String::as_str).collect();
            prop_assert_eq!(summary(&failure), format!("{}/", kept.join("/")));
            let e = entry_outcome(&store(), "k", json!({ ".tag": "failure", "failure": failure })).unwrap_err();
            let Error::Http { status, code, .. } = &e else { panic!("{e}") };
            prop_assert_eq!((*status, code.as_str()), (409, tags[0].as_str()));
        }
    }
}
