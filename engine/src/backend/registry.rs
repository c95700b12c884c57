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

/// Opens remote `remote` from its whole table (`type` included) and a URL path. A
/// usage error is one line, whatever the table holds: see [`escape_controls`].
pub fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    open_table(remote, table, path).map_err(|e| match e {
        Error::Usage(said) => Error::Usage(escape_controls(&said)),
        e => e,
    })
}

fn open_table(remote: &str, mut table: toml::Table, path: &str) -> Result<Opened> {
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
        let said = escape_controls(&without_value(e.message().trim()));
        Error::Usage(format!("remote {remote:?} (type {kind:?}): {said}"))
    })
}

/// `text` with every control character (a newline, an escape) and bidi override
/// escaped the way `{:?}` writes it (`\n`, `\u{1b}`): what the operator wrote (an
/// unknown key, a path) is shown in a config error as written, and the error stays
/// one line, which no text after a newline could pass for.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
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
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("remote {remote:?}: cannot read {field}_file {path:?}: {e}")))?;
        return Ok(Some(text.trim().to_string()));
    }
    if let Some(var) = env {
        let v = std::env::var(var)
            .map_err(|_| Error::Usage(format!("remote {remote:?}: {field}_env names ${var}, which is not set")))?;
        return Ok(Some(v));
    }
    Ok(None)
}

