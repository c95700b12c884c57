//! Connections to one endpoint: how many the process holds, and which idle ones it keeps.
//!
//! A connection belongs to the event loop that registered it, so each thread (a worker,
//! a planning thread) keeps its own idle connections, per client and endpoint
//! ([`LocalPool`]). What bounds them is process-wide: one [`Budget`] per endpoint
//! (scheme, host and port; the TLS name is the host) counts the connections open to it
//! on every thread, in use or idle, and a new one is opened only within it, so however
//! many jobs run, the process never holds more than the plan's "at most N connections
//! per endpoint" ([`set_connections_per_endpoint`]). A request that finds the budget
//! spent waits for a connection to come free, on events, never by polling:
//! - one put back on its own thread goes to the oldest request waiting there;
//! - one put back on a thread holding more than its share (by waiting requests) while
//!   requests wait elsewhere is closed instead, its place going to them;
//! - idle ones on a quiet thread are closed by that thread's reaper when it hears that
//!   requests wait elsewhere.
//!
//! Neither reads nor writes take every place: requests sending object data (writes)
//! and the rest (reads, whose answers may be object data) each hold at most the bound
//! less an eighth of it (at least one), the [`Role`] split. A read holds its connection
//! while its bytes wait for the write they feed, and a write holds its own while it
//! waits for the read feeding it; two jobs copying each way between two stores would
//! otherwise fill both stores' budgets with reads whose writes wait for a place, and
//! stall. With the split, writes to each store always find a place that its reads
//! cannot take, and the other way round.
//!
//! The wait is bounded: when no connection to the endpoint has come free for the idle
//! timeout (all of them stuck), the request fails with a retryable error, which frees
//! what its task holds.
//!
//! Idle connections are reaped rather than left in CLOSE-WAIT: one taken from the pool
//! is checked for a peer close (a non-blocking peek, the only syscall the pool adds to
//! a request, and only on reuse), and a reaper task on the thread, which runs only
//! while the thread keeps idle connections, closes each [`SWEEP_INTERVAL`] those whose
//! server closed them and those idle for [`IDLE_MAX`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use event_listener::{Event, IntoNotification};

use super::conn::{Endpoint, Stream};

/// Longest an idle connection is kept: under the keep-alive timeouts of common
/// servers (S3's is about 20 s), so that few are closed by the server first.
pub(crate) const IDLE_MAX: Duration = Duration::from_secs(15);
/// How often a thread's reaper looks at its idle connections.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Idle connections kept per endpoint and client, whatever the budget.
const IDLE_PER_ENDPOINT_MAX: usize = 512;
const _: () = assert!(SWEEP_INTERVAL.as_millis() < IDLE_MAX.as_millis());

static CONNECTIONS_PER_ENDPOINT: OnceLock<usize> = OnceLock::new();

/// Sets the most connections the process opens to one endpoint (the plan's figure),
/// before any is opened. Returns false if it was set already (the first setting
/// stands). Unset, the process opens as many as its requests need.
pub fn set_connections_per_endpoint(connections: usize) -> bool {
    assert!(connections > 0, "at least one connection per endpoint");
    CONNECTIONS_PER_ENDPOINT.set(connections).is_ok()
}

/// The most connections the process opens to one endpoint, if bounded.
pub fn connections_per_endpoint() -> Option<usize> {
    CONNECTIONS_PER_ENDPOINT.get().copied()
}

/// Every endpoint's budget. Entries stay (one per endpoint the process has spoken to).
static BUDGETS: LazyLock<Mutex<HashMap<Endpoint, Arc<Budget>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Requests wait somewhere: threads keeping idle connections to their endpoint close
/// them ([`LocalPool::shed`]).
static SHED: Event = Event::new();

/// Time zero of [`Budget::last_free_ms`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// What a request does with its connection, for the budget's split between reads
/// and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Sends no object data (its answer may be object data, or small).
    Read,
    /// Sends object data.
    Write,
}

impl Role {
    fn index(self) -> usize {
        match self {
            Role::Read => 0,
            Role::Write => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Read => "reads",
            Role::Write => "writes",
        }
    }
}

