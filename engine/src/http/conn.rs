//! Connections: TCP made with socket2 (so per-socket options can be applied before
//! connecting), optionally wrapped in rustls.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use socket2::{Domain, Protocol, Socket, Type};

/// Where requests go: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Whether to speak TLS.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://host[:port]` or `https://host[:port]` (a path is not allowed).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("endpoint {url:?} must start with http:// or https://"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("endpoint {url:?} must be scheme://host[:port] with no path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("endpoint {url:?} has an invalid port {p:?}"))?;
                (h.to_string(), port)
            }
            _ => (rest.to_string(), if tls { 443 } else { 80 }),
        };
        Ok(Endpoint { tls, host, port })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://authority`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority())
    }

    /// A copy with another host (virtual-hosted style buckets).
    pub fn with_host(&self, host: String) -> Endpoint {
        Endpoint { host, ..self.clone() }
    }

    fn resolve(&self) -> std::io::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address"))
    }
}

/// A TLS handshake failure, carried inside an `io::Error` so the caller can tell it
/// from a refused connection.
#[derive(Debug)]
pub(crate) struct TlsFailure(pub(crate) String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

static POLICY: std::sync::RwLock<Option<laminar_tuning::socket::SocketPolicy>> = std::sync::RwLock::new(None);

/// Sets the policy every new connection gets (the engine does, from its plan).
pub fn set_socket_policy(policy: laminar_tuning::socket::SocketPolicy) {
    *POLICY.write().expect("policy lock") = Some(policy);
}

/// The policy new connections get: the one set, or the default (NODELAY, keepalive,
/// the system's congestion control, autotuned buffers).
pub fn socket_policy() -> laminar_tuning::socket::SocketPolicy {
    POLICY.read().expect("policy lock").clone().unwrap_or_default()
}

/// Applies `policy` to a socket before it connects. An option the kernel refuses is
/// skipped (the connection works without it) and counted, so `/metrics` shows it.
fn apply_policy(socket: &Socket, policy: &laminar_tuning::socket::SocketPolicy) {
    let failed = |option: &'static str, r: std::io::Result<()>| {
        if r.is_err() {
            crate::metrics::record_socket_option_refused(option);
        }
    };
    failed("nodelay", socket.set_nodelay(policy.nodelay));
    if let Some(cc) = &policy.congestion {
        failed("congestion", socket.set_tcp_congestion(cc.as_bytes()));
    }
    if let Some(b) = policy.send_buffer_bytes {
        failed("send_buffer", socket.set_send_buffer_size(b));
    }
    if let Some(b) = policy.recv_buffer_bytes {
        failed("recv_buffer", socket.set_recv_buffer_size(b));
    }
    if let Some(secs) = policy.keepalive_secs {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(std::time::Duration::from_secs(secs))
            .with_interval(std::time::Duration::from_secs(secs.div_ceil(3).max(1)));
        failed("keepalive", socket.set_tcp_keepalive(&keepalive));
    }
}

/// A plain or TLS stream.
pub(crate) enum Stream {
    Plain(TcpStream),
    /// The TLS stream, and its socket's descriptor (which the wrapper does not expose).
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>, std::os::fd::RawFd),
}

impl Stream {
    pub(crate) async fn connect(endpoint: &Endpoint, tls: &Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
        let proxy = super::proxy::configured()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            .filter(|p| p.covers(endpoint));
        let addr = match proxy {
            Some(p) => p.endpoint.resolve()?,
            None => endpoint.resolve()?,
        };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        apply_policy(&socket, &socket_policy());
        socket.set_nonblocking(true)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let std_stream: std::net::TcpStream = socket.into();
        let mut stream = TcpStream::from_std(std_stream)?;
        stream.writable(false).await?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        // SAFETY: `stream` owns `fd` and outlives this borrow.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Some(err) = socket2::SockRef::from(&borrowed).take_error()? {
            return Err(err);
        }
        if let Some(proxy) = proxy {
            proxy.tunnel(&mut stream, endpoint).await?;
        }
        if !endpoint.tls {
            return Ok(Stream::Plain(stream));
        }
        let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let connector = monoio_rustls::TlsConnector::from(tls.clone());
        let tls_stream = connector
            .connect(name, stream)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, TlsFailure(e.to_string())))?;
        Ok(Stream::Tls(Box::new(tls_stream), fd))
    }

    pub(crate) async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s, _) => s.read(buf).await,
        }
    }

    pub(crate) async fn write_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s, _) => s.write_all(buf).await,
        }
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        use monoio::io::AsyncWriteRent;
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(s, _) => s.flush().await,
        }
    }

    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Stream::Plain(s) => std::os::fd::AsRawFd::as_raw_fd(s),
            Stream::Tls(_, fd) => *fd,
        }
    }

    /// Ends the connection both ways now, before its descriptor is closed (which
    /// io_uring does later, asynchronously).
    pub(crate) fn shutdown(&self) {
        // SAFETY: `fd` is this stream's open socket (the stream owns it and is borrowed
        // for the call); shutdown takes no pointers. A socket already shut or reset
        // answers ENOTCONN, which is what was wanted.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }

    /// Whether an idle keep-alive connection is no longer usable: the server closed
    /// it, reset it, or sent something unasked (a TLS close notice, a 408). Checked
    /// before reuse, because a request whose body streams from a ring cannot be sent
    /// again on a fresh connection once its bytes are gone.
    pub(crate) fn peer_closed(&self) -> bool {
        let fd = self.fd();
        let mut byte = 0u8;
        // SAFETY: `fd` is this stream's open socket (the stream owns it and is borrowed
        // for the call), `byte` is a valid one-byte buffer, and MSG_PEEK | MSG_DONTWAIT
        // neither consumes data nor blocks.
        let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = std::io::Error::last_os_error().raw_os_error();
            return !matches!(err, Some(libc::EAGAIN) | Some(libc::EINTR));
        }
        true
    }
}

/// The TLS configuration shared by all connections: the Mozilla root set, plus
/// `SSL_CERT_FILE` when set (for private CAs).
pub(crate) fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Ok(path) = std::env::var("SSL_CERT_FILE") {
        use rustls::pki_types::pem::PemObject;
        if let Ok(pem) = std::fs::read(&path) {
            for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(der);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "127.0.0.1", 9000));
        assert_eq!(e.authority(), "127.0.0.1:9000");
        let e = Endpoint::parse("https://s3.amazonaws.com/").unwrap();
        assert_eq!((e.tls, e.port, e.authority()), (true, 443, "s3.amazonaws.com".to_string()));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x/bucket").is_err());
        assert!(Endpoint::parse("http://x:notaport").is_err());
    }
}
