//! A failure-injecting wrapper around any backend, for tests: [`Faulty`].
//!
//! mountpoint-s3's `failure_client.rs` is the model: one wrapper that implements the
//! same traits as the store it wraps (its [`Source`], [`Sink`] and [`UploadSession`]
//! handles included) and, on the calls a test picks, fails the way networks and
//! stores fail, with errors of the shapes real backends return (an [`Error::Io`]
//! reset, an [`Error::Http`] with its status, code, Retry-After and class), so the
//! relay's handling is tested rather than a special case for tests.
//!
//! Faults come by script (a list of [`Rule`]s: an operation, the nth call, optionally
//! on one key, and the fault) or by seed ([`Chaos`]: a probability per fault, a
//! bound on how many fire). A seeded decision is a hash of the seed, the operation,
//! the key, the part and how many times that call was made, so it does not depend on
//! how the workers' threads interleave (only the bound does). Every fault that fires
//! is logged ([`Faulty::fired`]), so a test can tell what its relay went through.
//!
//! Some faults change bytes, and where they change them is the point: [`Fault::Corrupt`]
//! on a read flips a byte before the relay hashes it (only the source's own checksum
//! can catch it), and on a put after the relay computed its checksum (the
//! destination's verification must catch it). Streamed bodies (a ring's chunks go
//! straight from the relay to the store) can't be changed here: on
//! [`FaultOp::ReadStream`] and [`FaultOp::PutStream`] only the faults that don't touch
//! bytes apply. A rule whose fault can't apply to the call it lands on does nothing.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::mem::{checksum_of, splitmix64};
use super::{
    Backend, Capabilities, Committed, CopySource, ListPage, LocalFuture, ObjectInfo, PartRecord, PartSpec, PutArgs,
    Session, SessionState, Sink, Source, Store, UploadMode, UploadPlan, UploadSession, WorkerCtx,
};
use crate::checksum::{Checksum, ChecksumAlgo, Composite, Hasher, Hashers};
use crate::error::{Error, ErrorClass, Result};
use crate::pool::ring::{Drain, Filler, Next};
use crate::pool::{Body, BufferPool};

/// The operations faults can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// A listing page.
    List,
    /// A stat.
    Stat,
    /// The check before a relay starts.
    Check,
    /// A read into a body.
    Read,
    /// A read through a ring.
    ReadStream,
    /// Beginning an upload.
    Begin,
    /// A single put or a part sent whole.
    Put,
    /// A part streamed through a ring.
    PutStream,
    /// A part copied in the store.
    CopyPart,
    /// Asking a session what it holds.
    Committed,
    /// Finishing an upload.
    Finish,
    /// Aborting an upload.
    Abort,
    /// A directory marker.
    DirMarker,
    /// A whole object copied in the store.
    CopyObject,
}

impl FaultOp {
    /// The operation's name in errors, as the real backends name it.
    fn name(self) -> &'static str {
        match self {
            FaultOp::List => "list",
            FaultOp::Stat => "stat",
            FaultOp::Check => "check",
            FaultOp::Read | FaultOp::ReadStream => "get",
            FaultOp::Begin => "create-multipart",
            FaultOp::Put | FaultOp::PutStream => "upload-part",
            FaultOp::CopyPart => "copy-part",
            FaultOp::Committed => "list-parts",
            FaultOp::Finish => "complete-multipart",
            FaultOp::Abort => "abort-multipart",
            FaultOp::DirMarker => "mkdir",
            FaultOp::CopyObject => "copy",
        }
    }
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The connection is reset before the store sees the request (`ConnectionReset`).
    Reset,
    /// The store does what was asked, then the connection is reset before its answer
    /// arrives: the caller sees a reset for something that happened.
    AnswerLost,
    /// A read delivers about half its bytes, then the connection breaks.
    ShortRead,
    /// A read delivers about half its bytes and ends as if it were whole.
    ShortEnd,
    /// 500 `InternalError`, retryable.
    ServerError,
    /// 503 `SlowDown` with a short Retry-After, throttled.
    Throttle,
    /// 401 `ExpiredToken`: re-authenticate. By seed, fires once per wrapper (a token
    /// expires, the next one works).
    ExpiredCredential,
    /// A byte of the body flipped: on a read before the relay hashes it, on a put
    /// after the relay computed its checksum.
    Corrupt,
    /// A part of an upload session is acknowledged (with the receipt the store would
    /// give), but the store never gets it.
    LosePart,
    /// A part of an upload session is sent twice.
    DuplicatePart,
    /// A part of an ordered stream is acknowledged, but the store keeps only a prefix
    /// of it (a multiple of the alignment, possibly nothing): its committed offset is
    /// behind what was sent.
    CommitShort,
}

