//! rclone remotes of type `dropbox` and `drive` that reach the emulators through a
//! [`CloudProxy`]: a config file in a directory of the caller's, and the environment
//! that makes rclone use it, the proxy and the proxy's CA.
//!
//! The remotes are configured as a user configures them (client id and secret, an OAuth
//! token as rclone stores it, `token_url` the provider's real token URL), so rclone's own
//! code runs unchanged: the token given has expired, so rclone's first call refreshes it
//! at the provider's token host, through the proxy, and saves the new one in the file
//! (which is why this is a file, not `RCLONE_CONFIG_<NAME>_*` variables: rclone writes
//! refreshed tokens back). Secrets stay in the file; the environment carries none.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use laminar_emulators::drive::DriveEndpoints;
use laminar_emulators::dropbox::DropboxEndpoints;

use super::proxy::CloudProxy;
use super::{drive_routes, dropbox_routes};

/// The config file [`rclone_cloud_env`] writes in its directory.
pub const CONFIG_FILE: &str = "rclone.conf";
/// Dropbox's token URL, as rclone's dropbox backend has it built in.
pub const DROPBOX_TOKEN_URL: &str = "https://api.dropboxapi.com/oauth2/token";
/// Google's token URL, as rclone's drive backend has it built in.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// An expiry in the past, so rclone refreshes the token before its first call.
const EXPIRED: &str = "2000-01-01T00:00:00Z";

/// One emulator to define as an rclone remote.
#[derive(Debug, Clone, Copy)]
pub enum CloudRemote<'a> {
    /// A `dropbox` remote on the Dropbox emulator.
    Dropbox(&'a DropboxEndpoints),
    /// A `drive` remote on the Drive emulator (My Drive's root as the remote's root).
    Drive(&'a DriveEndpoints),
}

impl CloudRemote<'_> {
    fn hosts(&self) -> Result<Vec<String>> {
        let routes = match self {
            CloudRemote::Dropbox(e) => dropbox_routes(e)?,
            CloudRemote::Drive(e) => drive_routes(e)?,
        };
        Ok(routes.into_iter().map(|(host, _)| host).collect())
    }

    /// The remote's `[section]` body: `key = value` lines.
    fn section(&self) -> Vec<(&'static str, String)> {
        match self {
            CloudRemote::Dropbox(e) => vec![
                ("type", "dropbox".into()),
                ("client_id", e.app_key.clone()),
                ("client_secret", e.app_secret.clone()),
                ("token", token_json(&e.access_token, &e.refresh_token)),
                ("token_url", DROPBOX_TOKEN_URL.into()),
            ],
            CloudRemote::Drive(e) => vec![
                ("type", "drive".into()),
                ("client_id", e.client_id.clone()),
                ("client_secret", e.client_secret.clone()),
                ("scope", "drive".into()),
                // The emulator hands out access tokens only from its token endpoint, so
                // the one given is a placeholder; it has expired either way.
                ("token", token_json("expired", &e.refresh_token)),
                ("token_url", GOOGLE_TOKEN_URL.into()),
                ("root_folder_id", e.root_id.clone()),
            ],
        }
    }
}

/// An OAuth token as rclone stores it (`golang.org/x/oauth2`'s `Token` as JSON).
fn token_json(access_token: &str, refresh_token: &str) -> String {
    serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "refresh_token": refresh_token,
        "expiry": EXPIRED,
    })
    .to_string()
}

/// Writes `dir/rclone.conf` defining `remotes` (name and emulator), and returns the
/// environment under which rclone uses it: `RCLONE_CONFIG`, `HTTPS_PROXY` (and
/// `HTTP_PROXY`, both cases) naming `proxy`, no `NO_PROXY`, `RCLONE_CA_CERT` the proxy's
/// CA, `RCLONE_BIND=127.0.0.1` (so rclone cannot reach off the machine even if it
/// bypassed the proxy) and `RCLONE_CACHE_DIR` under `dir`. Fails if `proxy` does not
/// route every host a remote needs, or a name is not an rclone remote name.
pub fn rclone_cloud_env(
    dir: &Path,
    proxy: &CloudProxy,
    remotes: &[(&str, CloudRemote<'_>)],
) -> Result<Vec<(String, String)>> {
    let mut config = String::new();
    for (name, remote) in remotes {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            bail!("rclone remote name {name:?}: use letters, digits, '_' and '-'");
        }
        for host in remote.hosts()? {
            if !proxy.hosts().contains(&host) {
                bail!("remote {name}: the proxy does not route {host}; start it with this emulator's routes");
            }
        }
        writeln!(config, "[{name}]").expect("writing to a String");
        for (key, value) in remote.section() {
            writeln!(config, "{key} = {value}").expect("writing to a String");
        }
        config.push('\n');
    }
    let path = dir.join(CONFIG_FILE);
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let proxy_url = proxy.url();
    let env = [
        ("RCLONE_CONFIG", path.display().to_string()),
        ("HTTPS_PROXY", proxy_url.clone()),
        ("https_proxy", proxy_url.clone()),
        ("HTTP_PROXY", proxy_url.clone()),
        ("http_proxy", proxy_url),
        ("NO_PROXY", String::new()),
        ("no_proxy", String::new()),
        ("RCLONE_CA_CERT", proxy.ca_pem().display().to_string()),
        ("RCLONE_BIND", "127.0.0.1".into()),
        ("RCLONE_CACHE_DIR", dir.join("rclone-cache").display().to_string()),
    ];
    Ok(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}
