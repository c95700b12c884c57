//! `laminar auth dropbox` and `laminar auth drive`: get an OAuth refresh token for a
//! remote without a browser on the appliance.
//!
//! The command prints an authorize URL; the user opens it on any machine with a browser,
//! allows access, and pastes back the code (Dropbox shows one) or the whole address the
//! browser ended on (Google redirects to a loopback address that does not load; the code
//! is in it). The code is exchanged at the token endpoint with PKCE (S256), and the
//! `[remotes.NAME]` block to paste into `laminar.toml` is printed on stdout; everything
//! else goes to stderr.
//!
//! Shaped for an appliance reached over ssh:
//! - The PKCE verifier is kept in a pending file (mode 0600, under the data directory)
//!   until the exchange succeeds, so the step that prints the URL and the step that takes
//!   the code may be separate runs: `--code` finishes an authorization begun earlier
//!   (and standard input ending before a code arrives leaves it pending).
//! - Google's out-of-band flow is retired, so Drive uses the installed-app flow with a
//!   loopback `redirect_uri`; nothing listens there, the address bar keeps the code.
//! - Secrets: the printed block holds the refresh token (that is its point) and the app
//!   secret only when it was given inline; a secret given as a file or an environment
//!   variable is printed as `*_file` / `*_env`. Nothing else prints a secret, the code,
//!   the verifier or a token: errors quote the token endpoint's error code and a
//!   description with those removed.
//!
//! The exchange is control-path HTTP (reqwest, blocking), like `laminar job`.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::cli::Fail;

/// Exit code when the provider refused or could not be reached (as `laminar relay`'s 1).
const EXIT_REFUSED: u8 = 1;
/// Exit code for usage errors (as everywhere in `laminar`).
const EXIT_USAGE: u8 = 2;
/// Longest a token request may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pasted line taken (a Google redirect address is a few hundred bytes).
const PASTE_BYTES_MAX: usize = 8 << 10;
/// Longest error description quoted from the token endpoint.
const DESCRIPTION_CHARS_MAX: usize = 200;

const DROPBOX_AUTHORIZE_URL: &str = "https://www.dropbox.com/oauth2/authorize";
const DROPBOX_TOKEN_URL: &str = "https://api.dropboxapi.com/oauth2/token";
const GOOGLE_AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const DRIVE_SCOPE: &str = "https://www.googleapis.com/auth/drive";

/// `laminar auth`.
#[derive(Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    provider: Provider,
}

#[derive(Subcommand)]
enum Provider {
    /// Authorize a Dropbox app (PKCE, offline access) and print the remote's block
    Dropbox(DropboxArgs),
    /// Authorize a Google OAuth client (type Desktop app) for Drive and print the remote's block
    Drive(DriveArgs),
}

