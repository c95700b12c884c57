//! A fault-injecting TCP proxy for tests: put it between a client and a real server and
//! it corrupts one byte, or cuts every connection, at an exact byte offset; or, by
//! request ([`Fault::Requests`]), answers the requests a test names with S3 errors
//! (a storm of 5xx or SlowDown), resets or flips a byte of their bodies at an offset,
//! or breaks off their responses (RST, FIN, or a Content-Length rewritten shorter).
//!
//! Why a byte-level TCP proxy rather than a fake server: the server stays real (its
//! checksum validation, its errors), and the client under test sees exactly what it
//! would see from a bad network or a dying server, at a deterministic point.
//!
//! Offsets count bytes across *all* connections through the proxy, in each direction
//! separately, in the order the relay threads read them. With one connection at a time
//! that order is the stream order; with several concurrent connections it is the order
//! in which their chunks happened to be read, so pick offsets that do not depend on it
//! (for example, deep into the only large body in flight). Each fault fires at most once.
//!
//! Shape: std threads, one acceptor and two per connection (one per direction), with
//! fixed 64 KiB buffers allocated when a connection starts. At most
//! [`CONNECTIONS_MAX`] connections live at once; more are reset. `Drop` stops the
//! acceptor, shuts every socket down and joins every thread, so nothing outlives the
//! proxy.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::SockRef;

/// Connections alive at once; beyond this, new connections are reset.
pub const CONNECTIONS_MAX: usize = 256;
/// Bytes read per `read` call in each direction of each connection.
const BUFFER_BYTES: usize = 64 * 1024;
/// Bound on a blocked write (a peer that stops reading cannot pin a thread forever).
const WRITE_TIMEOUT_MS: u64 = 30_000;
/// Bound on connecting to the upstream server.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// What a flipped byte is XORed with: every bit changes, so the byte always differs,
/// and a hit inside HTTP framing becomes a non-ASCII byte rather than another digit.
pub const FLIP_MASK: u8 = 0xFF;

const _: () = assert!(BUFFER_BYTES.is_power_of_two());
const _: () = assert!(FLIP_MASK != 0);

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay faithfully.
    None,
    /// XOR the server-to-client byte at offset `after_bytes` (0-based, counted over all
    /// connections) with [`FLIP_MASK`], once.
    FlipResponseByte {
        /// Offset of the flipped byte in the combined response stream.
        after_bytes: u64,
    },
    /// XOR the client-to-server byte at offset `after_bytes` with [`FLIP_MASK`], once.
    FlipRequestByte {
        /// Offset of the flipped byte in the combined request stream.
        after_bytes: u64,
    },
    /// Relay the first `response_bytes` server-to-client bytes; when the next one
    /// arrives, reset every connection and refuse new ones (the listener closes): a
    /// server dying mid-reply.
    CutAfter {
        /// Response bytes delivered before the cut.
        response_bytes: u64,
    },
    /// Relay the first `request_bytes` client-to-server bytes; when the next one
    /// arrives, reset every connection and refuse new ones: a server dying while it
    /// receives an upload. (S3 responses to PUTs are small: a whole multipart upload of
    /// 40 MiB draws about 4 KiB of responses, so a response cut can miss it.)
    CutAfterRequest {
        /// Request bytes delivered before the cut.
        request_bytes: u64,
    },
    /// Answer the first request of each of the first `connections` connections with
    /// `503 SlowDown` (and `Retry-After: 1`, `Connection: close`) without forwarding
    /// it; relay later connections faithfully: a throttling store.
    SlowDownFirst {
        /// Connections to throttle.
        connections: u64,
    },
    /// Answer a request with `503 SlowDown` (closing its connection, which the server
    /// never hears of) when it arrives while `requests` others await their responses;
    /// relay the rest: a store that takes so many requests at once, however many
    /// connections its clients hold.
    ThrottleRequestsAbove {
        /// Requests awaiting their responses at once.
        requests: usize,
    },
    /// Relay the response stream faithfully up to offset `after_bytes` (counted over all
    /// connections); from there the connection that reached it trickles one byte every
    /// `interval_ms` for as long as it lives, which no idle timeout notices. Other
    /// connections are relayed faithfully: a peer that stalls without stopping.
    TrickleResponse {
        /// Offset in the combined response stream where the trickle starts.
        after_bytes: u64,
        /// Time between the trickled bytes.
        interval_ms: u64,
    },
    /// Relay faithfully, but pace client-to-server bytes (all connections together)
    /// to `bytes_per_second`: a destination slower than its source.
    PaceRequests {
        /// The rate.
        bytes_per_second: u64,
    },
    /// Per request: the requests that `matching` picks (counted over all connections,
    /// in the order their heads arrive) meet `action`; every other byte is relayed
    /// faithfully. Requests are told apart by HTTP/1.1 framing (a head, then a body of
    /// its Content-Length, which is how Laminar's client frames every request, streamed
    /// parts included), and a response belongs to the request before it: clients do not
    /// pipeline, so a response always follows its request's whole body. The other
    /// faults count bytes; this one counts requests, so a test can name "the third
    /// UploadPart" whatever the sizes or connections.
    Requests {
        /// Which requests.
        matching: Match,
        /// What happens to them.
        action: Action,
    },
}

/// Which requests a [`Fault::Requests`] hits: those whose method and request target
/// match, numbered from 1 in arrival order; hits `from..from + count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// The method (`GET`, `PUT`, ...); empty: any.
    pub method: &'static str,
    /// A string the request target (path and query) contains; empty: any.
    pub target_has: &'static str,
    /// The first matching request hit, 1-based.
    pub from: u64,
    /// How many in a row are hit ([`u64::MAX`]: every one from `from` on, a storm that
    /// never ends).
    pub count: u64,
    /// Stop hitting once the action has taken effect ([`Proxy::fault_fired`]): a
    /// response cut at an offset its body does not reach, or a request its client
    /// gave up on before the answer (a stale pooled connection), does not use it up.
    pub until_fired: bool,
}

