//! `laminar.toml` and URLs: how the operator names the two sides of a relay.
//!
//! The file names remotes, each with its own endpoint and credentials, because the
//! two sides of a relay are usually different clouds:
//!
//! ```toml
//! [remotes.src]
//! type = "s3"
//! endpoint = "http://127.0.0.1:9000"
//! access_key_id = "..."
//! secret_access_key_file = "/run/secrets/src-key"   # or secret_access_key / _env
//! ```
//!
//! A URL is `NAME:path` (a remote; for S3 the path is `bucket/prefix`),
//! `s3://bucket/prefix` (the standard AWS environment variables), or
//! `file:///abs/path`. Each remote's table is read by its backend (the engine's
//! registry), which refuses unknown keys; secrets may come from files or the
//! environment, and never appear in errors or logs.

// Errors are the engine's, cold and one per relay; see the engine crate on their size.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use laminar_engine::backend::file::FileBackend;
use laminar_engine::backend::registry;
use laminar_engine::backend::s3::{self, S3Backend};
use laminar_engine::relay::Location;
use laminar_engine::{Error, Result};

/// A parsed `laminar.toml`.
#[derive(Debug, Default)]
pub struct Config {
    /// Remotes by name: each one's table, `type` included, for its backend to read.
    pub remotes: BTreeMap<String, toml::Table>,
    /// Where it was read from; None when no file was found.
    pub path: Option<PathBuf>,
    /// `file://` URLs follow symbolic links as sources (`--copy-links`; a file remote
    /// says so with its own `copy_links` key).
    pub copy_links: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    remotes: BTreeMap<String, toml::Table>,
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
        let mut config =
            Config::parse(&text).map_err(|e| Error::Usage(format!("config {} is invalid: {e}", path.display())))?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses the text of a config; every remote is checked by its backend now, so a
    /// mistake is reported before any relay starts. An error is one line; a syntax
    /// error says the line and column of the mistake (see `syntax_error`).
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        let file: File = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        for (name, table) in &file.remotes {
            match table.get("type") {
                Some(toml::Value::String(kind)) if registry::find(kind).is_none() => {
                    return Err(format!(
                        "remote {name:?} has unknown type {kind:?}: supported types are {}",
                        registry::names()
                    ))
                }
                Some(toml::Value::String(_)) => {}
                _ => return Err(format!("remote {name:?} has no type: add type = one of {}", registry::names())),
            }
        }
        Ok(Config { remotes: file.remotes, path: None, copy_links: false })
    }

    /// Sets `key` in the table of every remote of type `kind`, over what the file
    /// says: how a command-line flag for one kind of store (`--drive-export`) reaches
    /// its backend, as the same key the file takes and the backend checks.
    pub fn set_for_type(&mut self, kind: &str, key: &str, value: toml::Value) {
        for table in self.remotes.values_mut() {
            if table.get("type").and_then(toml::Value::as_str) == Some(kind) {
                table.insert(key.to_string(), value.clone());
            }
        }
    }

    /// What the operator should know about the remote `url` names before a relay
    /// reaches it: an S3 remote that sets no `endpoint` talks to AWS.
    pub fn note(&self, url: &str) -> Option<String> {
        let (name, _) = url.split_once(':').filter(|(n, _)| !n.is_empty() && !url.contains("://"))?;
        let table = self.remotes.get(name)?;
        let is_s3 = table.get("type").and_then(toml::Value::as_str) == Some("s3");
        if !is_s3 || table.contains_key("endpoint") {
            return None;
        }
        let region = table.get("region").and_then(toml::Value::as_str).unwrap_or("us-east-1");
        Some(format!(
            "remote {name:?} sets no endpoint, so it is AWS S3 (https://s3.{region}.amazonaws.com); write \
             endpoint = \"aws\" to say so, or the URL of your S3 service"
        ))
    }

    /// Turns a URL into a location.
    /// The S3 account `url` names when it is a remote of type s3 (or `s3://`) with
    /// no bucket: what `laminar ls` lists the buckets of. None for any other URL.
    pub fn account(&self, url: &str) -> Result<Option<s3::S3Config>> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return match rest.trim_matches('/').is_empty() {
                true => s3::from_env("").map(Some),
                false => Ok(None),
            };
        }
        let Some((name, rest)) = url.split_once(':') else { return Ok(None) };
        if url.contains("://") || !rest.trim_matches('/').is_empty() {
            return Ok(None);
        }
        match self.remotes.get(name) {
            Some(table) if table.get("type").and_then(toml::Value::as_str) == Some(s3::TYPE.name) => {
                s3::account(name, table.clone()).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub fn location(&self, url: &str) -> Result<Location> {
        if let Some(c) = url.chars().find(|c| c.is_control()) {
            return Err(Error::Usage(format!(
                "{url:?} holds the control character U+{:04X}, which no key or path may hold: remove it",
                c as u32
            )));
        }
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
                    let backend = FileBackend::new(dir.to_path_buf()).copy_links(self.copy_links);
                    return Ok(Location::new(Arc::new(backend), &name, url.to_string()));
                }
            }
            let backend = FileBackend::new(path).copy_links(self.copy_links);
            return Ok(Location::new(Arc::new(backend), "", url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = s3::split_bucket(url, rest)?;
            let cfg = s3::from_env(bucket)?;
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
        let table = self.remotes.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.remotes.keys().map(String::as_str).collect();
            let source = match &self.path {
                Some(p) => format!(
                    "{} defines {}",
                    p.display(),
                    if known.is_empty() { "no remotes".to_string() } else { known.join(", ") }
                ),
                None => "no laminar.toml was found (looked at --config, $LAMINAR_CONFIG, ./laminar.toml, ~/.config/laminar/laminar.toml)".to_string(),
            };
            Error::Usage(format!("unknown remote {name:?} in {url:?}: add [remotes.{name}] to laminar.toml; {source}"))
        })?;
        let opened = registry::open(name, table.clone(), rest)?;
        Ok(Location::new(opened.backend, &opened.path, url.to_string()))
    }
}

