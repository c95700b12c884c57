//! Remotes and URLs: how the operator names the two sides of a relay.
//!
//! `laminar.toml` names remotes, each with its own endpoint and credentials, because
//! the two sides of a relay are usually different clouds:
//!
//! ```toml
//! [remotes.src]
//! type = "s3"
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! access_key_id = "..."
//! secret_access_key_file = "/run/secrets/src-key"   # or secret_access_key / _env
//! ```
//!
//! A URL is `NAME:bucket/prefix` (a remote), `s3://bucket/prefix` (the standard AWS
//! environment variables), or `file:///abs/path`. Secrets may come from files or the
//! environment, and never appear in errors or logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::backend::file::FileBackend;
use crate::backend::s3::{S3Backend, S3Config};
use crate::error::{Error, Result};
use crate::http::Endpoint;
use crate::relay::Location;

/// A parsed `laminar.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Remotes by name.
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteConfig>,
    /// Where it was read from; None when no file was found.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// One `[remotes.NAME]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// S3: endpoint URL.
    pub endpoint: Option<String>,
    /// S3: region (default us-east-1).
    pub region: Option<String>,
    /// S3: access key id, or `_file` / `_env` to read it from elsewhere.
    pub access_key_id: Option<String>,
    /// A file holding the access key id.
    pub access_key_id_file: Option<PathBuf>,
    /// An environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// S3: secret access key, or `_file` / `_env`.
    pub secret_access_key: Option<String>,
    /// A file holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// An environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// S3: session token for temporary credentials.
    pub session_token: Option<String>,
    /// A file holding the session token.
    pub session_token_file: Option<PathBuf>,
    /// An environment variable holding the session token.
    pub session_token_env: Option<String>,
    /// S3: path-style addressing (default true for custom endpoints, false for AWS).
    pub path_style: Option<bool>,
    /// file: the root directory.
    pub root: Option<PathBuf>,
}

