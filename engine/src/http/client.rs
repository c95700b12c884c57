//! Requests and responses, over connections from the keep-alive pools (`pool`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;

use super::conn::{tls_config, Endpoint, Stream};
use super::head::{Framing, ResponseHead};
use super::pool::{Budget, Checkout, Conn, LocalPool, Role};
use crate::checksum::Hashers;
use crate::error::{Error, Result};
use crate::pool::ring::{Drain, Filler, Next};
use crate::pool::{Body, Chunk};

/// Bytes a response head may take; S3 heads are a few hundred bytes.
const HEAD_BUFFER_BYTES: usize = 16 << 10;
/// Largest metadata body read into memory (listings are ~1 MiB for 1,000 keys).
pub(crate) const METADATA_BODY_MAX_BYTES: u64 = 64 << 20;

/// What a request sends after its head.
pub enum RequestBody {
    /// Nothing (Content-Length: 0 for methods that carry one).
    Empty,
    /// Small bytes, e.g. an XML document.
    Bytes(Vec<u8>),
    /// Pool chunks, for object data.
    Chunks(Body),
    /// Object data streamed from a ring as it is read, framed `aws-chunked` with the
    /// checksum in a trailer (it is known only once the last byte was read).
    Stream(StreamBody),
}

/// A streamed `aws-chunked` body: one chunk of `data_len` bytes, then a trailer.
pub struct StreamBody {
    drain: Drain,
    /// What the drain gave first, taken before a connection is: a request waiting for
    /// its bytes must not hold a connection that the read producing them waits for.
    first: Option<Next>,
    data_len: u64,
    /// Trailer name, e.g. `x-amz-checksum-crc32c`.
    trailer: &'static str,
    /// Length of the trailer's base64 value, fixed by the algorithm.
    trailer_value_len: usize,
}

impl StreamBody {
    /// A body of `data_len` bytes from `drain`, ending with trailer `trailer` whose
    /// value is the checksum's base64 (`trailer_value_len` characters).
    pub fn new(drain: Drain, data_len: u64, trailer: &'static str, trailer_value_len: usize) -> StreamBody {
        StreamBody { drain, first: None, data_len, trailer, trailer_value_len }
    }

    /// What goes before the data: the chunk-size line (none for an empty body).
    fn prefix(&self) -> String {
        if self.data_len == 0 {
            String::new()
        } else {
            format!("{:x}\r\n", self.data_len)
        }
    }

    /// What goes after the data: the end of the data chunk, the last chunk, the trailer.
    fn suffix(&self, value: &str) -> String {
        let end_of_data = if self.data_len == 0 { "" } else { "\r\n" };
        format!("{end_of_data}0\r\n{}:{value}\r\n\r\n", self.trailer)
    }

    /// Bytes on the wire: the Content-Length.
    fn wire_len(&self) -> u64 {
        let value = "=".repeat(self.trailer_value_len);
        self.prefix().len() as u64 + self.data_len + self.suffix(&value).len() as u64
    }
}

impl RequestBody {
    fn len(&self) -> u64 {
        match self {
            RequestBody::Empty => 0,
            RequestBody::Bytes(b) => b.len() as u64,
            RequestBody::Chunks(b) => b.len(),
            RequestBody::Stream(s) => s.wire_len(),
        }
    }
}

/// A request about to be sent.
pub struct Request<'a> {
    /// Method, e.g. `GET`.
    pub method: &'static str,
    /// Path and query, already percent-encoded.
    pub path: &'a str,
    /// Headers other than Host and Content-Length.
    pub headers: Vec<(String, String)>,
    /// What the request is for, for errors (e.g. `put`).
    pub op: &'static str,
    /// The key or bucket, for errors.
    pub target: &'a str,
}

/// The bounds every request of the process works under, so that no peer can hold a
/// request forever: a stall (no byte for `idle_timeout`) and a trickle (fewer than
/// `min_rate_bytes_per_s` on average once `idle_timeout` has passed since the request
/// began, both directions counted) each end the request with a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to connect (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait for any byte to move, and the grace before the rate counts.
    pub idle_timeout: Duration,
    /// Slowest average rate accepted after the grace.
    pub min_rate_bytes_per_s: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            min_rate_bytes_per_s: 1024,
        }
    }
}

static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();

/// Sets the process's limits (from the command line), before any client is made.
/// Returns false if they were set already (the first setting stands).
pub fn set_limits(limits: Limits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// The process's limits: those set, else the defaults.
pub fn limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// One request's bytes moved (both ways) against [`Limits::min_rate_bytes_per_s`].
#[derive(Debug, Clone, Copy)]
struct Pace {
    started: std::time::Instant,
    bytes: u64,
}

impl Pace {
    fn start() -> Pace {
        Pace { started: std::time::Instant::now(), bytes: 0 }
    }

    /// Leaves `waited` (spent under a relay's --bwlimit) out of the time counted.
    fn paused(&mut self, waited: Duration) {
        self.started += waited;
    }

    /// Counts `n` bytes moved; an error once the request is past its grace and under
    /// the rate.
    fn moved(&mut self, n: usize, limits: &Limits, op: &'static str, target: &str) -> Result<()> {
        self.bytes += n as u64;
        let elapsed = self.started.elapsed();
        let Some(counted) = elapsed.checked_sub(limits.idle_timeout) else { return Ok(()) };
        if (self.bytes as f64) < limits.min_rate_bytes_per_s as f64 * counted.as_secs_f64() {
            return Err(Error::TooSlow {
                op,
                target: target.to_string(),
                bytes: self.bytes,
                seconds: elapsed.as_secs(),
                min_rate_bytes_per_s: limits.min_rate_bytes_per_s,
            });
        }
        Ok(())
    }
}

/// A per-worker HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Rc<ClientInner>,
    /// The limits of the relay this handle serves: its requests wait for room under
    /// them and its response bodies are read at their byte rate.
    rates: Option<Arc<crate::rate::Rates>>,
}

