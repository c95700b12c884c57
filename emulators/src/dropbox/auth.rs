//! OAuth 2 as Dropbox runs it: one app (key, secret and the redirect URIs registered for
//! it), `/oauth2/authorize` (approved at once: there is no user to ask; the parameters
//! are checked: the app key, `response_type=code`, a `redirect_uri` that is exactly one
//! registered, a PKCE challenge of 43 to 128 unreserved characters), and `/oauth2/token` for
//! `grant_type=authorization_code` (with the app secret, or a PKCE `code_verifier`
//! against the `S256` or `plain` challenge) and `grant_type=refresh_token`. Client
//! credentials come in the form or as HTTP Basic. A refresh token from a PKCE grant
//! refreshes without the secret, as Dropbox allows; the seeded one needs the secret.
//!
//! Access tokens expire (the live `token_lifetime_s`, or at once through
//! `expire_tokens`); an expired one is answered 401 `expired_access_token`, an unknown
//! one 401 `invalid_access_token`. Token endpoint errors are Dropbox's 400 JSON bodies
//! (`{"error": "invalid_grant", "error_description": ...}`).
//!
//! Bounded: access tokens, refresh tokens and authorization codes each have a limit;
//! past it the oldest goes (to its holder, as if revoked or expired).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const ACCESS_TOKENS_MAX: usize = 65_536;
const REFRESH_TOKENS_MAX: usize = 4_096;
const CODES_MAX: usize = 1_024;
/// How long an authorization code can be exchanged.
const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// The account every token belongs to.
pub(crate) const ACCOUNT_ID: &str = "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc";
pub(crate) const UID: &str = "12345678";

struct RefreshInfo {
    /// Obtained through PKCE: refreshes with the app key alone.
    pkce: bool,
}

struct Code {
    challenge: Option<(String, String)>,
    redirect_uri: Option<String>,
    offline: bool,
    issued: Instant,
}

/// A failed token request: status and Dropbox's JSON body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub body: Value,
}

