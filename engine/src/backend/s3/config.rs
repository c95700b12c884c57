//! An S3 remote's configuration: the `[remotes.NAME]` table of `type = "s3"`, the
//! bucket named by the URL, and the AWS environment for `s3://` URLs.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{S3Backend, S3Config};
use crate::backend::registry::{self, BackendType, Opened};
use crate::error::{Error, Result};
use crate::http::Endpoint;

/// The registry's entry for S3.
pub const TYPE: BackendType = BackendType { name: "s3", url_form: "bucket/prefix", open };

/// One `[remotes.NAME]` table of `type = "s3"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3RemoteConfig {
    /// Endpoint URL (default: AWS in the region).
    pub endpoint: Option<String>,
    /// Region (default us-east-1).
    pub region: Option<String>,
    /// Access key id, or `_file` / `_env` to read it from elsewhere.
    pub access_key_id: Option<String>,
    /// A file holding the access key id.
    pub access_key_id_file: Option<PathBuf>,
    /// An environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// Secret access key, or `_file` / `_env`.
    pub secret_access_key: Option<String>,
    /// A file holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// An environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// A file holding the session token.
    pub session_token_file: Option<PathBuf>,
    /// An environment variable holding the session token.
    pub session_token_env: Option<String>,
    /// Path-style addressing (default true for custom endpoints, false for AWS).
    pub path_style: Option<bool>,
}

fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    let config: S3RemoteConfig = registry::parse(remote, "s3", table)?;
    let url = format!("{remote}:{path}");
    let (bucket, prefix) = split_bucket(&url, path)?;
    let cfg = config.resolve(remote, bucket)?;
    Ok(Opened { backend: Arc::new(S3Backend::new(cfg)), path: prefix.to_string() })
}

/// The account of S3 remote `remote` (its table as in laminar.toml, `type` removed
/// or not), for what is above its buckets: a config whose bucket is empty.
pub fn account(remote: &str, mut table: toml::Table) -> Result<S3Config> {
    table.remove("type");
    let config: S3RemoteConfig = registry::parse(remote, "s3", table)?;
    config.resolve(remote, "")
}

impl S3RemoteConfig {
    /// The endpoint and credentials for `bucket`, secrets read from where they are.
    pub fn resolve(&self, name: &str, bucket: &str) -> Result<S3Config> {
        let r = self;
        let region = r.region.clone().unwrap_or_else(|| "us-east-1".to_string());
        // `endpoint = "aws"` (or none) is AWS S3 in the remote's region.
        let custom = r.endpoint.clone().filter(|e| !e.eq_ignore_ascii_case("aws"));
        let endpoint_url = custom.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = Endpoint::parse(&endpoint_url).map_err(|e| Error::Usage(format!("remote {name:?}: {e}")))?;
        let missing = |field: &str| {
            Error::Usage(format!(
                "remote {name:?} has no {field}: set {field}, {field}_file or {field}_env in laminar.toml"
            ))
        };
        let secret = registry::secret;
        let access_key_id =
            secret(name, "access_key_id", &r.access_key_id, &r.access_key_id_file, &r.access_key_id_env)?
                .ok_or_else(|| missing("access_key_id"))?;
        let secret_access_key = secret(
            name,
            "secret_access_key",
            &r.secret_access_key,
            &r.secret_access_key_file,
            &r.secret_access_key_env,
        )?
        .ok_or_else(|| missing("secret_access_key"))?;
        let session_token =
            secret(name, "session_token", &r.session_token, &r.session_token_file, &r.session_token_env)?;
        Ok(S3Config {
            remote: name.to_string(),
            path_style: r.path_style.unwrap_or(custom.is_some()),
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            bucket: bucket.to_string(),
        })
    }
}

/// Splits `bucket/prefix` (the part of `url` after its scheme or remote name) and
/// checks the bucket's name.
pub fn split_bucket<'a>(url: &str, rest: &'a str) -> Result<(&'a str, &'a str)> {
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

/// The bucket of an `s3://` URL with the standard AWS environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`).
pub fn from_env(bucket: &str) -> Result<S3Config> {
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

    #[test]
    fn secrets_never_print() {
        let table: toml::Table =
            toml::from_str("endpoint = \"http://h:1\"\naccess_key_id = \"AK\"\nsecret_access_key = \"TOPSECRET\"\n")
                .unwrap();
        let config: S3RemoteConfig = registry::parse("src", "s3", table).unwrap();
        let cfg = config.resolve("src", "bkt").unwrap();
        assert!(!format!("{cfg:?}").contains("TOPSECRET"));
    }

    #[test]
    fn buckets_are_checked() {
        assert_eq!(split_bucket("u", "bkt/a/b").unwrap(), ("bkt", "a/b"));
        assert!(split_bucket("u", "/x").unwrap_err().to_string().contains("names no bucket"));
        assert!(split_bucket("u", "Bad_Bucket!").unwrap_err().to_string().contains("not a valid bucket"));
    }
}