impl Fault {
    /// Whether the fault can happen on `call`.
    fn applies(self, call: &Call<'_>) -> bool {
        use FaultOp::*;
        match self {
            Fault::Reset | Fault::AnswerLost | Fault::ServerError | Fault::Throttle | Fault::ExpiredCredential => true,
            Fault::ShortRead | Fault::ShortEnd => matches!(call.op, Read | ReadStream),
            Fault::Corrupt => matches!(call.op, Read | Put) && call.len > 0,
            Fault::LosePart => call.multi && matches!(call.op, Put | PutStream),
            Fault::DuplicatePart => call.multi && call.op == Put,
            Fault::CommitShort => call.multi && call.ordered && call.op == Put && call.len > 0,
        }
    }
}

/// One scripted fault: on calls `nth..nth + count` (1-based) of `op`, counted over
/// every key or only over `key`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The operation.
    pub op: FaultOp,
    /// Only calls on this key count (a listing's key is its prefix).
    pub key: Option<String>,
    /// The first call hit, 1-based.
    pub nth: u64,
    /// Calls hit from the nth on.
    pub count: u64,
    /// What happens.
    pub fault: Fault,
}

impl Rule {
    /// The `nth` call of `op` (over every key) meets `fault`.
    pub fn nth(op: FaultOp, nth: u64, fault: Fault) -> Rule {
        assert!(nth > 0, "calls are counted from 1");
        Rule { op, key: None, nth, count: 1, fault }
    }

    /// The `nth` call of `op` on `key` meets `fault`.
    pub fn on_key(op: FaultOp, key: &str, nth: u64, fault: Fault) -> Rule {
        Rule { key: Some(key.to_string()), ..Rule::nth(op, nth, fault) }
    }

    /// Hits `count` calls in a row instead of one.
    pub fn times(self, count: u64) -> Rule {
        Rule { count, ..self }
    }
}

/// Faults by seed: each call meets each fault that can happen to it with its
/// probability, until `max_faults` have fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Chaos {
    /// The seed.
    pub seed: u64,
    /// Each fault and its probability per call, in 0..=1.
    pub rates: Vec<(Fault, f64)>,
    /// The operations faults are injected into; empty: all.
    pub ops: Vec<FaultOp>,
    /// The most faults that fire, over the wrapper's life.
    pub max_faults: u64,
}

/// The faults a wrapper injects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Scripted faults; the first rule that hits a call decides it.
    pub script: Vec<Rule>,
    /// Seeded faults, for calls no rule hits.
    pub chaos: Option<Chaos>,
}

impl Faults {
    /// The faults of a script.
    pub fn script(rules: Vec<Rule>) -> Faults {
        Faults { script: rules, chaos: None }
    }

    /// Faults by seed.
    pub fn chaos(chaos: Chaos) -> Faults {
        Faults { script: Vec::new(), chaos: Some(chaos) }
    }
}

/// A fault that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The operation.
    pub op: FaultOp,
    /// The key (a listing's prefix).
    pub key: String,
    /// The part number of a put, or the first byte of a read.
    pub at: u64,
    /// What happened.
    pub fault: Fault,
}

