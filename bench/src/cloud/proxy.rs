//! A TLS-terminating HTTPS proxy that routes a fixed table of API hosts to emulators on
//! loopback, so a client whose API hosts are compiled in (rclone's `dropbox` and `drive`
//! backends) reaches the emulators unchanged, the way a corporate proxy reaches the
//! providers.
//!
//! The client is given `HTTPS_PROXY=http://127.0.0.1:PORT` and the proxy's CA. For each
//! `CONNECT host:443` naming a routed host the proxy connects to that host's emulator,
//! answers `200 Connection established`, terminates TLS with a leaf certificate for the
//! host (SAN = host, signed by a CA made at start, its key never written), and pipes the
//! decrypted bytes to the emulator's plain-HTTP port and back. It parses no HTTP past the
//! `CONNECT` line, so keep-alive, chunked bodies and `Expect: 100-continue` pass as they
//! are. Anything else (another host or port, another method, a request pipelined before
//! the `200`) is refused and the connection closed: routes must be loopback addresses,
//! so nothing can leave the machine through the proxy.
//!
//! Shape: a tokio runtime of its own (two workers, or one on a one-CPU machine) on a
//! thread, one task per connection, at most [`CONNECTIONS_MAX`] at once (more wait to be
//! accepted); each tunnel copies with two fixed [`PIPE_BUFFER_BYTES`] buffers. The
//! counters are live ([`CloudProxy::stats`]). Dropping the proxy stops it and drops its
//! connections.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Connections served at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 1024;
/// Each direction of a tunnel copies through one buffer of this size (a TLS record
/// carries at most 16 KiB, so this holds several).
pub const PIPE_BUFFER_BYTES: usize = 64 << 10;
/// The longest `CONNECT` request head read; longer is refused.
const HEAD_BYTES_MAX: usize = 8 << 10;
/// Time a client has to send its `CONNECT` head, and then to finish the TLS handshake.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Time to connect to an emulator.
const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Distinct refused targets remembered for [`ProxyStats::refused_targets`].
const REFUSED_TARGETS_MAX: usize = 64;
/// The one port routed (clients reach the providers' APIs on 443).
const HTTPS_PORT: u16 = 443;

/// What the proxy has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Tunnels established (`200` sent), by host.
    pub tunnels_by_host: BTreeMap<String, u64>,
    /// `CONNECT`s refused (unrouted host or port), and other requests refused.
    pub refused: u64,
    /// The first [`REFUSED_TARGETS_MAX`] distinct targets refused (`host:port`, or the
    /// method for a request that was not a `CONNECT`).
    pub refused_targets: Vec<String>,
    /// TLS handshakes that failed (a client that does not trust the CA, say).
    pub tls_failures: u64,
    /// What the last failed handshake said.
    pub last_tls_error: Option<String>,
    /// Tunnels whose client went away (or sat idle) before its TLS handshake finished:
    /// a client that opened a spare connection and then exited, say.
    pub tls_abandoned: u64,
    /// Tunnels whose emulator could not be reached (answered `502`).
    pub upstream_failures: u64,
    /// Decrypted bytes from clients to emulators.
    pub bytes_up: u64,
    /// Bytes from emulators to clients, before encryption.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    tls_failures: AtomicU64,
    tls_abandoned: AtomicU64,
    upstream_failures: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    // Written once per tunnel or refusal, not per byte.
    tunnels_by_host: Mutex<BTreeMap<String, u64>>,
    refused_targets: Mutex<Vec<String>>,
    last_tls_error: Mutex<Option<String>>,
}

impl Counters {
    fn refuse(&self, target: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut targets = self.refused_targets.lock().expect("proxy counters lock");
        if targets.len() < REFUSED_TARGETS_MAX && !targets.iter().any(|t| t == target) {
            targets.push(target.to_string());
        }
    }
}

/// One routed host: where it goes and the TLS identity the proxy shows for it.
struct Route {
    upstream: SocketAddr,
    acceptor: TlsAcceptor,
}

/// A running proxy; stops when dropped.
pub struct CloudProxy {
    addr: SocketAddr,
    ca_pem: PathBuf,
    hosts: Vec<String>,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CloudProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudProxy").field("addr", &self.addr).field("hosts", &self.hosts).finish_non_exhaustive()
    }
}

