//! Google's authorization-code flow for installed apps, with PKCE: the consent page
//! and the `grant_type=authorization_code` exchange, and the refresh tokens it issues.
//!
//! `GET /o/oauth2/v2/auth` stands for `https://accounts.google.com/o/oauth2/v2/auth`.
//! There is no user to ask, so it plays one who signs in and allows access at once: with
//! valid parameters it redirects (302) to the `redirect_uri` with `code`, `scope` and
//! `state`, as the browser would be sent after approval. The parameters are checked as
//! Google checks a Desktop client's: `client_id`, `response_type=code`, a loopback
//! `redirect_uri` (`http://127.0.0.1`, `http://[::1]` or `http://localhost`, any port and
//! path; the retired out-of-band `urn:ietf:wg:oauth:2.0:oob` is refused), a `scope`, a
//! PKCE `code_challenge` (43 to 128 unreserved characters, `S256` or `plain`),
//! `access_type` and `prompt`. A refused request is a 400 (401 for an unknown client)
//! with Google's OAuth error JSON (Google shows an HTML page naming the same error).
//!
//! Codes look like Google's (`4/0A...`, so a client must percent-decode one taken from a
//! URL), live ten minutes and are single use: a lookup removes the code, so a second
//! exchange fails even when the first did. A refresh token comes with the exchange when
//! `access_type=offline` and either `prompt=consent` or this is the user's first consent
//! to the client, as on Google (a re-consent without `prompt=consent` gets none). The
//! tokens issued work with `grant_type=refresh_token` like the seeded one.
//!
//! Bounded: codes (1,024) and issued refresh tokens (4,096); past either the oldest goes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::StatusCode;
use sha2::{Digest as _, Sha256};

use super::auth::{Accounts, Refusal};
use super::errors::oauth_error;

const CODES_MAX: usize = 1_024;
const REFRESH_TOKENS_MAX: usize = 4_096;
/// How long a code may be exchanged (Google documents no figure; minutes).
const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// The path of the consent page.
pub(crate) const AUTHORIZE_PATH: &str = "/o/oauth2/v2/auth";
/// What Google answers for a code it does not take (unknown, used, expired).
const BAD_CODE: &str = "Bad Request";

struct Code {
    client_id: String,
    redirect_uri: String,
    /// `(method, challenge)`.
    challenge: Option<(String, String)>,
    scope: String,
    /// Whether the exchange comes with a refresh token.
    refresh: bool,
    issued: Instant,
}

/// What an exchange granted.
#[derive(Debug)]
pub(crate) struct Exchanged {
    pub(crate) scope: String,
    pub(crate) refresh_token: Option<String>,
}