/// One call, as faults see it.
struct Call<'a> {
    op: FaultOp,
    key: &'a str,
    /// The part number of a put, the first byte of a read.
    at: u64,
    /// Bytes the call carries or asks for (`u64::MAX`: unknown).
    len: u64,
    /// Whether the call belongs to a multipart upload or resumable session.
    multi: bool,
    /// Whether the store takes one ordered stream.
    ordered: bool,
}

impl<'a> Call<'a> {
    fn new(op: FaultOp, key: &'a str) -> Call<'a> {
        Call { op, key, at: 0, len: u64::MAX, multi: false, ordered: false }
    }
}

#[derive(Default)]
struct PlanState {
    /// Calls so far, by operation.
    calls: HashMap<FaultOp, u64>,
    /// Calls so far, by operation and key.
    key_calls: HashMap<(FaultOp, String), u64>,
    /// Calls so far, by operation, key and place: what a seeded decision hashes.
    place_calls: HashMap<(FaultOp, String, u64), u64>,
    fired: Vec<Fired>,
    chaos_fired: u64,
    reauth_fired: bool,
}

/// The faults, and what they have done so far; shared by every handle.
struct Plan {
    faults: Faults,
    state: Mutex<PlanState>,
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K) -> u64 {
    let n = map.entry(key).or_default();
    *n += 1;
    *n
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

impl Plan {
    /// The fault `call` meets, if any; logged when it fires.
    fn decide(&self, call: &Call<'_>) -> Option<Fault> {
        let mut s = self.state.lock().expect("fault plan lock");
        let n_all = bump(&mut s.calls, call.op);
        let n_key = bump(&mut s.key_calls, (call.op, call.key.to_string()));
        let n_place = bump(&mut s.place_calls, (call.op, call.key.to_string(), call.at));
        let scripted = self.faults.script.iter().find_map(|rule| {
            let n = match &rule.key {
                None => n_all,
                Some(k) if k == call.key => n_key,
                Some(_) => return None,
            };
            let hit = rule.op == call.op
                && n >= rule.nth
                && n < rule.nth.saturating_add(rule.count)
                && rule.fault.applies(call);
            hit.then_some(rule.fault)
        });
        let fault = scripted.or_else(|| {
            let chaos = self.faults.chaos.as_ref()?;
            if s.chaos_fired >= chaos.max_faults || !(chaos.ops.is_empty() || chaos.ops.contains(&call.op)) {
                return None;
            }
            let place = hash_str(call.key) ^ (call.op as u64).wrapping_mul(0x9e37_79b9) ^ call.at.rotate_left(17);
            let fault = chaos.rates.iter().enumerate().find_map(|(i, (fault, p))| {
                let roll = splitmix64(chaos.seed ^ splitmix64(place ^ n_place.rotate_left(40) ^ i as u64));
                let once_done = *fault == Fault::ExpiredCredential && s.reauth_fired;
                (fault.applies(call) && !once_done && (roll as f64) < p * u64::MAX as f64).then_some(*fault)
            })?;
            s.chaos_fired += 1;
            s.reauth_fired |= fault == Fault::ExpiredCredential;
            Some(fault)
        })?;
        s.fired.push(Fired { op: call.op, key: call.key.to_string(), at: call.at, fault });
        Some(fault)
    }

    /// Runs `op` through the faults that don't touch bytes.
    async fn around<T>(&self, call: Call<'_>, op: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match self.decide(&call) {
            None => op.await,
            Some(Fault::AnswerLost) => {
                op.await?;
                Err(reset(&call))
            }
            Some(fault) => Err(error_for(fault, &call)),
        }
    }
}

fn reset(call: &Call<'_>) -> Error {
    let cause = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer (injected)");
    Error::io(call.op.name(), call.key, cause)
}

fn short(call: &Call<'_>, got: u64) -> Error {
    let cause = std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the connection closed after {got} bytes of the body (injected)"),
    );
    Error::io(call.op.name(), call.key, cause)
}