impl Match {
    /// Requests with `method` whose target contains `target_has`: the first `count`.
    pub fn first(method: &'static str, target_has: &'static str, count: u64) -> Match {
        Match { method, target_has, from: 1, count, until_fired: false }
    }

    /// Only the `nth` (1-based) such request.
    pub fn nth(method: &'static str, target_has: &'static str, nth: u64) -> Match {
        assert!(nth > 0, "requests are counted from 1");
        Match { method, target_has, from: nth, count: 1, until_fired: false }
    }

    /// The `nth` such request and those after it, until the action takes effect once.
    pub fn from_nth_once(method: &'static str, target_has: &'static str, nth: u64) -> Match {
        Match { count: u64::MAX, until_fired: true, ..Match::nth(method, target_has, nth) }
    }

    /// Every such request, for ever.
    pub fn every(method: &'static str, target_has: &'static str) -> Match {
        Match::first(method, target_has, u64::MAX)
    }

    fn picks(&self, method: &str, target: &str) -> bool {
        (self.method.is_empty() || self.method == method)
            && (self.target_has.is_empty() || target.contains(self.target_has))
    }
}

/// What a [`Fault::Requests`] does to a request it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer it with `status` and an S3 error document of `code` (`Connection:
    /// close`, no Retry-After), without forwarding it: the server never hears of it.
    Answer {
        /// The HTTP status.
        status: u16,
        /// The S3 error code (`InternalError`, `SlowDown`, ...).
        code: &'static str,
    },
    /// Forward its head and the first `body_bytes` of its body, then reset the
    /// connection both ways (RST): a connection lost while a body is sent.
    ResetRequestAfter {
        /// Body bytes the server receives.
        body_bytes: u64,
    },
    /// XOR byte `at` of its body with [`FLIP_MASK`] on the way to the server.
    FlipRequestBody {
        /// Offset in the body.
        at: u64,
    },
    /// Relay the response head and the first `body_bytes` of its body, then reset
    /// the connection (RST).
    ResetResponseAfter {
        /// Body bytes the client receives.
        body_bytes: u64,
    },
    /// Relay the response head and the first `body_bytes` of its body, then close
    /// the connection cleanly (FIN): a body shorter than its Content-Length.
    CloseResponseAfter {
        /// Body bytes the client receives.
        body_bytes: u64,
    },
    /// Rewrite the response's Content-Length to `body_bytes` (when shorter), relay
    /// that much of the body and close: a response that ends early and looks whole.
    EndResponseEarly {
        /// Body bytes the client receives, and the Content-Length it is told.
        body_bytes: u64,
    },
}

impl Action {
    fn on_response(self) -> bool {
        matches!(
            self,
            Action::ResetResponseAfter { .. } | Action::CloseResponseAfter { .. } | Action::EndResponseEarly { .. }
        )
    }
}

/// A running proxy. Dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    fault: Fault,
    /// When the proxy started, for [`Fault::PaceRequests`].
    started: std::time::Instant,
    /// Set by `Drop`; the acceptor exits when it sees it.
    stopping: AtomicBool,
    /// Set once the fault has fired (byte flipped, or connections cut).
    fired: AtomicBool,
    /// Set by a `CutAfter` cut: no more bytes are relayed and no connections accepted.
    cut: AtomicBool,
    /// Bytes read from clients / from the server, including any not forwarded after a cut.
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    /// Bytes actually written onward, both directions.
    relayed_bytes: AtomicU64,
    connections_total: AtomicU64,
    /// Requests relayed whose responses have not begun, for [`Fault::ThrottleRequestsAbove`].
    awaiting: AtomicUsize,
    /// Requests [`Fault::Requests`]'s method and target picked, and those it hit.
    picked: AtomicU64,
    hit: AtomicU64,
    connections: Mutex<Vec<Connection>>,
    /// Relay threads of connections taken out of the registry by a cut; `Drop` joins them.
    cut_threads: Mutex<Vec<JoinHandle<()>>>,
    listen_addr: SocketAddr,
}

struct Connection {
    /// The number the acceptor gave it (1-based), to take it out of the registry.
    number: u64,
    client: TcpStream,
    server: TcpStream,
    threads: [Option<JoinHandle<()>>; 2],
}

impl Connection {
    fn is_finished(&self) -> bool {
        self.threads.iter().flatten().all(JoinHandle::is_finished)
    }

