//! The backends, by the `type` name a remote gives in `laminar.toml`.
//!
//! Each backend module declares one [`BackendType`]: its name, and a factory that
//! reads the remote's own table into the backend's config struct (serde, unknown keys
//! refused with the list of valid ones) and opens it. Finding and reading the config
//! file, and parsing URLs, is the caller's (the `laminar` binary's); the engine takes a
//! resolved remote. Adding a backend is adding its module and one line to [`TYPES`].

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::Backend;
use crate::error::{Error, Result};

/// A remote resolved to a backend: the store, and the key prefix the URL named in it.
pub struct Opened {
    /// The store.
    pub backend: Arc<dyn Backend>,
    /// The key prefix (or object key) below the store's root, as the URL gave it.
    pub path: String,
}

/// One kind of store.
pub struct BackendType {
    /// The `type` of a `[remotes.NAME]` table.
    pub name: &'static str,
    /// What the part of a URL after `NAME:` is, for messages (`bucket/prefix`).
    pub url_form: &'static str,
    /// Opens remote `remote` from its table (without `type`) and the part of the URL
    /// after `NAME:`. Fails with a one-line usage error naming the remote and the fix.
    pub open: fn(remote: &str, table: toml::Table, path: &str) -> Result<Opened>,
}

/// Every backend a remote can name.
pub const TYPES: &[BackendType] = &[
    super::s3::TYPE,
    super::file::TYPE,
    super::mem::TYPE,
    super::rclone::TYPE,
    super::dropbox::TYPE,
    super::drive::TYPE,
];

/// The backend type called `name`.
pub fn find(name: &str) -> Option<&'static BackendType> {
    TYPES.iter().find(|t| t.name == name)
}

/// Names of every type, for messages.
pub fn names() -> String {
    TYPES.iter().map(|t| format!("{:?}", t.name)).collect::<Vec<_>>().join(", ")
}

/// Opens remote `remote` from its whole table (`type` included) and a URL path.
pub fn open(remote: &str, mut table: toml::Table, path: &str) -> Result<Opened> {
    let kind = match table.remove("type") {
        Some(toml::Value::String(kind)) => kind,
        Some(_) => return Err(Error::Usage(format!("remote {remote:?}: type must be a string, one of {}", names()))),
        None => return Err(Error::Usage(format!("remote {remote:?} has no type: add type = one of {}", names()))),
    };
    let backend = find(&kind).ok_or_else(|| {
        Error::Usage(format!("remote {remote:?} has unknown type {kind:?}: supported types are {}", names()))
    })?;
    (backend.open)(remote, table, path)
}

/// Reads a remote's table into a backend's config struct; an unknown or mistyped
/// key is a usage error naming the remote and listing the valid keys.
pub fn parse<T: DeserializeOwned>(remote: &str, kind: &str, table: toml::Table) -> Result<T> {
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
        Error::Usage(format!("remote {remote:?} (type {kind:?}): {}", without_value(e.message().trim())))
    })
}

/// Serde's message about a value of the wrong type (`invalid type: string "...",
/// expected a boolean`) without the value it quotes, which may be a secret written as a
/// number or under the wrong key: `invalid type: string, expected a boolean`.
fn without_value(message: &str) -> String {
    for lead in ["invalid type: ", "invalid value: "] {
        // The last ", expected ": the value quoted before it may hold one.
        if let Some((found, expected)) = message.strip_prefix(lead).and_then(|m| m.rsplit_once(", expected ")) {
            let kind = found.split(['`', '"']).next().unwrap_or("").trim();
            return format!("{lead}{kind}, expected {expected}");
        }
    }
    message.to_string()
}

/// A secret given inline, in a file, or in an environment variable (`NAME`,
/// `NAME_file`, `NAME_env`): the value, or None if none of the three is set. Errors
/// name the field and never the value.
pub fn secret(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn unknown_types_and_keys_say_what_is_valid() {
        let err = |t: &str, p: &str| open("r", table(t), p).err().expect(t).to_string();
        assert!(err("type = \"gopher\"", "x").contains("supported types are \"s3\", \"file\""));
        assert!(err("endpoint = \"x\"", "x").contains("has no type"));
        let e = err("type = \"s3\"\nendpiont = \"x\"", "bkt");
        assert!(e.contains("endpiont") && e.contains("endpoint"), "{e}");
        let e = err("type = \"file\"\nroot = \"/tmp\"\nrot = 1", "x");
        assert!(e.contains("rot"), "{e}");
    }

    #[test]
    fn values_of_the_wrong_type_are_not_quoted() {
        let err = |t: &str| open("r", table(t), "bkt").err().expect(t).to_string();
        let e = err("type = \"s3\"\nendpoint = \"http://h:1\"\nsecret_access_key = 735711131719232931");
        assert!(e.contains("invalid type: integer, expected a string") && !e.contains("7357111317"), "{e}");
        let e = err("type = \"s3\"\nendpoint = \"http://h:1\"\npath_style = \"SECRET, expected x\"");
        assert!(e.contains("invalid type: string, expected a boolean") && !e.contains("SECRET"), "{e}");
        assert_eq!(without_value("missing field `remote`"), "missing field `remote`");
    }

    #[test]
    fn secrets_come_from_three_places() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(secret("r", "k", &Some("v".into()), &None, &None).unwrap().as_deref(), Some("v"));
        assert_eq!(secret("r", "k", &None, &Some(file), &None).unwrap().as_deref(), Some("from-file"));
        let e = secret("r", "k", &None, &None, &Some("LAMINAR_SURELY_UNSET_VAR".into())).unwrap_err();
        assert!(e.to_string().contains("k_env names $LAMINAR_SURELY_UNSET_VAR"));
        assert_eq!(secret("r", "k", &None, &None, &None).unwrap(), None);
    }
}
