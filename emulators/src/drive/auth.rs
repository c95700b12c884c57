//! OAuth 2.0 as Google's token endpoint does it, for the flows a relay uses:
//!
//! - `grant_type=refresh_token` with `client_id`, `client_secret` and `refresh_token`
//!   (an installed app's user credentials: the seeded refresh token, or one issued by
//!   the authorization-code flow);
//! - `grant_type=authorization_code` (the installed-app flow with PKCE; the consent page
//!   and the codes are in `consent`);
//! - `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an RS256 JWT
//!   `assertion` signed by a service account. The emulator parses the JWT and checks its
//!   claims (issuer, audience = Google's token URL or the emulator's, scope, a lifetime of
//!   at most an hour that covers now); it does not verify the RSA signature (that needs the account's public
//!   key, which a test would have to hand over; the claims are what clients get wrong).
//!
//! Both answer `{"access_token", "expires_in", "scope", "token_type": "Bearer"}`; errors
//! are Google's `{"error": "invalid_grant", "error_description": ...}` with 400, or
//! `invalid_client` with 401. Access tokens expire after the live token lifetime, or at
//! once on `expire_tokens()`; an API request with an expired or unknown token gets 401
//! `authError`, and clients refresh and retry.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::StatusCode;
use serde_json::{json, Value};

use super::consent::Grants;
use super::errors::oauth_error;

/// Most live access tokens; the oldest is forgotten past it (its holder gets 401 and
/// refreshes, as with any expired token).
const TOKENS_MAX: usize = 4096;
/// Longest a JWT assertion may claim to live (Google's limit).
const JWT_LIFETIME_MAX_S: i64 = 3600;
/// Clock skew allowed on a JWT's `iat`.
const JWT_SKEW_S: i64 = 300;
/// The grant type of the JWT bearer flow.
pub(crate) const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The audiences Google's token endpoint takes in a JWT assertion. google-auth puts the
/// first in `aud` whatever `token_uri` says, so the emulator takes these and its own URL.
const GOOGLE_TOKEN_AUDIENCES: &[&str] = &[
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
    "https://accounts.google.com/o/oauth2/token",
];
/// Scope granted when a request names none.
pub(crate) const DRIVE_SCOPE: &str = "https://www.googleapis.com/auth/drive";

/// Which flow granted a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    Refresh,
    Jwt,
    Code,
}

/// A grant the token endpoint made.
#[derive(Debug, PartialEq)]
pub(crate) struct Granted {
    pub(crate) grant: Grant,
    pub(crate) scope: String,
    /// Issued by an authorization-code exchange.
    pub(crate) refresh_token: Option<String>,
}

impl Granted {
    fn new(grant: Grant, scope: &str) -> Granted {
        Granted { grant, scope: scope.to_string(), refresh_token: None }
    }
}

/// The seeded credentials a grant is checked against.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) refresh_token: String,
    pub(crate) service_account_email: String,
    /// The token URL (a JWT's `aud` may name it, or Google's).
    pub(crate) token_url: String,
}

/// Issued access tokens.
#[derive(Default)]
pub(crate) struct Tokens {
    live: HashMap<String, Instant>,
    order: VecDeque<String>,
    issued: u64,
}

impl Tokens {
    /// A new token valid for `lifetime`.
    pub(crate) fn issue(&mut self, lifetime: Duration, rng: &mut fastrand::Rng) -> String {
        while self.live.len() >= TOKENS_MAX {
            let oldest = self.order.pop_front().expect("order holds every live token");
            self.live.remove(&oldest);
        }
        self.issued += 1;
        let token = format!("ya29.emu{}.{:016x}", self.issued, rng.u64(..));
        self.live.insert(token.clone(), Instant::now() + lifetime);
        self.order.push_back(token.clone());
        assert_eq!(self.live.len(), self.order.len());
        token
    }

    /// Whether `token` is live.
    pub(crate) fn valid(&self, token: &str) -> bool {
        self.live.get(token).is_some_and(|t| Instant::now() < *t)
    }

    /// Expires every token now.
    pub(crate) fn expire_all(&mut self) {
        self.live.clear();
        self.order.clear();
    }
}