/// The connections to one endpoint, across the process.
pub(crate) struct Budget {
    authority: String,
    limit: usize,
    /// Connections open (in use or idle, on any thread).
    open: AtomicUsize,
    /// Of which idle in a pool.
    idle: AtomicUsize,
    /// Requests waiting for a connection.
    waiting: AtomicUsize,
    /// Most connections open at once.
    peak: AtomicUsize,
    /// Requests that had to wait.
    waits: AtomicU64,
    /// Idle connections closed because their server had closed them or they aged.
    reaped: AtomicU64,
    /// A connection was closed (its place is free) while requests waited.
    freed: Event,
    /// When a connection last came free (put back or closed) while requests waited,
    /// in ms since [`EPOCH`].
    last_free_ms: AtomicU64,
    /// Most connections in use by one [`Role`] (`usize::MAX`: no split).
    role_limit: usize,
    /// Connections in use (checked out) by each role.
    in_use: [AtomicUsize; 2],
    /// Requests of each role waiting for its share.
    role_waiting: [AtomicUsize; 2],
    /// A connection of the role was put back or closed while requests of it waited.
    role_freed: [Event; 2],
    /// As `last_free_ms`, per role.
    role_last_free_ms: [AtomicU64; 2],
}

/// How many connections one role may hold of `limit`: all but an eighth (at least
/// one); no split under two.
fn role_limit(limit: usize) -> usize {
    if limit < 2 || limit == usize::MAX {
        return usize::MAX;
    }
    limit - (limit / 8).max(1)
}

/// One endpoint's connections, as [`connection_budgets`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// The most the process opens (`usize::MAX`: unbounded).
    pub limit: usize,
    /// Open now, in use or idle.
    pub open: usize,
    /// Of which idle in a pool.
    pub idle: usize,
    /// Requests waiting for one now.
    pub waiting: usize,
    /// Most open at once.
    pub peak: usize,
    /// Requests that had to wait for one.
    pub waits: u64,
    /// Idle ones closed because their server had closed them or they aged.
    pub reaped: u64,
}