impl Config {
    /// Finds and reads the config: `explicit`, then `$LAMINAR_CONFIG`, then
    /// `./laminar.toml`, then `$XDG_CONFIG_HOME/laminar/laminar.toml` (or
    /// `~/.config/...`). No file is fine unless one was named explicitly.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        if let Some(path) = explicit {
            return Config::read(path);
        }
        if let Some(path) = std::env::var_os("LAMINAR_CONFIG").filter(|p| !p.is_empty()) {
            return Config::read(Path::new(&path));
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let candidates = [Some(PathBuf::from("laminar.toml")), xdg.map(|d| d.join("laminar").join("laminar.toml"))];
        for path in candidates.into_iter().flatten() {
            if path.is_file() {
                return Config::read(&path);
            }
        }
        Ok(Config::default())
    }

    /// Reads one file.
    pub fn read(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("cannot read config {}: {e}", path.display())))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            Error::Usage(format!("config {} is invalid: {msg}", path.display()))
        })?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// The bucket, endpoint and credentials of `NAME:bucket/...`, a remote of type s3.
    pub fn s3_config(&self, url: &str) -> Result<S3Config> {
        let (name, rest) = url
            .split_once(':')
            .filter(|(name, _)| self.remotes.get(*name).is_some_and(|r| r.kind == "s3"))
            .ok_or_else(|| {
                Error::Usage(format!("{url:?} is not NAME:bucket/prefix for an s3 remote in laminar.toml"))
            })?;
        let (bucket, _) = split_bucket(url, rest)?;
        s3_from_remote(name, &self.remotes[name], bucket)
    }

    /// Turns a URL into a location.
    pub fn location(&self, url: &str) -> Result<Location> {
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(Error::Usage(format!(
                    "{url:?} is not an absolute file URL: write file:///abs/path (three slashes)"
                )));
            }
            let path = PathBuf::from(rest);
            // A single file: the tree is its directory, the object its name.
            if path.is_file() {
                if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                    let name = name.to_string_lossy();
                    return Ok(Location::new(Arc::new(FileBackend::new(dir.to_path_buf())), &name, url.to_string()));
                }
            }
            return Ok(Location::new(Arc::new(FileBackend::new(path)), "", url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(url, rest)?;
            let cfg = s3_from_env(bucket)?;
            return Ok(Location::new(Arc::new(S3Backend::new(cfg)), prefix, url.to_string()));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::Usage(format!(
                "unknown scheme {scheme:?} in {url:?}: use NAME:bucket/prefix for a remote in laminar.toml, s3://bucket/prefix, or file:///abs/path"
            )));
        }
        let Some((name, rest)) = url.split_once(':') else {
            let hint = if url.starts_with('/') {
                format!("; for a local directory write file://{url}")
            } else {
                String::new()
            };
            return Err(Error::Usage(format!(
                "{url:?} is not a URL: use NAME:bucket/prefix (a remote in laminar.toml), s3://bucket/prefix, or file:///abs/path{hint}"
            )));
        };
        let remote = self.remotes.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.remotes.keys().map(String::as_str).collect();
            let source = match &self.path {
                Some(p) => format!("{} defines {}", p.display(), if known.is_empty() { "no remotes".to_string() } else { known.join(", ") }),
                None => "no laminar.toml was found (looked at --config, $LAMINAR_CONFIG, ./laminar.toml, ~/.config/laminar/laminar.toml)".to_string(),
            };
            Error::Usage(format!("unknown remote {name:?} in {url:?}: add [remotes.{name}] to laminar.toml; {source}"))
        })?;
        match remote.kind.as_str() {
            "s3" => {
                let (bucket, prefix) = split_bucket(url, rest)?;
                let cfg = s3_from_remote(name, remote, bucket)?;
                Ok(Location::new(Arc::new(S3Backend::new(cfg)), prefix, url.to_string()))
            }
            "file" => {
                let root = remote.root.clone().ok_or_else(|| {
                    Error::Usage(format!("remote {name:?} has type = \"file\" but no root: add root = \"/abs/path\""))
                })?;
                if !root.is_absolute() {
                    return Err(Error::Usage(format!(
                        "remote {name:?}: root {} must be an absolute path",
                        root.display()
                    )));
                }
                Ok(Location::new(Arc::new(FileBackend::new(root)), rest, url.to_string()))
            }
            other => Err(Error::Usage(format!(
                "remote {name:?} has unknown type {other:?}: supported types are \"s3\" and \"file\""
            ))),
        }
    }
}

fn split_bucket<'a>(url: &str, rest: &'a str) -> Result<(&'a str, &'a str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Usage(format!("{url:?} names no bucket: write REMOTE:bucket/prefix or s3://bucket/prefix")));
    }
    let valid = bucket.len() >= 3
        && bucket.len() <= 63
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_');
    if !valid {
        return Err(Error::Usage(format!(
            "{bucket:?} in {url:?} is not a valid bucket name: 3-63 characters of a-z, 0-9, '.', '-'"
        )));
    }
    Ok((bucket, prefix))
}

fn secret(
    remote: &str,
    field: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Option<String>> {
    if let Some(v) = value {
        return Ok(Some(v.clone()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!("remote {remote:?}: cannot read {field}_file {}: {e}", path.display()))
        })?;
        return Ok(Some(text.trim().to_string()));
    }
    if let Some(var) = env {
        let v = std::env::var(var)
            .map_err(|_| Error::Usage(format!("remote {remote:?}: {field}_env names ${var}, which is not set")))?;
        return Ok(Some(v));
    }
    Ok(None)
}

