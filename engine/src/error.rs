//! The engine's error type.
//!
//! Every error says what was being done (`op`), to what (`target`: a key, a bucket,
//! an endpoint), and where it helps, what the operator can do about it. Each error
//! carries an [`ErrorClass`] that says what the relay should do about it, so the retry
//! loop needs no string matching. Errors a store answers with ([`Error::Http`]) are
//! classified by that store's backend, which knows its codes; the rest are classified
//! here by kind (a reset connection is retryable whatever the store).

use std::time::Duration;

/// What the relay does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Try the same operation again after a backoff (5xx, resets, timeouts).
    Retryable,
    /// The store refused it as one too many (429, 503, `SlowDown`): send fewer at once,
    /// then try again (after the store's Retry-After when it gave one).
    Throttled,
    /// The credentials expired (an OAuth access token): the backend has dropped its
    /// cached token; try again at once, with a fresh one.
    Reauthenticate,
    /// The object changed under the relay, or the destination holds something in the
    /// way (412, 409): this object fails without retries; the others go on.
    Conflict,
    /// This object cannot succeed (a key the store refuses, a 400 about this request);
    /// the others go on.
    FatalObject,
    /// No object can succeed (bad credentials, missing bucket, untrusted certificate):
    /// the relay stops instead of failing every object the same way.
    FatalRelay,
    /// The destination's allowance for a period is spent (Google Drive's daily upload
    /// limit): no new upload can succeed until it resets, while uploads in progress
    /// may finish. The relay starts nothing new, lets what is in flight finish, and
    /// ends waiting, with the time it can go on (the error's `retry_after`).
    QuotaExhausted,
}

impl ErrorClass {
    /// Lower-case name, for metrics and reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Reauthenticate => "reauthenticate",
            ErrorClass::Conflict => "conflict",
            ErrorClass::FatalObject => "fatal_object",
            ErrorClass::FatalRelay => "fatal_relay",
            ErrorClass::QuotaExhausted => "quota_exhausted",
        }
    }
}

/// A result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context for a one-line report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input (URL, config, flag) is wrong. Never retried.
    #[error("{0}")]
    Usage(String),
    /// Could not open a connection to an endpoint.
    #[error("{op} {target}: cannot connect to {endpoint}: {source}; check that the server is running and the endpoint in the remote's config is right")]
    Connect {
        /// The operation.
        op: &'static str,
        /// The key or bucket it concerned.
        target: String,
        /// The endpoint, `host:port`.
        endpoint: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An I/O error on an established connection or a local file.
    #[error("{op} {target}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The key, path or endpoint.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("{op} {target}: HTTP {status} {code}: {message}{hint}")]
    Http {
        /// The operation.
        op: &'static str,
        /// The key or bucket.
        target: String,
        /// HTTP status code.
        status: u16,
        /// The store's error code, e.g. `NoSuchBucket`, `SlowDown`.
        code: String,
        /// The store's message.
        message: String,
        /// Advice for the operator, starting with "; ", or empty.
        hint: String,
        /// The server's Retry-After, if it sent one.
        retry_after: Option<Duration>,
        /// What the relay should do about it, as the store's backend judged.
        class: ErrorClass,
    },
    /// The server broke the protocol (bad HTTP, unexpected XML, short body).
    #[error("{op} {target}: {detail}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// The key or endpoint.
        target: String,
        /// What was wrong.
        detail: String,
    },
    /// Bytes did not match their checksum.
    #[error("{op} {target}: checksum mismatch: {detail}")]
    Integrity {
        /// The operation.
        op: &'static str,
        /// The key.
        target: String,
        /// Expected and actual values.
        detail: String,
    },
    /// The source object changed while it was read: the bytes read so far are of
    /// another version than the one the relay started from.
    #[error("{op} {target}: the object changed at the source while it was read ({detail})")]
    Changed {
        /// The operation.
        op: &'static str,
        /// The key.
        target: String,
        /// Which versions.
        detail: String,
    },
    /// Nothing at the source vouches for the object's bytes, and the relay was told to
    /// land only objects checked end to end.
    #[error(
        "{target}: nothing at the source vouches for its bytes ({detail}), and --require-end-to-end refuses \
         objects checked only hop by hop"
    )]
    Unvouched {
        /// The key.
        target: String,
        /// What the source reports.
        detail: String,
    },
    /// A key that this store cannot hold safely (e.g. `..` on the file backend).
    #[error("{op} {key:?}: {reason}")]
    InvalidKey {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, protocol).
    #[error("{op} {target}: TLS with {endpoint} failed: {detail}; if the server uses a private CA, point SSL_CERT_FILE at its certificate")]
    Tls {
        /// The operation.
        op: &'static str,
        /// The key or bucket.
        target: String,
        /// The endpoint, `host:port`.
        endpoint: String,
        /// What rustls said.
        detail: String,
    },
    /// A peer that moves bytes, but slower than the slowest rate accepted: a trickle
    /// that no idle timeout catches.
    #[error(
        "{op} {target}: {bytes} bytes moved in {seconds}s, under the minimum of {min_rate_bytes_per_s} bytes/s \
         (--min-rate); given up as stalled"
    )]
    TooSlow {
        /// The operation.
        op: &'static str,
        /// The key or endpoint.
        target: String,
        /// Bytes moved both ways so far.
        bytes: u64,
        /// Seconds since the request began.
        seconds: u64,
        /// The slowest rate accepted.
        min_rate_bytes_per_s: u64,
    },
    /// An operation took longer than its deadline.
    #[error("{op} {target}: timed out after {seconds}s")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The key or endpoint.
        target: String,
        /// The deadline.
        seconds: u64,
    },
}