    fn join(&mut self) {
        for handle in self.threads.iter_mut().filter_map(Option::take) {
            let _ = handle.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` relaying to `upstream`.
    ///
    /// Panics if it cannot bind a loopback port: this is test support, and a test
    /// cannot go on without it.
    pub fn start(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: local address");
        let shared = Arc::new(Shared {
            upstream,
            fault,
            started: std::time::Instant::now(),
            stopping: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            awaiting: AtomicUsize::new(0),
            picked: AtomicU64::new(0),
            hit: AtomicU64::new(0),
            connections: Mutex::new(Vec::with_capacity(CONNECTIONS_MAX)),
            cut_threads: Mutex::new(Vec::new()),
            listen_addr: addr,
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(listener, &shared))
                .expect("proxy: spawning the acceptor")
        };
        Proxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT`, to use as an S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes written onward in both directions so far.
    pub fn bytes_relayed(&self) -> u64 {
        // Relaxed: a statistic, read without ordering against the relayed data.
        self.shared.relayed_bytes.load(Ordering::Relaxed)
    }

    /// Bytes read from clients so far (offsets for [`Fault::FlipRequestByte`]).
    pub fn request_bytes(&self) -> u64 {
        self.shared.request_bytes.load(Ordering::Relaxed)
    }

    /// Bytes read from the server so far (offsets for the response faults).
    pub fn response_bytes(&self) -> u64 {
        self.shared.response_bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections_total.load(Ordering::Relaxed)
    }

    /// Requests a [`Fault::Requests`] hit so far (whether or not the action took
    /// effect: [`Proxy::fault_fired`] says it did, at least once).
    pub fn requests_hit(&self) -> u64 {
        self.shared.hit.load(Ordering::Acquire)
    }

    /// Requests whose method and target a [`Fault::Requests`] picks, hit or not.
    pub fn requests_picked(&self) -> u64 {
        self.shared.picked.load(Ordering::Acquire)
    }

    /// Whether the fault has fired (a byte was flipped, or the connections were cut).
    pub fn fault_fired(&self) -> bool {
        // Acquire pairs with the Release store where the fault fires.
        self.shared.fired.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Release pairs with the acceptor's Acquire load after each accept.
        self.shared.stopping.store(true, Ordering::Release);
        wake_acceptor(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Take the registry out of the lock before joining: a relay thread that is
        // cutting needs the lock to finish.
        let mut connections = std::mem::take(&mut *lock(&self.shared.connections));
        for connection in &connections {
            let _ = connection.client.shutdown(Shutdown::Both);
            let _ = connection.server.shutdown(Shutdown::Both);
        }
        for connection in &mut connections {
            connection.join();
        }
        let cut_threads = std::mem::take(&mut *lock(&self.shared.cut_threads));
        for handle in cut_threads {
            let _ = handle.join();
        }
    }
}

/// Reads one request (head and Content-Length body; `buf` holds what was read of it
/// already) and answers 503 SlowDown.
fn slow_down(mut client: TcpStream, mut buf: Vec<u8>) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)));
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let mut left = length.saturating_sub(buf.len() - head_end);
    while left > 0 {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let response = format!(
        "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unblocks a blocked `accept` by connecting to it.
fn wake_acceptor(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS));
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        // Acquire pairs with the Release stores in `Drop` and in `cut_everything`.
        if shared.stopping.load(Ordering::Acquire) || shared.cut.load(Ordering::Acquire) {
            if let Ok(stream) = incoming {
                reset(&stream);
            }
            break; // Dropping the listener: further connects are refused.
        }
        let Ok(client) = incoming else { continue };
        let number = shared.connections_total.fetch_add(1, Ordering::Relaxed) + 1;
        if let Fault::SlowDownFirst { connections } = shared.fault {
            if number <= connections {
                shared.fired.store(true, Ordering::Release);
                let handle = thread::spawn(move || slow_down(client, Vec::new()));
                lock(&shared.cut_threads).push(handle);
                continue;
            }
        }
        let mut connections = lock(&shared.connections);
        // Checked again under the lock: a cut drains the registry under the same lock,
        // so a connection is either drained by it or refused here.
        if shared.cut.load(Ordering::Acquire) {
            reset(&client);
            break;
        }
        // Reap finished connections so the registry stays bounded.
        connections.retain_mut(|c| {
            if c.is_finished() {
                c.join();
                false
            } else {
                true
            }
        });
        if connections.len() >= CONNECTIONS_MAX {
            reset(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_millis(CONNECT_TIMEOUT_MS)) else {
            reset(&client);
            continue;
        };
        match start_connection(number, client, server, shared) {
            Ok(connection) => connections.push(connection),
            Err(error) => eprintln!("proxy: could not start a connection: {error}"),
        }
    }
}

fn start_connection(
    number: u64,
    client: TcpStream,
    server: TcpStream,
    shared: &Arc<Shared>,
) -> std::io::Result<Connection> {
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    }
    let link = Arc::new(Link {
        number,
        awaiting: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        response: Mutex::new(None),
    });
    let spawn = |direction: Direction, from: TcpStream, to: TcpStream| {
        let shared = Arc::clone(shared);
        let name = match direction {
            Direction::Request => "proxy-request",
            Direction::Response => "proxy-response",
        };
        let link = Arc::clone(&link);
        thread::Builder::new().name(name.to_string()).spawn(move || {
            match (shared.fault, direction) {
                (Fault::Requests { matching, action }, Direction::Request) => {
                    pump_requests(from, to, &shared, &link, matching, action)
                }
                (Fault::Requests { .. }, Direction::Response) => pump_responses(from, to, &shared, &link),
                _ => pump(direction, from, to, &shared, &link.awaiting),
            }
            // A connection that ends with a request unanswered no longer holds it.
            if link.awaiting.swap(false, Ordering::AcqRel) {
                shared.awaiting.fetch_sub(1, Ordering::AcqRel);
            }
        })
    };
    let request = spawn(Direction::Request, client.try_clone()?, server.try_clone()?)?;
    let response = spawn(Direction::Response, server.try_clone()?, client.try_clone()?)?;
    Ok(Connection { number, client, server, threads: [Some(request), Some(response)] })
}

/// What the two directions of one connection share.
struct Link {
    /// The connection's number in the registry.
    number: u64,
    /// Whether this connection's request awaits its response ([`Fault::ThrottleRequestsAbove`]).
    awaiting: AtomicBool,
    /// Set when a [`Fault::Requests`] action ended the connection: neither direction
    /// passes an end-of-file on after that (it would send FIN ahead of a reset).
    ended: AtomicBool,
    /// The response-side action for the request in flight, set by the request
    /// direction before it forwards the request's head, taken by the response
    /// direction when that response's first bytes arrive.
    response: Mutex<Option<Action>>,
}

