//! A fault-injecting TCP proxy for tests: put it between a client and a real server and
//! it corrupts one byte, or cuts every connection, at an exact byte offset.
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
    connections: Mutex<Vec<Connection>>,
    /// Relay threads of connections taken out of the registry by a cut; `Drop` joins them.
    cut_threads: Mutex<Vec<JoinHandle<()>>>,
    listen_addr: SocketAddr,
}

struct Connection {
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
        match start_connection(client, server, shared) {
            Ok(connection) => connections.push(connection),
            Err(error) => eprintln!("proxy: could not start a connection: {error}"),
        }
    }
}

fn start_connection(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) -> std::io::Result<Connection> {
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    }
    // Whether this connection's request awaits its response.
    let awaiting = Arc::new(AtomicBool::new(false));
    let spawn = |direction: Direction, from: TcpStream, to: TcpStream| {
        let shared = Arc::clone(shared);
        let name = match direction {
            Direction::Request => "proxy-request",
            Direction::Response => "proxy-response",
        };
        let awaiting = Arc::clone(&awaiting);
        thread::Builder::new().name(name.to_string()).spawn(move || {
            pump(direction, from, to, &shared, &awaiting);
            // A connection that ends with a request unanswered no longer holds it.
            if awaiting.swap(false, Ordering::AcqRel) {
                shared.awaiting.fetch_sub(1, Ordering::AcqRel);
            }
        })
    };
    let request = spawn(Direction::Request, client.try_clone()?, server.try_clone()?)?;
    let response = spawn(Direction::Response, server.try_clone()?, client.try_clone()?)?;
    Ok(Connection { client, server, threads: [Some(request), Some(response)] })
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
