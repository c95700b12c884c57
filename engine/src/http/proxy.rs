//! HTTPS through a forward proxy, as a corporate network asks: `HTTPS_PROXY` (or
//! `https_proxy`) names an `http://[user:password@]host:port` proxy, and each `https`
//! endpoint is reached through a `CONNECT host:port` tunnel, inside which TLS runs end to
//! end as without the proxy. `NO_PROXY` (or `no_proxy`) lists hosts reached directly:
//! names (a name matches itself and its subdomains; a leading dot is allowed), addresses,
//! or `*` for all. Loopback hosts never go through a proxy. Plain `http` endpoints are
//! reached directly.

use std::sync::OnceLock;

use base64::Engine as _;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::conn::Endpoint;

/// Longest proxy answer head read before the tunnel is refused.
const ANSWER_HEAD_MAX: usize = 8 * 1024;

/// The proxy in use, read from the environment once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    /// Where the proxy listens.
    pub(crate) endpoint: Endpoint,
    /// `Proxy-Authorization` value, when the URL carries credentials.
    authorization: Option<String>,
    /// Hosts reached directly.
    no_proxy: Vec<String>,
}

static PROXY: OnceLock<Result<Option<Proxy>, String>> = OnceLock::new();

fn env_either(upper: &str, lower: &str) -> Option<String> {
    std::env::var(lower).ok().or_else(|| std::env::var(upper).ok()).filter(|v| !v.trim().is_empty())
}

/// The proxy configured by the environment, if any; an unusable `HTTPS_PROXY` is an error
/// that names the variable and what it must look like.
pub(crate) fn configured() -> Result<Option<&'static Proxy>, String> {
    let proxy = PROXY.get_or_init(|| {
        let Some(url) = env_either("HTTPS_PROXY", "https_proxy") else { return Ok(None) };
        let no_proxy = env_either("NO_PROXY", "no_proxy").unwrap_or_default();
        Proxy::parse(&url, &no_proxy).map(Some)
    });
    match proxy {
        Ok(p) => Ok(p.as_ref()),
        Err(e) => Err(e.clone()),
    }
}

impl Proxy {
    /// Parses a proxy URL (`http://[user:password@]host[:port]`, the scheme optional) and
    /// a `NO_PROXY` list.
    pub(crate) fn parse(url: &str, no_proxy: &str) -> Result<Proxy, String> {
        let bad = |why: &str| format!("HTTPS_PROXY must be http://[user:password@]host:port ({why})");
        let rest = url.trim();
        if rest.starts_with("https://") || rest.starts_with("socks") {
            return Err(bad("only an http:// proxy is supported"));
        }
        let rest = rest.strip_prefix("http://").unwrap_or(rest).trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let has_port = match hostport.rsplit_once(':') {
            Some((h, _)) => !h.is_empty() && (!h.contains(':') || h.ends_with(']')),
            None => false,
        };
        let with_port = if has_port { hostport.to_string() } else { format!("{hostport}:80") };
        let endpoint = Endpoint::parse(&format!("http://{with_port}"))
            .ok()
            .filter(|e| !e.host.is_empty() && !e.host.contains(':') || e.host.starts_with('['))
            .ok_or_else(|| bad("no usable host and port"))?;
        let authorization = userinfo.map(|u| {
            let decoded = percent_encoding::percent_decode_str(u).decode_utf8_lossy().into_owned();
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(decoded))
        });
        let no_proxy = no_proxy
            .split(',')
            .map(|h| h.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(Proxy { endpoint, authorization, no_proxy })
    }

    /// Whether requests to `endpoint` go through this proxy.
    pub(crate) fn covers(&self, endpoint: &Endpoint) -> bool {
        if !endpoint.tls {
            return false;
        }
        let host = endpoint.host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let loopback = host == "localhost"
            || host.ends_with(".localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return false;
        }
        !self.no_proxy.iter().any(|n| {
            n == "*" || host == *n || (host.ends_with(n.as_str()) && host[..host.len() - n.len()].ends_with('.'))
        })
    }