impl CloudProxy {
    /// Creates a CA (its certificate written to `dir/cloud-proxy-ca.pem`), a leaf
    /// certificate for each route's host, and serves on a free port of 127.0.0.1.
    /// `routes` maps a host name (`api.dropboxapi.com`) to the loopback address of the
    /// plain-HTTP emulator that stands in for it; a route that is not loopback, or a
    /// host named twice, is refused.
    pub fn start(dir: &Path, routes: Vec<(String, SocketAddr)>) -> Result<CloudProxy> {
        if routes.is_empty() {
            bail!("CloudProxy::start: no routes; give at least one (host, emulator address)");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (host, addr) in &routes {
            if !addr.ip().is_loopback() {
                bail!("route {host} -> {addr}: the proxy only forwards to loopback addresses (127.0.0.1), so nothing leaves the machine");
            }
            if host.is_empty() || host.contains(':') || host.contains('/') || host != &host.to_ascii_lowercase() {
                bail!(
                    "route host {host:?}: give a lower-case host name without port or path, as in api.dropboxapi.com"
                );
            }
            if !seen.insert(host.clone()) {
                bail!("route host {host} named twice; give each host once");
            }
        }
        let ca = make_ca().context("creating the proxy's CA")?;
        let ca_pem = dir.join("cloud-proxy-ca.pem");
        std::fs::write(&ca_pem, ca.cert.pem()).with_context(|| format!("writing {}", ca_pem.display()))?;
        let mut table = HashMap::new();
        for (host, upstream) in &routes {
            let acceptor = leaf_acceptor(&ca, host).with_context(|| format!("making a certificate for {host}"))?;
            table.insert(host.clone(), Route { upstream: *upstream, acceptor });
        }
        let table = Arc::new(table);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for the cloud proxy")?;
        listener.set_nonblocking(true).context("making the proxy's listener non-blocking")?;
        let addr = listener.local_addr()?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("cloud-proxy")
            .enable_all()
            .build()
            .context("starting the cloud proxy's tokio runtime")?;
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serve_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("cloud-proxy".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    serve(listener, table, serve_counters, stopped).await;
                    Ok::<(), io::Error>(())
                });
                if let Err(e) = served {
                    eprintln!("cloud proxy: {e}");
                }
                // Tunnels still open are dropped, not waited for.
                runtime.shutdown_background();
            })
            .context("spawning the cloud proxy's thread")?;
        let hosts = routes.into_iter().map(|(h, _)| h).collect();
        Ok(CloudProxy { addr, ca_pem, hosts, counters, stop: Some(stop), thread: Some(thread) })
    }

    /// The listening address (127.0.0.1 and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: what `HTTPS_PROXY` points at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The CA certificate (PEM) every leaf certificate chains to: trust this one.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The routed hosts, in the order given.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Counters since start.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            tunnels_by_host: c.tunnels_by_host.lock().expect("proxy counters lock").clone(),
            refused: c.refused.load(Ordering::Relaxed),
            refused_targets: c.refused_targets.lock().expect("proxy counters lock").clone(),
            tls_failures: c.tls_failures.load(Ordering::Relaxed),
            last_tls_error: c.last_tls_error.lock().expect("proxy counters lock").clone(),
            tls_abandoned: c.tls_abandoned.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for CloudProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn make_ca() -> Result<Ca> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "laminar cloud proxy test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca { cert, key })
}

/// A TLS acceptor presenting a fresh leaf certificate for `host`, offering HTTP/1.1 only
/// (the tunnel is a byte pipe to an HTTP/1.1 emulator).
fn leaf_acceptor(ca: &Ca, host: &str) -> Result<TlsAcceptor> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, host);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(
    listener: TcpListener,
    table: Arc<HashMap<String, Route>>,
    counters: Arc<Counters>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = &mut stopped => return,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let (client, _) = match accepted {
            Ok(pair) => pair,
            // Out of descriptors and the like: the next accept may work.
            Err(e) => {
                eprintln!("cloud proxy: accept: {e}");
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let (table, counters) = (table.clone(), counters.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // Every outcome is counted; a client that went away needs nothing more.
            let _ = tunnel(client, &table, &counters).await;
        });
    }
}

/// What a client asked for in its request head.
enum Ask {
    Connect { host: String, port: u16 },
    Other { method: String },
}