/// Every endpoint the process has spoken to (`host:port`), with its connections.
pub fn connection_budgets() -> Vec<(String, BudgetStats)> {
    let budgets = BUDGETS.lock().expect("budgets lock");
    let mut all: Vec<_> = budgets.values().map(|b| (b.authority.clone(), b.stats())).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

impl Budget {
    /// The endpoint's budget, made on first use with the process's bound.
    pub(crate) fn of(endpoint: &Endpoint) -> Arc<Budget> {
        let limit = connections_per_endpoint().unwrap_or(usize::MAX);
        Budget::with_limit(endpoint, limit)
    }

    /// The endpoint's budget, made with `limit` if it has none yet.
    pub(crate) fn with_limit(endpoint: &Endpoint, limit: usize) -> Arc<Budget> {
        assert!(limit > 0);
        let mut budgets = BUDGETS.lock().expect("budgets lock");
        budgets
            .entry(endpoint.clone())
            .or_insert_with(|| {
                Arc::new(Budget {
                    authority: endpoint.authority(),
                    limit,
                    open: AtomicUsize::new(0),
                    idle: AtomicUsize::new(0),
                    waiting: AtomicUsize::new(0),
                    peak: AtomicUsize::new(0),
                    waits: AtomicU64::new(0),
                    reaped: AtomicU64::new(0),
                    freed: Event::new(),
                    last_free_ms: AtomicU64::new(0),
                    role_limit: role_limit(limit),
                    in_use: Default::default(),
                    role_waiting: Default::default(),
                    role_freed: [Event::new(), Event::new()],
                    role_last_free_ms: Default::default(),
                })
            })
            .clone()
    }

    /// A place for a new connection, if the budget has one.
    fn try_open(self: &Arc<Self>, held: &Rc<Cell<usize>>) -> Option<Permit> {
        // SeqCst throughout `open` and `waiting`: a waiter increments `waiting` and then
        // reads `open`; a closer decrements `open` and then reads `waiting`. One of
        // them sees the other, so a waiter never misses the place that came free.
        let mut open = self.open.load(Ordering::SeqCst);
        loop {
            if open >= self.limit {
                return None;
            }
            match self.open.compare_exchange_weak(open, open + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => open = now,
            }
        }
        self.peak.fetch_max(open + 1, Ordering::Relaxed);
        held.set(held.get() + 1);
        Some(Permit { budget: self.clone(), held: held.clone() })
    }

    fn mark_free(&self) {
        self.last_free_ms.store(EPOCH.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since a connection last came free while requests waited.
    fn since_free(&self) -> Duration {
        since(&self.last_free_ms)
    }

    /// A share of `role`'s connections, if it has one free.
    fn try_role(self: &Arc<Self>, role: Role) -> Option<RoleSlot> {
        // SeqCst as in `try_open`, between `in_use` and `role_waiting`.
        let in_use = &self.in_use[role.index()];
        let mut n = in_use.load(Ordering::SeqCst);
        loop {
            if n >= self.role_limit {
                return None;
            }
            match in_use.compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(RoleSlot { budget: self.clone(), role }),
                Err(now) => n = now,
            }
        }
    }

    /// A share of `role`'s connections, waiting (on events) while the role holds all
    /// it may, for as long as one of them comes free at least every `stall`. None when
    /// the budget has no split.
    async fn claim(self: &Arc<Self>, role: Role, stall: Duration) -> Result<Option<RoleSlot>, Stalled> {
        if self.role_limit == usize::MAX {
            return Ok(None);
        }
        if let Some(slot) = self.try_role(role) {
            return Ok(Some(slot));
        }
        let i = role.index();
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.role_waiting[i].fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.role_waiting[i]);
        self.waits.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        loop {
            let freed = self.role_freed[i].listen();
            if let Some(slot) = self.try_role(role) {
                return Ok(Some(slot));
            }
            let stalled = since(&self.role_last_free_ms[i]).min(started.elapsed());
            if stalled >= stall {
                return Err(Stalled {
                    authority: self.authority.clone(),
                    limit: self.limit,
                    waited: stalled,
                    role: Some((role, self.role_limit)),
                });
            }
            monoio::select! {
                _ = freed => {}
                _ = monoio::time::sleep(stall - stalled) => {}
            }
        }
    }

    pub(crate) fn stats(&self) -> BudgetStats {
        BudgetStats {
            limit: self.limit,
            open: self.open.load(Ordering::SeqCst),
            idle: self.idle.load(Ordering::SeqCst),
            waiting: self.waiting.load(Ordering::SeqCst),
            peak: self.peak.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            reaped: self.reaped.load(Ordering::Relaxed),
        }
    }
}

/// Time since the instant in `at` (ms since [`EPOCH`]).
fn since(at: &AtomicU64) -> Duration {
    EPOCH.elapsed().saturating_sub(Duration::from_millis(at.load(Ordering::Relaxed)))
}

/// A connection in use by one [`Role`], given back when it is dropped (when the
/// connection is put back or closed).
pub(crate) struct RoleSlot {
    budget: Arc<Budget>,
    role: Role,
}

impl Drop for RoleSlot {
    fn drop(&mut self) {
        let i = self.role.index();
        // Pairs with the SeqCst increment of `role_waiting` and load of `in_use` in
        // `Budget::claim`.
        self.budget.in_use[i].fetch_sub(1, Ordering::SeqCst);
        if self.budget.role_waiting[i].load(Ordering::SeqCst) > 0 {
            self.budget.role_last_free_ms[i].store(EPOCH.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.budget.role_freed[i].notify(1.additional());
        }
    }
}

/// One connection's place in its endpoint's budget, given back when it is dropped.
pub(crate) struct Permit {
    budget: Arc<Budget>,
    /// The places its pool's connections hold.
    held: Rc<Cell<usize>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.held.set(self.held.get() - 1);
        // Pairs with the SeqCst increment of `waiting` and load of `open` in
        // `LocalPool::checkout` (see `Budget::try_open`).
        let before = self.budget.open.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "a budget gave back more places than it gave");
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            self.budget.mark_free();
            self.budget.freed.notify(1.additional());
        }
    }
}