/// Codes waiting to be exchanged and the refresh tokens issued.
pub(crate) struct Grants {
    codes: HashMap<String, Code>,
    codes_order: VecDeque<String>,
    /// Issued refresh token to the scope it grants.
    refresh: HashMap<String, String>,
    refresh_order: VecDeque<String>,
    /// Whether the user has given offline access to the client before.
    consented: bool,
    rng: fastrand::Rng,
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn bad_request(error: &str, description: &str) -> Refusal {
    (StatusCode::BAD_REQUEST, oauth_error(error, description))
}

fn unknown_client() -> Refusal {
    (StatusCode::UNAUTHORIZED, oauth_error("invalid_client", "The OAuth client was not found."))
}

/// Whether `uri` is a loopback redirect a Desktop client may use.
fn loopback(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let port = &authority[host.len()..];
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
    port_ok && matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

/// A PKCE verifier or challenge: 43 to 128 of `A-Z a-z 0-9 - . _ ~` (RFC 7636).
fn pkce_shaped(s: &str) -> bool {
    (43..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn scope_known(scope: &str) -> bool {
    scope.starts_with("https://www.googleapis.com/auth/") || matches!(scope, "openid" | "email" | "profile")
}

/// What a query value keeps unescaped: the unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn form_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

impl Grants {
    pub(crate) fn new(seed: u64) -> Grants {
        Grants {
            codes: HashMap::new(),
            codes_order: VecDeque::new(),
            refresh: HashMap::new(),
            refresh_order: VecDeque::new(),
            consented: false,
            rng: fastrand::Rng::with_seed(seed ^ 0xc0de),
        }
    }

    fn random(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len).map(|_| ALPHABET[self.rng.usize(..ALPHABET.len())] as char).collect()
    }

    /// The consent page: `Ok` is where the browser is sent (the redirect with the code).
    pub(crate) fn authorize(&mut self, q: &[(String, String)], accounts: &Accounts) -> Result<String, Refusal> {
        let missing = |name: &str| bad_request("invalid_request", &format!("Missing required parameter: {name}"));
        let client_id = field(q, "client_id").ok_or_else(|| missing("client_id"))?;
        if client_id != accounts.client_id {
            return Err(unknown_client());
        }
        let redirect_uri = field(q, "redirect_uri").ok_or_else(|| missing("redirect_uri"))?;
        if redirect_uri.starts_with("urn:ietf:wg:oauth:2.0:oob") || redirect_uri == "oob" {
            return Err(bad_request(
                "invalid_request",
                "The out-of-band (OOB) flow has been blocked in order to keep users secure. Use a loopback \
                 redirect_uri (http://127.0.0.1:PORT) instead.",
            ));
        }
        if !loopback(redirect_uri) {
            return Err(bad_request("redirect_uri_mismatch", "Bad Request"));
        }
        match field(q, "response_type") {
            Some("code") => {}
            None => return Err(missing("response_type")),
            Some(other) => {
                return Err(bad_request("unsupported_response_type", &format!("Invalid response_type: {other}")))
            }
        }
        let scope = field(q, "scope").filter(|s| !s.trim().is_empty()).ok_or_else(|| missing("scope"))?;
        let unknown: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty() && !scope_known(s)).collect();
        if !unknown.is_empty() {
            return Err(bad_request(
                "invalid_scope",
                &format!("Some requested scopes were invalid. {{invalid=[{}]}}", unknown.join(", ")),
            ));
        }
        let challenge = match (field(q, "code_challenge"), field(q, "code_challenge_method")) {
            (None, None) => None,
            (None, Some(_)) => return Err(missing("code_challenge")),
            (Some(c), m @ (None | Some("plain") | Some("S256"))) => {
                if !pkce_shaped(c) {
                    return Err(bad_request("invalid_request", "Invalid code_challenge."));
                }
                Some((m.unwrap_or("plain").to_string(), c.to_string()))
            }
            (Some(_), Some(m)) => {
                return Err(bad_request("invalid_request", &format!("Invalid code_challenge_method: {m}")))
            }
        };
        let offline = match field(q, "access_type") {
            None | Some("online") => false,
            Some("offline") => true,
            Some(other) => return Err(bad_request("invalid_request", &format!("Invalid access_type: {other}"))),
        };
        let prompt = field(q, "prompt").unwrap_or("");
        if let Some(p) = prompt.split(' ').find(|p| !matches!(*p, "" | "none" | "consent" | "select_account")) {
            return Err(bad_request("invalid_request", &format!("Invalid prompt: {p}")));
        }
        let refresh = offline && (prompt.split(' ').any(|p| p == "consent") || !self.consented);
        self.consented |= offline;

        while self.codes.len() >= CODES_MAX {
            let old = self.codes_order.pop_front().expect("order tracks the map");
            self.codes.remove(&old);
        }
        let code = format!("4/0A{}", self.random(70));
        self.codes_order.push_back(code.clone());
        self.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.to_string(),
                redirect_uri: redirect_uri.to_string(),
                challenge,
                scope: scope.to_string(),
                refresh,
                issued: Instant::now(),
            },
        );
        debug_assert_eq!(self.codes.len(), self.codes_order.len());
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        let mut to = format!("{redirect_uri}{sep}");
        if let Some(state) = field(q, "state") {
            to.push_str(&format!("state={}&", form_encode(state)));
        }
        to.push_str(&format!("code={}&scope={}", form_encode(&code), form_encode(scope)));
        Ok(to)
    }