async fn tunnel(mut client: TcpStream, table: &HashMap<String, Route>, counters: &Counters) -> io::Result<()> {
    client.set_nodelay(true)?;
    let handshake = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let (ask, leftover) = match tokio::time::timeout(handshake, read_head(&mut client)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            counters.refuse("(malformed request)");
            return refuse(&mut client, "400 Bad Request", &e.to_string()).await;
        }
        Err(_) => return Ok(()),
    };
    let (host, port) = match ask {
        Ask::Connect { host, port } => (host, port),
        Ask::Other { method } => {
            counters.refuse(&method);
            let why = format!("{method} refused: this proxy only tunnels CONNECT host:443 to its routed hosts");
            return refuse(&mut client, "405 Method Not Allowed", &why).await;
        }
    };
    let target = format!("{host}:{port}");
    let route = match table.get(&host) {
        Some(route) if port == HTTPS_PORT => route,
        _ => {
            counters.refuse(&target);
            let mut routed: Vec<&str> = table.keys().map(String::as_str).collect();
            routed.sort_unstable();
            let why = format!("CONNECT {target} refused: not routed (routed: {} on port 443)", routed.join(", "));
            return refuse(&mut client, "403 Forbidden", &why).await;
        }
    };
    if leftover {
        counters.refuse(&target);
        let why = "bytes arrived before the 200 answer: wait for it before starting TLS";
        return refuse(&mut client, "400 Bad Request", why).await;
    }
    let connect = TcpStream::connect(route.upstream);
    let upstream = match tokio::time::timeout(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS), connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            let why = format!("the emulator for {host} at {} does not answer", route.upstream);
            return refuse(&mut client, "502 Bad Gateway", &why).await;
        }
    };
    upstream.set_nodelay(true)?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    let mut tls = match tokio::time::timeout(handshake, route.acceptor.accept(client)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if !matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
            counters.tls_failures.fetch_add(1, Ordering::Relaxed);
            *counters.last_tls_error.lock().expect("proxy counters lock") = Some(format!("{host}: {e}"));
            return Ok(());
        }
        Ok(Err(_)) | Err(_) => {
            counters.tls_abandoned.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    };
    *counters.tunnels_by_host.lock().expect("proxy counters lock").entry(host).or_default() += 1;
    let mut upstream = Counted { inner: upstream, counters };
    tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, PIPE_BUFFER_BYTES, PIPE_BUFFER_BYTES).await?;
    Ok(())
}

/// Reads the request head (to the blank line). Returns what was asked and whether bytes
/// followed the head in the same read (a client that did not wait for the answer).
async fn read_head(client: &mut TcpStream) -> io::Result<(Ask, bool)> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed inside the request head"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > HEAD_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head over 8 KiB"));
        }
    };
    let text = std::str::from_utf8(&head[..end])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "request head is not UTF-8"))?;
    let line = text.lines().next().unwrap_or("");
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {line:?}"));
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next());
    if parts.next().is_some() || !matches!(version, Some("HTTP/1.1" | "HTTP/1.0")) {
        return Err(bad());
    }
    if method != "CONNECT" {
        return Ok((Ask::Other { method: method.to_string() }, end < head.len()));
    }
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((Ask::Connect { host: host.to_ascii_lowercase(), port }, end < head.len()))
}

async fn refuse(client: &mut TcpStream, status: &str, why: &str) -> io::Result<()> {
    let body = format!("laminar cloud proxy: {why}\n");
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(answer.as_bytes()).await?;
    client.shutdown().await
}

/// The emulator's side of a tunnel, counting bytes each way as they pass.
struct Counted<'a> {
    inner: TcpStream,
    counters: &'a Counters,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counters.bytes_down.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counters.bytes_up.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(routes: &[(&str, &str)]) -> Result<CloudProxy> {
        let dir = tempfile::tempdir()?;
        let routes = routes.iter().map(|(h, a)| (h.to_string(), a.parse().expect("an address"))).collect();
        CloudProxy::start(dir.path(), routes)
    }

    #[test]
    fn routes_must_be_loopback_lower_case_and_once() {
        let err = start(&[("api.dropboxapi.com", "192.0.2.1:443")]).unwrap_err().to_string();
        assert!(err.contains("only forwards to loopback"), "{err}");
        let err = start(&[("API.dropboxapi.com", "127.0.0.1:1")]).unwrap_err().to_string();
        assert!(err.contains("lower-case host name"), "{err}");
        let err = start(&[("a.example", "127.0.0.1:1"), ("a.example", "127.0.0.1:2")]).unwrap_err().to_string();
        assert!(err.contains("named twice"), "{err}");
        assert!(start(&[]).unwrap_err().to_string().contains("no routes"));
    }

    #[test]
    fn a_started_proxy_writes_its_ca_and_listens_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = CloudProxy::start(dir.path(), vec![("a.example".into(), "127.0.0.1:9".parse().unwrap())]).unwrap();
        assert!(proxy.addr().ip().is_loopback());
        assert_eq!(proxy.url(), format!("http://{}", proxy.addr()));
        let pem = std::fs::read_to_string(proxy.ca_pem()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert_eq!(proxy.stats(), ProxyStats::default());
        // Nothing listens on the route's port: the CONNECT is answered 502.
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{answer}");
        assert_eq!(proxy.stats().upstream_failures, 1);
    }
}