#[derive(Args)]
struct DropboxArgs {
    /// The app key (App Console, Settings)
    #[arg(long, conflicts_with_all = ["app_key_file", "app_key_env"])]
    app_key: Option<String>,
    /// A file holding the app key
    #[arg(long, value_name = "PATH", conflicts_with = "app_key_env")]
    app_key_file: Option<PathBuf>,
    /// An environment variable holding the app key
    #[arg(long, value_name = "VAR")]
    app_key_env: Option<String>,
    /// The app secret (optional: PKCE needs none); prefer --app-secret-file or --app-secret-env
    #[arg(long, conflicts_with_all = ["app_secret_file", "app_secret_env"])]
    app_secret: Option<String>,
    /// A file holding the app secret (the block then names the file)
    #[arg(long, value_name = "PATH", conflicts_with = "app_secret_env")]
    app_secret_file: Option<PathBuf>,
    /// An environment variable holding the app secret (the block then names the variable)
    #[arg(long, value_name = "VAR")]
    app_secret_env: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct DriveArgs {
    /// The OAuth client id (Google Cloud console, Credentials, type Desktop app)
    #[arg(long, conflicts_with_all = ["client_id_file", "client_id_env"])]
    client_id: Option<String>,
    /// A file holding the client id
    #[arg(long, value_name = "PATH", conflicts_with = "client_id_env")]
    client_id_file: Option<PathBuf>,
    /// An environment variable holding the client id
    #[arg(long, value_name = "VAR")]
    client_id_env: Option<String>,
    /// The client secret; prefer --client-secret-file or --client-secret-env
    #[arg(long, conflicts_with_all = ["client_secret_file", "client_secret_env"])]
    client_secret: Option<String>,
    /// A file holding the client secret (the block then names the file)
    #[arg(long, value_name = "PATH", conflicts_with = "client_secret_env")]
    client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret (the block then names the variable)
    #[arg(long, value_name = "VAR")]
    client_secret_env: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// Name of the [remotes.NAME] block printed (default: dropbox or drive)
    #[arg(long, value_name = "NAME")]
    remote: Option<String>,
    /// The code, or the whole address the browser ended on; finishes the authorization
    /// the last run without --code began (default: read one line from standard input)
    #[arg(long, value_name = "CODE")]
    code: Option<String>,
    /// The authorization page (default: the provider's; for emulators)
    #[arg(long, value_name = "URL")]
    authorize_url: Option<String>,
    /// The token endpoint (default: the provider's; printed into the block when given)
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
}

/// The two providers, as data: what differs between them is here.
struct Spec {
    /// `dropbox` or `drive`: the subcommand and the remote's `type`.
    name: &'static str,
    /// For messages.
    title: &'static str,
    client_flag: &'static str,
    secret_flag: &'static str,
    /// The config keys of the client id and the secret.
    client_key: &'static str,
    secret_key: &'static str,
    default_authorize_url: &'static str,
    default_token_url: &'static str,
}

const DROPBOX: Spec = Spec {
    name: "dropbox",
    title: "Dropbox",
    client_flag: "--app-key",
    secret_flag: "--app-secret",
    client_key: "app_key",
    secret_key: "app_secret",
    default_authorize_url: DROPBOX_AUTHORIZE_URL,
    default_token_url: DROPBOX_TOKEN_URL,
};

const DRIVE: Spec = Spec {
    name: "drive",
    title: "Google",
    client_flag: "--client-id",
    secret_flag: "--client-secret",
    client_key: "client_id",
    secret_key: "client_secret",
    default_authorize_url: GOOGLE_AUTHORIZE_URL,
    default_token_url: GOOGLE_TOKEN_URL,
};

/// Where a value came from, which decides how the printed block names it.
enum Source {
    Inline,
    File(PathBuf),
    Env(String),
}

struct Sourced {
    value: String,
    source: Source,
}

fn usage(message: String) -> Fail {
    Fail { code: EXIT_USAGE, message }
}

fn refused(message: String) -> Fail {
    Fail { code: EXIT_REFUSED, message }
}

/// Reads a value from its flag, its `-file` flag or its `-env` flag; the messages name
/// the flag, the file or the variable, never the value.
fn sourced(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Option<Sourced>, Fail> {
    let (value, source) = if let Some(v) = value {
        (v.trim().to_string(), Source::Inline)
    } else if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("{flag}-file {}: cannot read it: {e}", path.display())))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        (text.trim().to_string(), Source::File(abs))
    } else if let Some(var) = env {
        let v = std::env::var(var).map_err(|_| {
            usage(format!("{flag}-env {var}: ${var} is not set (or not UTF-8); export it or use {flag}-file"))
        })?;
        (v.trim().to_string(), Source::Env(var.clone()))
    } else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(usage(format!("{flag}: the value is empty")));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(usage(format!("{flag}: the value has spaces in it; give the key exactly as the console shows it")));
    }
    Ok(Some(Sourced { value, source }))
}

pub fn run(args: AuthArgs) -> Result<u8, Fail> {
    match args.provider {
        Provider::Dropbox(a) => {
            let key = sourced("--app-key", &a.app_key, &a.app_key_file, &a.app_key_env)?.ok_or_else(|| {
                usage(
                    "give --app-key (or --app-key-file, --app-key-env): the app key from the Dropbox App Console"
                        .into(),
                )
            })?;
            let secret = sourced("--app-secret", &a.app_secret, &a.app_secret_file, &a.app_secret_env)?;
            authorize(&DROPBOX, key, secret, &a.common)
        }
        Provider::Drive(a) => {
            let id = sourced("--client-id", &a.client_id, &a.client_id_file, &a.client_id_env)?.ok_or_else(|| {
                usage(
                    "give --client-id (or --client-id-file, --client-id-env): the id of an OAuth client of type \
                     Desktop app, from the Google Cloud console"
                        .into(),
                )
            })?;
            let secret = sourced("--client-secret", &a.client_secret, &a.client_secret_file, &a.client_secret_env)?
                .ok_or_else(|| {
                    usage(
                        "give --client-secret (or --client-secret-file, --client-secret-env): Google's token \
                         endpoint needs the Desktop client's secret"
                            .into(),
                    )
                })?;
            authorize(&DRIVE, id, Some(secret), &a.common)
        }
    }
}