/// A PKCE verifier or challenge: 43 to 128 of `A-Z a-z 0-9 - . _ ~` (RFC 7636).
fn pkce_shaped(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn oauth_err(error: &str, description: &str) -> OAuthError {
    OAuthError { status: 400, body: json!({ "error": error, "error_description": description }) }
}

/// The app and its tokens.
pub(crate) struct Auth {
    app_key: String,
    app_secret: String,
    redirect_uris: Vec<String>,
    seed: u64,
    serial: u64,
    access: HashMap<String, Instant>,
    access_order: VecDeque<String>,
    refresh: HashMap<String, RefreshInfo>,
    refresh_order: VecDeque<String>,
    codes: HashMap<String, Code>,
    codes_order: VecDeque<String>,
}

/// What `/oauth2/authorize` decided: the code, and where to send the browser.
#[derive(Debug)]
pub(crate) struct Authorized {
    pub code: String,
    pub redirect: Option<String>,
}

impl Auth {
    pub(crate) fn new(
        seed: u64,
        app_key: &str,
        app_secret: &str,
        refresh_token: &str,
        redirect_uris: &[String],
    ) -> Auth {
        let mut a = Auth {
            app_key: app_key.to_string(),
            app_secret: app_secret.to_string(),
            redirect_uris: redirect_uris.to_vec(),
            seed,
            serial: 0,
            access: HashMap::new(),
            access_order: VecDeque::new(),
            refresh: HashMap::new(),
            refresh_order: VecDeque::new(),
            codes: HashMap::new(),
            codes_order: VecDeque::new(),
        };
        a.add_refresh(refresh_token.to_string(), false);
        a
    }

    fn random(&mut self, what: &str, len: usize) -> String {
        self.serial += 1;
        let d = Sha256::new()
            .chain_update(self.seed.to_le_bytes())
            .chain_update(what.as_bytes())
            .chain_update(self.serial.to_le_bytes())
            .finalize();
        let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        s.truncate(len);
        s
    }

    fn add_refresh(&mut self, token: String, pkce: bool) {
        while self.refresh.len() >= REFRESH_TOKENS_MAX {
            let old = self.refresh_order.pop_front().expect("order tracks the map");
            self.refresh.remove(&old);
        }
        self.refresh_order.push_back(token.clone());
        self.refresh.insert(token, RefreshInfo { pkce });
    }

    /// A new access token valid for `lifetime`.
    pub(crate) fn mint_access(&mut self, lifetime: Duration) -> String {
        while self.access.len() >= ACCESS_TOKENS_MAX {
            let old = self.access_order.pop_front().expect("order tracks the map");
            self.access.remove(&old);
        }
        let token = format!("sl.u.{}", self.random("access", 40));
        self.access_order.push_back(token.clone());
        self.access.insert(token.clone(), Instant::now() + lifetime);
        debug_assert_eq!(self.access.len(), self.access_order.len());
        token
    }

    /// Checks a bearer token: `Err` is the `AuthError` tag to answer.
    pub(crate) fn check(&self, token: &str) -> Result<(), &'static str> {
        match self.access.get(token) {
            None => Err("invalid_access_token"),
            Some(&until) if Instant::now() >= until => Err("expired_access_token"),
            Some(_) => Ok(()),
        }
    }

    /// Every access token issued so far expires now.
    pub(crate) fn expire_all(&mut self) {
        let now = Instant::now();
        for until in self.access.values_mut() {
            *until = now;
        }
    }

    /// Every authorization code not yet exchanged expires now.
    pub(crate) fn expire_codes(&mut self) {
        self.codes.clear();
        self.codes_order.clear();
    }

    /// `/oauth2/authorize`, approved at once.
    pub(crate) fn authorize(&mut self, q: &HashMap<String, String>) -> Result<Authorized, String> {
        if q.get("client_id").map(String::as_str) != Some(self.app_key.as_str()) {
            return Err("Invalid client_id".into());
        }
        if q.get("response_type").map(String::as_str) != Some("code") {
            return Err("Invalid response_type: only \"code\" is supported".into());
        }
        let challenge = match (q.get("code_challenge"), q.get("code_challenge_method").map(String::as_str)) {
            (None, _) => None,
            (Some(c), None | Some("plain")) => Some(("plain".to_string(), c.clone())),
            (Some(c), Some("S256")) => Some(("S256".to_string(), c.clone())),
            (Some(_), Some(m)) => return Err(format!("Invalid code_challenge_method: {m}")),
        };
        if challenge.as_ref().is_some_and(|(_, c)| !pkce_shaped(c)) {
            return Err(
                "Invalid code_challenge: it must be 43 to 128 characters of A-Z, a-z, 0-9, \"-\", \".\", \"_\" \
                        and \"~\""
                    .into(),
            );
        }
        if let Some(r) = q.get("redirect_uri") {
            if !self.redirect_uris.contains(r) {
                return Err("Invalid redirect_uri. It must exactly match one of the redirect URIs you've \
                            pre-configured for your app (including the path)."
                    .into());
            }
        }
        let offline = q.get("token_access_type").map(String::as_str) == Some("offline");
        while self.codes.len() >= CODES_MAX {
            let old = self.codes_order.pop_front().expect("order tracks the map");
            self.codes.remove(&old);
        }
        let code = self.random("code", 43);
        let redirect_uri = q.get("redirect_uri").cloned();
        self.codes_order.push_back(code.clone());
        self.codes.insert(
            code.clone(),
            Code { challenge, redirect_uri: redirect_uri.clone(), offline, issued: Instant::now() },
        );
        let redirect = redirect_uri.map(|r| {
            let sep = if r.contains('?') { '&' } else { '?' };
            let mut to = format!("{r}{sep}code={code}");
            if let Some(state) = q.get("state") {
                to.push_str("&state=");
                to.push_str(&super::server::form_encode(state));
            }
            to
        });
        Ok(Authorized { code, redirect })
    }

    fn client_ok(&self, client_id: Option<&str>, secret: Option<&str>) -> Result<bool, OAuthError> {
        let Some(id) = client_id else {
            return Err(oauth_err("invalid_request", "No auth function available for given request"));
        };
        if id != self.app_key {
            return Err(oauth_err("invalid_client", "Invalid client_id or client_secret"));
        }
        match secret {
            Some(s) if s == self.app_secret => Ok(true),
            Some(_) => Err(oauth_err("invalid_client", "Invalid client_id or client_secret")),
            None => Ok(false),
        }
    }

    /// `/oauth2/token`: `form` is the urlencoded body, `basic` the HTTP Basic credentials.
    pub(crate) fn token(
        &mut self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
        lifetime: Duration,
    ) -> Result<Value, OAuthError> {
        let (client_id, secret) = match &basic {
            Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
            None => (form.get("client_id").map(String::as_str), form.get("client_secret").map(String::as_str)),
        };
        let expires_in = lifetime.as_secs();
        match form.get("grant_type").map(String::as_str) {
            Some("refresh_token") => {
                let has_secret = self.client_ok(client_id, secret)?;
                let token =
                    form.get("refresh_token").ok_or_else(|| oauth_err("invalid_request", "No refresh token"))?;
                let Some(info) = self.refresh.get(token) else {
                    return Err(oauth_err("invalid_grant", "refresh token is invalid or revoked"));
                };
                if !has_secret && !info.pkce {
                    return Err(oauth_err("invalid_request", "No auth function available for given request"));
                }
                let access = self.mint_access(lifetime);
                Ok(json!({ "access_token": access, "token_type": "bearer", "expires_in": expires_in }))
            }
            Some("authorization_code") => {
                let has_secret = self.client_ok(client_id, secret)?;
                let code_s = form.get("code").ok_or_else(|| oauth_err("invalid_request", "No code"))?;
                let Some(code) = self.codes.remove(code_s) else {
                    return Err(oauth_err("invalid_grant", "code doesn't exist or has expired"));
                };
                self.codes_order.retain(|c| c != code_s);
                if code.issued.elapsed() > CODE_LIFETIME {
                    return Err(oauth_err("invalid_grant", "code doesn't exist or has expired"));
                }
                if code.redirect_uri.as_deref() != form.get("redirect_uri").map(String::as_str) {
                    return Err(oauth_err("invalid_grant", "redirect_uri mismatch"));
                }
                let pkce = match (&code.challenge, form.get("code_verifier")) {
                    (Some((method, challenge)), Some(verifier)) => {
                        let derived = if method == "S256" {
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                        } else {
                            verifier.clone()
                        };
                        if !pkce_shaped(verifier) || derived != *challenge {
                            return Err(oauth_err("invalid_grant", "invalid code verifier"));
                        }
                        true
                    }
                    (Some(_), None) if has_secret => false,
                    (Some(_), None) => return Err(oauth_err("invalid_request", "No code verifier")),
                    (None, Some(_)) => return Err(oauth_err("invalid_grant", "invalid code verifier")),
                    (None, None) if has_secret => false,
                    (None, None) => {
                        return Err(oauth_err("invalid_request", "No auth function available for given request"))
                    }
                };
                let access = self.mint_access(lifetime);
                let mut v = json!({
                    "access_token": access,
                    "token_type": "bearer",
                    "expires_in": expires_in,
                    "scope": "account_info.read files.content.read files.content.write files.metadata.read files.metadata.write",
                    "uid": UID,
                    "account_id": ACCOUNT_ID,
                });
                if code.offline {
                    let refresh = self.random("refresh", 43);
                    self.add_refresh(refresh.clone(), pkce);
                    v["refresh_token"] = refresh.into();
                }
                Ok(v)
            }
            Some(other) => Err(oauth_err("unsupported_grant_type", &format!("unsupported grant_type: {other}"))),
            None => Err(oauth_err("invalid_request", "No grant_type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn refresh_with_secret_and_expiry() {
        let mut a = Auth::new(1, "key", "secret", "rt", &[]);
        let ok = a
            .token(
                &form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "rt"),
                    ("client_id", "key"),
                    ("client_secret", "secret"),
                ]),
                None,
                HOUR,
            )
            .unwrap();
        assert_eq!(ok["expires_in"], 3600);
        let token = ok["access_token"].as_str().unwrap().to_string();
        assert_eq!(a.check(&token), Ok(()));
        assert_eq!(a.check("sl.nope"), Err("invalid_access_token"));
        a.expire_all();
        assert_eq!(a.check(&token), Err("expired_access_token"));
        // Basic credentials work too; the seeded token needs the secret.
        assert!(a
            .token(
                &form(&[("grant_type", "refresh_token"), ("refresh_token", "rt")]),
                Some(("key".into(), "secret".into())),
                HOUR
            )
            .is_ok());
        let no_secret = a.token(
            &form(&[("grant_type", "refresh_token"), ("refresh_token", "rt"), ("client_id", "key")]),
            None,
            HOUR,
        );
        assert_eq!(no_secret.unwrap_err().body["error"], "invalid_request");
        let bad = a.token(
            &form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "x"),
                ("client_id", "key"),
                ("client_secret", "secret"),
            ]),
            None,
            HOUR,
        );
        assert_eq!(
            bad.unwrap_err().body,
            json!({"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"})
        );
        let wrong = a.token(
            &form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "rt"),
                ("client_id", "key"),
                ("client_secret", "no"),
            ]),
            None,
            HOUR,
        );
        assert_eq!(wrong.unwrap_err().body["error"], "invalid_client");
    }

    #[test]
    fn pkce_code_flow() {
        let mut a = Auth::new(1, "key", "secret", "rt", &["http://127.0.0.1:9/cb".to_string()]);
        let verifier = "a".repeat(64);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let q = form(&[
            ("client_id", "key"),
            ("response_type", "code"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("token_access_type", "offline"),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("state", "s t"),
        ]);
        let mut other = q.clone();
        other.insert("redirect_uri".into(), "http://127.0.0.1:9/other".into());
        assert!(a.authorize(&other).unwrap_err().starts_with("Invalid redirect_uri"));
        let mut short = q.clone();
        short.insert("code_challenge".into(), "abc".into());
        assert!(a.authorize(&short).unwrap_err().starts_with("Invalid code_challenge"));
        let auth = a.authorize(&q).unwrap();
        assert_eq!(auth.redirect.unwrap(), format!("http://127.0.0.1:9/cb?code={}&state=s+t", auth.code));
        let exchange = |a: &mut Auth, code: &str, verifier: &str| {
            a.token(
                &form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("client_id", "key"),
                    ("code_verifier", verifier),
                    ("redirect_uri", "http://127.0.0.1:9/cb"),
                ]),
                None,
                HOUR,
            )
        };
        assert_eq!(exchange(&mut a, &auth.code, "wrong").unwrap_err().body["error"], "invalid_grant");
        // A code is single use, even after a failed exchange.
        let auth = a.authorize(&q).unwrap();
        let got = exchange(&mut a, &auth.code, &verifier).unwrap();
        assert_eq!(got["account_id"], ACCOUNT_ID);
        assert_eq!(
            exchange(&mut a, &auth.code, &verifier).unwrap_err().body,
            json!({"error": "invalid_grant", "error_description": "code doesn't exist or has expired"})
        );
        let auth = a.authorize(&q).unwrap();
        a.expire_codes();
        assert_eq!(exchange(&mut a, &auth.code, &verifier).unwrap_err().body["error"], "invalid_grant");
        // A PKCE refresh token refreshes with the app key alone.
        let rt = got["refresh_token"].as_str().unwrap();
        assert!(a
            .token(&form(&[("grant_type", "refresh_token"), ("refresh_token", rt), ("client_id", "key")]), None, HOUR)
            .is_ok());
    }
}