    /// `grant_type=authorization_code` at the token endpoint.
    pub(crate) fn exchange(&mut self, form: &[(String, String)], accounts: &Accounts) -> Result<Exchanged, Refusal> {
        let missing = |name: &str| bad_request("invalid_request", &format!("Missing required parameter: {name}"));
        if field(form, "client_id") != Some(accounts.client_id.as_str()) {
            return Err(unknown_client());
        }
        match field(form, "client_secret") {
            None | Some("") => return Err(bad_request("invalid_request", "client_secret is missing.")),
            Some(s) if s != accounts.client_secret => {
                return Err((StatusCode::UNAUTHORIZED, oauth_error("invalid_client", "Unauthorized")))
            }
            Some(_) => {}
        }
        let code_s = field(form, "code").filter(|c| !c.is_empty()).ok_or_else(|| missing("code"))?;
        // Single use: the code is gone whatever the outcome.
        let Some(code) = self.codes.remove(code_s) else { return Err(bad_request("invalid_grant", BAD_CODE)) };
        self.codes_order.retain(|c| c != code_s);
        if code.issued.elapsed() > CODE_LIFETIME || code.client_id != accounts.client_id {
            return Err(bad_request("invalid_grant", BAD_CODE));
        }
        let redirect_uri = field(form, "redirect_uri").ok_or_else(|| missing("redirect_uri"))?;
        if redirect_uri != code.redirect_uri {
            return Err(bad_request("redirect_uri_mismatch", "Bad Request"));
        }
        match (&code.challenge, field(form, "code_verifier")) {
            (Some(_), None | Some("")) => return Err(bad_request("invalid_grant", "Missing code verifier.")),
            (Some((method, challenge)), Some(verifier)) => {
                let derived = if method == "S256" {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                } else {
                    verifier.to_string()
                };
                if !pkce_shaped(verifier) || derived != *challenge {
                    return Err(bad_request("invalid_grant", "Invalid code verifier."));
                }
            }
            (None, Some(v)) if !v.is_empty() => {
                return Err(bad_request("invalid_grant", "code_verifier or verifier is not needed."))
            }
            (None, _) => {}
        }
        let refresh_token = code.refresh.then(|| {
            while self.refresh.len() >= REFRESH_TOKENS_MAX {
                let old = self.refresh_order.pop_front().expect("order tracks the map");
                self.refresh.remove(&old);
            }
            let token = format!("1//0g{}", self.random(96));
            self.refresh_order.push_back(token.clone());
            self.refresh.insert(token.clone(), code.scope.clone());
            token
        });
        Ok(Exchanged { scope: code.scope, refresh_token })
    }

    /// The scope an issued refresh token grants, if it is one.
    pub(crate) fn refresh_scope(&self, token: &str) -> Option<&str> {
        self.refresh.get(token).map(String::as_str)
    }