impl Error {
    /// What the relay should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Usage(_) | Error::Tls { .. } => ErrorClass::FatalRelay,
            // The same read would meet the same change: the relay starts the object
            // over from its new version instead of retrying the read.
            Error::InvalidKey { .. } | Error::Changed { .. } | Error::Unvouched { .. } => ErrorClass::FatalObject,
            Error::Connect { .. } | Error::Io { .. } | Error::Timeout { .. } | Error::TooSlow { .. } => {
                ErrorClass::Retryable
            }
            Error::Protocol { .. } | Error::Integrity { .. } => ErrorClass::Retryable,
            Error::Http { class, .. } => *class,
        }
    }

    /// Whether the same operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self.class(), ErrorClass::Retryable | ErrorClass::Throttled | ErrorClass::Reauthenticate)
    }

    /// Whether the store refused the request as one too many: a signal to send fewer
    /// at once.
    pub fn is_throttle(&self) -> bool {
        self.class() == ErrorClass::Throttled
    }

    /// Whether no object can succeed after this error: the relay stops instead of
    /// failing every object the same way.
    pub fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::FatalRelay
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The operation that failed (`get`, `put`, `upload-part`, ...), where the error
    /// names one.
    pub fn op(&self) -> Option<&'static str> {
        match self {
            Error::Usage(_) | Error::Unvouched { .. } => None,
            Error::Connect { op, .. }
            | Error::Io { op, .. }
            | Error::Http { op, .. }
            | Error::Protocol { op, .. }
            | Error::Integrity { op, .. }
            | Error::Changed { op, .. }
            | Error::InvalidKey { op, .. }
            | Error::Tls { op, .. }
            | Error::TooSlow { op, .. }
            | Error::Timeout { op, .. } => Some(op),
        }
    }

    /// Shorthand for an I/O error.
    pub fn io(op: &'static str, target: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { op, target: target.into(), source }
    }

    /// Shorthand for a protocol error.
    pub fn protocol(op: &'static str, target: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Protocol { op, target: target.into(), detail: detail.into() }
    }
}

/// Text a server or a file sent (a message, a code, a body), made fit for a one-line
/// error: no line break, control character or bidi override is left, so the text
/// cannot start a line of its own in a log or rearrange one. It is trimmed; a run of
/// whitespace and such characters becomes one space, unless it is plain spaces
/// (kept as they are); past `chars_max` characters it is cut, with `...` after.
pub(crate) fn one_line(text: &str, chars_max: usize) -> String {
    let breaks =
        |c: char| c.is_whitespace() || c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out = String::with_capacity(text.len().min(chars_max.saturating_add(3)));
    let mut count = 0;
    let (mut spaces, mut other) = (0usize, false);
    for c in text.chars() {
        if breaks(c) {
            if c == ' ' {
                spaces += 1;
            } else {
                other = true;
            }
            continue;
        }
        let gap = match (count, other) {
            (0, _) => 0,
            (_, true) => 1,
            (_, false) => spaces,
        };
        (spaces, other) = (0, false);
        for c in std::iter::repeat_n(' ', gap).chain([c]) {
            if count == chars_max {
                out.push_str("...");
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// Exponential backoff with full jitter: attempt 0 waits up to `base`, each later
/// attempt doubles the ceiling up to `cap`. A server's Retry-After wins when longer.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, retry_after: Option<Duration>) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let jittered = ceiling.mul_f64(fastrand::f64());
    match retry_after {
        Some(asked) if asked > jittered => asked.min(Duration::from_secs(60)),
        _ => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..40 {
            let d = backoff_delay(attempt, Duration::from_millis(100), Duration::from_secs(5), None);
            assert!(d <= Duration::from_secs(5));
        }
        let d = backoff_delay(0, Duration::from_millis(1), Duration::from_secs(1), Some(Duration::from_secs(2)));
        assert_eq!(d, Duration::from_secs(2));
    }

    fn http(class: ErrorClass) -> Error {
        Error::Http {
            op: "put",
            target: "k".into(),
            status: 503,
            code: String::new(),
            message: String::new(),
            hint: String::new(),
            retry_after: None,
            class,
        }
    }

    #[test]
    fn classes_decide() {
        assert!(http(ErrorClass::Throttled).is_retryable() && http(ErrorClass::Throttled).is_throttle());
        assert!(http(ErrorClass::Reauthenticate).is_retryable());
        assert!(!http(ErrorClass::Conflict).is_retryable() && !http(ErrorClass::Conflict).is_fatal());
        assert!(!http(ErrorClass::FatalObject).is_retryable() && !http(ErrorClass::FatalObject).is_fatal());
        assert!(http(ErrorClass::FatalRelay).is_fatal());
        assert!(Error::Usage("x".into()).is_fatal());
        assert!(Error::protocol("get", "k", "short").is_retryable());
    }
}
