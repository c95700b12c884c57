//! A Dropbox remote's configuration: the `[remotes.NAME]` table of `type = "dropbox"`,
//! and the folder the URL names below the remote's root.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::auth::Credentials;
use super::{DropboxBackend, DropboxConfig};
use crate::backend::registry::{self, BackendType, Opened};
use crate::error::{Error, Result};
use crate::http::Endpoint;

/// The registry's entry for Dropbox.
pub const TYPE: BackendType = BackendType { name: "dropbox", url_form: "path/below/root", open };

const API_URL: &str = "https://api.dropboxapi.com";
const CONTENT_URL: &str = "https://content.dropboxapi.com";
const TOKEN_URL: &str = "https://api.dropboxapi.com/oauth2/token";

/// One `[remotes.NAME]` table of `type = "dropbox"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropboxRemoteConfig {
    /// A long-lived access token (or `_file` / `_env`).
    pub token: Option<String>,
    /// A file holding the access token.
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the access token.
    pub token_env: Option<String>,
    /// A refresh token, for access tokens made as they expire (or `_file` / `_env`).
    pub refresh_token: Option<String>,
    /// A file holding the refresh token.
    pub refresh_token_file: Option<PathBuf>,
    /// An environment variable holding the refresh token.
    pub refresh_token_env: Option<String>,
    /// The app key (`client_id`) the refresh token was issued to.
    pub app_key: Option<String>,
    /// The app secret (none for a PKCE app).
    pub app_secret: Option<String>,
    /// A file holding the app secret.
    pub app_secret_file: Option<PathBuf>,
    /// An environment variable holding the app secret.
    pub app_secret_env: Option<String>,
    /// The folder the remote is rooted at (default `/`).
    pub root: Option<String>,
    /// The RPC host (default `https://api.dropboxapi.com`).
    pub api_url: Option<String>,
    /// The content host (default `https://content.dropboxapi.com`).
    pub content_url: Option<String>,
    /// The OAuth token endpoint (default `https://api.dropboxapi.com/oauth2/token`).
    pub token_url: Option<String>,
    /// Commit small files many at once through `upload_session/finish_batch_v2`
    /// (default true); false sends each with one `files/upload`.
    pub batch_commits: Option<bool>,
}

fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    let config: DropboxRemoteConfig = registry::parse(remote, "dropbox", table)?;
    let cfg = config.resolve(remote)?;
    let prefix = path.trim_start_matches('/').to_string();
    Ok(Opened { backend: Arc::new(DropboxBackend::new(cfg)), path: prefix })
}

/// Splits `scheme://host[:port]/path` into the endpoint and the path (`/` if none).
pub(super) fn split_url(remote: &str, field: &str, url: &str) -> Result<(Endpoint, String)> {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (base, path) = match url[scheme_end..].find('/') {
        Some(i) => url.split_at(scheme_end + i),
        None => (url, "/"),
    };
    let endpoint = Endpoint::parse(base).map_err(|e| Error::Usage(format!("remote {remote:?}: {field}: {e}")))?;
    Ok((endpoint, path.to_string()))
}

/// The root folder as Dropbox names it: `""` for the whole account, else `/A/B`.
pub(super) fn normalise_root(remote: &str, root: &str) -> Result<String> {
    let trimmed = root.trim_matches('/');
    if trimmed.split('/').any(|p| p == "." || p == "..") {
        return Err(Error::Usage(format!("remote {remote:?}: root {root:?} may not contain . or .. parts")));
    }
    Ok(if trimmed.is_empty() { String::new() } else { format!("/{trimmed}") })
}