/// Decodes `a=b&c=d` (form bodies and query strings): `+` is a space, `%XX` a byte.
pub(crate) fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    let dec = |t: &str| percent_encoding::percent_decode_str(&t.replace('+', " ")).decode_utf8_lossy().into_owned();
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A refused grant: status and Google's OAuth error body.
pub(crate) type Refusal = (StatusCode, Value);

fn grant_error(description: &str) -> Refusal {
    (StatusCode::BAD_REQUEST, oauth_error("invalid_grant", description))
}

/// Checks a token request's form; returns the flow and the scope granted.
pub(crate) fn check_grant(
    form: &[(String, String)],
    accounts: &Accounts,
    grants: &mut Grants,
    now_s: i64,
) -> Result<Granted, Refusal> {
    match field(form, "grant_type") {
        Some("refresh_token") => {
            let client = field(form, "client_id").unwrap_or("");
            if client != accounts.client_id {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    oauth_error("invalid_client", "The OAuth client was not found."),
                ));
            }
            if field(form, "client_secret") != Some(accounts.client_secret.as_str()) {
                return Err((StatusCode::UNAUTHORIZED, oauth_error("invalid_client", "Unauthorized")));
            }
            match field(form, "refresh_token") {
                None | Some("") => Err((
                    StatusCode::BAD_REQUEST,
                    oauth_error("invalid_request", "Missing required parameter: refresh_token"),
                )),
                Some(t) if t == accounts.refresh_token => {
                    Ok(Granted::new(Grant::Refresh, field(form, "scope").unwrap_or(DRIVE_SCOPE)))
                }
                Some(t) => match grants.refresh_scope(t) {
                    Some(scope) => Ok(Granted::new(Grant::Refresh, field(form, "scope").unwrap_or(scope))),
                    None => Err(grant_error("Token has been expired or revoked.")),
                },
            }
        }
        Some("authorization_code") => {
            let e = grants.exchange(form, accounts)?;
            Ok(Granted { grant: Grant::Code, scope: e.scope, refresh_token: e.refresh_token })
        }
        Some(JWT_GRANT) => {
            let assertion = field(form, "assertion").ok_or_else(|| grant_error("Missing assertion."))?;
            check_jwt(assertion, accounts, now_s).map(|scope| Granted::new(Grant::Jwt, &scope))
        }
        Some(other) => Err((
            StatusCode::BAD_REQUEST,
            oauth_error("unsupported_grant_type", &format!("Invalid grant_type: {other}")),
        )),
        None => {
            Err((StatusCode::BAD_REQUEST, oauth_error("invalid_request", "Required parameter is missing: grant_type")))
        }
    }
}

fn b64url(part: &str) -> Option<Vec<u8>> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(part).ok()
}

/// Checks a service account's JWT assertion; returns the scope it asks for.
pub(crate) fn check_jwt(assertion: &str, accounts: &Accounts, now_s: i64) -> Result<String, Refusal> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(grant_error("Invalid JWT: the assertion is not header.claims.signature."));
    };
    let header: Value = b64url(header)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| grant_error("Invalid JWT: the header is not base64url JSON."))?;
    if header["alg"] != "RS256" {
        return Err(grant_error("Invalid JWT Signature."));
    }
    // An RSA-2048 signature is 256 bytes; anything far shorter was not made by a key.
    if b64url(signature).is_none_or(|s| s.len() < 128) {
        return Err(grant_error("Invalid JWT Signature."));
    }
    let claims: Value = b64url(claims)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| grant_error("Invalid JWT: the claims are not base64url JSON."))?;
    if claims["iss"] != json!(accounts.service_account_email) {
        return Err(grant_error("Invalid grant: account not found"));
    }
    let aud = claims["aud"].as_str().unwrap_or("");
    if !GOOGLE_TOKEN_AUDIENCES.contains(&aud) && aud != accounts.token_url {
        return Err(grant_error("Invalid JWT: the audience (aud) must be Google's token URL."));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(grant_error("Invalid JWT: iat and exp are required."));
    };
    if exp <= now_s || iat > now_s + JWT_SKEW_S || exp - iat > JWT_LIFETIME_MAX_S || exp <= iat {
        return Err(grant_error(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your \
iat and exp values in the JWT claim.",
        ));
    }
    match claims["scope"].as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        _ => Err((
            StatusCode::BAD_REQUEST,
            oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided."),
        )),
    }
}