/// A TOML error in one line: where it is (`line 3, column 14`, from 1) and the
/// problem, the lines the parser gives joined (`invalid table header, expected `.`,
/// `]``), any control character left escaped (`\u{1b}`). Where the parser names no
/// problem (a key with no value), what it could not read.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    const QUOTED_CHARS_MAX: usize = 40;
    let said: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut problem = String::new();
    for c in said.join(", ").chars() {
        if c.is_control() {
            problem.extend(c.escape_debug());
        } else {
            problem.push(c);
        }
    }
    let Some(mut at) = e.span().map(|s| s.start.min(text.len())) else {
        return if problem.is_empty() { "not valid TOML".to_string() } else { problem };
    };
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let (before, after) = text.split_at(at);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (line, column) = (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1);
    if problem.is_empty() {
        let rest: String = after.lines().next().unwrap_or("").chars().take(QUOTED_CHARS_MAX).collect();
        problem = if !rest.trim().is_empty() {
            format!("TOML cannot read {rest:?}")
        } else if before[line_start..].trim_end().ends_with('=') {
            "a key with no value: write one after `=`".to_string()
        } else {
            "TOML cannot read the end of this line".to_string()
        };
    }
    format!("line {line}, column {column}: {problem}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
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
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(c.location(&format!("file://{}", dir.path().display())).unwrap().prefix, "");
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
        assert!(err("src:bkt/a\u{0}b").contains("control character U+0000"));
        assert!(err("file:///tmp/a\nb").contains("control character U+000A"));
        assert!(Config::parse("[remotes.r]\ntype = \"gopher\"\n").unwrap_err().contains("unknown type"));
        let typo = c_err("[remotes.r]\ntype = \"s3\"\nendpiont = \"x\"\n");
        assert!(typo.contains("endpiont") && typo.contains("expected one of"), "{typo}");
        assert!(Config::parse("[remote.r]\ntype = \"s3\"\n").unwrap_err().contains("remote"));
    }

    #[test]
    fn an_s3_remote_without_an_endpoint_is_named_as_aws() {
        let c = config(
            "[remotes.bare]\ntype = \"s3\"\nregion = \"eu-west-1\"\naccess_key_id = \"AK\"\nsecret_access_key = \"S\"\n\
             [remotes.aws]\ntype = \"s3\"\nendpoint = \"aws\"\naccess_key_id = \"AK\"\nsecret_access_key = \"S\"\n\
             [remotes.mine]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\n",
        );
        let note = c.note("bare:bkt/x").expect("a note");
        assert!(
            note.contains("AWS S3")
                && note.contains("s3.eu-west-1.amazonaws.com")
                && note.contains("endpoint = \"aws\"")
        );
        assert_eq!(c.note("aws:bkt"), None, "said explicitly");
        assert_eq!(c.note("mine:bkt"), None);
        assert_eq!(c.note("file:///tmp/x"), None);
        // `endpoint = "aws"` is AWS, virtual-hosted.
        let loc = c.location("aws:bkt/p").unwrap();
        let ctx = laminar_engine::backend::WorkerCtx::new(laminar_engine::http::HttpClient::default());
        let said = loc.backend.open_source(&ctx).unwrap().describe();
        assert!(said.contains("s3.us-east-1.amazonaws.com"), "{said}");
    }

    #[test]
    fn flags_set_keys_of_one_type() {
        let mut c =
            config("[remotes.g]\ntype = \"drive\"\ntoken = \"t\"\n[remotes.d]\ntype = \"file\"\nroot = \"/x\"\n");
        c.set_for_type("drive", "export", "pdf".into());
        assert_eq!(c.remotes["g"].get("export").and_then(toml::Value::as_str), Some("pdf"));
        assert!(!c.remotes["d"].contains_key("export"));
        c.set_for_type("drive", "export", "docz".into());
        let e = c.location("g:x").err().expect("a bad format").to_string();
        assert!(e.contains("\"docz\""), "{e}");
    }

    fn c_err(text: &str) -> String {
        config(text).location("r:bkt").err().expect("an error").to_string()
    }
}

