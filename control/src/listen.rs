//! The control API's listener: the accept loop, TLS, and the limits that keep a slow
//! or hostile client from holding the appliance.
//!
//! axum's own `serve` offers none of these knobs, so the sidecar runs hyper's HTTP/1.1
//! connection directly under its own accept loop:
//! - **connections**: at most `max_connections` at once. One more is answered
//!   `429 Too Many Requests` naming the limit and closed; it never waits in a queue.
//! - **time to send headers**: `header_timeout` (hyper's header-read timer, which also
//!   ends an idle keep-alive connection). A slowloris client is closed, not kept.
//! - **time for a whole request**: `request_timeout`, body included (`408`).
//! - **headers**: at most `max_headers` fields and `max_header_bytes` bytes, each
//!   answered `431` naming the limit by the router's guard; hyper's own parser stops a
//!   head twice that size with a bare `431`.
//! - **body**: at most `max_body_bytes` (`413`, named by the router).
//! - **TLS** (rustls, ring) when `--tls-cert/--tls-key` are given, HTTP/1.1 over ALPN;
//!   the handshake counts against the header timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The largest request body the API reads (a job spec is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The bounds on what one client can hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time from accepting a connection (or finishing the last request) to a request's
    /// complete head.
    pub header_timeout: Duration,
    /// Time for one request, its body included.
    pub request_timeout: Duration,
    /// Header fields in one request.
    pub max_headers: usize,
    /// Bytes of header fields in one request (names and values).
    pub max_header_bytes: usize,
    /// Bytes of one request's body.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// Reads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("--tls-cert {}: cannot read a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no CERTIFICATE block in it; give a PEM certificate chain", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!("--tls-key {}: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", key.display())
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: the key does not fit the certificate, or is unusable: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `stop` fires, then lets requests in flight finish
/// (up to 5 s) and closes every connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers * 2)
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    let service = TowerToHyperService::new(router);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => break,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: wait a moment
                // rather than spin.
                tracing::warn!("control API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, tls.clone(), limits));
            continue;
        };
        let (http, service, watcher, tls) = (http.clone(), service.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                }
                Some(tls) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await else {
                        return;
                    };
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// Answers a connection over the limit: reads what the client sent (briefly, so that
/// closing does not reset the answer away), writes a 429 naming the limit, closes.
async fn refuse(stream: tokio::net::TcpStream, tls: Option<TlsAcceptor>, limits: Limits) {
    let grace = Duration::from_secs(1);
    match tls {
        None => answer_429(stream, limits, grace).await,
        Some(tls) => {
            if let Ok(Ok(stream)) = tokio::time::timeout(grace, tls.accept(stream)).await {
                answer_429(stream, limits, grace).await;
            }
        }
    }
}

async fn answer_429<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, limits: Limits, grace: Duration) {
    let mut head = [0u8; 4096];
    let _ = tokio::time::timeout(grace, stream.read(&mut head)).await;
    let body = serde_json::json!({
        "error": format!(
            "too many connections: the control API allows {} at once (--max-connections); try again shortly",
            limits.max_connections
        )
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(grace, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