/// An open connection, its read buffer, and its place in the budget.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    /// Bytes read past the last response head: `buf[start..]` is unread.
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) reused: bool,
    /// Its role's share while it is in use (none while idle).
    pub(crate) role: Option<RoleSlot>,
    idle_since: Instant,
    /// Dropped after the stream (fields drop in order), so the place frees only once
    /// the socket is shut.
    _permit: Permit,
}

impl Conn {
    pub(crate) fn new(stream: Stream, buf: Vec<u8>, permit: Permit) -> Conn {
        Conn { stream, buf, start: 0, reused: false, role: None, idle_since: Instant::now(), _permit: permit }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // io_uring closes a descriptor asynchronously (at the loop's next submission),
        // after the place was given to a request that may connect at once: shutting it
        // down now ends the connection before the next one is opened.
        self.stream.shutdown();
    }
}

/// What a checkout gives.
pub(crate) enum Checkout {
    /// An idle connection, checked for a peer close.
    Idle(Conn),
    /// A place for a new connection.
    Open(Permit),
}

/// No connection to the endpoint came free for the stall bound.
#[derive(Debug)]
pub(crate) struct Stalled {
    pub(crate) authority: String,
    pub(crate) limit: usize,
    pub(crate) waited: Duration,
    /// The role whose share was spent, and the share.
    pub(crate) role: Option<(Role, usize)>,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((role, share)) = self.role {
            return write!(
                f,
                "waited {}s for a connection to {}: {} hold all {share} of its {} they may (the rest are kept for \
                 the other way) and none came free (see `laminar plan`)",
                self.waited.as_secs(),
                self.authority,
                role.name(),
                self.limit
            );
        }
        write!(
            f,
            "waited {}s for a connection to {}: all {} are in use and none came free (the most this process \
             opens to one endpoint, see `laminar plan`)",
            self.waited.as_secs(),
            self.authority,
            self.limit
        )
    }
}

/// One client's idle connections to one endpoint, on one thread.
pub(crate) struct LocalPool {
    budget: Arc<Budget>,
    /// Most recently used last.
    idle: RefCell<Vec<Conn>>,
    /// Requests of this pool waiting for a connection.
    waiters: Cell<usize>,
    /// Places this pool's connections hold (open, in use or idle).
    held: Rc<Cell<usize>>,
    /// A connection was put back while requests here waited.
    returned: Event,
    /// Whether a reaper task runs for this pool.
    reaping: Cell<bool>,
}

impl LocalPool {
    pub(crate) fn new(budget: Arc<Budget>) -> Rc<LocalPool> {
        Rc::new(LocalPool {
            budget,
            idle: RefCell::new(Vec::new()),
            waiters: Cell::new(0),
            held: Rc::new(Cell::new(0)),
            returned: Event::new(),
            reaping: Cell::new(false),
        })
    }