/// How long an injected 503 asks the caller to wait.
pub const THROTTLE_RETRY_AFTER: Duration = Duration::from_millis(20);

/// The error a fault that touches no bytes returns, shaped as a store's.
fn error_for(fault: Fault, call: &Call<'_>) -> Error {
    let http = |status: u16, code: &str, message: &str, hint: &str, retry_after, class| Error::Http {
        op: call.op.name(),
        target: call.key.to_string(),
        status,
        code: code.to_string(),
        message: format!("{message} (injected)"),
        hint: hint.to_string(),
        retry_after,
        class,
    };
    match fault {
        Fault::ServerError => http(
            500,
            "InternalError",
            "We encountered an internal error. Please try again.",
            "",
            None,
            ErrorClass::Retryable,
        ),
        Fault::Throttle => http(
            503,
            "SlowDown",
            "Please reduce your request rate.",
            "",
            Some(THROTTLE_RETRY_AFTER),
            ErrorClass::Throttled,
        ),
        Fault::ExpiredCredential => http(
            401,
            "ExpiredToken",
            "The provided token has expired.",
            "; the backend dropped its cached token",
            None,
            ErrorClass::Reauthenticate,
        ),
        _ => reset(call),
    }
}

/// Any backend, with faults.
pub struct Faulty<B> {
    inner: B,
    plan: Arc<Plan>,
}

impl<B> Faulty<B> {
    /// `inner`, meeting `faults`.
    pub fn new(inner: B, faults: Faults) -> Faulty<B> {
        Faulty { inner, plan: Arc::new(Plan { faults, state: Mutex::new(PlanState::default()) }) }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Every fault that fired so far, in order.
    pub fn fired(&self) -> Vec<Fired> {
        self.plan.state.lock().expect("fault plan lock").fired.clone()
    }

    /// Calls of `op` so far (faulted or not).
    pub fn calls(&self, op: FaultOp) -> u64 {
        self.plan.state.lock().expect("fault plan lock").calls.get(&op).copied().unwrap_or(0)
    }
}

impl<B: Backend> Backend for Faulty<B> {
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        Ok(Rc::new(FaultySource { inner: self.inner.open_source(ctx)?, plan: self.plan.clone() }))
    }

    fn open_sink(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        Ok(Rc::new(FaultySink { inner: self.inner.open_sink(ctx)?, plan: self.plan.clone() }))
    }
}

/// Listing, stat and check of a wrapped store, with faults.
fn list<'a>(
    plan: &'a Plan,
    inner: &'a dyn Store,
    prefix: &'a str,
    token: Option<String>,
) -> LocalFuture<'a, Result<ListPage>> {
    Box::pin(plan.around(Call::new(FaultOp::List, prefix), inner.list(prefix, token)))
}

fn stat<'a>(plan: &'a Plan, inner: &'a dyn Store, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
    Box::pin(plan.around(Call::new(FaultOp::Stat, key), inner.stat(key)))
}

fn check<'a>(plan: &'a Plan, inner: &'a dyn Store, writable: bool) -> LocalFuture<'a, Result<()>> {
    Box::pin(plan.around(Call::new(FaultOp::Check, ""), inner.check(writable)))
}

/// A source handle with faults.
struct FaultySource {
    inner: Rc<dyn Source>,
    plan: Arc<Plan>,
}

impl Store for FaultySource {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        list(&self.plan, &*self.inner, prefix, token)
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        stat(&self.plan, &*self.inner, key)
    }

    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    fn check<'a>(&'a self, writable: bool) -> LocalFuture<'a, Result<()>> {
        check(&self.plan, &*self.inner, writable)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Hashers like `h`, to hash bytes that are then changed before `h` sees them.
fn scratch(h: &Hashers) -> Hashers {
    h.clone()
}

