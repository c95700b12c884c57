//! A Google Drive remote's configuration: the `[remotes.NAME]` table of
//! `type = "drive"`, resolved into endpoints and one credential.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::export::{parse_formats, Format, DEFAULT_EXPORT};
use super::DriveBackend;
use crate::backend::registry::{self, BackendType, Opened};
use crate::error::{Error, Result};
use crate::http::Endpoint;

/// The registry's entry for Google Drive.
pub const TYPE: BackendType = BackendType { name: "drive", url_form: "path/below/the/root/folder", open };

const DEFAULT_API_URL: &str = "https://www.googleapis.com";
const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// One `[remotes.NAME]` table of `type = "drive"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveRemoteConfig {
    /// OAuth client id (with a refresh token).
    pub client_id: Option<String>,
    /// OAuth client secret, or `_file` / `_env`.
    pub client_secret: Option<String>,
    /// A file holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// OAuth refresh token, or `_file` / `_env`.
    pub refresh_token: Option<String>,
    /// A file holding the refresh token.
    pub refresh_token_file: Option<PathBuf>,
    /// An environment variable holding the refresh token.
    pub refresh_token_env: Option<String>,
    /// A ready access token (no refresh: it works until it expires).
    pub token: Option<String>,
    /// A file holding the access token.
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the access token.
    pub token_env: Option<String>,
    /// A service account's JSON key (signed JWTs instead of a refresh token).
    pub service_account_file: Option<PathBuf>,
    /// The user a service account acts for (domain-wide delegation).
    pub subject: Option<String>,
    /// The folder the URL's path is below (default `root`, My Drive).
    pub root_folder_id: Option<String>,
    /// A shared drive to work in.
    pub shared_drive_id: Option<String>,
    /// Where the Drive API is (default https://www.googleapis.com).
    pub api_url: Option<String>,
    /// Where tokens are refreshed (default https://oauth2.googleapis.com/token).
    pub token_url: Option<String>,
    /// Formats Google Docs, Sheets, Slides and Drawings are exported in when read, as a
    /// comma-separated list of extensions (`docx,xlsx,pptx`, the default), or `none` to
    /// skip them. `laminar relay --drive-export` overrides it.
    pub export: Option<String>,
    /// Whether shortcuts are followed (default false: skipped with the reason).
    /// `laminar relay --drive-follow-shortcuts` sets it.
    pub follow_shortcuts: Option<bool>,
}

/// How requests are authorised.
#[derive(Clone)]
pub(super) enum Credential {
    /// A refresh token, exchanged for access tokens as they expire.
    Refresh { client_id: String, client_secret: String, refresh_token: String },
    /// One access token, used until it expires.
    Static(String),
    /// A service account: signed JWTs exchanged for access tokens.
    ServiceAccount { email: String, key: Arc<ring::signature::RsaKeyPair>, subject: Option<String> },
}

#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
}

/// What kind of JSON error, without quoting the file (which holds a key).
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
        serde_json::error::Category::Data => "client_email or private_key is missing or not a string",
    }
}

/// Reads a service account's JSON key; errors name the file, never the key.
fn service_account(name: &str, path: &std::path::Path, subject: Option<String>) -> Result<Credential> {
    use base64::Engine as _;
    let bad = |why: &str| Error::Usage(format!("remote {name:?}: service_account_file {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    let key: ServiceAccountKey = serde_json::from_str(&text)
        .map_err(|e| bad(&format!("not a service account's JSON key: {}", json_error_kind(&e))))?;
    let body: String =
        key.private_key.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("its private_key is not a PEM block"))?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| bad("its private_key is not an RSA key in PKCS#8"))?;
    Ok(Credential::ServiceAccount { email: key.client_email, key: Arc::new(pair), subject })
}

/// A resolved Drive remote.
#[derive(Clone)]
pub struct DriveConfig {
    /// Remote name, for messages.
    pub remote: String,
    /// The API's endpoint.
    pub api: Endpoint,
    /// The token endpoint.
    pub token_endpoint: Endpoint,
    /// The token endpoint's path.
    pub token_path: String,
    /// The folder keys are below.
    pub root_folder_id: String,
    /// The shared drive, if any.
    pub shared_drive_id: Option<String>,
    /// The export formats, in the order given: a Google file is exported in the first
    /// one its type has. Empty: Google files are skipped.
    pub export: Vec<&'static Format>,
    /// Whether shortcuts are followed.
    pub follow_shortcuts: bool,
    pub(super) credential: Credential,
}