/// Most bytes of a request or response head the per-request faults parse; a longer
/// head (none of Laminar's or SeaweedFS's comes close) is relayed untouched.
const HEAD_BYTES_MAX: usize = 64 * 1024;

fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// The value of header `name` (lower case) in `head`.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Takes the connection `link` names out of the registry and shuts it down: the
/// client side with RST when `rst` (linger 0: the last close resets), else with the
/// FIN already sent by the caller. The relay threads exit on their own and hold the
/// last handles; `Drop` joins them.
fn end_connection(shared: &Shared, link: &Link, rst: bool) {
    // Release pairs with the Acquire loads in the pumps' end-of-file paths.
    link.ended.store(true, Ordering::Release);
    shared.fired.store(true, Ordering::Release);
    let taken = {
        let mut connections = lock(&shared.connections);
        connections.iter().position(|c| c.number == link.number).map(|at| connections.swap_remove(at))
    };
    let Some(mut connection) = taken else { return };
    if rst {
        let _ = SockRef::from(&connection.client).set_linger(Some(Duration::ZERO));
    }
    // Wakes a reader blocked on the client and sends nothing.
    let _ = connection.client.shutdown(Shutdown::Read);
    let _ = SockRef::from(&connection.server).set_linger(Some(Duration::ZERO));
    let _ = connection.server.shutdown(Shutdown::Both);
    lock(&shared.cut_threads).extend(connection.threads.iter_mut().filter_map(Option::take));
}

/// Writes an S3 error document with `status` and `code` to `client`, then FIN.
fn answer_error(client: &mut TcpStream, status: u16, code: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>Injected by the test proxy.</Message><RequestId>proxy</RequestId></Error>"
    );
    let reason = match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/xml\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.shutdown(Shutdown::Write);
}

/// Reads `left` bytes from `from` and drops them (a refused request's body: closing a
/// socket with unread bytes would send RST ahead of the answer).
fn discard(from: &mut TcpStream, mut left: u64, buffer: &mut [u8]) -> bool {
    while left > 0 {
        let want = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match from.read(&mut buffer[..want]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => left -= n as u64,
        }
    }
    true
}

/// One read for the per-request pumps: `Some(n)` bytes, or None when the connection
/// ends: end-of-file is passed on (half-close), an error shuts it down both ways,
/// neither once an action ended it (that would send FIN ahead of its reset).
fn read_or_end(from: &mut TcpStream, to: &TcpStream, buffer: &mut [u8], link: &Link) -> Option<usize> {
    loop {
        let result = from.read(buffer);
        // Acquire pairs with the Release store in `end_connection`.
        let ended = link.ended.load(Ordering::Acquire);
        match result {
            Ok(0) => {
                if !ended {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return None;
            }
            Ok(read) => return Some(read),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                if !ended {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                }
                return None;
            }
        }
    }
}