struct ClientInner {
    /// This client's idle connections, per endpoint; the budgets they count against
    /// are the process's.
    pools: RefCell<HashMap<Endpoint, Rc<LocalPool>>>,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    io_timeout: Duration,
    limits: Limits,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::with_limits(limits())
    }
}

impl HttpClient {
    /// A client with the given connect and per-read/write idle timeouts (and the
    /// process's minimum rate).
    pub fn new(connect_timeout: Duration, io_timeout: Duration) -> HttpClient {
        HttpClient::with_limits(Limits { connect_timeout, idle_timeout: io_timeout, ..limits() })
    }

    /// A client under `limits`.
    pub fn with_limits(limits: Limits) -> HttpClient {
        HttpClient {
            inner: Rc::new(ClientInner {
                pools: RefCell::new(HashMap::new()),
                tls: tls_config(),
                connect_timeout: limits.connect_timeout,
                io_timeout: limits.idle_timeout,
                limits,
            }),
            rates: None,
        }
    }

    /// The same client (the same connections) under a relay's `rates`.
    pub fn with_rates(&self, rates: Arc<crate::rate::Rates>) -> HttpClient {
        HttpClient { inner: self.inner.clone(), rates: Some(rates) }
    }

    /// The rates this handle works under, if any.
    pub fn rates(&self) -> Option<&Arc<crate::rate::Rates>> {
        self.rates.as_ref()
    }

    /// This client's pool for `endpoint`.
    pub(crate) fn pool(&self, endpoint: &Endpoint) -> Rc<LocalPool> {
        let mut pools = self.inner.pools.borrow_mut();
        if let Some(pool) = pools.get(endpoint) {
            return pool.clone();
        }
        let pool = LocalPool::new(Budget::of(endpoint));
        pools.insert(endpoint.clone(), pool.clone());
        pool
    }