impl DropboxRemoteConfig {
    /// The endpoints and credentials, secrets read from where they are.
    pub fn resolve(&self, name: &str) -> Result<DropboxConfig> {
        let r = self;
        let secret = registry::secret;
        let token = secret(name, "token", &r.token, &r.token_file, &r.token_env)?;
        let refresh = secret(name, "refresh_token", &r.refresh_token, &r.refresh_token_file, &r.refresh_token_env)?;
        let app_secret = secret(name, "app_secret", &r.app_secret, &r.app_secret_file, &r.app_secret_env)?;
        let credentials = match (token, refresh) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(format!(
                    "remote {name:?} has both an access token and a refresh token: keep one of token or refresh_token"
                )))
            }
            (Some(token), None) => Credentials::Token(token),
            (None, Some(refresh_token)) => {
                let app_key = r.app_key.clone().ok_or_else(|| {
                    Error::Usage(format!(
                        "remote {name:?} has a refresh_token but no app_key: set app_key to the app it was issued to"
                    ))
                })?;
                Credentials::Refresh { refresh_token, app_key, app_secret }
            }
            (None, None) => {
                return Err(Error::Usage(format!(
                    "remote {name:?} has no credentials: set token (or token_file, token_env), or refresh_token \
                     with app_key and app_secret (an app's OAuth refresh token, from Dropbox's app console)"
                )))
            }
        };
        let (api, _) = split_url(name, "api_url", r.api_url.as_deref().unwrap_or(API_URL))?;
        let (content, _) = split_url(name, "content_url", r.content_url.as_deref().unwrap_or(CONTENT_URL))?;
        let (token_endpoint, token_path) = split_url(name, "token_url", r.token_url.as_deref().unwrap_or(TOKEN_URL))?;
        Ok(DropboxConfig {
            remote: name.to_string(),
            root: normalise_root(name, r.root.as_deref().unwrap_or("/"))?,
            api,
            content,
            token_endpoint,
            token_path,
            credentials,
            batch_commits: r.batch_commits.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DropboxConfig> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let config: DropboxRemoteConfig = registry::parse("d", "dropbox", table)?;
        config.resolve("d")
    }

    #[test]
    fn keys_and_defaults() {
        let cfg = parse("token = \"SECRET-TOKEN\"\nroot = \"/Photos/\"").unwrap();
        assert_eq!(cfg.root, "/Photos");
        assert_eq!(cfg.api.url(), "https://api.dropboxapi.com");
        assert_eq!(cfg.content.url(), "https://content.dropboxapi.com");
        assert_eq!(
            (cfg.token_endpoint.url().as_str(), cfg.token_path.as_str()),
            ("https://api.dropboxapi.com", "/oauth2/token")
        );
        assert!(!format!("{cfg:?}").contains("SECRET-TOKEN"));
        let cfg = parse(
            "refresh_token = \"RT-SECRET\"\napp_key = \"k\"\napp_secret = \"AS-SECRET\"\n\
             api_url = \"http://127.0.0.1:1\"\ncontent_url = \"http://127.0.0.1:2\"\n\
             token_url = \"http://127.0.0.1:1/oauth2/token\"",
        )
        .unwrap();
        assert_eq!(cfg.root, "");
        assert_eq!(cfg.content.port, 2);
        assert!(cfg.batch_commits, "small files are batched by default");
        assert!(!parse("token = \"t\"\nbatch_commits = false").unwrap().batch_commits);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("RT-SECRET") && !shown.contains("AS-SECRET"), "{shown}");
        // A PKCE app has no secret.
        assert!(parse("refresh_token = \"r\"\napp_key = \"k\"").is_ok());
    }

    #[test]
    fn bad_tables_say_what_to_fix() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("tokn = \"x\"").contains("tokn"));
        assert!(err("").contains("no credentials"));
        assert!(err("refresh_token = \"r\"").contains("no app_key"));
        assert!(err("token = \"t\"\nrefresh_token = \"r\"\napp_key = \"k\"").contains("keep one"));
        assert!(err("token = \"t\"\nroot = \"/a/../b\"").contains(".."));
        assert!(err("token = \"t\"\napi_url = \"ftp://x\"").contains("api_url"));
        let e = err("token = \"SECRET\"\ntoken_url = \"nope\"");
        assert!(!e.contains("SECRET"), "{e}");
    }
}
