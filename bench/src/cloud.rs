//! rclone's real `dropbox` and `drive` backends against Laminar's Dropbox and Drive
//! emulators, unchanged, reached the way a corporate proxy reaches the providers.
//!
//! rclone's backends have their API hosts compiled in (`api.dropboxapi.com`,
//! `www.googleapis.com`, ...), so they cannot be pointed at `http://127.0.0.1:PORT`.
//! Instead rclone is given `HTTPS_PROXY` naming a [`proxy::CloudProxy`], which answers
//! `CONNECT` for exactly the hosts in [`dropbox_routes`] and [`drive_routes`], presents
//! certificates for them signed by its own CA (which rclone is told to trust with
//! `--ca-cert`), and pipes the decrypted HTTP to the emulators' loopback ports. Every
//! other host is refused, and rclone is bound to 127.0.0.1, so nothing leaves the machine.
//! [`rclone::rclone_cloud_env`] writes the rclone configuration:
//!
//! ```text
//! let (dbx, gd) = (dropbox_emulator.endpoints(), drive_emulator.endpoints());
//! let mut routes = dropbox_routes(&dbx)?;
//! routes.extend(drive_routes(&gd)?);
//! let proxy = CloudProxy::start(dir, routes)?;
//! let env = rclone_cloud_env(dir, &proxy, &[("dbx", CloudRemote::Dropbox(&dbx)), ("gd", CloudRemote::Drive(&gd))])?;
//! Command::new(rclone).envs(env).args(["copy", "dbx:photos", "gd:photos"]) ...
//! ```
//!
//! Both tools pay the proxy's TLS (ECDSA P-256 leaf certificates, TLS 1.3 by default)
//! when a benchmark relays through it, so compare them through the same proxy.

pub mod chart;
pub mod compare;
pub mod proxy;
pub mod rclone;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use laminar_emulators::drive::DriveEndpoints;
use laminar_emulators::dropbox::DropboxEndpoints;

/// The hosts rclone's `dropbox` backend contacts, each mapped to the emulator's port
/// that serves it: `api.dropboxapi.com` (RPC routes and `/oauth2/token`) to the api
/// host, `content.dropboxapi.com` (uploads and downloads) to the content host.
/// (`notify.dropboxapi.com`, the long-poll host, is used only by `rclone mount`'s change
/// notification, which the emulator does not serve.)
pub fn dropbox_routes(endpoints: &DropboxEndpoints) -> Result<Vec<(String, SocketAddr)>> {
    Ok(vec![
        ("api.dropboxapi.com".to_string(), url_addr(&endpoints.api_url)?),
        ("content.dropboxapi.com".to_string(), url_addr(&endpoints.content_url)?),
    ])
}

/// The hosts rclone's `drive` backend contacts, both served by the emulator's one port:
/// `www.googleapis.com` (`/drive/v3` and `/upload/drive/v3`) and `oauth2.googleapis.com`
/// (Google's token endpoint, `/token`, the emulator's token path).
pub fn drive_routes(endpoints: &DriveEndpoints) -> Result<Vec<(String, SocketAddr)>> {
    let api = url_addr(&endpoints.api_url)?;
    let token = url_addr(&endpoints.token_url)?;
    Ok(vec![("www.googleapis.com".to_string(), api), ("oauth2.googleapis.com".to_string(), token)])
}

/// The address of an emulator URL (`http://127.0.0.1:PORT[/path]`).
fn url_addr(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("http://").with_context(|| format!("emulator URL {url:?} is not http://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.parse().with_context(|| format!("emulator URL {url:?}: expected http://127.0.0.1:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_addr_takes_the_authority() {
        assert_eq!(url_addr("http://127.0.0.1:8080/token").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(url_addr("http://127.0.0.1:9").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert!(url_addr("https://127.0.0.1:9").is_err());
        assert!(url_addr("http://localhost:9").is_err());
    }
}