impl std::fmt::Debug for DriveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriveConfig")
            .field("remote", &self.remote)
            .field("api", &self.api.url())
            .field("token_endpoint", &self.token_endpoint.url())
            .field("root_folder_id", &self.root_folder_id)
            .field("shared_drive_id", &self.shared_drive_id)
            .field("export", &self.export.iter().map(|f| f.ext).collect::<Vec<_>>())
            .field("follow_shortcuts", &self.follow_shortcuts)
            .finish_non_exhaustive()
    }
}

fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    let config: DriveRemoteConfig = registry::parse(remote, "drive", table)?;
    let cfg = config.resolve(remote)?;
    let path = path.trim_start_matches('/').to_string();
    Ok(Opened { backend: Arc::new(DriveBackend::new(cfg)), path })
}

/// Splits `scheme://host[:port]/path` into the endpoint and the path.
fn split_url(remote: &str, field: &str, url: &str) -> Result<(Endpoint, String)> {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (base, path) = match url[after_scheme..].find('/') {
        Some(i) => (&url[..after_scheme + i], &url[after_scheme + i..]),
        None => (url, ""),
    };
    let endpoint = Endpoint::parse(base).map_err(|e| Error::Usage(format!("remote {remote:?}: {field}: {e}")))?;
    Ok((endpoint, path.trim_end_matches('/').to_string()))
}