    #[cfg(test)]
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    #[cfg(test)]
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.borrow().len()
    }

    /// The most recently used idle connection that its server has not closed.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let conn = self.idle.borrow_mut().pop()?;
            self.budget.idle.fetch_sub(1, Ordering::SeqCst);
            if !conn.stream.peer_closed() {
                return Some(conn);
            }
            self.budget.reaped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A share of `role`'s connections (waiting while the role holds all it may), then
    /// an idle connection or a place for a new one, waiting (on events) while the
    /// budget is spent, for as long as connections to the endpoint come free at least
    /// every `stall`.
    pub(crate) async fn checkout(&self, stall: Duration, role: Role) -> Result<(Checkout, Option<RoleSlot>), Stalled> {
        let slot = self.budget.claim(role, stall).await?;
        let checkout = self.place(stall).await?;
        Ok((checkout, slot))
    }

    async fn place(&self, stall: Duration) -> Result<Checkout, Stalled> {
        let budget = &self.budget;
        // Requests already waiting here go first to what is put back here.
        if self.waiters.get() == 0 {
            if let Some(conn) = self.take_idle() {
                return Ok(Checkout::Idle(conn));
            }
        }
        if let Some(permit) = budget.try_open(&self.held) {
            return Ok(Checkout::Open(permit));
        }
        let _waiting = Waiting::enter(self);
        budget.waits.fetch_add(1, Ordering::Relaxed);
        if budget.idle.load(Ordering::SeqCst) > 0 {
            // Idle connections on other threads: their reapers close them for us.
            SHED.notify(usize::MAX);
        }
        let started = Instant::now();
        loop {
            // Listen first, then look: what comes free in between is not missed.
            let freed = budget.freed.listen();
            let returned = self.returned.listen();
            if let Some(conn) = self.take_idle() {
                return Ok(Checkout::Idle(conn));
            }
            if let Some(permit) = budget.try_open(&self.held) {
                return Ok(Checkout::Open(permit));
            }
            let stalled = budget.since_free().min(started.elapsed());
            if stalled >= stall {
                return Err(Stalled {
                    authority: budget.authority.clone(),
                    limit: budget.limit,
                    waited: stalled,
                    role: None,
                });
            }
            monoio::select! {
                _ = freed => {}
                _ = returned => {}
                _ = monoio::time::sleep(stall - stalled) => {}
            }
        }
    }

    /// Puts a connection whose response was read to the end back, or closes it when
    /// requests on other threads wait and this one holds more than its share.
    pub(crate) fn checkin(self: &Rc<Self>, mut conn: Conn) {
        conn.role = None;
        let budget = &self.budget;
        let waiting = budget.waiting.load(Ordering::SeqCst);
        if waiting > 0 {
            budget.mark_free();
            let local = self.waiters.get();
            let share = budget.limit.saturating_mul(local).div_ceil(waiting);
            if waiting > local && (local == 0 || self.held.get() > share) {
                // Closed: its place goes to a request waiting elsewhere.
                return;
            }
        }
        {
            let mut idle = self.idle.borrow_mut();
            if idle.len() >= IDLE_PER_ENDPOINT_MAX {
                return;
            }
            conn.reused = true;
            conn.idle_since = Instant::now();
            idle.push(conn);
        }
        budget.idle.fetch_add(1, Ordering::SeqCst);
        if self.waiters.get() > 0 {
            self.returned.notify(1.additional());
        }
        if !self.reaping.get() {
            self.reaping.set(true);
            monoio::spawn(reap(Rc::downgrade(self)));
        }
    }

    /// Closes idle connections for requests waiting elsewhere (up to one each).
    fn shed(&self) {
        let remote = self.budget.waiting.load(Ordering::SeqCst).saturating_sub(self.waiters.get());
        if remote == 0 {
            return;
        }
        let shed: Vec<Conn> = {
            let mut idle = self.idle.borrow_mut();
            let n = remote.min(idle.len());
            idle.drain(..n).collect()
        };
        self.budget.idle.fetch_sub(shed.len(), Ordering::SeqCst);
    }

    /// Closes idle connections that their server closed or that are past [`IDLE_MAX`].
    fn sweep(&self, now: Instant) {
        let closed: Vec<Conn> = {
            let mut idle = self.idle.borrow_mut();
            let (keep, closed) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|c| now.saturating_duration_since(c.idle_since) < IDLE_MAX && !c.stream.peer_closed());
            *idle = keep;
            closed
        };
        self.budget.idle.fetch_sub(closed.len(), Ordering::SeqCst);
        self.budget.reaped.fetch_add(closed.len() as u64, Ordering::Relaxed);
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        let n = self.idle.get_mut().len();
        self.budget.idle.fetch_sub(n, Ordering::SeqCst);
    }
}

/// Counts a request as waiting while it waits (also when its future is dropped).
struct Waiting<'a>(&'a LocalPool);