/// An authorization begun: what the exchange needs, kept until it succeeds.
#[derive(Serialize, Deserialize)]
struct Pending {
    client_id: String,
    verifier: String,
    state: String,
    redirect_uri: Option<String>,
    authorize_url: String,
}

/// Where the pending authorization for `client_id` is kept.
fn pending_path(spec: &Spec, client_id: &str) -> PathBuf {
    let digest = Sha256::digest(client_id.as_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    laminar_tuning::plan::default_data_dir().join("auth").join(format!("{}-{tag}.json", spec.name))
}

fn save_pending(path: &Path, pending: &Pending) -> Result<(), Fail> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path.parent().expect("the pending file is in a directory");
    let cannot = |what: &str, e: std::io::Error| {
        usage(format!("cannot {what} {}: {e}; set LAMINAR_DATA_DIR to a directory you can write", dir.display()))
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| cannot("create", e))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| cannot("write in", e))?;
    let text = serde_json::to_string(pending).expect("pending serialises");
    file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(|e| cannot("write in", e))?;
    std::fs::rename(&tmp, path).map_err(|e| cannot("write in", e))
}

fn random_b64(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A query value, with only the unreserved characters left as they are.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let query: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, QUERY_VALUE))).collect();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", query.join("&"))
}

fn check_url(flag: &str, url: &str) -> Result<(), Fail> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(usage(format!("{flag} {url:?}: give an http:// or https:// URL")))
    }
}

