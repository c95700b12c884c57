//! Access tokens: a fixed one, or one made from a refresh token and kept in a cache
//! that every worker's handle shares (the backend's `Arc<Mutex<..>>`), refreshed a
//! little before it expires and at once after Dropbox says it expired. The lock is
//! never held across a request: two workers that find the token stale at once may
//! both refresh, and the later answer wins, which is harmless.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::DropboxStore;
use crate::backend::registry;
use crate::error::{Error, ErrorClass, Result};
use crate::http::{Request, RequestBody};

/// Where access tokens come from.
#[derive(Clone)]
pub enum Credentials {
    /// A long-lived access token.
    Token(String),
    /// The refresh flow: a refresh token, the app it was issued to, and the app's secret
    /// (none for a PKCE app).
    Refresh {
        /// The refresh token.
        refresh_token: String,
        /// The app key (`client_id`).
        app_key: String,
        /// The app secret.
        app_secret: Option<String>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(..)"),
            Credentials::Refresh { app_key, app_secret, .. } => f
                .debug_struct("Refresh")
                .field("app_key", app_key)
                .field("app_secret", &app_secret.as_ref().map(|_| ".."))
                .finish_non_exhaustive(),
        }
    }
}

/// The access token in use, shared by every worker.
#[derive(Default)]
pub struct TokenCache {
    current: Mutex<Option<(String, Instant)>>,
}

impl TokenCache {
    /// The cached token, if it is not about to expire.
    fn fresh(&self) -> Option<String> {
        let guard = self.current.lock().expect("token cache lock");
        guard.as_ref().filter(|(_, good_until)| Instant::now() < *good_until).map(|(t, _)| t.clone())
    }

    fn store(&self, token: String, expires_in: Duration) {
        // Refreshed a tenth of its life (at most 5 minutes) before Dropbox expires it.
        let margin = (expires_in / 10).min(Duration::from_secs(300));
        *self.current.lock().expect("token cache lock") = Some((token, Instant::now() + expires_in - margin));
    }

    /// Drops `token` if it is the one cached (not one a worker refreshed since).
    pub fn drop_token(&self, token: &str) {
        let mut guard = self.current.lock().expect("token cache lock");
        if guard.as_ref().is_some_and(|(t, _)| t == token) {
            *guard = None;
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl DropboxStore {
    /// An access token for the next request.
    pub(super) async fn access_token(&self) -> Result<String> {
        let (refresh_token, app_key, app_secret) = match &self.cfg.credentials {
            Credentials::Token(t) => return Ok(t.clone()),
            Credentials::Refresh { refresh_token, app_key, app_secret } => (refresh_token, app_key, app_secret),
        };
        if let Some(token) = self.tokens.fresh() {
            return Ok(token);
        }
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let mut form =
            format!("grant_type=refresh_token&refresh_token={}&client_id={}", enc(refresh_token), enc(app_key));
        if let Some(secret) = app_secret {
            form.push_str("&client_secret=");
            form.push_str(&enc(secret));
        }
        let target = self.cfg.token_endpoint.url();
        let req = Request {
            method: "POST",
            path: &self.cfg.token_path,
            headers: vec![("content-type".to_string(), "application/x-www-form-urlencoded".to_string())],
            op: "refresh-token",
            target: &target,
        };
        let (response, _) =
            self.http.send(&self.cfg.token_endpoint, &req, RequestBody::Bytes(form.clone().into_bytes())).await?;
        let head = response.head.clone();
        let mut body = response.read_to_vec().await?;
        if head.status >= 300 {
            // Quoted in the error below: never with the secrets it was sent.
            body = registry::without_sent(&body, &form);
        }
        if head.status >= 500 || head.status == 429 {
            return Err(self.http_error("refresh-token", &target, &head, &body, None));
        }
        if head.status >= 300 {
            let text = String::from_utf8_lossy(&body);
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| "error".to_string());
            return Err(Error::Http {
                op: "refresh-token",
                target,
                status: head.status,
                code,
                message: super::one_line(&text),
                hint: format!(
                    "; the refresh token, app_key or app_secret of remote {:?} is not accepted: run `laminar auth \
                     dropbox` for a new refresh token",
                    self.cfg.remote
                ),
                retry_after: None,
                class: ErrorClass::FatalRelay,
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| Error::protocol("refresh-token", &target, format!("unreadable token answer: {e}")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(14_400));
        self.tokens.store(answer.access_token.clone(), lifetime);
        Ok(answer.access_token)
    }

    /// Whether tokens are refreshed (an expired one is then worth a retry).
    pub(super) fn refreshes(&self) -> bool {
        matches!(self.cfg.credentials, Credentials::Refresh { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_drops_only_the_stale_token() {
        let cache = TokenCache::default();
        assert_eq!(cache.fresh(), None);
        cache.store("a".into(), Duration::from_secs(100));
        assert_eq!(cache.fresh().as_deref(), Some("a"));
        cache.drop_token("b");
        assert_eq!(cache.fresh().as_deref(), Some("a"));
        cache.drop_token("a");
        assert_eq!(cache.fresh(), None);
        // A token about to expire counts as expired.
        cache.store("c".into(), Duration::ZERO);
        assert_eq!(cache.fresh(), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::Refresh { refresh_token: "RT".into(), app_key: "k".into(), app_secret: Some("AS".into()) };
        let shown = format!("{c:?} {:?}", Credentials::Token("TOK".into()));
        assert!(!shown.contains("RT") && !shown.contains("AS") && !shown.contains("TOK"), "{shown}");
    }
}