/// Feeds `h` what `body` holds now, computing what the store made `scratch` compute
/// (it may add the checksums it reports, and drop MD5).
fn feed(h: &mut Hashers, scratch: &Hashers, body: &Body) {
    if !scratch.set().contains(ChecksumAlgo::Md5) {
        h.skip_md5();
    }
    for algo in scratch.set().iter() {
        h.add(algo);
    }
    body.slices().for_each(|s| h.update(s));
}

/// Keeps the first `keep` bytes of `body`.
fn truncate(body: &mut Body, keep: u64) {
    let mut left = keep;
    for chunk in &mut body.chunks {
        let n = (chunk.len() as u64).min(left);
        chunk.truncate(n as usize);
        left -= n;
    }
}

/// Flips one byte of `body` (a third of the way in); false if it is empty.
fn flip(body: &mut Body) -> bool {
    let mut at = body.len() / 3;
    for chunk in &mut body.chunks {
        let len = chunk.len() as u64;
        if at < len {
            chunk.as_mut_slice()[at as usize] ^= 0x5a;
            return true;
        }
        at -= len;
    }
    false
}

impl Source for FaultySource {
    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<(Body, ObjectInfo)>> {
        Box::pin(async move {
            let mut call = Call::new(FaultOp::Read, key);
            if let Some((start, end)) = range {
                (call.at, call.len) = (start, end - start);
            }
            match self.plan.decide(&call) {
                None => self.inner.read(key, range, body, hashers).await,
                Some(Fault::AnswerLost | Fault::ShortRead) => {
                    let mut scratch = scratch(hashers);
                    let (body, _) = self.inner.read(key, range, body, &mut scratch).await?;
                    Err(short(&call, body.len() / 2))
                }
                Some(fault @ (Fault::ShortEnd | Fault::Corrupt)) => {
                    let mut scratch = scratch(hashers);
                    let (mut body, info) = self.inner.read(key, range, body, &mut scratch).await?;
                    if fault == Fault::ShortEnd {
                        let keep = body.len() / 2;
                        truncate(&mut body, keep);
                    } else {
                        flip(&mut body);
                    }
                    feed(hashers, &scratch, &body);
                    Ok((body, info))
                }
                Some(fault) => Err(error_for(fault, &call)),
            }
        })
    }

    fn read_stream<'a>(
        &'a self,
        key: &'a str,
        range: (u64, u64),
        filler: &'a Filler,
        hashers: &'a mut Hashers,
    ) -> LocalFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let call = Call { at: range.0, len: range.1 - range.0, ..Call::new(FaultOp::ReadStream, key) };
            match self.plan.decide(&call) {
                None => self.inner.read_stream(key, range, filler, hashers).await,
                Some(fault @ (Fault::AnswerLost | Fault::ShortRead | Fault::ShortEnd)) => {
                    let half = (range.1 - range.0) / 2;
                    if half > 0 {
                        self.inner.read_stream(key, (range.0, range.0 + half), filler, hashers).await?;
                    }
                    if fault == Fault::ShortEnd {
                        return Ok(None);
                    }
                    Err(short(&call, half))
                }
                Some(fault) => Err(error_for(fault, &call)),
            }
        })
    }

    fn copy_source(&self, key: &str) -> Option<CopySource> {
        self.inner.copy_source(key)
    }

    fn composite<'a>(&'a self, key: &'a str, info: &'a ObjectInfo) -> LocalFuture<'a, Result<Option<Composite>>> {
        self.inner.composite(key, info)
    }
}

/// A sink handle with faults.
struct FaultySink {
    inner: Rc<dyn Sink>,
    plan: Arc<Plan>,
}

impl FaultySink {
    fn wrap<'a>(&'a self, inner: Session<'a>) -> Session<'a> {
        let parts = self.inner.capabilities().parts;
        let ordered = self.inner.capabilities().upload == UploadMode::Ordered;
        Box::new(FaultySession { inner, plan: &self.plan, ordered, alignment: parts.part_alignment_bytes.max(1) })
    }
}