/// A new authorization: a fresh verifier and state, and the URL to open.
fn begin(spec: &Spec, client_id: &str, authorize_base: &str) -> Pending {
    let verifier = random_b64(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let (redirect_uri, authorize_url) = if spec.name == "dropbox" {
        // No redirect: Dropbox shows the code to copy.
        let url = with_query(
            authorize_base,
            &[
                ("client_id", client_id),
                ("response_type", "code"),
                ("token_access_type", "offline"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        (None, url)
    } else {
        // A loopback port nothing listens on (any port is accepted for a Desktop client).
        let redirect = format!("http://127.0.0.1:{}/", fastrand::u16(49152..=65535));
        let url = with_query(
            authorize_base,
            &[
                ("client_id", client_id),
                ("redirect_uri", &redirect),
                ("response_type", "code"),
                ("scope", DRIVE_SCOPE),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("access_type", "offline"),
                ("prompt", "consent"),
                ("state", &state),
            ],
        );
        (Some(redirect), url)
    };
    Pending { client_id: client_id.to_string(), verifier, state, redirect_uri, authorize_url }
}

fn authorize(spec: &Spec, client: Sourced, secret: Option<Sourced>, common: &CommonArgs) -> Result<u8, Fail> {
    let remote = common.remote.clone().unwrap_or_else(|| spec.name.to_string());
    if remote.is_empty() || !remote.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(usage(format!("--remote {remote:?}: give a name of letters, digits, - and _")));
    }
    let authorize_base = common.authorize_url.as_deref().unwrap_or(spec.default_authorize_url);
    let token_url = common.token_url.as_deref().unwrap_or(spec.default_token_url);
    check_url("--authorize-url", authorize_base)?;
    check_url("--token-url", token_url)?;
    let path = pending_path(spec, &client.value);

    let (pending, pasted) = match &common.code {
        Some(code) => {
            let text = std::fs::read_to_string(&path).map_err(|_| {
                usage(format!(
                    "no {} authorization is pending for this {}: run `laminar auth {}` without --code first, \
                     open the URL it prints, then pass what you get with --code",
                    spec.title, spec.client_flag, spec.name
                ))
            })?;
            let pending: Pending = serde_json::from_str(&text).map_err(|_| {
                usage(format!(
                    "the pending authorization in {} is damaged: run `laminar auth {}` without --code again",
                    path.display(),
                    spec.name
                ))
            })?;
            (pending, code.clone())
        }
        None => {
            let pending = begin(spec, &client.value, authorize_base);
            save_pending(&path, &pending)?;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "Open this URL in a browser on any machine, sign in and allow access:\n");
            let _ = writeln!(err, "    {}\n", pending.authorize_url);
            if spec.name == "dropbox" {
                let _ = writeln!(err, "Dropbox then shows an access code. Paste it here.");
            } else {
                let _ = writeln!(
                    err,
                    "The browser then fails to load {} (nothing listens there; that is expected).\n\
                     Copy the whole address from its address bar and paste it here.",
                    pending.redirect_uri.as_deref().unwrap_or("")
                );
            }
            let _ = write!(err, "Code or address: ");
            let _ = err.flush();
            let line = read_line()?;
            match line {
                Some(line) => (pending, line),
                None => {
                    eprintln!(
                        "\nlaminar: no code read; the authorization stays pending: open the URL above, then run \
                         the same command with --code CODE added (CODE may be the whole address)"
                    );
                    return Ok(0);
                }
            }
        }
    };
    let code = code_from(spec, &pasted, &pending.state)?;
    let mut secrets: Vec<&str> = vec![&code, &pending.verifier];
    if let Some(s) = &secret {
        secrets.push(&s.value);
    }
    let granted = exchange(spec, token_url, &pending, &code, secret.as_ref().map(|s| s.value.as_str()), &secrets)?;
    // The verifier has done its work; a failure here leaves a file that is no use to anyone.
    let _ = std::fs::remove_file(&path);
    print_block(spec, &remote, &client, secret.as_ref(), &granted.refresh_token, common.token_url.as_deref());
    eprintln!(
        "laminar: {} authorized{}. The block above holds a refresh token, a secret: keep laminar.toml readable \
         only by you (chmod 600), or put the token in a file and name it with refresh_token_file.",
        spec.title,
        granted.account.map(|a| format!(" account {a}")).unwrap_or_default()
    );
    Ok(0)
}

/// One line from standard input; `None` when it ends first (or gives only a blank line).
fn read_line() -> Result<Option<String>, Fail> {
    let mut line = String::new();
    let mut stdin = std::io::stdin().lock();
    let mut limited = (&mut stdin).take(PASTE_BYTES_MAX as u64);
    use std::io::Read as _;
    limited.read_line(&mut line).map_err(|e| usage(format!("cannot read the code from standard input: {e}")))?;
    let line = line.trim();
    Ok((!line.is_empty()).then(|| line.to_string()))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The code from what was pasted: a bare code, or an address with `code=` in its query.
fn code_from(spec: &Spec, pasted: &str, state: &str) -> Result<String, Fail> {
    let pasted = pasted.trim();
    let again = format!("run `laminar auth {}` again and open the new URL", spec.name);
    let code = if pasted.contains("://") || pasted.contains("code=") || pasted.contains("error=") {
        let query = pasted.split_once('?').map_or(pasted, |(_, q)| q);
        let query = query.split('#').next().unwrap_or("");
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if let Some(error) = get("error") {
            let what = if error == "access_denied" { "access was not allowed" } else { "the authorization failed" };
            return Err(refused(format!("the address says error={}: {what}; {again}, and allow access", clip(error))));
        }
        if let Some(got) = get("state") {
            if got != state {
                return Err(usage(format!(
                    "the address is from another authorization (its state is not the latest one's): open the URL \
                     the latest `laminar auth {}` printed, or {again}",
                    spec.name
                )));
            }
        }
        get("code").map(str::to_string).ok_or_else(|| {
            usage(
                "the address has no code= in it: paste the whole address the browser ended on, or only the code".into(),
            )
        })?
    } else if pasted.contains('%') {
        decode(pasted)
    } else {
        pasted.to_string()
    };
    if code.is_empty() || code.len() > 2048 || code.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(usage(
            "that is not an authorization code: paste the code exactly as shown, or the whole address".into(),
        ));
    }
    Ok(code)
}

/// Short and printable, for quoting what a server said.
fn clip(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match s.char_indices().nth(DESCRIPTION_CHARS_MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

struct Granted {
    refresh_token: String,
    account: Option<String>,
}

/// POSTs the code to the token endpoint; a refusal becomes one line saying what to do.
fn exchange(
    spec: &Spec,
    token_url: &str,
    pending: &Pending,
    code: &str,
    secret: Option<&str>,
    secrets: &[&str],
) -> Result<Granted, Fail> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", &pending.client_id),
        ("code_verifier", &pending.verifier),
    ];
    if let Some(s) = secret {
        form.push(("client_secret", s));
    }
    if let Some(r) = &pending.redirect_uri {
        form.push(("redirect_uri", r));
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| refused(format!("cannot start an HTTP client: {e}")))?;
    let resp = http
        .post(token_url)
        .form(&form)
        .send()
        .map_err(|e| refused(format!("cannot reach the token endpoint {token_url}: {}; check the network (or --token-url) and run again with the same --code", e.without_url())))?;
    let status = resp.status();
    let body: Option<Value> = resp.json().ok();
    if status.is_success() {
        let body = body.ok_or_else(|| {
            refused(format!("the token endpoint {token_url} answered {status} without JSON; is --token-url right?"))
        })?;
        return granted(spec, &body);
    }
    let Some(body) = body.filter(|b| b["error"].is_string()) else {
        return Err(refused(format!(
            "the token endpoint {token_url} answered {status} without an OAuth error; try again later, or check --token-url"
        )));
    };
    let error = clip(body["error"].as_str().unwrap_or(""));
    let mut description = body["error_description"].as_str().unwrap_or("").to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        description = description.replace(s, "<redacted>");
    }
    let description = clip(&description);
    Err(refused(refusal(spec, &error, &description)))
}

/// What a token endpoint's refusal means, and what to do.
fn refusal(spec: &Spec, error: &str, description: &str) -> String {
    let said = if description.is_empty() { error.to_string() } else { format!("{error}: {description}") };
    let title = spec.title;
    let name = spec.name;
    let lower = description.to_ascii_lowercase();
    match error {
        "invalid_grant" if lower.contains("verifier") => format!(
            "{title} refused the code ({said}): it belongs to another authorization than the latest `laminar auth \
             {name}` began; open the URL that run printed (or run it again) and paste the code you get from it"
        ),
        "invalid_grant" => format!(
            "{title} refused the code ({said}): a code works once and only for a few minutes; run `laminar auth \
             {name}` again, open the new URL and paste the new code at once"
        ),
        "invalid_client" | "unauthorized_client" => format!(
            "{title} does not accept this {} and {} ({said}): copy them again from {}",
            spec.client_key,
            spec.secret_key,
            if name == "dropbox" {
                "the app's page in the Dropbox App Console"
            } else {
                "the OAuth client (type Desktop app) in the Google Cloud console, Credentials"
            }
        ),
        "redirect_uri_mismatch" => format!(
            "{title} refused the loopback redirect ({said}): use an OAuth client of type Desktop app (a Web \
             application client takes only its registered redirect URIs)"
        ),
        "invalid_request" if lower.contains("secret") || lower.contains("auth function") => format!(
            "{title} wants the client secret ({said}): give {} (or {}-file, {}-env)",
            spec.secret_flag, spec.secret_flag, spec.secret_flag
        ),
        _ => format!(
            "{title} refused the code ({said}); run `laminar auth {name}` again, open the new URL and paste the new code"
        ),
    }
}

fn granted(spec: &Spec, body: &Value) -> Result<Granted, Fail> {
    let Some(refresh_token) = body["refresh_token"].as_str().filter(|t| !t.is_empty()) else {
        return Err(refused(format!(
            "{} granted access but no refresh token ({}); run `laminar auth {}` again",
            spec.title,
            if spec.name == "dropbox" {
                "the authorize URL must ask for token_access_type=offline"
            } else {
                "Google sends one only with access_type=offline and prompt=consent; remove the app's access at \
                 myaccount.google.com/permissions if it persists"
            },
            spec.name
        )));
    };
    if spec.name == "drive" {
        let scope = body["scope"].as_str().unwrap_or("");
        if !scope.split(' ').any(|s| s == DRIVE_SCOPE) {
            return Err(refused(format!(
                "Google granted {} but not {DRIVE_SCOPE}: run `laminar auth drive` again and tick \"See, edit, \
                 create and delete all of your Google Drive files\" on the consent page",
                if scope.is_empty() { "no scope".to_string() } else { clip(scope) }
            )));
        }
    }
    let account = body["account_id"].as_str().map(clip);
    Ok(Granted { refresh_token: refresh_token.to_string(), account })
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn print_block(
    spec: &Spec,
    remote: &str,
    client: &Sourced,
    secret: Option<&Sourced>,
    refresh_token: &str,
    token_url: Option<&str>,
) {
    let mut out = String::new();
    out.push_str(&format!(
        "# From `laminar auth {}`: paste into laminar.toml (the refresh_token is a secret)\n",
        spec.name
    ));
    out.push_str(&format!("[remotes.{remote}]\ntype = {}\n", quoted(spec.name)));
    // The config takes the client id only inline: it is not a secret.
    out.push_str(&format!("{} = {}\n", spec.client_key, quoted(&client.value)));
    if let Some(s) = secret {
        let key = spec.secret_key;
        match &s.source {
            Source::Inline => out.push_str(&format!("{key} = {}\n", quoted(&s.value))),
            Source::File(path) => out.push_str(&format!("{key}_file = {}\n", quoted(&path.to_string_lossy()))),
            Source::Env(var) => out.push_str(&format!("{key}_env = {}\n", quoted(var))),
        }
    }
    out.push_str(&format!("refresh_token = {}\n", quoted(refresh_token)));
    if let Some(url) = token_url {
        out.push_str(&format!("token_url = {}\n", quoted(url)));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_come_from_addresses_and_bare_codes() {
        let state = "st";
        assert_eq!(code_from(&DRIVE, "  4/0Aabc \n", state).ok(), Some("4/0Aabc".to_string()));
        assert_eq!(code_from(&DRIVE, "4%2F0Aabc", state).ok(), Some("4/0Aabc".to_string()));
        let url =
            "http://127.0.0.1:50000/?state=st&code=4%2F0Aabc&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdrive";
        assert_eq!(code_from(&DRIVE, url, state).ok(), Some("4/0Aabc".to_string()));
        assert_eq!(code_from(&DRIVE, "code=xyz#frag", state).ok(), Some("xyz".to_string()));
        let other = code_from(&DRIVE, "http://127.0.0.1:1/?state=no&code=x", state).err().unwrap();
        assert!(other.message.contains("another authorization"), "{}", other.message);
        let denied = code_from(&DRIVE, "http://127.0.0.1:1/?error=access_denied&state=st", state).err().unwrap();
        assert!(denied.message.contains("access was not allowed"), "{}", denied.message);
        assert!(code_from(&DRIVE, "http://127.0.0.1:1/?state=st", state).err().unwrap().message.contains("no code="));
        assert!(code_from(&DROPBOX, "two words", state).is_err());
    }

    #[test]
    fn urls_carry_pkce_and_the_flow_parameters() {
        let p = begin(&DROPBOX, "key", DROPBOX_AUTHORIZE_URL);
        assert!(p.authorize_url.starts_with("https://www.dropbox.com/oauth2/authorize?client_id=key&response_type=code&token_access_type=offline&code_challenge="));
        assert!(p.authorize_url.ends_with("&code_challenge_method=S256"));
        assert_eq!(p.verifier.len(), 43);
        assert!(p.redirect_uri.is_none());
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(p.verifier.as_bytes()));
        assert!(p.authorize_url.contains(&format!("code_challenge={challenge}&")));
        let p = begin(&DRIVE, "id.apps.googleusercontent.com", GOOGLE_AUTHORIZE_URL);
        let redirect = p.redirect_uri.clone().unwrap();
        assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with('/'));
        for part in [
            "scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdrive",
            "access_type=offline",
            "prompt=consent",
            "code_challenge_method=S256",
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A",
        ] {
            assert!(p.authorize_url.contains(part), "{part} in {}", p.authorize_url);
        }
    }

    #[test]
    fn refusals_say_what_to_do_without_secrets() {
        let m = refusal(&DROPBOX, "invalid_grant", "invalid code verifier");
        assert!(m.contains("another authorization"), "{m}");
        let m = refusal(&DRIVE, "invalid_grant", "Bad Request");
        assert!(m.contains("works once") && m.contains("laminar auth drive"), "{m}");
        let m = refusal(&DRIVE, "invalid_client", "Unauthorized");
        assert!(m.contains("Desktop app"), "{m}");
        assert!(refusal(&DRIVE, "invalid_request", "client_secret is missing.").contains("--client-secret"));
        assert_eq!(clip(&"x".repeat(500)).len(), DESCRIPTION_CHARS_MAX + 3);
    }
}