impl<'a> Waiting<'a> {
    fn enter(pool: &'a LocalPool) -> Waiting<'a> {
        pool.waiters.set(pool.waiters.get() + 1);
        // Pairs with the SeqCst loads in `Permit::drop` and `LocalPool::checkin`.
        pool.budget.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(pool)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.set(self.0.waiters.get() - 1);
        self.0.budget.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pool's reaper: while the pool keeps idle connections, sheds them when requests
/// wait elsewhere and sweeps them each [`SWEEP_INTERVAL`]. Ends when the pool is empty
/// or gone (the next checkin starts another).
async fn reap(pool: Weak<LocalPool>) {
    struct Reaping(Weak<LocalPool>);
    impl Drop for Reaping {
        fn drop(&mut self) {
            if let Some(pool) = self.0.upgrade() {
                pool.reaping.set(false);
            }
        }
    }
    let _reaping = Reaping(pool.clone());
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    loop {
        let shed = SHED.listen();
        {
            let Some(pool) = pool.upgrade() else { return };
            pool.shed();
            let now = Instant::now();
            if now >= next_sweep {
                pool.sweep(now);
                next_sweep = now + SWEEP_INTERVAL;
            }
            if pool.idle.borrow().is_empty() {
                return;
            }
        }
        monoio::select! {
            _ = shed => {}
            _ = monoio::time::sleep(next_sweep.saturating_duration_since(Instant::now())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pools against peers on loopback: a connection its server closed is reaped
    //! (not reused, not left in CLOSE-WAIT), the bound holds across clients and
    //! threads, a quiet thread's idle connections go to a request waiting elsewhere,
    //! and a wait that nothing ends is an error. Budgets are process-wide and outlive a
    //! test, so tests that bound one listen on a loopback address of their own.

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::http::{HttpClient, Request, RequestBody};
    use crate::pool::Body;
    use crate::runtime::{block_on, probe_io_uring, Driver};

    /// Bounds every wait, so that a bug shows as a failure and not a hang.
    const WAIT: Duration = Duration::from_secs(20);

    fn drivers() -> Vec<Driver> {
        let mut d = vec![Driver::Epoll];
        if probe_io_uring().is_none() {
            d.push(Driver::IoUring);
        }
        d
    }

    fn get(path: &str) -> Request<'_> {
        Request { method: "GET", path, headers: Vec::new(), op: "get", target: path }
    }

    /// This process's TCP sockets connected to `port`, by state (`/proc/net/tcp`'s hex
    /// code: 01 established, 02 SYN sent, 08 CLOSE-WAIT).
    fn sockets_to(port: u16) -> Vec<String> {
        let mut inodes = std::collections::HashSet::new();
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
        let mut states = Vec::new();
        for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else { continue };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let remote_port = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                if remote_port == Some(port) && inodes.contains(f[9]) {
                    states.push(f[3].to_string());
                }
            }
        }
        states
    }

    /// Those of [`sockets_to`] that hold a connection: established, connecting, or
    /// closed by the peer and not yet by us.
    fn held_to(port: u16) -> usize {
        sockets_to(port).iter().filter(|s| matches!(s.as_str(), "01" | "02" | "08")).count()
    }

    /// Reads one request head; false at EOF.
    fn read_head(stream: &mut std::net::TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                return false;
            }
            head.push(byte[0]);
        }
        true
    }

    /// Polls `done` on the event loop (yielding to the reaper) until it holds or WAIT passes.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "never {what}");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_pooled_connection_its_server_closed_is_reaped_not_reused_or_left_open() {
        for driver in drivers() {
            // Each connection: one request answered with keep-alive, then closed.
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                let mut accepted = 0;
                for stream in listener.incoming().take(2) {
                    let mut stream = stream.unwrap();
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    accepted += 1;
                    assert!(read_head(&mut stream));
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
                }
                accepted
            });
            let endpoint = Endpoint { tls: false, host: "127.0.0.1".into(), port };
            block_on(driver, async {
                let client = HttpClient::default();
                let pool = client.pool(&endpoint);
                let (r, _) = client.send(&endpoint, &get("/1"), RequestBody::Empty).await.unwrap();
                assert_eq!(r.read_to_vec().await.unwrap(), b"ok");
                assert_eq!(pool.idle_len(), 1, "kept for reuse");
                // The server closed it: the reaper closes it too, without a request.
                until("reaped", || pool.idle_len() == 0 && pool.budget().stats().open == 0).await;
                assert_eq!(held_to(port), 0, "a socket to the server is left: {:?}", sockets_to(port));
                assert!(pool.budget().stats().reaped >= 1);
                // The next request opens a new connection.
                let (r, _) = client.send(&endpoint, &get("/2"), RequestBody::Empty).await.unwrap();
                assert_eq!(r.read_to_vec().await.unwrap(), b"ok");
            })
            .unwrap();
            assert_eq!(server.join().unwrap(), 2, "each request on a connection of its own");
        }
    }

    /// Serves keep-alive requests on every connection; holds the first answers until
    /// `bound` requests wait at once (so the bound is reached), and at each request
    /// counts this process's sockets to it. Returns the most counted.
    fn counting_server(host: &str, bound: usize) -> (Endpoint, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let listener = TcpListener::bind((host, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new((Mutex::new(0usize), Condvar::new()));
        let (m, s) = (most.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let mut stream = stream.unwrap();
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let (m, gate) = (m.clone(), gate.clone());
                std::thread::spawn(move || {
                    while read_head(&mut stream) {
                        m.fetch_max(held_to(port), Ordering::SeqCst);
                        let (count, cv) = &*gate;
                        let mut n = count.lock().unwrap();
                        *n += 1;
                        cv.notify_all();
                        let (n, _) = cv.wait_timeout_while(n, WAIT, |n| *n < bound).unwrap();
                        drop(n);
                        if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (Endpoint { tls: false, host: host.into(), port }, most, stop)
    }

    #[test]
    fn the_bound_holds_across_clients_and_threads() {
        const BOUND: usize = 3;
        let (endpoint, most, stop) = counting_server("127.0.0.21", BOUND);
        let budget = Budget::with_limit(&endpoint, BOUND);
        // Two threads (workers), two clients each (jobs), ten requests at once each.
        let threads: Vec<_> = drivers()
            .into_iter()
            .cycle()
            .take(2)
            .map(|driver| {
                let endpoint = endpoint.clone();
                std::thread::spawn(move || {
                    block_on(driver, async {
                        let jobs = (0..2).map(|_| HttpClient::default());
                        let requests = jobs.flat_map(|client| {
                            let endpoint = endpoint.clone();
                            (0..10).map(move |i| {
                                let (client, endpoint) = (client.clone(), endpoint.clone());
                                async move {
                                    let path = format!("/{i}");
                                    let (r, _) = client.send(&endpoint, &get(&path), RequestBody::Empty).await?;
                                    r.read_to_vec().await
                                }
                            })
                        });
                        futures_util::future::join_all(requests).await
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            for body in t.join().unwrap() {
                assert_eq!(body.unwrap(), b"x");
            }
        }
        stop.store(true, Ordering::SeqCst);
        let stats = budget.stats();
        assert_eq!(stats.peak, BOUND, "{stats:?}");
        assert!(stats.waits > 0, "requests waited: {stats:?}");
        assert!(most.load(Ordering::SeqCst) <= BOUND, "{} sockets to the server at once", most.load(Ordering::SeqCst));
        // The clients are gone, and their connections with them.
        assert_eq!((stats.waiting, budget.stats().open), (0, 0), "{stats:?}");
    }

    #[test]
    fn a_quiet_threads_idle_connection_goes_to_a_request_waiting_elsewhere() {
        let (endpoint, _, _stop) = counting_server("127.0.0.22", 1);
        let budget = Budget::with_limit(&endpoint, 1);
        let done = Arc::new((AtomicBool::new(false), Event::new()));
        let (d, e) = (done.clone(), endpoint.clone());
        // Thread one takes the only connection, keeps it idle, and waits (on its loop).
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let quiet = std::thread::spawn(move || {
            block_on(Driver::Epoll, async move {
                let client = HttpClient::default();
                let (r, _) = client.send(&e, &get("/a"), RequestBody::Empty).await.unwrap();
                r.read_to_vec().await.unwrap();
                taken_tx.send(()).unwrap();
                while !d.0.load(Ordering::SeqCst) {
                    let listener = d.1.listen();
                    if d.0.load(Ordering::SeqCst) {
                        break;
                    }
                    listener.await;
                }
            })
            .unwrap()
        });
        taken_rx.recv().unwrap();
        assert_eq!((budget.stats().open, budget.stats().idle), (1, 1));
        let body = block_on(Driver::Epoll, async {
            let client = HttpClient::default();
            let (r, _) = client.send(&endpoint, &get("/b"), RequestBody::Empty).await.unwrap();
            r.read_to_vec().await.unwrap()
        })
        .unwrap();
        assert_eq!(body, b"x");
        done.0.store(true, Ordering::SeqCst);
        done.1.notify(usize::MAX);
        quiet.join().unwrap();
        assert!(budget.stats().peak <= 1 && budget.stats().waits >= 1, "{:?}", budget.stats());
    }

    #[test]
    fn reads_holding_their_share_leave_writes_a_place_and_the_other_way_round() {
        // Reads and writes may each hold 3 of the 4.
        let (endpoint, _, _stop) = counting_server("127.0.0.24", 1);
        let budget = Budget::with_limit(&endpoint, 4);
        let put = |path| Request { method: "PUT", path, headers: Vec::new(), op: "put", target: path };
        let data = || RequestBody::Chunks(Body::default());
        block_on(Driver::Epoll, async {
            let client = HttpClient::new(WAIT, Duration::from_millis(300));
            for (role, first, other) in [("reads", Role::Read, Role::Write), ("writes", Role::Write, Role::Read)] {
                let send = |role: Role, path: &'static str| {
                    let client = client.clone();
                    let endpoint = endpoint.clone();
                    async move {
                        match role {
                            Role::Read => client.send(&endpoint, &get(path), RequestBody::Empty).await,
                            Role::Write => client.send(&endpoint, &put(path), data()).await,
                        }
                        .map(|(r, _)| r)
                    }
                };
                // Three of one role hold their connections (their answers unread).
                let mut held = Vec::new();
                for path in ["/1", "/2", "/3"] {
                    held.push(send(first, path).await.unwrap());
                }
                assert_eq!(budget.in_use[first.index()].load(Ordering::SeqCst), 3);
                // A fourth waits for one of them, with a place free...
                let err = send(first, "/4").await.map(drop).unwrap_err();
                assert!(err.is_retryable(), "{err}");
                assert!(err.to_string().contains(&format!("{role} hold all 3 of its 4")), "{err}");
                // ...which the other role takes at once.
                let r = send(other, "/5").await.unwrap();
                assert_eq!(r.read_to_vec().await.unwrap(), b"x");
                // One put back lets the next of the role in.
                held.remove(0).read_to_vec().await.unwrap();
                let r = send(first, "/6").await.unwrap();
                assert_eq!(r.read_to_vec().await.unwrap(), b"x");
                for r in held {
                    r.read_to_vec().await.unwrap();
                }
            }
        })
        .unwrap();
        assert!(budget.stats().peak <= 4, "{:?}", budget.stats());
    }

    #[test]
    fn a_wait_that_nothing_ends_is_a_retryable_error() {
        let (endpoint, _, _stop) = counting_server("127.0.0.23", 1);
        Budget::with_limit(&endpoint, 1);
        let err = block_on(Driver::Epoll, async {
            let client = HttpClient::new(WAIT, Duration::from_millis(300));
            let (held, _) = client.send(&endpoint, &get("/held"), RequestBody::Empty).await.unwrap();
            // `held` keeps the only connection: nothing comes free.
            let second = client.send(&endpoint, &get("/second"), RequestBody::Empty).await.map(drop);
            drop(held);
            second.unwrap_err()
        })
        .unwrap();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("all 1 are in use"), "{err}");
    }
}