/// `answer` (what a token endpoint said, to be quoted in an error) without the secrets
/// of `form`, the `application/x-www-form-urlencoded` request it answered, should it
/// echo them: every value but `grant_type`'s and `client_id`'s, as sent and decoded,
/// becomes `<redacted>`.
pub fn without_sent(answer: &[u8], form: &str) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(answer).into_owned();
    for (key, value) in form.split('&').filter_map(|pair| pair.split_once('=')) {
        if key == "grant_type" || key == "client_id" || value.is_empty() {
            continue;
        }
        let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
        for sent in [value, decoded.as_str()] {
            text = text.replace(sent, "<redacted>");
        }
    }
    text.into_bytes()
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
    fn what_was_sent_is_not_quoted_back() {
        let form = "grant_type=refresh_token&client_id=app&refresh_token=R%2DT0K&client_secret=S3CR";
        let said = br#"{"error_description": "bad R-T0K or R%2DT0K or S3CR for app (refresh_token)"}"#;
        let shown = String::from_utf8(without_sent(said, form)).unwrap();
        assert_eq!(
            shown,
            r#"{"error_description": "bad <redacted> or <redacted> or <redacted> for app (refresh_token)"}"#
        );
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

#[cfg(test)]
mod proptests {
    //! Remote tables as an operator might write them, mistakes included: every
    //! backend's table reader and `open` give a remote or an error, never a panic, and
    //! every error is one line. `mem` and `rclone` tables are only read, not opened
    //! (opening names a process-wide store, or starts `rclone serve s3`).

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0x7e61),
            ..ProptestConfig::default()
        }
    }

    const KEYS: &[&str] = &[
        "endpoint",
        "region",
        "access_key_id",
        "access_key_id_file",
        "access_key_id_env",
        "secret_access_key",
        "secret_access_key_file",
        "secret_access_key_env",
        "session_token",
        "session_token_env",
        "path_style",
        "root",
        "copy_links",
        "store",
        "remote",
        "binary",
        "serve_args",
        "token",
        "token_file",
        "token_env",
        "refresh_token",
        "refresh_token_env",
        "app_key",
        "app_secret",
        "api_url",
        "content_url",
        "token_url",
        "batch_commits",
        "client_id",
        "client_secret",
        "client_secret_env",
        "service_account_file",
        "subject",
        "root_folder_id",
        "shared_drive_id",
        "export",
        "follow_shortcuts",
        "type",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("http://127.0.0.1:9000".to_string()),
            Just("https://h:99999".to_string()),
            Just("http://h/path".to_string()),
            Just("aws".to_string()),
            Just("ftp://x".to_string()),
            Just("/tmp".to_string()),
            Just("relative/dir".to_string()),
            Just("docx,xlsx,pptx".to_string()),
            Just("none".to_string()),
            Just("/nonexistent/laminar-proptest/secret".to_string()),
            Just("LAMINAR_PROPTEST_SURELY_UNSET".to_string()),
            Just(String::new()),
            "[ -~]{0,20}",
            "\\PC{0,12}",
            "[a-z/\n\r\u{1b}]{1,12}",
        ]
    }

    fn value() -> impl Strategy<Value = toml::Value> {
        let leaf = prop_oneof![
            4 => text().prop_map(toml::Value::String),
            1 => any::<i64>().prop_map(toml::Value::Integer),
            1 => any::<bool>().prop_map(toml::Value::Boolean),
            1 => any::<f64>().prop_map(toml::Value::Float),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                    .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
            ]
        })
    }

    /// A table of mostly known keys, newlines and other control characters in some
    /// keys and values.
    fn table() -> impl Strategy<Value = toml::Table> {
        let key = prop_oneof![4 => prop::sample::select(KEYS).prop_map(str::to_string), 1 => "[ -~\n\r]{1,12}"];
        prop::collection::vec((key, value()), 0..8).prop_map(|kv| kv.into_iter().collect())
    }

    fn kind() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["s3", "file", "dropbox", "drive", "gopher", ""][..])
    }

    fn url_path() -> impl Strategy<Value = String> {
        prop_oneof![Just("bkt/a/b".to_string()), Just(String::new()), Just("/x".to_string()), "\\PC{0,16}"]
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn tables_open_or_say_why_in_one_line(
            mut table in table(),
            kind in kind(),
            typed in any::<bool>(),
            path in url_path(),
        ) {
            if typed {
                table.insert("type".into(), toml::Value::String(kind.into()));
            }
            let kind = table.get("type").and_then(toml::Value::as_str).unwrap_or("").to_string();
            // `mem` opens a process-wide store and `rclone` starts a server: read only.
            let result = match kind.as_str() {
                "mem" => parse::<super::super::mem::MemRemoteConfig>("r", "mem", table).map(drop),
                "rclone" => parse::<super::super::rclone::RcloneRemoteConfig>("r", "rclone", table).map(drop),
                _ => open("r", table, &path).map(drop),
            };
            if let Err(e) = result {
                let said = e.to_string();
                prop_assert!(!said.is_empty());
                prop_assert!(!said.contains(['\n', '\r']), "{}", said);
            }
        }

        #[test]
        fn mem_and_rclone_tables_are_read_or_refused_in_one_line(table in table()) {
            for e in [
                parse::<super::super::mem::MemRemoteConfig>("r", "mem", table.clone()).err(),
                parse::<super::super::rclone::RcloneRemoteConfig>("r", "rclone", table).err(),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(!e.to_string().contains(['\n', '\r']), "{}", e);
            }
        }

        #[test]
        fn wrong_type_messages_never_quote_the_value(secret in "[A-Za-z0-9]{12,30}", which in 0usize..3) {
            let table: toml::Table = match which {
                0 => toml::from_str(&format!("type = \"s3\"\npath_style = \"{secret}\"")).unwrap(),
                1 => toml::from_str(&format!("type = \"dropbox\"\nbatch_commits = \"{secret}\"")).unwrap(),
                _ => toml::from_str(&format!("type = \"drive\"\nfollow_shortcuts = [\"{secret}\"]")).unwrap(),
            };
            let e = open("r", table, "bkt").err().expect("a boolean is wanted").to_string();
            prop_assert!(!e.contains(&secret), "{}", e);
        }
    }

    /// A path or unknown key holding a newline is shown with it escaped (`\n`), so
    /// the error stays one line and no text after the newline passes for a line of
    /// its own in logs: `type = "file"` with `root = "rel\nERROR forged"`, or
    /// `type = "s3"` with `"a\nb" = 1`.
    #[test]
    fn values_with_newlines_stay_on_one_line() {
        let mut split = Vec::new();
        for text in [
            "type = \"file\"\nroot = \"rel\\nERROR forged\"",
            "type = \"s3\"\n\"a\\nb\" = 1",
            "type = \"s3\"\nendpoint = \"http://h:1\"\naccess_key_id_file = \"/nonexistent/a\\nb\"",
            "type = \"drive\"\nservice_account_file = \"/nonexistent/a\\nb\"",
        ] {
            let table: toml::Table = toml::from_str(text).unwrap();
            let e = open("r", table, "bkt").err().expect(text).to_string();
            if e.contains('\n') || !e.contains("\\n") {
                split.push(format!("{text:?} gave {e:?}"));
            }
        }
        assert!(split.is_empty(), "{split:#?}");
        let table: toml::Table = toml::from_str("\"a\\u001b\\u202eb\" = 1").unwrap();
        let e = parse::<super::super::mem::MemRemoteConfig>("r", "mem", table).map(drop).expect_err("an unknown key");
        let e = e.to_string();
        assert!(e.contains(r"a\u{1b}\u{202e}b"), "{e}");
    }
}