    async fn checkout(
        &self,
        pool: &LocalPool,
        endpoint: &Endpoint,
        role: Role,
        op: &'static str,
        target: &str,
    ) -> Result<Conn> {
        let (permit, slot) = match pool.checkout(self.inner.io_timeout, role).await {
            Ok((Checkout::Idle(mut conn), slot)) => {
                conn.role = slot;
                return Ok(conn);
            }
            Ok((Checkout::Open(permit), slot)) => (permit, slot),
            Err(stalled) => {
                return Err(Error::io(
                    op,
                    target,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, stalled.to_string()),
                ))
            }
        };
        let connect = Stream::connect(endpoint, &self.inner.tls);
        let stream = match monoio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                if let Some(tls) = source.get_ref().and_then(|e| e.downcast_ref::<super::conn::TlsFailure>()) {
                    return Err(Error::Tls {
                        op,
                        target: target.to_string(),
                        endpoint: endpoint.authority(),
                        detail: tls.0.clone(),
                    });
                }
                return Err(Error::Connect { op, target: target.to_string(), endpoint: endpoint.authority(), source });
            }
            Err(_) => {
                return Err(Error::Connect {
                    op,
                    target: target.to_string(),
                    endpoint: endpoint.authority(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        let mut conn = Conn::new(stream, Vec::with_capacity(HEAD_BUFFER_BYTES), permit);
        conn.role = slot;
        Ok(conn)
    }

    /// Sends a request and reads the response head. The request body is given back
    /// so that the caller may reuse its chunks. A request on a reused keep-alive
    /// connection that the server had closed is sent again once on a new connection.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: &Request<'_>,
        body: RequestBody,
    ) -> Result<(Response, RequestBody)> {
        self.send_with(endpoint, req, body, true).await
    }

    /// As [`HttpClient::send`], but never sent twice: for a request that is not
    /// idempotent (one that creates something), a pooled connection closed before any
    /// response byte may have been closed after the server acted on it, so that is an
    /// error for the caller, who can find out what the server holds before trying again.
    pub async fn send_once(
        &self,
        endpoint: &Endpoint,
        req: &Request<'_>,
        body: RequestBody,
    ) -> Result<(Response, RequestBody)> {
        self.send_with(endpoint, req, body, false).await
    }

    async fn send_with(
        &self,
        endpoint: &Endpoint,
        req: &Request<'_>,
        mut body: RequestBody,
        resend_stale: bool,
    ) -> Result<(Response, RequestBody)> {
        if let RequestBody::Stream(stream) = &mut body {
            if stream.first.is_none() {
                stream.first = Some(stream.drain.next().await);
            }
            if matches!(stream.first, Some(Next::Aborted)) {
                return Err(Error::protocol(req.op, req.target, "the read feeding this upload failed"));
            }
        }
        if let Some(rates) = &self.rates {
            rates.request().await;
        }
        let pool = self.pool(endpoint);
        let role = match body {
            RequestBody::Chunks(_) | RequestBody::Stream(_) => Role::Write,
            RequestBody::Empty | RequestBody::Bytes(_) => Role::Read,
        };
        loop {
            let mut conn = self.checkout(&pool, endpoint, role, req.op, req.target).await?;
            let reused = conn.reused;
            let mut pace = Pace::start();
            let began = std::time::Instant::now();
            let streamed = matches!(body, RequestBody::Stream(_));
            let (result, returned) = self.exchange(&mut conn, endpoint, req, body, &mut pace).await;
            // A streamed body comes back only if none of it was sent; once it was, its
            // bytes are gone and the request cannot be sent again.
            let unsent = !streamed || matches!(returned, RequestBody::Stream(_));
            let resend_stale = resend_stale && unsent;
            body = returned;
            match result {
                Ok((head, framing)) => {
                    // The path without its query, which may carry a signature.
                    tracing::trace!(
                        endpoint = %endpoint.authority(),
                        status = head.status,
                        ms = began.elapsed().as_millis() as u64,
                        reused,
                        "{} {}",
                        req.method,
                        req.path.split('?').next().unwrap_or_default()
                    );
                    let response = Response {
                        head,
                        conn: Some(conn),
                        pace,
                        framing,
                        client: self.clone(),
                        pool: pool.clone(),
                        op: req.op,
                        target: req.target.to_string(),
                    };
                    return Ok((response, body));
                }
                Err(StaleOr::Stale) if reused && resend_stale => continue,
                Err(StaleOr::Stale) => {
                    return Err(Error::io(
                        req.op,
                        req.target,
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "server closed the connection"),
                    ))
                }
                Err(StaleOr::Error(e)) => return Err(e),
            }
        }
    }

    async fn exchange(
        &self,
        conn: &mut Conn,
        endpoint: &Endpoint,
        req: &Request<'_>,
        body: RequestBody,
        pace: &mut Pace,
    ) -> (std::result::Result<(ResponseHead, Framing), StaleOr>, RequestBody) {
        let limits = self.inner.limits;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(req.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(req.path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(endpoint.authority().as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in &req.headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let body_len = body.len();
        if body_len > 0 || matches!(req.method, "PUT" | "POST") {
            head.extend_from_slice(format!("content-length: {body_len}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let body = match body {
            RequestBody::Bytes(bytes) => {
                head.extend_from_slice(&bytes);
                RequestBody::Bytes(bytes)
            }
            RequestBody::Stream(stream) => {
                head.extend_from_slice(stream.prefix().as_bytes());
                RequestBody::Stream(stream)
            }
            other => other,
        };
        let io_timeout = self.inner.io_timeout;
        let head_len = head.len();
        let wrote = monoio::time::timeout(io_timeout, conn.stream.write_all(head)).await;
        match wrote {
            Ok((Ok(_), _)) => {
                if let Err(e) = pace.moved(head_len, &limits, req.op, req.target) {
                    return (Err(StaleOr::Error(e)), body);
                }
            }
            Ok((Err(_), _)) => return (Err(StaleOr::Stale), body),
            Err(_) => return (Err(StaleOr::Error(timeout(req, io_timeout))), body),
        }
        let body = match body {
            RequestBody::Chunks(chunks) => {
                let mut sent = Vec::with_capacity(chunks.chunks.len());
                for chunk in chunks.chunks {
                    if chunk.is_empty() {
                        sent.push(chunk);
                        continue;
                    }
                    match monoio::time::timeout(io_timeout, conn.stream.write_all(chunk)).await {
                        Ok((Ok(_), chunk)) => {
                            if let Err(e) = pace.moved(chunk.len(), &limits, req.op, req.target) {
                                return (Err(StaleOr::Error(e)), RequestBody::Empty);
                            }
                            sent.push(chunk)
                        }
                        Ok((Err(e), _)) => {
                            return (Err(StaleOr::Error(Error::io(req.op, req.target, e))), RequestBody::Empty)
                        }
                        Err(_) => return (Err(StaleOr::Error(timeout(req, io_timeout))), RequestBody::Empty),
                    }
                }
                RequestBody::Chunks(Body::new(sent))
            }
            RequestBody::Stream(mut stream) => {
                // Past this point nothing can be sent again: errors are final.
                if let Err(e) = send_stream(conn, io_timeout, req, &mut stream, pace, &limits).await {
                    return (Err(StaleOr::Error(e)), RequestBody::Empty);
                }
                RequestBody::Empty
            }
            other => other,
        };
        if let Err(e) = conn.stream.flush().await {
            return (Err(StaleOr::Error(Error::io(req.op, req.target, e))), body);
        }
        let is_head = req.method == "HEAD";
        let result = read_head(conn, io_timeout, req, pace, &limits).await.map(|head| {
            let framing = head.framing(is_head);
            (head, framing)
        });
        (result, body)
    }
}

/// Writes a streamed body's data as the ring delivers it, then its trailer.
async fn send_stream(
    conn: &mut Conn,
    io_timeout: Duration,
    req: &Request<'_>,
    stream: &mut StreamBody,
    pace: &mut Pace,
    limits: &Limits,
) -> Result<()> {
    let mut sent = 0u64;
    loop {
        let next = match stream.first.take() {
            Some(first) => first,
            None => stream.drain.next().await,
        };
        match next {
            Next::Chunk(chunk) => {
                sent += chunk.len() as u64;
                if sent > stream.data_len {
                    return Err(Error::protocol(req.op, req.target, "the source sent more bytes than the part holds"));
                }
                match monoio::time::timeout(io_timeout, conn.stream.write_all(chunk)).await {
                    Ok((Ok(_), chunk)) => {
                        pace.moved(chunk.len(), limits, req.op, req.target)?;
                        stream.drain.recycle(chunk)
                    }
                    Ok((Err(e), _)) => return Err(Error::io(req.op, req.target, e)),
                    Err(_) => return Err(timeout(req, io_timeout)),
                }
            }
            Next::End(sum) => {
                if sent != stream.data_len {
                    return Err(Error::protocol(
                        req.op,
                        req.target,
                        format!("the source ended after {sent} of {} bytes", stream.data_len),
                    ));
                }
                let value = sum.to_base64();
                assert_eq!(value.len(), stream.trailer_value_len, "trailer length fixed by the algorithm");
                let suffix = stream.suffix(&value).into_bytes();
                return match monoio::time::timeout(io_timeout, conn.stream.write_all(suffix)).await {
                    Ok((Ok(_), _)) => Ok(()),
                    Ok((Err(e), _)) => Err(Error::io(req.op, req.target, e)),
                    Err(_) => Err(timeout(req, io_timeout)),
                };
            }
            Next::Aborted => {
                return Err(Error::protocol(req.op, req.target, "the read feeding this upload failed"));
            }
        }
    }
}

enum StaleOr {
    /// The connection was closed before any response byte: safe to resend.
    Stale,
    Error(Error),
}

fn timeout(req: &Request<'_>, t: Duration) -> Error {
    Error::Timeout { op: req.op, target: req.target.to_string(), seconds: t.as_secs() }
}

async fn read_head(
    conn: &mut Conn,
    io_timeout: Duration,
    req: &Request<'_>,
    pace: &mut Pace,
    limits: &Limits,
) -> std::result::Result<ResponseHead, StaleOr> {
    // Move unread bytes to the front; a previous response may have left none.
    if conn.start > 0 {
        conn.buf.drain(..conn.start);
        conn.start = 0;
    }
    let mut first_read = true;
    loop {
        match ResponseHead::parse(&conn.buf) {
            Ok(Some((head, len))) => {
                conn.start = len;
                if head.status == 100 {
                    conn.buf.drain(..len);
                    conn.start = 0;
                    continue;
                }
                return Ok(head);
            }
            Ok(None) => {}
            Err(detail) => return Err(StaleOr::Error(Error::protocol(req.op, req.target, detail))),
        }
        if conn.buf.len() == conn.buf.capacity() {
            return Err(StaleOr::Error(Error::protocol(req.op, req.target, "response head larger than 16 KiB")));
        }
        let buf = std::mem::take(&mut conn.buf);
        let at = buf.len();
        let cap = buf.capacity();
        let read = monoio::time::timeout(io_timeout, conn.stream.read(buf.slice_mut(at..cap))).await;
        let (res, slice) = match read {
            Ok(r) => r,
            Err(_) => return Err(StaleOr::Error(timeout(req, io_timeout))),
        };
        conn.buf = slice.into_inner();
        match res {
            Ok(0) if first_read && conn.buf.is_empty() => return Err(StaleOr::Stale),
            Ok(0) => {
                return Err(StaleOr::Error(Error::protocol(
                    req.op,
                    req.target,
                    "connection closed in the response head",
                )))
            }
            Ok(n) => {
                first_read = false;
                pace.moved(n, limits, req.op, req.target).map_err(StaleOr::Error)?;
            }
            Err(e) if first_read && conn.buf.is_empty() && is_reset(&e) => return Err(StaleOr::Stale),
            Err(e) => return Err(StaleOr::Error(Error::io(req.op, req.target, e))),
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionAborted
    )
}

/// A response whose head has been read; its body is read with one of the methods,
/// after which the connection returns to the pool if it can be reused.
pub struct Response {
    /// Status and headers.
    pub head: ResponseHead,
    conn: Option<Conn>,
    /// The request's bytes moved so far, for the minimum rate.
    pace: Pace,
    framing: Framing,
    client: HttpClient,
    pool: Rc<LocalPool>,
    op: &'static str,
    target: String,
}

impl Response {
    fn finish(&mut self, reusable: bool) {
        if let Some(conn) = self.conn.take() {
            if reusable && self.head.keep_alive() {
                self.pool.checkin(conn);
            }
        }
    }

    async fn read_more(&mut self) -> Result<usize> {
        let io_timeout = self.client.inner.io_timeout;
        let conn = self.conn.as_mut().expect("connection present until the body is read");
        if conn.start > 0 {
            conn.buf.drain(..conn.start);
            conn.start = 0;
        }
        if conn.buf.len() == conn.buf.capacity() {
            conn.buf.reserve(conn.buf.capacity());
        }
        let buf = std::mem::take(&mut conn.buf);
        let at = buf.len();
        let cap = buf.capacity();
        let (res, slice) = monoio::time::timeout(io_timeout, conn.stream.read(buf.slice_mut(at..cap)))
            .await
            .map_err(|_| Error::Timeout { op: self.op, target: self.target.clone(), seconds: io_timeout.as_secs() })?;
        conn.buf = slice.into_inner();
        let n = res.map_err(|e| Error::io(self.op, self.target.clone(), e))?;
        self.pace.moved(n, &self.client.inner.limits, self.op, &self.target)?;
        Ok(n)
    }

    /// Reads the whole body into memory, up to `METADATA_BODY_MAX_BYTES`.
    pub async fn read_to_vec(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.framing {
            Framing::Length(n) => {
                if n > METADATA_BODY_MAX_BYTES {
                    return Err(Error::protocol(self.op, self.target.clone(), format!("metadata body of {n} bytes")));
                }
                while (out.len() as u64) < n {
                    let conn = self.conn.as_mut().expect("connection");
                    let want = (n as usize - out.len()).min(conn.buf.len() - conn.start);
                    out.extend_from_slice(&conn.buf[conn.start..conn.start + want]);
                    conn.start += want;
                    if (out.len() as u64) < n && self.read_more().await? == 0 {
                        return Err(Error::protocol(self.op, self.target.clone(), "connection closed in the body"));
                    }
                }
                self.finish(true);
            }
            Framing::UntilClose => loop {
                let conn = self.conn.as_mut().expect("connection");
                out.extend_from_slice(&conn.buf[conn.start..]);
                conn.start = conn.buf.len();
                if out.len() as u64 > METADATA_BODY_MAX_BYTES {
                    return Err(Error::protocol(self.op, self.target.clone(), "metadata body too large"));
                }
                if self.read_more().await? == 0 {
                    self.finish(false);
                    break;
                }
            },
            Framing::Chunked => {
                loop {
                    let size_line = self.read_line().await?;
                    let size_hex = size_line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_hex, 16).map_err(|_| {
                        Error::protocol(self.op, self.target.clone(), format!("bad chunk size {size_hex:?}"))
                    })?;
                    if (out.len() as u64).saturating_add(size) > METADATA_BODY_MAX_BYTES {
                        return Err(Error::protocol(self.op, self.target.clone(), "metadata body too large"));
                    }
                    if size == 0 {
                        // Trailers, until an empty line.
                        while !self.read_line().await?.is_empty() {}
                        break;
                    }
                    let mut left = size as usize;
                    while left > 0 {
                        let conn = self.conn.as_mut().expect("connection");
                        let take = left.min(conn.buf.len() - conn.start);
                        out.extend_from_slice(&conn.buf[conn.start..conn.start + take]);
                        conn.start += take;
                        left -= take;
                        if left > 0 && self.read_more().await? == 0 {
                            return Err(Error::protocol(self.op, self.target.clone(), "connection closed in a chunk"));
                        }
                    }
                    if !self.read_line().await?.is_empty() {
                        return Err(Error::protocol(self.op, self.target.clone(), "missing CRLF after chunk"));
                    }
                }
                self.finish(true);
            }
        }
        Ok(out)
    }

    async fn read_line(&mut self) -> Result<String> {
        loop {
            let conn = self.conn.as_mut().expect("connection");
            if let Some(pos) = conn.buf[conn.start..].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&conn.buf[conn.start..conn.start + pos]).into_owned();
                conn.start += pos + 2;
                return Ok(line);
            }
            if conn.buf.len() - conn.start > 4096 {
                return Err(Error::protocol(self.op, self.target.clone(), "chunk header line too long"));
            }
            if self.read_more().await? == 0 {
                return Err(Error::protocol(self.op, self.target.clone(), "connection closed in chunked body"));
            }
        }
    }

    /// Reads and drops the body (for error and empty responses).
    pub async fn discard(self) -> Result<()> {
        self.read_to_vec().await.map(drop)
    }

    /// Reads a body of known length into `body`'s chunks, feeding `hashers` as bytes
    /// arrive. The body must have room; the chunks come back filled in order.
    pub async fn read_into(mut self, body: Body, hashers: &mut Hashers) -> Result<Body> {
        let Framing::Length(expected) = self.framing else {
            return Err(Error::protocol(self.op, self.target.clone(), "object body without Content-Length"));
        };
        let capacity: u64 = body.chunks.iter().map(|c| c.remaining() as u64).sum();
        if expected > capacity {
            return Err(Error::protocol(
                self.op,
                self.target.clone(),
                format!("body of {expected} bytes does not fit the {capacity} bytes reserved for it"),
            ));
        }
        let mut left = expected;
        let mut filled = Vec::with_capacity(body.chunks.len());
        for chunk in body.chunks {
            filled.push(self.fill(chunk, &mut left, expected, hashers).await?);
        }
        debug_assert_eq!(left, 0);
        self.finish(true);
        Ok(Body::new(filled))
    }
}

impl Response {
    /// Fills `chunk` with up to `left` body bytes (those already read past the head
    /// first), feeding `hashers`.
    async fn fill(&mut self, mut chunk: Chunk, left: &mut u64, expected: u64, hashers: &mut Hashers) -> Result<Chunk> {
        let io_timeout = self.client.inner.io_timeout;
        let conn = self.conn.as_mut().expect("connection");
        if *left > 0 && conn.start < conn.buf.len() {
            let avail = (conn.buf.len() - conn.start).min(*left as usize);
            let before = chunk.len();
            let n = chunk.extend_from(&conn.buf[conn.start..conn.start + avail]);
            hashers.update(&chunk.as_slice()[before..]);
            conn.start += n;
            *left -= n as u64;
        }
        while *left > 0 && chunk.remaining() > 0 {
            let before = chunk.len();
            let paced = self.client.rates.as_ref().map_or(usize::MAX, |r| r.read_bytes_max());
            let want = chunk.remaining().min(*left as usize).min(paced);
            let conn = self.conn.as_mut().expect("connection");
            let read = monoio::time::timeout(io_timeout, conn.stream.read(chunk.slice_mut(before..before + want)));
            let (res, slice) = read.await.map_err(|_| Error::Timeout {
                op: self.op,
                target: self.target.clone(),
                seconds: io_timeout.as_secs(),
            })?;
            chunk = slice.into_inner();
            match res {
                Ok(0) => {
                    return Err(Error::protocol(
                        self.op,
                        self.target.clone(),
                        format!("connection closed with {left} of {expected} body bytes unread"),
                    ))
                }
                Ok(n) => {
                    hashers.update(&chunk.as_slice()[before..before + n]);
                    *left -= n as u64;
                    self.pace.moved(n, &self.client.inner.limits, self.op, &self.target)?;
                    if let Some(rates) = &self.client.rates {
                        let waited = rates.read(n).await;
                        self.pace.paused(waited);
                    }
                }
                Err(e) => return Err(Error::io(self.op, self.target.clone(), e)),
            }
        }
        Ok(chunk)
    }

    /// Reads a body of known length through a ring, feeding `hashers`: each chunk goes
    /// to the ring's writer as soon as it is full. Returns the bytes read.
    pub async fn read_stream(mut self, filler: &Filler, hashers: &mut Hashers) -> Result<u64> {
        let Framing::Length(expected) = self.framing else {
            return Err(Error::protocol(self.op, self.target.clone(), "object body without Content-Length"));
        };
        let mut left = expected;
        while left > 0 {
            let Some(chunk) = filler.empty_chunk().await else {
                return Err(Error::protocol(self.op, self.target.clone(), "the upload this read feeds failed"));
            };
            filler.send(self.fill(chunk, &mut left, expected, hashers).await?);
        }
        self.finish(true);
        Ok(expected)
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted peer on loopback: framing, keep-alive reuse and
    //! the resend of a request whose pooled connection the server had closed.

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;
    use crate::checksum::{ChecksumAlgo, Hashers};
    use crate::pool::BufferPool;
    use crate::runtime::{block_on, probe_io_uring, Driver};

    /// Serves `responses` in order, one per request read (up to the blank line), on as
    /// many connections as the client opens; `close_after` closes a connection after
    /// that many responses on it.
    fn script(responses: Vec<Vec<u8>>, close_after: usize) -> (Endpoint, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            let mut queue = responses.into_iter();
            'conns: for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                for _ in 0..close_after {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).unwrap_or(0) == 0 {
                            continue 'conns;
                        }
                        head.push(byte[0]);
                    }
                    requests.push(String::from_utf8_lossy(&head).into_owned());
                    let Some(response) = queue.next() else { break 'conns };
                    stream.write_all(&response).unwrap();
                    if queue.len() == 0 {
                        break 'conns;
                    }
                }
            }
            requests
        });
        (Endpoint { tls: false, host: "127.0.0.1".into(), port }, handle)
    }

    fn req(path: &str) -> Request<'_> {
        Request { method: "GET", path, headers: Vec::new(), op: "get", target: path }
    }

    fn drivers() -> Vec<Driver> {
        let mut d = vec![Driver::Epoll];
        if probe_io_uring().is_none() {
            d.push(Driver::IoUring);
        }
        d
    }

    #[test]
    fn chunked_and_keep_alive() {
        for driver in drivers() {
            let responses = vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
                    .to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            ];
            let (endpoint, server) = script(responses, 10);
            let bodies = block_on(driver, async {
                let client = HttpClient::default();
                let (r1, _) = client.send(&endpoint, &req("/one"), RequestBody::Empty).await.unwrap();
                let b1 = r1.read_to_vec().await.unwrap();
                let (r2, _) = client.send(&endpoint, &req("/two"), RequestBody::Empty).await.unwrap();
                let b2 = r2.read_to_vec().await.unwrap();
                (b1, b2)
            })
            .unwrap();
            assert_eq!(bodies.0, b"hello world");
            assert_eq!(bodies.1, b"abc");
            // Both requests went over one connection (the script saw them in order).
            assert_eq!(server.join().unwrap().len(), 2);
        }
    }

    #[test]
    fn bodies_stream_into_chunks_with_their_checksum() {
        for driver in drivers() {
            let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
            let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", payload.len()).into_bytes();
            response.extend_from_slice(&payload);
            let (endpoint, server) = script(vec![response], 1);
            let (bytes, crc) = block_on(driver, async {
                let pool = BufferPool::new(8192, 3);
                let chunks = pool.acquire(3).await;
                let client = HttpClient::default();
                let (r, _) = client.send(&endpoint, &req("/obj"), RequestBody::Empty).await.unwrap();
                let mut hashers = Hashers::new(ChecksumAlgo::Crc32c, false);
                let body = r.read_into(Body::new(chunks), &mut hashers).await.unwrap();
                let bytes: Vec<u8> = body.slices().flatten().copied().collect();
                (bytes, hashers.finish().0)
            })
            .unwrap();
            assert_eq!(bytes, payload);
            assert_eq!(crc.crc32c(), Some(crc32c::crc32c(&payload)));
            server.join().unwrap();
        }
    }

    /// Accepts one request, reads its head and Content-Length body, answers 200, and
    /// returns (head, body).
    fn recording_peer() -> (Endpoint, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(stream.read(&mut byte).unwrap(), 1);
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            (head, body)
        });
        (Endpoint { tls: false, host: "127.0.0.1".into(), port }, handle)
    }

    #[test]
    fn streamed_bodies_are_aws_chunked_with_a_checksum_trailer() {
        for driver in drivers() {
            for len in [0usize, 1, 8192, 20_000] {
                let payload: Vec<u8> = (0..len as u32).map(|i| (i % 253) as u8).collect();
                let (endpoint, peer) = recording_peer();
                let sent = payload.clone();
                block_on(driver, async move {
                    let pool = BufferPool::new(8192, 2);
                    let (filler, drain) = crate::pool::ring::ring(pool.acquire(2).await);
                    let reader = async move {
                        let mut h = crate::checksum::Hasher::new(ChecksumAlgo::Crc32c);
                        for piece in sent.chunks(8192) {
                            let mut c = filler.empty_chunk().await.unwrap();
                            c.extend_from(piece);
                            h.update(piece);
                            filler.send(c);
                        }
                        filler.finish(h.finish());
                    };
                    let client = HttpClient::default();
                    let body = StreamBody::new(drain, len as u64, "x-amz-checksum-crc32c", 8);
                    let put = Request { method: "PUT", path: "/k", headers: Vec::new(), op: "put", target: "k" };
                    let writer = client.send(&endpoint, &put, RequestBody::Stream(body));
                    let ((), sent) = monoio::join!(reader, writer);
                    assert_eq!(sent.unwrap().0.head.status, 200);
                })
                .unwrap();
                let (_, body) = peer.join().unwrap();
                let crc = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    crc32c::crc32c(&payload).to_be_bytes(),
                );
                let mut want = Vec::new();
                if len > 0 {
                    want.extend_from_slice(format!("{len:x}\r\n").as_bytes());
                    want.extend_from_slice(&payload);
                    want.extend_from_slice(b"\r\n");
                }
                want.extend_from_slice(format!("0\r\nx-amz-checksum-crc32c:{crc}\r\n\r\n").as_bytes());
                assert_eq!(body, want, "len {len}");
            }
        }
    }

    #[test]
    fn a_closed_pooled_connection_is_replaced() {
        for driver in drivers() {
            // The server answers once per connection and closes it, as an idle-timeout
            // would: the second request finds its pooled connection dead and is resent.
            let responses = vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb".to_vec(),
            ];
            let (endpoint, server) = script(responses, 1);
            let got = block_on(driver, async {
                let client = HttpClient::default();
                let (r1, _) = client.send(&endpoint, &req("/1"), RequestBody::Empty).await.unwrap();
                let a = r1.read_to_vec().await.unwrap();
                let (r2, _) = client.send(&endpoint, &req("/2"), RequestBody::Empty).await.unwrap();
                let b = r2.read_to_vec().await.unwrap();
                (a, b)
            })
            .unwrap();
            assert_eq!(got, (b"a".to_vec(), b"b".to_vec()));
            server.join().unwrap();
        }
    }

    #[test]
    fn a_short_body_is_an_error_not_a_hang() {
        for driver in drivers() {
            let (endpoint, server) = script(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec()], 1);
            let result = block_on(driver, async {
                let pool = BufferPool::new(4096, 1);
                let chunks = pool.acquire(1).await;
                let client = HttpClient::default();
                let (r, _) = client.send(&endpoint, &req("/x"), RequestBody::Empty).await.unwrap();
                let mut hashers = Hashers::new(ChecksumAlgo::Crc32c, false);
                r.read_into(Body::new(chunks), &mut hashers).await.map(|_| ())
            })
            .unwrap();
            server.join().unwrap();
            let err = result.unwrap_err().to_string();
            assert!(err.contains("closed with 95 of 100"), "{err}");
        }
    }
}