#[cfg(test)]
mod tests {
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

    fn form(s: &str) -> Vec<(String, String)> {
        parse_urlencoded(s)
    }

    fn jwt(claims: Value) -> String {
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header = e(br#"{"alg":"RS256","typ":"JWT","kid":"k"}"#);
        format!("{header}.{}.{}", e(claims.to_string().as_bytes()), e(&[7u8; 256]))
    }

    fn check_grant(form: &[(String, String)], a: &Accounts, now_s: i64) -> Result<Granted, Refusal> {
        super::check_grant(form, a, &mut Grants::new(0), now_s)
    }

    #[test]
    fn refresh_grant() {
        let a = accounts();
        let ok =
            check_grant(&form("grant_type=refresh_token&client_id=cid&client_secret=secret&refresh_token=rt"), &a, 0);
        assert_eq!(ok.unwrap(), Granted::new(Grant::Refresh, DRIVE_SCOPE));
        let e =
            check_grant(&form("grant_type=refresh_token&client_id=cid&client_secret=secret&refresh_token=x"), &a, 0)
                .unwrap_err();
        assert_eq!((e.0, e.1["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
        let e = check_grant(&form("grant_type=refresh_token&client_id=cid&client_secret=no&refresh_token=rt"), &a, 0)
            .unwrap_err();
        assert_eq!((e.0, e.1["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));
        let e = check_grant(&form("grant_type=password"), &a, 0).unwrap_err();
        assert_eq!(e.1["error"], "unsupported_grant_type");
    }

    #[test]
    fn jwt_claims_are_checked() {
        let a = accounts();
        let now = 1_800_000_000;
        let good = json!({"iss": a.service_account_email, "aud": a.token_url, "scope": DRIVE_SCOPE, "iat": now, "exp": now + 3600});
        let assertion = jwt(good.clone());
        let body = format!("grant_type={}&assertion={assertion}", JWT_GRANT.replace(':', "%3A"));
        assert_eq!(check_grant(&form(&body), &a, now).unwrap(), Granted::new(Grant::Jwt, DRIVE_SCOPE));
        let mut expired = good.clone();
        expired["exp"] = json!(now - 1);
        expired["iat"] = json!(now - 3601);
        assert!(check_jwt(&jwt(expired), &a, now).unwrap_err().1["error_description"]
            .as_str()
            .unwrap()
            .contains("iat and exp"));
        let mut too_long = good.clone();
        too_long["exp"] = json!(now + 7200);
        assert!(check_jwt(&jwt(too_long), &a, now).is_err());
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("https://example.com/token");
        assert!(check_jwt(&jwt(wrong_aud), &a, now).is_err());
        let mut google_aud = good.clone();
        google_aud["aud"] = json!("https://oauth2.googleapis.com/token");
        assert!(check_jwt(&jwt(google_aud), &a, now).is_ok(), "what google-auth sends");
        let mut stranger = good.clone();
        stranger["iss"] = json!("someone@else");
        assert_eq!(
            check_jwt(&jwt(stranger), &a, now).unwrap_err().1["error_description"],
            "Invalid grant: account not found"
        );
        let mut no_scope = good;
        no_scope["scope"] = json!("");
        assert_eq!(check_jwt(&jwt(no_scope), &a, now).unwrap_err().1["error"], "invalid_scope");
        assert!(check_jwt("a.b", &a, now).is_err());
    }

    #[test]
    fn tokens_expire_and_are_bounded() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut t = Tokens::default();
        let a = t.issue(Duration::from_secs(60), &mut rng);
        assert!(t.valid(&a) && !t.valid("ya29.other"));
        let gone = t.issue(Duration::ZERO, &mut rng);
        assert!(!t.valid(&gone), "a zero lifetime is expired at once");
        t.expire_all();
        assert!(!t.valid(&a));
        let first = t.issue(Duration::from_secs(60), &mut rng);
        for _ in 0..TOKENS_MAX {
            t.issue(Duration::from_secs(60), &mut rng);
        }
        assert!(!t.valid(&first), "the oldest token is forgotten past the bound");
    }
}