    /// Asks the proxy, on `stream`, for a tunnel to `endpoint`, and reads its answer.
    pub(crate) async fn tunnel(&self, stream: &mut TcpStream, endpoint: &Endpoint) -> std::io::Result<()> {
        let target = format!("{}:{}", endpoint.host, endpoint.port);
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        let (r, _) = stream.write_all(head.into_bytes()).await;
        r?;
        // Read the answer a byte at a time up to its blank line, so that no byte of the
        // tunnel (the server's TLS answer) is taken from the stream.
        let mut answer = Vec::with_capacity(256);
        let mut byte = vec![0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= ANSWER_HEAD_MAX {
                return Err(refused(&self.endpoint, &target, "an answer head longer than 8 KiB"));
            }
            let (r, b) = stream.read(byte).await;
            byte = b;
            if r? == 0 {
                return Err(refused(&self.endpoint, &target, "the connection closed before an answer"));
            }
            answer.push(byte[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&answer) {
            Ok(httparse::Status::Complete(_)) if parsed.code.is_some_and(|c| (200..300).contains(&c)) => Ok(()),
            Ok(httparse::Status::Complete(_)) => {
                let code = parsed.code.unwrap_or(0);
                let reason = parsed.reason.unwrap_or("");
                Err(refused(&self.endpoint, &target, &format!("HTTP {code} {reason}")))
            }
            _ => Err(refused(&self.endpoint, &target, "an answer that is not HTTP")),
        }
    }
}

fn refused(proxy: &Endpoint, target: &str, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("the proxy at {} (HTTPS_PROXY) refused a tunnel to {target}: {why}", proxy.authority()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(host: &str) -> Endpoint {
        Endpoint::parse(&format!("https://{host}")).unwrap()
    }

    #[test]
    fn proxy_urls_parse() {
        let p = Proxy::parse("http://127.0.0.1:3128", "").unwrap();
        assert_eq!((p.endpoint.host.as_str(), p.endpoint.port, p.authorization.is_none()), ("127.0.0.1", 3128, true));
        let p = Proxy::parse("proxy.corp:8080/", "").unwrap();
        assert_eq!((p.endpoint.host.as_str(), p.endpoint.port), ("proxy.corp", 8080));
        let p = Proxy::parse("http://proxy.corp", "").unwrap();
        assert_eq!(p.endpoint.port, 80);
        let p = Proxy::parse("http://me:s%40cret@proxy.corp:8080", "").unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("me:s@cret");
        assert_eq!(p.authorization, Some(format!("Basic {expected}")));
        let err = Proxy::parse("socks5://p:1080", "").unwrap_err();
        assert!(err.contains("HTTPS_PROXY") && err.contains("http://"), "{err}");
        assert!(Proxy::parse("http://:80", "").is_err());
    }

    #[test]
    fn no_proxy_and_loopback_are_reached_directly() {
        let p = Proxy::parse("http://127.0.0.1:3128", "internal.corp, .example.org,10.1.2.3").unwrap();
        assert!(p.covers(&https("api.dropboxapi.com")));
        assert!(!p.covers(&Endpoint::parse("http://api.dropboxapi.com").unwrap()));
        assert!(!p.covers(&https("internal.corp")));
        assert!(!p.covers(&https("s3.internal.corp")));
        assert!(p.covers(&https("notinternal.corp")));
        assert!(!p.covers(&https("www.example.org")));
        assert!(!p.covers(&https("10.1.2.3")));
        assert!(!p.covers(&https("127.0.0.1:9000")));
        assert!(!p.covers(&https("localhost:9000")));
        assert!(!p.covers(&https("[::1]:9000")));
        let all = Proxy::parse("http://127.0.0.1:3128", "*").unwrap();
        assert!(!all.covers(&https("api.dropboxapi.com")));
    }
}