#[cfg(test)]
mod proptests {
    //! Bodies as servers frame them, against a peer on loopback that writes the bytes
    //! it is given in the pieces it is given and then closes: a chunked body reads
    //! back to what was framed, and hostile framing ends in an error, not a panic or a
    //! hang. Streamed request bodies (`aws-chunked` with a trailer) are what their
    //! Content-Length says, and decode back to the data and its checksum. Epoll only:
    //! the framing code is the same on both drivers.

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;
    use crate::checksum::{ChecksumAlgo, Hasher};
    use crate::pool::BufferPool;
    use crate::runtime::{block_on, Driver};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0xc4a2),
            ..ProptestConfig::default()
        }
    }

    /// Bounds every wait of the peer and the client, so that a framing bug shows as
    /// a failure and not as a test that never ends.
    const WAIT: Duration = Duration::from_secs(10);

    /// Reads one request head, writes `pieces`, closes.
    fn serve(pieces: Vec<Vec<u8>>) -> (Endpoint, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.set_nodelay(true).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            for piece in pieces {
                // The client may stop reading (and close) at an error.
                if stream.write_all(&piece).and_then(|()| stream.flush()).is_err() {
                    return;
                }
            }
        });
        (Endpoint { tls: false, host: "127.0.0.1".into(), port }, handle)
    }

    /// The body of the response `bytes`, sent in pieces cut at `cuts`.
    fn fetch(bytes: &[u8], cuts: &[usize]) -> Result<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.dedup();
        let pieces = at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect();
        let (endpoint, peer) = serve(pieces);
        let got = block_on(Driver::Epoll, async {
            let client = HttpClient::new(WAIT, WAIT);
            let req = Request { method: "GET", path: "/k", headers: Vec::new(), op: "get", target: "k" };
            let (response, _) = client.send(&endpoint, &req, RequestBody::Empty).await?;
            response.read_to_vec().await
        })
        .unwrap();
        peer.join().unwrap();
        got
    }

    const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    /// One chunk: its data, an extension, the case of its size and leading zeros.
    type Chunk = (Vec<u8>, Option<String>, bool, usize);

    fn chunk() -> impl Strategy<Value = Chunk> {
        (
            prop::collection::vec(any::<u8>(), 1..600),
            prop::option::of(" ?;[a-z]{1,8}(=([a-z0-9]{1,8}|\"[a-z ;]{0,8}\"))?"),
            any::<bool>(),
            0usize..3,
        )
    }

    /// A chunked body: the chunks, the last chunk's extension, trailers.
    fn chunked_body(chunks: &[Chunk], last_ext: &Option<String>, trailers: &[(String, String)]) -> (Vec<u8>, Vec<u8>) {
        let mut wire = Vec::new();
        let mut data = Vec::new();
        for (bytes, ext, upper, zeros) in chunks {
            let size = if *upper { format!("{:X}", bytes.len()) } else { format!("{:x}", bytes.len()) };
            let line = format!("{}{size}{}\r\n", "0".repeat(*zeros), ext.as_deref().unwrap_or(""));
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(bytes);
            wire.extend_from_slice(b"\r\n");
            data.extend_from_slice(bytes);
        }
        wire.extend_from_slice(format!("0{}\r\n", last_ext.as_deref().unwrap_or("")).as_bytes());
        for (name, value) in trailers {
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        (wire, data)
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(kind, at, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind % 4 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at.max(1)),
            }
        }
        bytes
    }

    /// Decodes an `aws-chunked` body with one trailer: (data, trailer name, value).
    fn decode_aws_chunked(mut wire: &[u8]) -> std::result::Result<(Vec<u8>, String, String), String> {
        fn line<'a>(wire: &mut &'a [u8]) -> std::result::Result<&'a str, String> {
            let end = wire.windows(2).position(|w| w == b"\r\n").ok_or("a line without CRLF")?;
            let text = std::str::from_utf8(&wire[..end]).map_err(|e| e.to_string())?;
            *wire = &wire[end + 2..];
            Ok(text)
        }
        let mut data = Vec::new();
        loop {
            let size = usize::from_str_radix(line(&mut wire)?, 16).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            if wire.len() < size + 2 || &wire[size..size + 2] != b"\r\n" {
                return Err(format!("a chunk of {size} bytes is not followed by CRLF"));
            }
            data.extend_from_slice(&wire[..size]);
            wire = &wire[size + 2..];
        }
        let (name, value) = line(&mut wire)?.split_once(':').ok_or("a trailer without ':'")?;
        let (name, value) = (name.to_string(), value.to_string());
        if !line(&mut wire)?.is_empty() || !wire.is_empty() {
            return Err("more after the trailer".into());
        }
        Ok((data, name, value))
    }

    const TRAILERS: [(&str, ChecksumAlgo); 4] = [
        ("x-amz-checksum-crc32c", ChecksumAlgo::Crc32c),
        ("x-amz-checksum-crc64nvme", ChecksumAlgo::Crc64nvme),
        ("x-amz-checksum-sha256", ChecksumAlgo::Sha256),
        ("x-amz-checksum-sha1", ChecksumAlgo::Sha1),
    ];

    /// A drain of one (unused) chunk, for bodies whose framing alone is looked at.
    fn idle_drain() -> Drain {
        let pool = BufferPool::new(4096, 1);
        let chunks = block_on(Driver::Epoll, pool.acquire(1)).unwrap();
        crate::pool::ring::ring(chunks).1
    }

    proptest! {
        #![proptest_config(config(96))]

        #[test]
        fn chunked_bodies_read_back_however_they_arrive(
            chunks in prop::collection::vec(chunk(), 0..8),
            last_ext in prop::option::of(";[a-z]{1,8}"),
            trailers in prop::collection::vec(("x-[a-z]{1,10}", "[!-~]{1,20}"), 0..3),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let (wire, data) = chunked_body(&chunks, &last_ext, &trailers);
            let mut bytes = CHUNKED_HEAD.to_vec();
            bytes.extend_from_slice(&wire);
            let got = fetch(&bytes, &cuts);
            prop_assert_eq!(got.map_err(|e| e.to_string()), Ok(data));
        }

        #[test]
        fn hostile_chunked_bodies_end_in_an_error_or_a_body(
            chunks in prop::collection::vec(chunk(), 0..4),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let (wire, _) = chunked_body(&chunks, &None, &[]);
            let mut bytes = CHUNKED_HEAD.to_vec();
            bytes.extend_from_slice(&mutate(wire, &edits));
            // The peer closes after the bytes: every read ends, so no wait may time out.
            if let Err(e) = fetch(&bytes, &cuts) {
                prop_assert!(!matches!(e, Error::Timeout { .. }), "{}", e);
            }
        }

        #[test]
        fn arbitrary_chunked_bodies_end_in_an_error_or_a_body(
            body in prop::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'f'), Just(b';')],
                0..200,
            ),
        ) {
            let mut bytes = CHUNKED_HEAD.to_vec();
            bytes.extend_from_slice(&body);
            if let Err(e) = fetch(&bytes, &[]) {
                prop_assert!(!matches!(e, Error::Timeout { .. }), "{}", e);
            }
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn aws_chunked_framing_is_its_content_length_and_decodes_back(
            data in prop::collection::vec(any::<u8>(), 0..3000),
            which in 0usize..TRAILERS.len(),
        ) {
            let (trailer, algo) = TRAILERS[which];
            let mut hasher = Hasher::new(algo);
            hasher.update(&data);
            let value = hasher.finish().to_base64();
            let body = StreamBody::new(idle_drain(), data.len() as u64, trailer, value.len());
            let mut wire = body.prefix().into_bytes();
            wire.extend_from_slice(&data);
            wire.extend_from_slice(body.suffix(&value).as_bytes());
            prop_assert_eq!(body.wire_len(), wire.len() as u64);
            prop_assert_eq!(decode_aws_chunked(&wire), Ok((data, trailer.to_string(), value)));
        }

        #[test]
        fn aws_chunked_lengths_add_up_for_any_size(data_len in 0u64..1 << 62, value_len in 0usize..100) {
            // Parts are at most 5 GiB; sizes up to 2^62 leave `wire_len` room to add.
            let body = StreamBody::new(idle_drain(), data_len, "x-amz-checksum-crc32c", value_len);
            let value = "A".repeat(value_len);
            let framing = body.prefix().len() as u128 + body.suffix(&value).len() as u128;
            prop_assert_eq!(u128::from(body.wire_len()), framing + u128::from(data_len));
            if data_len > 0 {
                prop_assert_eq!(body.prefix(), format!("{data_len:x}\r\n"));
            }
        }
    }

    proptest! {
        #![proptest_config(config(12))]

        /// Through the client to a peer that reads exactly the Content-Length.
        #[test]
        fn streamed_bodies_arrive_as_framed(
            len in 0usize..40_000,
            chunk_pages in 1usize..3,
            piece_bytes in 1usize..8192,
            chunk_count in 1usize..4,
        ) {
            // Pool chunks are whole pages; the reader fills them with pieces of any size.
            let chunk_bytes = chunk_pages * 4096;
            let piece_bytes = piece_bytes.min(chunk_bytes);
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let peer = std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    assert_eq!(stream.read(&mut byte).unwrap(), 1);
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).unwrap();
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                // Nothing may follow the body the Content-Length announced.
                let mut more = [0u8; 1];
                let after = stream.read(&mut more).unwrap_or(0);
                (body, after)
            });
            let endpoint = Endpoint { tls: false, host: "127.0.0.1".into(), port };
            let sent = payload.clone();
            let status = block_on(Driver::Epoll, async move {
                let pool = BufferPool::new(chunk_bytes, chunk_count);
                let (filler, drain) = crate::pool::ring::ring(pool.acquire(chunk_count).await);
                let reader = async move {
                    let mut h = Hasher::new(ChecksumAlgo::Crc32c);
                    for piece in sent.chunks(piece_bytes) {
                        let mut c = filler.empty_chunk().await.unwrap();
                        c.extend_from(piece);
                        h.update(piece);
                        filler.send(c);
                    }
                    filler.finish(h.finish());
                };
                let client = HttpClient::new(WAIT, WAIT);
                let body = StreamBody::new(drain, len as u64, "x-amz-checksum-crc32c", 8);
                let put = Request { method: "PUT", path: "/k", headers: Vec::new(), op: "put", target: "k" };
                let writer = client.send(&endpoint, &put, RequestBody::Stream(body));
                let ((), sent) = monoio::join!(reader, writer);
                sent.map(|(r, _)| r.head.status).map_err(|e| e.to_string())
            })
            .unwrap();
            prop_assert_eq!(status, Ok(200));
            let (body, after) = peer.join().unwrap();
            prop_assert_eq!(after, 0);
            let crc = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                crc32c::crc32c(&payload).to_be_bytes(),
            );
            prop_assert_eq!(
                decode_aws_chunked(&body),
                Ok((payload, "x-amz-checksum-crc32c".to_string(), crc))
            );
        }
    }

    /// A chunk size that does not fit beside what was read (`1\r\na\r\nffffffffffffffff`)
    /// must meet the 64 MiB bound on metadata bodies, not wrap past it and have the
    /// client buffer as many bytes as the server sends.
    #[test]
    fn a_huge_chunk_size_is_refused_before_its_bytes_are_read() {
        let mut bytes = CHUNKED_HEAD.to_vec();
        bytes.extend_from_slice(b"1\r\na\r\nffffffffffffffff\r\n");
        bytes.extend_from_slice(&vec![b'x'; 1 << 20]);
        let err = fetch(&bytes, &[]).expect_err("no body this large").to_string();
        assert!(err.contains("too large"), "{err}");
    }
}