impl DriveRemoteConfig {
    /// The endpoints and credential, secrets read from where they are.
    pub fn resolve(&self, name: &str) -> Result<DriveConfig> {
        let secret = registry::secret;
        let (api, api_path) = split_url(name, "api_url", self.api_url.as_deref().unwrap_or(DEFAULT_API_URL))?;
        if !api_path.is_empty() {
            return Err(Error::Usage(format!("remote {name:?}: api_url must be scheme://host[:port] with no path")));
        }
        let (token_endpoint, token_path) =
            split_url(name, "token_url", self.token_url.as_deref().unwrap_or(DEFAULT_TOKEN_URL))?;
        let token_path = if token_path.is_empty() { "/".to_string() } else { token_path };
        let token = secret(name, "token", &self.token, &self.token_file, &self.token_env)?;
        let refresh =
            secret(name, "refresh_token", &self.refresh_token, &self.refresh_token_file, &self.refresh_token_env)?;
        if self.subject.is_some() && self.service_account_file.is_none() {
            return Err(Error::Usage(format!("remote {name:?}: subject needs service_account_file")));
        }
        let credential = match (token, refresh) {
            (None, None) if self.service_account_file.is_some() => {
                let path = self.service_account_file.as_ref().expect("checked");
                service_account(name, path, self.subject.clone())?
            }
            _ if self.service_account_file.is_some() => {
                return Err(Error::Usage(format!(
                    "remote {name:?}: give service_account_file, refresh_token or token, only one"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(Error::Usage(format!(
                    "remote {name:?}: give either refresh_token (with client_id and client_secret) or token, not both"
                )))
            }
            (Some(token), None) => Credential::Static(token),
            (None, Some(refresh_token)) => {
                let client_id = self.client_id.clone().ok_or_else(|| {
                    Error::Usage(format!("remote {name:?}: refresh_token needs client_id and client_secret"))
                })?;
                let client_secret = secret(
                    name,
                    "client_secret",
                    &self.client_secret,
                    &self.client_secret_file,
                    &self.client_secret_env,
                )?
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "remote {name:?}: refresh_token needs client_secret (or client_secret_file, \
                                 client_secret_env)"
                    ))
                })?;
                Credential::Refresh { client_id, client_secret, refresh_token }
            }
            (None, None) => {
                return Err(Error::Usage(format!(
                    "remote {name:?} has no credentials: set client_id, client_secret and refresh_token (each \
                     secret may be _file or _env), or token"
                )))
            }
        };
        let root_folder_id = match (&self.root_folder_id, &self.shared_drive_id) {
            (Some(root), _) => root.clone(),
            (None, Some(drive)) => drive.clone(),
            (None, None) => "root".to_string(),
        };
        let export = parse_formats(self.export.as_deref().unwrap_or(DEFAULT_EXPORT))
            .map_err(|why| Error::Usage(format!("remote {name:?}: export: {why}")))?;
        Ok(DriveConfig {
            remote: name.to_string(),
            api,
            token_endpoint,
            token_path,
            root_folder_id,
            shared_drive_id: self.shared_drive_id.clone(),
            export,
            follow_shortcuts: self.follow_shortcuts.unwrap_or(false),
            credential,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<DriveConfig> {
        let table: toml::Table = toml::from_str(text).unwrap();
        registry::parse::<DriveRemoteConfig>("gd", "drive", table)?.resolve("gd")
    }

    #[test]
    fn parses_refresh_token_config() {
        let cfg = resolve(
            "client_id = \"cid\"\nclient_secret = \"very-secret\"\nrefresh_token = \"1//refresh\"\n\
             api_url = \"http://127.0.0.1:4000\"\ntoken_url = \"http://127.0.0.1:4000/token\"",
        )
        .unwrap();
        assert_eq!(cfg.api.url(), "http://127.0.0.1:4000");
        assert_eq!(cfg.token_path, "/token");
        assert_eq!(cfg.root_folder_id, "root");
        assert!(matches!(cfg.credential, Credential::Refresh { .. }));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("very-secret") && !debug.contains("1//refresh"), "{debug}");
    }

    #[test]
    fn defaults_and_shared_drives() {
        let cfg = resolve("token = \"ya29.x\"\nshared_drive_id = \"0AD\"").unwrap();
        assert_eq!(cfg.api.url(), "https://www.googleapis.com");
        assert_eq!(cfg.token_endpoint.url(), "https://oauth2.googleapis.com");
        assert_eq!(cfg.root_folder_id, "0AD");
        let cfg = resolve("token = \"ya29.x\"\nshared_drive_id = \"0AD\"\nroot_folder_id = \"F1\"").unwrap();
        assert_eq!(cfg.root_folder_id, "F1");
        let exts = |cfg: &DriveConfig| cfg.export.iter().map(|f| f.ext).collect::<Vec<_>>();
        assert_eq!(exts(&cfg), ["docx", "xlsx", "pptx"], "the default exports");
        assert!(!cfg.follow_shortcuts);
        let cfg = resolve("token = \"ya29.x\"\nexport = \"none\"\nfollow_shortcuts = true").unwrap();
        assert!(cfg.export.is_empty() && cfg.follow_shortcuts);
        let cfg = resolve("token = \"ya29.x\"\nexport = \" PDF, odt \"").unwrap();
        assert_eq!(exts(&cfg), ["pdf", "odt"]);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let err = |t: &str| resolve(t).unwrap_err().to_string();
        let e = err("token = \"x\"\nrefresh_tokn = \"y\"");
        assert!(e.contains("refresh_tokn") && e.contains("refresh_token"), "{e}");
        assert!(err("").contains("has no credentials"));
        assert!(err("refresh_token = \"r\"").contains("client_id"));
        assert!(err("refresh_token = \"r\"\nclient_id = \"c\"").contains("client_secret"));
        assert!(err("token = \"t\"\nrefresh_token = \"r\"").contains("not both"));
        let e = err("service_account_file = \"/nonexistent/k.json\"\nsubject = \"a@b\"");
        assert!(e.contains("cannot read it"), "{e}");
        assert!(err("subject = \"a@b\"\ntoken = \"t\"").contains("subject needs service_account_file"));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.json");
        let pem = "-----BEGIN PRIVATE KEY-----\\nc2VjcmV0\\n-----END PRIVATE KEY-----\\n";
        std::fs::write(&key, format!("{{\"client_email\": \"a@b\", \"private_key\": \"{pem}\"}}")).unwrap();
        let e = err(&format!("service_account_file = {:?}", key.display().to_string()));
        assert!(e.contains("not an RSA key") && !e.contains("c2VjcmV0"), "{e}");
        let e = err(&format!("service_account_file = {:?}\ntoken = \"t\"", key.display().to_string()));
        assert!(e.contains("only one"), "{e}");
        let e = err("token = \"t\"\nexport = \"docx,docz\"");
        assert!(e.contains("export") && e.contains("\"docz\"") && e.contains("xlsx"), "{e}");
        let e = err("client_id = \"c\"\nclient_secret = \"s3cr3t\"\nrefresh_token = \"r\"\napi_url = \"ftp://x\"");
        assert!(e.contains("api_url") && !e.contains("s3cr3t"), "{e}");
    }
}
