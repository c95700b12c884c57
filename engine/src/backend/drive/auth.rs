//! Access tokens, shared by every worker: one cache in the backend, refreshed a
//! minute before expiry and dropped when Drive answers 401.
//!
//! The lock is a plain mutex held only to read or swap the token, never across a
//! request: two workers that find it expired at once both refresh (each gets a valid
//! token; the later one is kept), which costs one extra grant and no waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::config::{Credential, DriveConfig};
use crate::error::{Error, ErrorClass, Result};
use crate::http::{HttpClient, Request, RequestBody};

/// Refresh at most this long before the token's stated expiry (a tenth of its life
/// when that is shorter, so a short-lived token is not refreshed on every call).
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

struct Token {
    access: String,
    /// When to get a new one.
    refresh_at: Instant,
    /// When Google says it expires.
    expires: Instant,
}

/// The access token all workers use.
#[derive(Default)]
pub(super) struct TokenCache {
    token: Mutex<Option<Token>>,
    /// A worker is refreshing: the others go on with the current token while it holds.
    refreshing: std::sync::atomic::AtomicBool,
}

/// Clears [`TokenCache::refreshing`] when the refresh ends, however it ends.
struct Refreshing<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// The OAuth grant of a service account's signed JWT.
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The scope asked for: all of Drive.
const DRIVE_SCOPE: &str = "https://www.googleapis.com/auth/drive";
/// Lifetime of a JWT (Google takes at most an hour).
const JWT_LIFETIME_S: u64 = 3600;

/// A signed (RS256) JWT asking for a Drive token for `email` (acting for `subject`).
fn jwt(
    email: &str,
    key: &ring::signature::RsaKeyPair,
    subject: Option<&str>,
    audience: &str,
) -> std::result::Result<String, String> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": email, "scope": DRIVE_SCOPE, "aud": audience, "iat": now, "exp": now + JWT_LIFETIME_S,
    });
    if let Some(sub) = subject {
        claims["sub"] = sub.into();
    }
    let signed = format!("{}.{}", b64(br#"{"alg":"RS256","typ":"JWT"}"#), b64(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signed.as_bytes(), &mut signature)
        .map_err(|_| "RSA signing failed".to_string())?;
    Ok(format!("{signed}.{}", b64(&signature)))
}

fn form_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl TokenCache {
    /// A valid access token: the cached one, or a fresh one.
    pub(super) async fn get(&self, cfg: &DriveConfig, http: &HttpClient) -> Result<String> {
        if let Credential::Static(token) = &cfg.credential {
            return Ok(token.clone());
        }
        {
            let cached = self.token.lock().expect("token lock");
            if let Some(t) = cached.as_ref() {
                let now = Instant::now();
                if t.refresh_at > now {
                    return Ok(t.access.clone());
                }
                // Due for a refresh, still valid, and another worker is at it.
                if t.expires > now && self.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    return Ok(t.access.clone());
                }
                self.refreshing.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let _refreshing = Refreshing(&self.refreshing);
        let target = cfg.token_endpoint.url();
        let body = match &cfg.credential {
            Credential::Static(_) => unreachable!("returned above"),
            Credential::Refresh { client_id, client_secret, refresh_token } => format!(
                "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                form_encode(client_id),
                form_encode(client_secret),
                form_encode(refresh_token)
            ),
            Credential::ServiceAccount { email, key, subject } => {
                let audience = format!("{target}{}", cfg.token_path);
                let assertion = jwt(email, key, subject.as_deref(), &audience)
                    .map_err(|why| Error::Usage(format!("remote {:?}: cannot sign a JWT: {why}", cfg.remote)))?;
                format!("grant_type={}&assertion={assertion}", form_encode(JWT_GRANT))
            }
        };
        let req = Request {
            method: "POST",
            path: &cfg.token_path,
            headers: vec![("content-type".to_string(), "application/x-www-form-urlencoded".to_string())],
            op: "token",
            target: &target,
        };
        let (response, _) = http.send(&cfg.token_endpoint, &req, RequestBody::Bytes(body.clone().into_bytes())).await?;
        let status = response.head.status;
        let bytes = response.read_to_vec().await?;
        if status >= 300 {
            // Quoted in the error below: never with the secrets (or the signed JWT) it was sent.
            let bytes = crate::backend::registry::without_sent(&bytes, &body);
            let parsed: Option<OAuthError> = serde_json::from_slice(&bytes).ok();
            let code = parsed.as_ref().and_then(|e| e.error.clone()).unwrap_or_default();
            let message = parsed.and_then(|e| e.error_description).unwrap_or_else(|| format!("HTTP {status}"));
            let class = if status >= 500 || status == 429 { ErrorClass::Retryable } else { ErrorClass::FatalRelay };
            return Err(Error::Http {
                op: "token",
                target,
                status,
                code,
                message,
                hint: format!(
                    "; the token endpoint refused the refresh token of remote {:?}: check client_id, client_secret \
                     and refresh_token (a refresh token is revoked when its user withdraws access)",
                    cfg.remote
                ),
                retry_after: None,
                class,
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol("token", &target, format!("unreadable token answer: {e}")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let now = Instant::now();
        let refresh_at = now + lifetime - (lifetime / 10).min(EXPIRY_MARGIN);
        let access = answer.access_token;
        *self.token.lock().expect("token lock") =
            Some(Token { access: access.clone(), refresh_at, expires: now + lifetime });
        Ok(access)
    }

    /// Forgets `used` if it is still the cached token (Drive refused it).
    pub(super) fn drop_token(&self, used: &str) {
        let mut cached = self.token.lock().expect("token lock");
        if cached.as_ref().is_some_and(|t| t.access == used) {
            *cached = None;
        }
    }
}