    /// Every code waiting to be exchanged expires now.
    pub(crate) fn expire_codes(&mut self) {
        self.codes.clear();
        self.codes_order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::auth::parse_urlencoded;
    use super::*;

    fn accounts() -> Accounts {
        Accounts {
            client_id: "cid".into(),
            client_secret: "secret".into(),
            refresh_token: "rt".into(),
            service_account_email: "sa@x.iam.gserviceaccount.com".into(),
            token_url: "http://127.0.0.1:1/token".into(),
        }
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const VERIFIER: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";

    fn consent_query(redirect: &str) -> Vec<(String, String)> {
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
        pairs(&[
            ("client_id", "cid"),
            ("redirect_uri", redirect),
            ("response_type", "code"),
            ("scope", "https://www.googleapis.com/auth/drive"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("prompt", "consent"),
            ("state", "st/1"),
        ])
    }

    fn code_of(location: &str) -> String {
        let query = location.split_once('?').unwrap().1;
        parse_urlencoded(query).into_iter().find(|(k, _)| k == "code").unwrap().1
    }

    fn exchange_form(code: &str, verifier: &str, redirect: &str) -> Vec<(String, String)> {
        pairs(&[
            ("grant_type", "authorization_code"),
            ("client_id", "cid"),
            ("client_secret", "secret"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", redirect),
        ])
    }

    #[test]
    fn consent_checks_what_google_checks() {
        let a = accounts();
        let mut g = Grants::new(1);
        let with = |k: &str, v: &str| {
            let mut q = consent_query("http://127.0.0.1:5/");
            q.retain(|(n, _)| n != k);
            if !v.is_empty() {
                q.push((k.to_string(), v.to_string()));
            }
            q
        };
        let err = |g: &mut Grants, q: Vec<(String, String)>| g.authorize(&q, &a).unwrap_err();
        assert_eq!(err(&mut g, with("client_id", "other")).0, StatusCode::UNAUTHORIZED);
        assert_eq!(err(&mut g, with("redirect_uri", "https://example.com/cb")).1["error"], "redirect_uri_mismatch");
        assert_eq!(
            err(&mut g, with("redirect_uri", "http://127.0.0.1.example.com/")).1["error"],
            "redirect_uri_mismatch"
        );
        assert!(err(&mut g, with("redirect_uri", "urn:ietf:wg:oauth:2.0:oob")).1["error_description"]
            .as_str()
            .unwrap()
            .contains("out-of-band"));
        assert_eq!(err(&mut g, with("scope", "")).1["error_description"], "Missing required parameter: scope");
        assert_eq!(err(&mut g, with("scope", "drive")).1["error"], "invalid_scope");
        assert_eq!(err(&mut g, with("code_challenge", "short")).1["error_description"], "Invalid code_challenge.");
        assert_eq!(err(&mut g, with("code_challenge_method", "S512")).1["error"], "invalid_request");
        assert_eq!(err(&mut g, with("response_type", "token")).1["error"], "unsupported_response_type");
        for ok in ["http://localhost", "http://[::1]:8080/cb", "http://127.0.0.1:53682/?x=1"] {
            assert!(g.authorize(&with("redirect_uri", ok), &a).is_ok(), "{ok}");
        }
        let to = g.authorize(&consent_query("http://127.0.0.1:5/"), &a).unwrap();
        assert!(to.starts_with("http://127.0.0.1:5/?state=st%2F1&code=4%2F0A"), "{to}");
        assert!(to.ends_with("&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdrive"), "{to}");
    }

    #[test]
    fn codes_are_single_use_and_verified() {
        let a = accounts();
        let mut g = Grants::new(2);
        let r = "http://127.0.0.1:5/";
        let code = code_of(&g.authorize(&consent_query(r), &a).unwrap());
        assert!(code.starts_with("4/0A"));
        let wrong = "x".repeat(43);
        assert_eq!(
            g.exchange(&exchange_form(&code, &wrong, r), &a).unwrap_err().1["error_description"],
            "Invalid code verifier."
        );
        // The failed exchange used the code up.
        assert_eq!(
            g.exchange(&exchange_form(&code, VERIFIER, r), &a).unwrap_err().1["error_description"],
            "Bad Request"
        );

        let code = code_of(&g.authorize(&consent_query(r), &a).unwrap());
        let mut no_secret = exchange_form(&code, VERIFIER, r);
        no_secret.retain(|(k, _)| k != "client_secret");
        assert_eq!(g.exchange(&no_secret, &a).unwrap_err().1["error_description"], "client_secret is missing.");
        // A request refused before the code is looked up leaves it; a redirect_uri that
        // is not the consent's is refused.
        assert_eq!(
            g.exchange(&exchange_form(&code, VERIFIER, "http://127.0.0.1:6/"), &a).unwrap_err().1["error"],
            "redirect_uri_mismatch"
        );

        let code = code_of(&g.authorize(&consent_query(r), &a).unwrap());
        let got = g.exchange(&exchange_form(&code, VERIFIER, r), &a).unwrap();
        let rt = got.refresh_token.expect("offline with prompt=consent");
        assert!(rt.starts_with("1//"));
        assert_eq!(g.refresh_scope(&rt), Some("https://www.googleapis.com/auth/drive"));
        assert!(g.exchange(&exchange_form(&code, VERIFIER, r), &a).is_err(), "used once");

        // A second consent without prompt=consent brings no refresh token.
        let mut q = consent_query(r);
        q.retain(|(k, _)| k != "prompt");
        let code = code_of(&g.authorize(&q, &a).unwrap());
        assert!(g.exchange(&exchange_form(&code, VERIFIER, r), &a).unwrap().refresh_token.is_none());

        let code = code_of(&g.authorize(&consent_query(r), &a).unwrap());
        g.expire_codes();
        assert_eq!(g.exchange(&exchange_form(&code, VERIFIER, r), &a).unwrap_err().1["error"], "invalid_grant");
    }
}