impl Store for FaultySink {
    fn list<'a>(&'a self, prefix: &'a str, token: Option<String>) -> LocalFuture<'a, Result<ListPage>> {
        list(&self.plan, &*self.inner, prefix, token)
    }

    fn stat<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<Option<ObjectInfo>>> {
        stat(&self.plan, &*self.inner, key)
    }

    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }

    fn check<'a>(&'a self, writable: bool) -> LocalFuture<'a, Result<()>> {
        check(&self.plan, &*self.inner, writable)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

impl Sink for FaultySink {
    fn begin<'a>(&'a self, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> LocalFuture<'a, Result<Session<'a>>> {
        Box::pin(async move {
            let call = Call { len: plan.size, multi: !plan.single, ..Call::new(FaultOp::Begin, key) };
            // An answer lost here leaves the store's session open, and its id unknown to
            // the caller: as with a real store, only the store's expiry frees it.
            let session = self.plan.around(call, self.inner.begin(key, plan, args)).await?;
            Ok(self.wrap(session))
        })
    }

    fn resume(&self, state: SessionState) -> Result<Session<'_>> {
        Ok(self.wrap(self.inner.resume(state)?))
    }

    fn put_dir_marker<'a>(&'a self, key: &'a str, args: &'a PutArgs) -> LocalFuture<'a, Result<()>> {
        Box::pin(self.plan.around(Call::new(FaultOp::DirMarker, key), self.inner.put_dir_marker(key, args)))
    }

    fn can_copy_from(&self, source: &CopySource) -> bool {
        self.inner.can_copy_from(source)
    }

    fn delete<'a>(&'a self, key: &'a str) -> LocalFuture<'a, Result<()>> {
        self.inner.delete(key)
    }

    fn copy_object<'a>(
        &'a self,
        source: &'a CopySource,
        key: &'a str,
        args: &'a PutArgs,
    ) -> LocalFuture<'a, Result<()>> {
        Box::pin(self.plan.around(Call::new(FaultOp::CopyObject, key), self.inner.copy_object(source, key, args)))
    }
}

/// An upload session with faults.
struct FaultySession<'a> {
    inner: Session<'a>,
    plan: &'a Plan,
    ordered: bool,
    alignment: u64,
}

impl FaultySession<'_> {
    fn call(&self, op: FaultOp, part: Option<PartSpec>) -> Call<'_> {
        let state = self.inner.state();
        let mut call = Call { multi: !state.plan.single, ordered: self.ordered, ..Call::new(op, &state.key) };
        if let Some(part) = part {
            (call.at, call.len) = (part.number as u64, part.len);
        }
        call
    }
}

/// The bytes of `body`, in chunks of a pool of their own.
async fn copy_of(body: &Body) -> Body {
    const COPY_CHUNK_BYTES: usize = 64 << 10;
    let pool = BufferPool::new(COPY_CHUNK_BYTES, body.len().div_ceil(COPY_CHUNK_BYTES as u64).max(1) as usize);
    let mut chunks = pool.acquire(pool.chunk_count()).await;
    let mut at = 0;
    for slice in body.slices() {
        let mut rest = slice;
        while !rest.is_empty() {
            let n = chunks[at].extend_from(rest);
            rest = &rest[n..];
            if chunks[at].remaining() == 0 {
                at += 1;
            }
        }
    }
    Body::new(chunks)
}

/// The receipt a store would give for `body` (an S3 part's ETag: its MD5).
fn receipt(body: &Body) -> String {
    let mut h = Hasher::new(ChecksumAlgo::Md5);
    body.slices().for_each(|s| h.update(s));
    h.finish().to_hex()
}