fn s3_from_remote(name: &str, r: &RemoteConfig, bucket: &str) -> Result<S3Config> {
    let region = r.region.clone().unwrap_or_else(|| "us-east-1".to_string());
    let endpoint_url = r.endpoint.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint = Endpoint::parse(&endpoint_url).map_err(|e| Error::Usage(format!("remote {name:?}: {e}")))?;
    let missing = |field: &str| {
        Error::Usage(format!(
            "remote {name:?} has no {field}: set {field}, {field}_file or {field}_env in laminar.toml"
        ))
    };
    let access_key_id = secret(name, "access_key_id", &r.access_key_id, &r.access_key_id_file, &r.access_key_id_env)?
        .ok_or_else(|| missing("access_key_id"))?;
    let secret_access_key =
        secret(name, "secret_access_key", &r.secret_access_key, &r.secret_access_key_file, &r.secret_access_key_env)?
            .ok_or_else(|| missing("secret_access_key"))?;
    let session_token = secret(name, "session_token", &r.session_token, &r.session_token_file, &r.session_token_env)?;
    Ok(S3Config {
        remote: name.to_string(),
        path_style: r.path_style.unwrap_or(r.endpoint.is_some()),
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        session_token,
        bucket: bucket.to_string(),
    })
}

fn s3_from_env(bucket: &str) -> Result<S3Config> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".to_string());
    let custom = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
    let endpoint_url = custom.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint = Endpoint::parse(&endpoint_url).map_err(|e| Error::Usage(format!("AWS_ENDPOINT_URL: {e}")))?;
    let missing = |k: &str| {
        Error::Usage(format!(
            "s3:// URLs use the AWS environment, and {k} is not set: export it, or use a remote from laminar.toml"
        ))
    };
    Ok(S3Config {
        remote: "s3".to_string(),
        endpoint,
        region,
        access_key_id: var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?,
        secret_access_key: var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?,
        session_token: var("AWS_SESSION_TOKEN"),
        bucket: bucket.to_string(),
        path_style: custom.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn remotes_resolve() {
        let c = config(
            r#"
            [remotes.src]
            type = "s3"
            endpoint = "http://127.0.0.1:9000"
            access_key_id = "AK"
            secret_access_key = "SECRET"
            [remotes.disk]
            type = "file"
            root = "/data"
            "#,
        );
        let loc = c.location("src:bucket/a/b").unwrap();
        assert_eq!(loc.prefix, "a/b/");
        assert_eq!(c.location("src:bucket/a/b/").unwrap().prefix, "a/b/");
        assert_eq!(c.location("src:bucket").unwrap().prefix, "");
        assert_eq!(c.location("disk:x").unwrap().prefix, "x/");
        assert_eq!(c.location("file:///tmp/x").unwrap().prefix, "");
    }

    #[test]
    fn bad_urls_say_what_to_do() {
        let c = config("[remotes.src]\ntype = \"s3\"\nendpoint = \"http://h:1\"\n");
        let err = |u: &str| c.location(u).err().expect(u).to_string();
        assert!(err("nope:bucket").contains("unknown remote \"nope\""));
        assert!(err("ftp://x/y").contains("unknown scheme"));
        assert!(err("/tmp/x").contains("file:///tmp/x"));
        assert!(err("file://tmp/x").contains("three slashes"));
        assert!(err("src:bucket").contains("has no access_key_id"));
        assert!(err("src:/x").contains("names no bucket"));
        assert!(err("src:Bad_Bucket!").contains("not a valid bucket"));
        let c2 = config("[remotes.r]\ntype = \"gopher\"\n");
        assert!(c2.location("r:bkt").err().unwrap().to_string().contains("unknown type"));
        assert!(toml::from_str::<Config>("[remotes.r]\ntype = \"s3\"\nendpiont = \"x\"\n").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let c = config(
            "[remotes.src]\ntype = \"s3\"\nendpoint = \"http://h:1\"\naccess_key_id = \"AK\"\nsecret_access_key = \"TOPSECRET\"\n",
        );
        let cfg = s3_from_remote("src", &c.remotes["src"], "bkt").unwrap();
        assert!(!format!("{cfg:?}").contains("TOPSECRET"));
    }
}