/// The request direction under [`Fault::Requests`]: parses each request's head,
/// decides whether it is hit, and relays (or refuses, or breaks) it accordingly.
fn pump_requests(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    link: &Link,
    matching: Match,
    action: Action,
) {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut head: Vec<u8> = Vec::with_capacity(4096);
    // The request's body: bytes still to come, bytes relayed, and the action on them.
    let mut body: Option<(u64, u64, Option<Action>)> = None;
    // Set when a head was too long to parse: the rest of the connection is relayed as is.
    let mut untouched = false;
    loop {
        let Some(read) = read_or_end(&mut from, &to, &mut buffer, link) else { return };
        shared.request_bytes.fetch_add(read as u64, Ordering::Relaxed);
        let mut at = 0;
        while at < read {
            if untouched {
                if to.write_all(&buffer[at..read]).is_err() {
                    return;
                }
                break;
            }
            let Some((left, sent, on_body)) = &mut body else {
                // A head: gather it whole before deciding.
                let before = head.len();
                head.extend_from_slice(&buffer[at..read]);
                let Some(end) = head_end(&head) else {
                    if head.len() > HEAD_BYTES_MAX {
                        untouched = true;
                        if to.write_all(&head).is_err() {
                            return;
                        }
                    }
                    break;
                };
                at += end - before;
                head.truncate(end);
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut first = text.lines().next().unwrap_or("").split(' ');
                let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let length: u64 = header(&text, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let hit = matching.picks(method, target) && {
                    // AcqRel: numbers are handed out once each; pairs with `requests_picked`.
                    let number = shared.picked.fetch_add(1, Ordering::AcqRel) + 1;
                    number >= matching.from
                        && number - matching.from < matching.count
                        // Acquire pairs with the Release stores where an action takes effect.
                        && !(matching.until_fired && shared.fired.load(Ordering::Acquire))
                };
                if hit {
                    // (`fired` is set where the action takes effect: a response shorter
                    // than its cut, or a body shorter than its offset, is left whole.)
                    shared.hit.fetch_add(1, Ordering::AcqRel);
                }
                let act = hit.then_some(action);
                if let Some(Action::Answer { status, code }) = act {
                    // The server never hears of it: read the body, answer, close.
                    let in_hand = (read - at) as u64;
                    if length <= in_hand || discard(&mut from, length - in_hand, &mut buffer) {
                        answer_error(&mut from, status, code);
                    }
                    end_connection(shared, link, false);
                    return;
                }
                *lock(&link.response) = act.filter(|a| a.on_response());
                if to.write_all(&head).is_err() {
                    return;
                }
                head.clear();
                if length > 0 {
                    body = Some((length, 0, act.filter(|a| !a.on_response())));
                }
                continue;
            };
            let n = (read - at).min(usize::try_from(*left).unwrap_or(usize::MAX));
            let part = &mut buffer[at..at + n];
            let mut forward = n;
            let mut reset_now = false;
            match *on_body {
                Some(Action::FlipRequestBody { at: flip }) if (*sent..*sent + n as u64).contains(&flip) => {
                    part[(flip - *sent) as usize] ^= FLIP_MASK;
                    shared.fired.store(true, Ordering::Release);
                }
                Some(Action::ResetRequestAfter { body_bytes }) if *sent + n as u64 > body_bytes => {
                    forward = (body_bytes - *sent) as usize;
                    reset_now = true;
                }
                _ => {}
            }
            if to.write_all(&part[..forward]).is_err() {
                return;
            }
            shared.relayed_bytes.fetch_add(forward as u64, Ordering::Relaxed);
            if reset_now {
                end_connection(shared, link, true);
                return;
            }
            *sent += n as u64;
            *left -= n as u64;
            at += n;
            if *left == 0 {
                body = None;
            }
        }
    }
}

/// The response in flight that a [`Fault::Requests`] action works on.
struct Hit {
    action: Action,
    /// The head so far (until it is whole and relayed).
    head: Vec<u8>,
    /// Body bytes relayed, once the head is; and the Content-Length.
    body: Option<(u64, u64)>,
}

/// The response direction under [`Fault::Requests`]: relays responses, breaking the
/// ones whose requests were hit by a response-side action.
fn pump_responses(mut from: TcpStream, mut to: TcpStream, shared: &Shared, link: &Link) {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut hit: Option<Hit> = None;
    loop {
        let Some(read) = read_or_end(&mut from, &to, &mut buffer, link) else { return };
        shared.response_bytes.fetch_add(read as u64, Ordering::Relaxed);
        if hit.is_none() {
            // No pipelining: these are the first bytes of the response to the request
            // the request direction decided on last.
            hit = lock(&link.response).take().map(|action| Hit { action, head: Vec::new(), body: None });
        }
        let Some(h) = &mut hit else {
            if to.write_all(&buffer[..read]).is_err() {
                return;
            }
            continue;
        };
        let mut rest: Vec<u8> = buffer[..read].to_vec();
        if h.body.is_none() {
            h.head.extend_from_slice(&rest);
            let Some(end) = head_end(&h.head) else {
                if h.head.len() > HEAD_BYTES_MAX {
                    let _ = to.write_all(&h.head);
                    hit = None;
                }
                continue;
            };
            rest = h.head.split_off(end);
            let text = String::from_utf8_lossy(&h.head).into_owned();
            let length: u64 = header(&text, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let out = match h.action {
                Action::EndResponseEarly { body_bytes } if body_bytes < length => {
                    let mut lines: Vec<String> = text
                        .trim_end()
                        .lines()
                        .filter(|l| {
                            let name = l.split(':').next().unwrap_or("").trim();
                            !name.eq_ignore_ascii_case("content-length") && !name.eq_ignore_ascii_case("connection")
                        })
                        .map(str::to_string)
                        .collect();
                    lines.push(format!("content-length: {body_bytes}"));
                    lines.push("connection: close".to_string());
                    format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes()
                }
                _ => std::mem::take(&mut h.head),
            };
            if to.write_all(&out).is_err() {
                return;
            }
            if matches!(h.action, Action::EndResponseEarly { body_bytes } if body_bytes < length) {
                // In effect once the client is told the shorter length: a client that
                // refuses the head at once (and reads the object again) closes before
                // the body is through, and its retry must not be hit too.
                shared.fired.store(true, Ordering::Release);
            }
            h.body = Some((0, length));
        }
        let (sent, length) = h.body.as_mut().expect("the head is relayed");
        let limit = match h.action {
            Action::ResetResponseAfter { body_bytes }
            | Action::CloseResponseAfter { body_bytes }
            | Action::EndResponseEarly { body_bytes } => body_bytes,
            _ => u64::MAX,
        };
        let n = (rest.len() as u64).min(limit.saturating_sub(*sent)) as usize;
        if to.write_all(&rest[..n]).is_err() {
            return;
        }
        *sent += n as u64;
        if *sent >= limit && *sent < *length {
            if !matches!(h.action, Action::ResetResponseAfter { .. }) {
                let _ = to.shutdown(Shutdown::Write);
            }
            end_connection(shared, link, matches!(h.action, Action::ResetResponseAfter { .. }));
            return;
        }
        if *sent >= *length {
            hit = None; // The whole response went by: a body shorter than the cut.
        }
    }
}

/// Copies `from` to `to` until end-of-file, an error, or a cut, applying the fault.
fn pump(direction: Direction, mut from: TcpStream, mut to: TcpStream, shared: &Shared, awaiting: &AtomicBool) {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    // Set once this connection trickles (see `Fault::TrickleResponse`).
    let mut trickling = false;
    let counter = match direction {
        Direction::Request => &shared.request_bytes,
        Direction::Response => &shared.response_bytes,
    };
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) if shared.cut.load(Ordering::Acquire) => return, // Closing resets.
            Ok(0) => {
                // Half-close: pass the end-of-file on, let the other direction finish.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if shared.cut.load(Ordering::Acquire) {
            return;
        }
        let chunk = &mut buffer[..read];
        if let Fault::ThrottleRequestsAbove { requests } = shared.fault {
            match direction {
                // The first bytes of a request: admitted under the limit, or refused.
                Direction::Request if !awaiting.load(Ordering::Acquire) => {
                    let admitted = shared
                        .awaiting
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < requests).then_some(n + 1))
                        .is_ok();
                    if !admitted {
                        shared.fired.store(true, Ordering::Release);
                        if let Ok(client) = from.try_clone() {
                            slow_down(client, chunk.to_vec());
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    awaiting.store(true, Ordering::Release);
                }
                Direction::Response if awaiting.swap(false, Ordering::AcqRel) => {
                    shared.awaiting.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
        // Relaxed: the returned range is what matters, and fetch_add hands out each
        // offset exactly once whatever the ordering.
        let start = counter.fetch_add(read as u64, Ordering::Relaxed);
        let end = start + read as u64;
        let mut forward = read;
        let mut cut_now = false;
        match (shared.fault, direction) {
            (Fault::FlipResponseByte { after_bytes }, Direction::Response)
            | (Fault::FlipRequestByte { after_bytes }, Direction::Request)
                if (start..end).contains(&after_bytes)
                    // AcqRel: the first thread to swap flips; pairs with `fault_fired`.
                    && !shared.fired.swap(true, Ordering::AcqRel) =>
            {
                chunk[(after_bytes - start) as usize] ^= FLIP_MASK;
            }
            (Fault::CutAfter { response_bytes: limit }, Direction::Response)
            | (Fault::CutAfterRequest { request_bytes: limit }, Direction::Request)
                if end > limit =>
            {
                forward = limit.saturating_sub(start) as usize;
                cut_now = true;
            }
            _ => {}
        }
        if let (Fault::TrickleResponse { after_bytes, interval_ms }, Direction::Response) = (shared.fault, direction) {
            let starts_here = (start..end).contains(&after_bytes) && !shared.fired.swap(true, Ordering::AcqRel);
            if starts_here || trickling {
                let from_byte = if trickling { 0 } else { (after_bytes - start) as usize };
                trickling = true;
                if to.write_all(&chunk[..from_byte]).is_err() {
                    break;
                }
                for byte in &chunk[from_byte..] {
                    thread::sleep(Duration::from_millis(interval_ms));
                    if shared.stopping.load(Ordering::Acquire) || to.write_all(std::slice::from_ref(byte)).is_err() {
                        return;
                    }
                }
                continue;
            }
        }
        if let (Fault::PaceRequests { bytes_per_second }, Direction::Request) = (shared.fault, direction) {
            // Wait until the bytes so far fit the rate since the proxy started.
            let due = Duration::from_secs_f64(end as f64 / bytes_per_second.max(1) as f64);
            let elapsed = shared.started.elapsed();
            if due > elapsed {
                thread::sleep(due - elapsed);
            }
        }
        assert!(forward <= read);
        if forward > 0 {
            if to.write_all(&chunk[..forward]).is_err() {
                break;
            }
            shared.relayed_bytes.fetch_add(forward as u64, Ordering::Relaxed);
        }
        if cut_now {
            cut_everything(shared);
            return; // Dropping the last handles sends the resets.
        }
    }
    if shared.cut.load(Ordering::Acquire) {
        return;
    }
    // An error in one direction ends the connection both ways.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Resets every connection (RST, not FIN) and makes the acceptor close the listener.
///
/// The client side only gets its read half shut (which wakes a blocked reader and
/// sends nothing) and linger 0, so that the last close of each socket, when its relay
/// threads exit, sends RST. Bytes still queued in the proxy's send buffer at that
/// moment are discarded, as on any reset: a slow client may see fewer than N bytes.
fn cut_everything(shared: &Shared) {
    if shared.cut.swap(true, Ordering::AcqRel) {
        return; // Another thread is cutting.
    }
    shared.fired.store(true, Ordering::Release);
    let drained = std::mem::take(&mut *lock(&shared.connections));
    let mut threads = Vec::with_capacity(drained.len() * 2);
    for mut connection in drained {
        let _ = SockRef::from(&connection.client).set_linger(Some(Duration::ZERO));
        let _ = connection.client.shutdown(Shutdown::Read);
        // The server side may take a FIN; shutting both halves also wakes a writer.
        let _ = SockRef::from(&connection.server).set_linger(Some(Duration::ZERO));
        let _ = connection.server.shutdown(Shutdown::Both);
        threads.extend(connection.threads.iter_mut().filter_map(Option::take));
        // `connection`'s own handles drop here: the relay threads hold the last ones.
    }
    lock(&shared.cut_threads).extend(threads);
    wake_acceptor(shared.listen_addr);
}

/// Closes `stream` with RST.
fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each connection's first line with `reply`, then records
    /// everything else the client sends until end-of-file.
    struct Upstream {
        addr: SocketAddr,
        received: Arc<Mutex<Vec<u8>>>,
        thread: Option<JoinHandle<()>>,
    }

    impl Upstream {
        fn start(reply: Vec<u8>, connections: usize) -> Upstream {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&received);
            let thread = thread::spawn(move || {
                for _ in 0..connections {
                    let (mut stream, _) = listener.accept().unwrap();
                    let mut request = Vec::new();
                    let _ = stream.read_to_end(&mut request);
                    sink.lock().unwrap().extend_from_slice(&request);
                    let _ = stream.write_all(&reply);
                }
            });
            Upstream { addr, received, thread: Some(thread) }
        }

        fn finish(mut self) -> Vec<u8> {
            self.thread.take().unwrap().join().unwrap();
            let received = self.received.lock().unwrap();
            received.clone()
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Sends `request`, half-closes, reads the whole reply.
    fn exchange(proxy: &Proxy, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(proxy.addr())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request)?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok(reply)
    }

    #[test]
    fn relays_faithfully_and_counts() {
        let reply = pattern(300_000);
        let upstream = Upstream::start(reply.clone(), 2);
        let proxy = Proxy::start(upstream.addr, Fault::None);
        let request = pattern(100_000);
        assert_eq!(exchange(&proxy, &request).unwrap(), reply);
        assert_eq!(exchange(&proxy, &request).unwrap(), reply);
        assert_eq!(upstream.finish(), [request.clone(), request].concat());
        assert_eq!(proxy.request_bytes(), 200_000);
        assert_eq!(proxy.response_bytes(), 600_000);
        assert_eq!(proxy.bytes_relayed(), 800_000);
        assert_eq!(proxy.connections(), 2);
        assert!(!proxy.fault_fired());
    }

    #[test]
    fn flips_one_response_byte_once_across_connections() {
        let reply = pattern(100_000);
        let upstream = Upstream::start(reply.clone(), 2);
        // Offset 150,000 is byte 50,000 of the second connection's reply.
        let proxy = Proxy::start(upstream.addr, Fault::FlipResponseByte { after_bytes: 150_000 });
        assert_eq!(exchange(&proxy, b"one").unwrap(), reply);
        assert!(!proxy.fault_fired());
        let second = exchange(&proxy, b"two").unwrap();
        assert!(proxy.fault_fired());
        let differing: Vec<usize> = (0..reply.len()).filter(|&i| second[i] != reply[i]).collect();
        assert_eq!(differing, vec![50_000]);
        assert_eq!(second[50_000], reply[50_000] ^ FLIP_MASK);
        upstream.finish();
    }

    #[test]
    fn flips_one_request_byte() {
        let upstream = Upstream::start(b"ok".to_vec(), 1);
        let proxy = Proxy::start(upstream.addr, Fault::FlipRequestByte { after_bytes: 70_000 });
        let request = pattern(200_000);
        assert_eq!(exchange(&proxy, &request).unwrap(), b"ok");
        let received = upstream.finish();
        let differing: Vec<usize> = (0..request.len()).filter(|&i| received[i] != request[i]).collect();
        assert_eq!(differing, vec![70_000]);
        assert!(proxy.fault_fired());
    }

    #[test]
    fn cut_delivers_exactly_n_bytes_then_resets_and_refuses() {
        let reply = pattern(500_000);
        let upstream = Upstream::start(reply.clone(), 1);
        let proxy = Proxy::start(upstream.addr, Fault::CutAfter { response_bytes: 23_456 });
        let mut stream = TcpStream::connect(proxy.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"request").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let mut buffer = [0u8; 8192];
        let ending = loop {
            match stream.read(&mut buffer) {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buffer[..n]),
                Err(error) => break Some(error.kind()),
            }
        };
        assert_eq!(got.len(), 23_456);
        assert_eq!(got, reply[..23_456]);
        assert_eq!(ending, Some(ErrorKind::ConnectionReset), "a reset, not a clean end");
        assert!(proxy.fault_fired());
        upstream.finish();
        // The acceptor closes the listener once woken; a new connection is refused, or
        // reset if it raced into the backlog first. (Once closed, the port is free and
        // a parallel test may bind it, so only check that this proxy relays nothing.)
        let relayed_before = proxy.bytes_relayed();
        if let Ok(mut late) = TcpStream::connect(proxy.addr()) {
            let _ = late.write_all(b"late");
        }
        assert_eq!(proxy.connections(), 1, "no connection accepted after the cut");
        assert_eq!(proxy.bytes_relayed(), relayed_before);
    }

    #[test]
    fn request_cut_delivers_exactly_n_bytes_then_resets() {
        let upstream = Upstream::start(b"never sent".to_vec(), 1);
        let proxy = Proxy::start(upstream.addr, Fault::CutAfterRequest { request_bytes: 10_000 });
        let request = pattern(300_000);
        let mut stream = TcpStream::connect(proxy.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The write may fail part-way once the reset arrives; either way the read fails.
        let _ = stream.write_all(&request);
        let mut reply = Vec::new();
        let outcome = stream.read_to_end(&mut reply);
        assert!(outcome.is_err() || reply.is_empty(), "no reply after a cut");
        assert!(proxy.fault_fired());
        assert_eq!(upstream.finish(), request[..10_000]);
    }

    /// An HTTP/1.1 server that answers every request (any number per connection) with
    /// 200 and `reply` as its body, and records each request's head line and body.
    struct HttpUpstream {
        addr: SocketAddr,
        seen: Arc<Heard>,
    }

    /// The requests an [`HttpUpstream`] heard, and a signal for each.
    #[derive(Default)]
    struct Heard {
        requests: Mutex<Vec<(String, Vec<u8>)>>,
        changed: std::sync::Condvar,
    }

    impl Heard {
        fn push(&self, line: String, body: Vec<u8>) {
            self.requests.lock().unwrap().push((line, body));
            self.changed.notify_all();
        }
    }

    impl HttpUpstream {
        fn start(reply: Vec<u8>) -> HttpUpstream {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Heard::default());
            let sink = Arc::clone(&seen);
            // Detached: it ends when the test process does (each test makes its own).
            thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (reply, sink) = (reply.clone(), Arc::clone(&sink));
                    thread::spawn(move || serve_http(stream, &reply, &sink));
                }
            });
            HttpUpstream { addr, seen }
        }

        /// The requests heard, once there are at least `n` (10 s at most).
        fn seen(&self, n: usize) -> Vec<(String, Vec<u8>)> {
            let heard = self.seen.requests.lock().unwrap();
            let (heard, _) =
                self.seen.changed.wait_timeout_while(heard, Duration::from_secs(10), |h| h.len() < n).unwrap();
            heard.clone()
        }
    }

    fn serve_http(mut stream: TcpStream, reply: &[u8], sink: &Heard) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let end = loop {
                if let Some(end) = head_end(&buf) {
                    break end;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < end + length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => {
                        let line = head.lines().next().unwrap_or("").to_string();
                        sink.push(line, buf[end..].to_vec());
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let line = head.lines().next().unwrap_or("").to_string();
            sink.push(line, buf[end..end + length].to_vec());
            buf.drain(..end + length);
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", reply.len());
            if stream.write_all(answer.as_bytes()).and_then(|()| stream.write_all(reply)).is_err() {
                return;
            }
        }
    }

    /// What a client saw of one request: the status, the body, and how the body ended
    /// (None: it was whole; else the error or "eof" for an early end of file).
    struct Seen {
        status: u16,
        head: String,
        body: Vec<u8>,
        broken: Option<String>,
    }

    /// Sends one request with `body` on `stream` and reads its response.
    fn request(stream: &mut TcpStream, line: &str, body: &[u8]) -> std::io::Result<Seen> {
        let head = format!("{line} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(end) = head_end(&got) {
                break end;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "no response head"));
            }
            got.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = got[end..].to_vec();
        let mut broken = None;
        while body.len() < length {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    broken = Some("eof".to_string());
                    break;
                }
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    broken = Some(format!("{:?}", e.kind()));
                    break;
                }
            }
        }
        Ok(Seen { status, head, body, broken })
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    #[test]
    fn a_storm_answers_the_requests_it_names_and_then_relays() {
        let upstream = HttpUpstream::start(b"fine".to_vec());
        let matching = Match::first("PUT", "partNumber=", 2);
        let proxy = Proxy::start(
            upstream.addr,
            Fault::Requests { matching, action: Action::Answer { status: 503, code: "SlowDown" } },
        );
        // A request the storm does not pick passes, and keeps its connection.
        let mut stream = connect(&proxy);
        let listed = request(&mut stream, "GET /bkt?list-type=2", b"").unwrap();
        assert_eq!((listed.status, listed.body.as_slice()), (200, &b"fine"[..]));
        // The first two parts are refused, each closing its connection.
        for _ in 0..2 {
            let refused = request(&mut stream, "PUT /bkt/k?partNumber=1&uploadId=u", &pattern(70_000)).unwrap();
            assert_eq!(refused.status, 503);
            assert!(String::from_utf8_lossy(&refused.body).contains("<Code>SlowDown</Code>"));
            assert!(refused.head.contains("connection: close"));
            stream = connect(&proxy);
        }
        let sent = request(&mut stream, "PUT /bkt/k?partNumber=1&uploadId=u", &pattern(70_000)).unwrap();
        assert_eq!(sent.status, 200);
        assert_eq!((proxy.requests_hit(), proxy.requests_picked()), (2, 3));
        let seen = upstream.seen(2);
        assert_eq!(seen.len(), 2, "the server heard of the listing and the third part only");
        assert_eq!(seen[1].1, pattern(70_000));
    }

    #[test]
    fn a_request_body_is_reset_at_an_offset_or_has_a_byte_flipped() {
        let upstream = HttpUpstream::start(b"ok".to_vec());
        let action = Action::ResetRequestAfter { body_bytes: 12_345 };
        let proxy = Proxy::start(upstream.addr, Fault::Requests { matching: Match::nth("PUT", "", 2), action });
        let mut stream = connect(&proxy);
        assert_eq!(request(&mut stream, "PUT /b/one", &pattern(100_000)).unwrap().status, 200);
        let outcome = request(&mut stream, "PUT /b/two", &pattern(100_000));
        assert!(outcome.is_err(), "the second upload is broken off");
        // The server got exactly the bytes before the offset (its read ends there).
        assert_eq!(upstream.seen(2)[1].1, pattern(100_000)[..12_345]);
        // A later connection is relayed faithfully.
        assert_eq!(request(&mut connect(&proxy), "PUT /b/three", &pattern(10)).unwrap().status, 200);

        let action = Action::FlipRequestBody { at: 65_537 };
        let proxy = Proxy::start(upstream.addr, Fault::Requests { matching: Match::nth("PUT", "/b/", 1), action });
        assert_eq!(request(&mut connect(&proxy), "PUT /b/four", &pattern(100_000)).unwrap().status, 200);
        let (got, sent) = (upstream.seen(4)[3].1.clone(), pattern(100_000));
        let differing: Vec<usize> = (0..got.len()).filter(|&i| got[i] != sent[i]).collect();
        assert_eq!(differing, vec![65_537]);
    }

    #[test]
    fn a_response_is_reset_closed_or_ended_early_at_an_offset() {
        let reply = pattern(200_000);
        let upstream = HttpUpstream::start(reply.clone());
        for (action, broken, length) in [
            (Action::ResetResponseAfter { body_bytes: 70_001 }, Some("ConnectionReset"), 200_000),
            (Action::CloseResponseAfter { body_bytes: 70_001 }, Some("eof"), 200_000),
            (Action::EndResponseEarly { body_bytes: 70_001 }, None, 70_001),
        ] {
            let proxy = Proxy::start(upstream.addr, Fault::Requests { matching: Match::nth("GET", "/obj", 2), action });
            let mut stream = connect(&proxy);
            assert_eq!(request(&mut stream, "GET /obj", b"").unwrap().body, reply, "{action:?}: the first is whole");
            let seen = request(&mut stream, "GET /obj", b"").unwrap();
            assert_eq!(seen.body, reply[..70_001], "{action:?}");
            assert_eq!(seen.broken.as_deref(), broken, "{action:?}");
            let told: usize = header(&seen.head, "content-length").unwrap().parse().unwrap();
            assert_eq!(told, length, "{action:?}");
            assert_eq!(proxy.requests_hit(), 1);
            // The third is whole again, on a new connection.
            assert_eq!(request(&mut connect(&proxy), "GET /obj", b"").unwrap().body, reply, "{action:?}");
        }
    }

    #[test]
    fn drop_joins_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = listener.local_addr().unwrap();
        let proxy = Proxy::start(upstream, Fault::None);
        // An idle keep-alive style connection: both relay threads are blocked reading.
        let client = TcpStream::connect(proxy.addr()).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        drop(proxy); // Must return: shuts the sockets down and joins the threads.
        drop(client);
    }
}