impl UploadSession for FaultySession<'_> {
    fn state(&self) -> &SessionState {
        self.inner.state()
    }

    fn put<'a>(&'a self, part: PartSpec, mut body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let call = self.call(FaultOp::Put, Some(part));
            match self.plan.decide(&call) {
                None => self.inner.put(part, body, sums).await,
                Some(Fault::AnswerLost) => {
                    self.inner.put(part, body, sums).await?;
                    Err(reset(&call))
                }
                Some(Fault::Corrupt) => {
                    flip(&mut body);
                    self.inner.put(part, body, sums).await
                }
                Some(Fault::LosePart) => Ok(receipt(&body)),
                Some(Fault::DuplicatePart) => {
                    let copy = copy_of(&body).await;
                    self.inner.put(part, copy, sums).await?;
                    self.inner.put(part, body, sums).await
                }
                Some(Fault::CommitShort) => {
                    let keep = part.len / 2 / self.alignment * self.alignment;
                    if keep > 0 {
                        truncate(&mut body, keep);
                        let mut bytes = Vec::with_capacity(keep as usize);
                        body.slices().for_each(|s| bytes.extend_from_slice(s));
                        let kept_sums: Vec<Checksum> = sums.iter().map(|s| checksum_of(s.algo, &bytes)).collect();
                        self.inner.put(PartSpec { len: keep, ..part }, body, &kept_sums).await?;
                    }
                    Ok(String::new())
                }
                Some(fault) => Err(error_for(fault, &call)),
            }
        })
    }

    fn streams(&self, algo: ChecksumAlgo) -> bool {
        self.inner.streams(algo)
    }

    fn put_stream<'a>(&'a self, part: PartSpec, algo: ChecksumAlgo, drain: Drain) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let call = self.call(FaultOp::PutStream, Some(part));
            match self.plan.decide(&call) {
                None => self.inner.put_stream(part, algo, drain).await,
                Some(Fault::AnswerLost) => {
                    self.inner.put_stream(part, algo, drain).await?;
                    Err(reset(&call))
                }
                Some(Fault::LosePart) => {
                    // Take every byte, as the store would, and keep none.
                    let mut h = Hasher::new(ChecksumAlgo::Md5);
                    loop {
                        match drain.next().await {
                            Next::Chunk(chunk) => {
                                h.update(chunk.as_slice());
                                drain.recycle(chunk);
                            }
                            Next::End(_) => return Ok(h.finish().to_hex()),
                            Next::Aborted => return Err(short(&call, 0)),
                        }
                    }
                }
                // The drain is dropped: the relay's read sees its writer gone.
                Some(fault) => Err(error_for(fault, &call)),
            }
        })
    }

    fn copy_part<'a>(&'a self, source: &'a CopySource, part: PartSpec) -> LocalFuture<'a, Result<String>> {
        Box::pin(self.plan.around(self.call(FaultOp::CopyPart, Some(part)), self.inner.copy_part(source, part)))
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        Box::pin(self.plan.around(self.call(FaultOp::Committed, None), self.inner.committed()))
    }

    fn finish<'a>(&'a self, parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(self.plan.around(self.call(FaultOp::Finish, None), self.inner.finish(parts, full)))
    }

    fn abort(&self) -> LocalFuture<'_, Result<()>> {
        Box::pin(self.plan.around(self.call(FaultOp::Abort, None), self.inner.abort()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::{MemBackend, MemOptions};
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::runtime::block_on(crate::runtime::Driver::Epoll, f).expect("runtime")
    }

    fn ctx() -> WorkerCtx {
        WorkerCtx::new(Default::default())
    }

    #[test]
    fn scripted_faults_hit_the_calls_they_name() {
        let mem = MemBackend::default();
        mem.insert("a", vec![1u8; 100]);
        let rules = vec![
            Rule::nth(FaultOp::Stat, 2, Fault::Throttle),
            Rule::on_key(FaultOp::Read, "a", 1, Fault::Corrupt),
            Rule::nth(FaultOp::List, 1, Fault::ServerError).times(2),
        ];
        let faulty = Faulty::new(mem.clone(), Faults::script(rules));
        let source = faulty.open_source(&ctx()).unwrap();
        block_on(async {
            assert!(source.stat("a").await.unwrap().is_some());
            let e = source.stat("a").await.unwrap_err();
            assert!(e.is_throttle() && e.retry_after() == Some(THROTTLE_RETRY_AFTER), "{e}");
            for _ in 0..2 {
                assert_eq!(source.list("", None).await.unwrap_err().class(), ErrorClass::Retryable);
            }
            assert_eq!(source.list("", None).await.unwrap().entries.len(), 1);
            let pool = BufferPool::new(4096, 1);
            let mut hashers = Hashers::new(ChecksumAlgo::Crc32c, false);
            let body = Body::new(pool.acquire(1).await);
            let (body, info) = source.read("a", None, body, &mut hashers).await.unwrap();
            // The relay's hash is of the corrupt bytes; the source's report is not.
            let (sum, _) = hashers.finish();
            let mut bytes = Vec::new();
            body.slices().for_each(|s| bytes.extend_from_slice(s));
            assert_ne!(bytes, vec![1u8; 100]);
            assert_eq!(sum, checksum_of(ChecksumAlgo::Crc32c, &bytes));
            assert_ne!(info.checksums[0], sum);
        });
        assert_eq!(faulty.fired().len(), 4);
    }

    #[test]
    fn seeded_faults_are_bounded_and_repeat() {
        let run = |seed| {
            let mem = MemBackend::default();
            let chaos = Chaos { seed, rates: vec![(Fault::Reset, 0.3)], ops: vec![FaultOp::Stat], max_faults: 5 };
            let faulty = Faulty::new(mem, Faults::chaos(chaos));
            let source = faulty.open_source(&ctx()).unwrap();
            let failed: Vec<bool> = block_on(async {
                let mut out = Vec::new();
                for i in 0..40 {
                    out.push(source.stat(&format!("k{}", i % 4)).await.is_err());
                }
                out
            });
            (failed, faulty.fired().len())
        };
        let (a, fired) = run(1);
        assert_eq!(run(1).0, a);
        assert_eq!(a.iter().filter(|f| **f).count(), fired);
        assert!(fired > 0 && fired <= 5, "{fired}");
    }

    #[test]
    fn an_ordered_session_can_fall_behind_what_it_acknowledged() {
        let mem = MemBackend::new(MemOptions::ordered(4096));
        let rules = vec![Rule::nth(FaultOp::Put, 1, Fault::CommitShort), Rule::nth(FaultOp::Put, 2, Fault::LosePart)];
        let faulty = Faulty::new(mem.clone(), Faults::script(rules));
        let sink = faulty.open_sink(&ctx()).unwrap();
        let args = PutArgs::default();
        block_on(async {
            let pool = BufferPool::new(4096, 8);
            let plan = UploadPlan { size: 5 * 4096, single: false, checksum: Some(ChecksumAlgo::Crc32c) };
            let session = sink.begin("k", plan, &args).await.unwrap();
            let mut chunks = pool.acquire(3).await;
            chunks.iter_mut().for_each(|c| assert_eq!(c.extend_from(&[7u8; 4096]), 4096));
            let body = Body::new(chunks);
            let sum = checksum_of(ChecksumAlgo::Crc32c, &[7u8; 3 * 4096]);
            let part = PartSpec { number: 1, offset: 0, len: 3 * 4096 };
            session.put(part, body, &[sum]).await.unwrap();
            assert_eq!(session.committed().await.unwrap(), Committed::Offset(4096));
            let body = Body::new(pool.acquire(1).await);
            session.put(PartSpec { number: 2, offset: 4096, len: 0 }, body, &[]).await.unwrap();
            assert_eq!(session.committed().await.unwrap(), Committed::Offset(4096));
        });
        assert_eq!(mem.open_sessions(), 1);
    }
}