#[cfg(test)]
mod proptests {
    //! `laminar.toml` as an operator might write it, mistakes included: any text
    //! parses or gives an error of one line, never a panic; what parses names remotes
    //! whose URLs resolve or give one-line errors. Remotes of type `mem` and `rclone`
    //! are not opened (one names a process-wide store, the other starts a server).

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;

    fn proptest_config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0xc0f),
            ..ProptestConfig::default()
        }
    }

    /// Lines of TOML, well- and ill-formed.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("[remotes.src]".to_string()),
            Just("[remotes.\"a b\"]".to_string()),
            Just("[remotes]".to_string()),
            Just("[[remotes]]".to_string()),
            Just("[remote.x]".to_string()),
            Just("[remotes.src".to_string()),
            Just("type = \"s3\"".to_string()),
            Just("type = \"file\"".to_string()),
            Just("type = \"drive\"".to_string()),
            Just("type = \"dropbox\"".to_string()),
            Just("type = \"gopher\"".to_string()),
            Just("type = 3".to_string()),
            Just("endpoint = \"http://127.0.0.1:9000\"".to_string()),
            Just("access_key_id = \"AK\"".to_string()),
            Just("secret_access_key = \"SK\"".to_string()),
            Just("root = \"/tmp\"".to_string()),
            Just("token = \"t\"".to_string()),
            Just("a = ".to_string()),
            Just("= 1".to_string()),
            Just("a = \"unclosed".to_string()),
            Just("a = \"\"\"".to_string()),
            Just("a = \"\\u{110000}\"".to_string()),
            Just("a = \"\\q\"".to_string()),
            Just("a = 1979-05-27T07:32:00Z".to_string()),
            Just("a = { b = 1, c = [1, \"x\"] }".to_string()),
            Just("a.b.c = 1".to_string()),
            Just("a = 1\na = 2".to_string()),
            Just("# comment".to_string()),
            Just("a = 99999999999999999999".to_string()),
            "[a-z_]{1,8} = \"[ -~]{0,12}\"",
            "[ -~]{0,30}",
            "\\PC{0,20}",
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        (prop::collection::vec(line(), 0..14), prop::sample::select(&["\n", "\r\n"][..]))
            .prop_map(|(lines, end)| lines.join(end))
    }

    proptest! {
        #![proptest_config(proptest_config(512))]

        /// Parse errors are checked in `parse_errors_are_one_line` and
        /// `parse_errors_say_what_is_wrong`.
        #[test]
        fn any_text_parses_or_fails_and_remotes_resolve_or_say_why_in_one_line(text in text()) {
            match Config::parse(&text) {
                // What the error says is checked in the tests below.
                Err(_) => {}
                Ok(config) => {
                    for (name, table) in &config.remotes {
                        let kind = table.get("type").and_then(toml::Value::as_str).unwrap_or("");
                        if matches!(kind, "mem" | "rclone") {
                            continue;
                        }
                        for url in [format!("{name}:bkt/p"), format!("{name}:"), format!("{name}:/x")] {
                            let _ = config.note(&url);
                            if let Err(e) = config.location(&url) {
                                let e = e.to_string();
                                prop_assert!(!e.contains('\n'), "{:?} at {:?} gave {:?}", text, url, e);
                            }
                        }
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Config::parse(&String::from_utf8_lossy(&bytes));
        }
    }

    proptest! {
        #![proptest_config(proptest_config(64))]

        /// A syntax error is one line that says where the mistake is: the TOML
        /// parser's two lines for `[remotes.src` (what it found, then `expected ...`)
        /// become "line 1, column 13: invalid table header, expected `.`, `]`"
        /// (control/src/config.rs, `syntax_error`).
        #[test]
        fn parse_errors_are_one_line(text in text()) {
            if let Err(e) = Config::parse(&text) {
                prop_assert!(!e.contains(['\n', '\r']), "{:?} gave {:?}", text, e);
                let toml_error = toml::from_str::<toml::Table>(&text).is_err();
                prop_assert!(!toml_error || e.starts_with("line "), "{:?} gave {:?}", text, e);
            }
        }
    }

    /// Every syntax error says what is wrong, also where the TOML parser's message
    /// is empty (`a = `, a key with no value), and where (control/src/config.rs,
    /// `syntax_error`).
    #[test]
    fn parse_errors_say_what_is_wrong() {
        let mut empty = Vec::new();
        for text in ["a = ", "a =", "[remotes.src]\ntype = ", "= 1", "a = \"\\q\"", "a = 1\na = 2", "[remotes.src"] {
            match Config::parse(text) {
                Err(e) if e.trim().is_empty() => empty.push(text),
                _ => {}
            }
        }
        assert!(empty.is_empty(), "{empty:?}");
        for (text, want) in [
            ("a = ", "line 1, column 5: a key with no value: write one after `=`"),
            ("[remotes.src]\r\ntype = ", "line 2, column 8: a key with no value: write one after `=`"),
            ("[remotes.src", "line 1, column 13: invalid table header, expected `.`, `]`"),
            ("a = 1\na = 2", "line 2, column 1: duplicate key `a` in document root"),
            ("\"\\u001b\" = 1", "line 1, column 1: unknown field `\\u{1b}`, expected `remotes`"),
            ("a = \"é", "line 1, column 7: invalid basic string"),
        ] {
            assert_eq!(Config::parse(text).err().as_deref(), Some(want), "{text:?}");
        }
    }
}
