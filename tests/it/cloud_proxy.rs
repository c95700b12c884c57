//! rclone's real `dropbox` and `drive` backends, unchanged, against Laminar's Dropbox and
//! Drive emulators, reached through `laminar_bench::cloud::proxy::CloudProxy` as through a
//! corporate TLS-terminating proxy: rclone believes it talks to `api.dropboxapi.com`,
//! `content.dropboxapi.com`, `www.googleapis.com` and `oauth2.googleapis.com`.
//!
//! Both emulators run in this process on loopback; rclone runs as a user runs it, with
//! the configuration `rclone_cloud_env` writes (an expired OAuth token, so its first call
//! refreshes at the provider's token host, through the proxy). After every copy the bytes
//! at the destination are read from the emulator's own store, never through rclone, and
//! compared with what was seeded. The proxy refuses every host it does not route, and
//! the test checks rclone asked for none.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use laminar_bench::cloud::proxy::CloudProxy;
use laminar_bench::cloud::rclone::{rclone_cloud_env, CloudRemote};
use laminar_bench::cloud::{drive_routes, dropbox_routes};
use laminar_bench::servers::{find_tool, require_servers};
use laminar_emulators::drive::{DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{content_hash_hex, DropboxEmulator, DropboxOptions};
use md5::Digest as _;

const MIB: usize = 1 << 20;
/// rclone's chunk sizes here: the large file is over them, so it goes up in an upload
/// session (Dropbox) or a resumable upload in chunks (Drive).
const CHUNK_FLAGS: [&str; 4] = ["--dropbox-chunk-size", "8M", "--drive-chunk-size", "8M"];

/// Files by path below a folder.
type Tree = BTreeMap<String, Vec<u8>>;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut out);
    out
}

/// Small files with names that need escaping somewhere (accents, CJK, emoji, URL and
/// shell specials, spaces), an empty file, nesting, and one file of 20 MiB + 3 bytes,
/// over the 8 MiB chunks and not a multiple of them.
fn tree() -> Tree {
    let mut t = Tree::new();
    t.insert("Été à Paris/IMG 0001.jpg".into(), pattern(180_001, 1));
    t.insert("Docs/日本語 ノート.txt".into(), pattern(99, 2));
    t.insert("Notes/party 🎉 plan.txt".into(), "🎉 at eight".as_bytes().to_vec());
    t.insert("Notes/100% #1 & more; a+b=c?.txt".into(), pattern(777, 3));
    t.insert("empty.txt".into(), Vec::new());
    t.insert("a/b/c/deep.bin".into(), pattern(3_073, 4));
    t.insert("Video/clip.mov".into(), pattern(20 * MIB + 3, 5));
    t
}

/// Compares names and sizes first (a readable failure), then bytes.
fn assert_same(got: &Tree, want: &Tree, what: &str) {
    let sizes = |t: &Tree| t.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>();
    assert_eq!(sizes(got), sizes(want), "{what}: names and sizes");
    for (rel, bytes) in want {
        assert!(got[rel] == *bytes, "{what}: the bytes of {rel} differ");
    }
}

/// Both emulators, the proxy routing their hosts, and rclone's environment naming them
/// `dbx` and `gd`.
struct Clouds {
    dbx: DropboxEmulator,
    gd: DriveEmulator,
    proxy: CloudProxy,
    env: Vec<(String, String)>,
    rclone: PathBuf,
    _dir: tempfile::TempDir,
}

fn clouds() -> Option<Clouds> {
    let Some(rclone) = find_tool("rclone") else {
        assert!(!require_servers(), "rclone is required (LAMINAR_REQUIRE_SERVERS is set): run tests/run.sh");
        eprintln!("skipping: rclone not installed (tests/run.sh installs it)");
        return None;
    };
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let (dbx_end, gd_end) = (dbx.endpoints(), gd.endpoints());
    let mut routes = dropbox_routes(&dbx_end).expect("Dropbox routes");
    routes.extend(drive_routes(&gd_end).expect("Drive routes"));
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = CloudProxy::start(dir.path(), routes).expect("start the proxy");
    let remotes = [("dbx", CloudRemote::Dropbox(&dbx_end)), ("gd", CloudRemote::Drive(&gd_end))];
    let env = rclone_cloud_env(dir.path(), &proxy, &remotes).expect("rclone config");
    Some(Clouds { dbx, gd, proxy, env, rclone, _dir: dir })
}

impl Clouds {
    /// Runs rclone with `args` (one try: `--retries 1`, so a failure is not retried away).
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.rclone)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .args(["--retries", "1"])
            .args(args)
            .output()
            .expect("run rclone");
        out
    }

    /// As [`Clouds::run`]; must succeed. Returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "rclone {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    fn seed_dropbox(&self, folder: &str, tree: &Tree) {
        for (rel, bytes) in tree {
            self.dbx.insert(&format!("/{folder}/{rel}"), bytes.clone()).expect("seed Dropbox");
        }
    }

    fn seed_drive(&self, folder: &str, tree: &Tree) {
        for (rel, bytes) in tree {
            self.gd.insert(&format!("{folder}/{rel}"), bytes.clone()).expect("seed Drive");
        }
    }

    /// Dropbox's files under `/folder`, from the emulator's store.
    fn in_dropbox(&self, folder: &str) -> Tree {
        let prefix = format!("/{folder}/");
        self.dbx.files().into_iter().filter_map(|(p, b)| p.strip_prefix(&prefix).map(|r| (r.to_string(), b))).collect()
    }

    /// Drive's files under `folder`, from the emulator's store; a path held twice fails.
    fn in_drive(&self, folder: &str) -> Tree {
        let prefix = format!("{folder}/");
        let mut out = Tree::new();
        for e in self.gd.tree() {
            let Some(rel) = e.path.strip_prefix(&prefix) else { continue };
            if e.trashed || e.mime_type == "application/vnd.google-apps.folder" {
                continue;
            }
            let bytes = self.gd.read_id(&e.id).expect("a binary file's bytes");
            assert!(out.insert(rel.to_string(), bytes).is_none(), "{rel} is in Drive twice");
        }
        out
    }

    /// `rclone lsjson -R` of `remote`: files by path, with sizes.
    fn listing(&self, remote: &str) -> BTreeMap<String, u64> {
        let text = self.ok(&["lsjson", "-R", "--files-only", remote]);
        let items: Vec<serde_json::Value> = serde_json::from_str(&text).expect("lsjson JSON");
        items
            .iter()
            .map(|i| (i["Path"].as_str().expect("Path").to_string(), i["Size"].as_u64().expect("Size")))
            .collect()
    }

    /// Every tunnel went to a routed host and nothing was refused: rclone asked the proxy
    /// for nothing else.
    fn assert_only_routed_hosts(&self) {
        let stats = self.proxy.stats();
        assert_eq!(stats.refused, 0, "rclone asked for an unrouted host: {:?}", stats.refused_targets);
        assert_eq!((stats.tls_failures, stats.upstream_failures), (0, 0), "{stats:?}");
        for host in stats.tunnels_by_host.keys() {
            assert!(self.proxy.hosts().contains(host), "{host} was tunnelled but is not routed");
        }
    }
}

fn sizes(tree: &Tree) -> BTreeMap<String, u64> {
    tree.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect()
}

/// One request head sent raw to the proxy; returns the status line and the body.
fn ask_proxy(proxy: &CloudProxy, head: &str) -> (String, String) {
    let mut s = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    s.write_all(head.as_bytes()).expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("the proxy answers and closes");
    let (status, rest) = answer.split_once("\r\n").expect("a status line");
    let body = rest.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status.to_string(), body)
}

#[test]
fn a_connect_to_an_unrouted_host_is_refused() {
    let Some(c) = clouds() else { return };
    let (status, body) = ask_proxy(&c.proxy, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(body.contains("example.com:443") && body.contains("api.dropboxapi.com"), "{body}");
    // A routed host on another port is not routed either.
    let (status, _) = ask_proxy(&c.proxy, "CONNECT api.dropboxapi.com:80 HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    // Nor is plain HTTP forwarding.
    let (status, _) = ask_proxy(&c.proxy, "GET http://www.googleapis.com/drive/v3/about HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    // rclone told to fetch from elsewhere gets no further than the proxy.
    let out = c.run(&["lsf", ":http,url='https://example.com/':"]);
    assert!(!out.status.success(), "rclone reached example.com: {}", String::from_utf8_lossy(&out.stdout));
    // rclone checks the certificates: without the proxy's CA it refuses them.
    let out = Command::new(&c.rclone)
        .envs(c.env.iter().filter(|(k, _)| k != "RCLONE_CA_CERT").map(|(k, v)| (k, v)))
        .args(["lsf", "dbx:", "--retries", "1", "--low-level-retries", "1"])
        .output()
        .expect("run rclone");
    assert!(!out.status.success(), "rclone trusted a certificate it had no CA for");
    let stats = c.proxy.stats();
    assert!(stats.tls_failures >= 1 && stats.last_tls_error.is_some(), "{stats:?}");
    assert!(!stats.tunnels_by_host.contains_key("api.dropboxapi.com"), "{stats:?}");
    assert_eq!(
        stats.refused_targets,
        ["example.com:443", "api.dropboxapi.com:80", "GET"].map(String::from).to_vec(),
        "{stats:?}"
    );
    assert!(stats.refused >= 4, "{stats:?}");
    assert!(stats.tunnels_by_host.is_empty() && stats.bytes_up == 0, "nothing was tunnelled: {stats:?}");
    assert_eq!(c.dbx.stats().requests.values().sum::<u64>(), 0, "nothing reached the emulator");
}

#[test]
fn rclone_copies_dropbox_to_drive_and_back_through_the_proxy() {
    let Some(c) = clouds() else { return };
    let want = tree();
    c.seed_dropbox("seed", &want);
    assert_eq!(c.listing("dbx:seed"), sizes(&want), "rclone lists what was seeded in Dropbox");

    // Dropbox -> Drive; the large file goes up as a resumable upload in 8 MiB chunks.
    let mut args = vec!["copy", "dbx:seed", "gd:from-dropbox"];
    args.extend(CHUNK_FLAGS);
    c.ok(&args);
    assert_same(&c.in_drive("from-dropbox"), &want, "Dropbox -> Drive");
    let large = (20 * MIB + 3) as u64;
    let sessions = c.gd.stats().sessions;
    assert!(
        sessions.iter().any(|s| s.complete && s.total_bytes == Some(large) && s.committed_bytes == large),
        "the large file went up as a resumable upload: {sessions:?}"
    );

    // Drive -> Dropbox; the large file goes up in an upload session.
    let mut args = vec!["copy", "gd:from-dropbox", "dbx:from-drive"];
    args.extend(CHUNK_FLAGS);
    c.ok(&args);
    assert_same(&c.in_dropbox("from-drive"), &want, "Drive -> Dropbox");
    let requests = c.dbx.stats().requests;
    assert!(requests.get("files/upload_session/append_v2").copied().unwrap_or(0) >= 2, "{requests:?}");

    // rclone's own checks agree, by hash and by download.
    c.ok(&["check", "dbx:seed", "gd:from-dropbox"]);
    c.ok(&["check", "--download", "gd:from-dropbox", "dbx:from-drive"]);
    // Each provider's hash, as rclone reads it, is the hash of the seeded bytes.
    let md5s = c.ok(&["md5sum", "gd:from-dropbox"]);
    let hashes = c.ok(&["hashsum", "dropbox", "dbx:from-drive"]);
    for (rel, bytes) in &want {
        let md5 = hex::encode(md5::Md5::digest(bytes));
        assert!(md5s.lines().any(|l| l == format!("{md5}  {rel}")), "md5 of {rel} ({md5}) in:\n{md5s}");
        let dbx_hash = content_hash_hex(bytes);
        assert!(hashes.lines().any(|l| l == format!("{dbx_hash}  {rel}")), "hash of {rel} in:\n{hashes}");
    }

    // Each side's token was refreshed at its token host, through the proxy, and nothing
    // else was asked for.
    let tunnels = c.proxy.stats().tunnels_by_host;
    for host in ["api.dropboxapi.com", "content.dropboxapi.com", "www.googleapis.com", "oauth2.googleapis.com"] {
        assert!(tunnels.contains_key(host), "no tunnel to {host}: {tunnels:?}");
    }
    assert!(c.gd.stats().refresh_grants >= 1 && c.dbx.stats().requests.contains_key("oauth2/token"));
    c.assert_only_routed_hosts();
}

#[test]
fn dropbox_batch_modes_commit_every_file() {
    let Some(c) = clouds() else { return };
    let want = tree();
    c.seed_drive("seed", &want);
    for mode in ["sync", "async", "off"] {
        let before = c.dbx.stats().requests;
        let dst = format!("dbx:batch-{mode}");
        let mut args = vec!["copy", "gd:seed", &dst, "--dropbox-batch-mode", mode];
        args.extend(CHUNK_FLAGS);
        c.ok(&args);
        assert_same(&c.in_dropbox(&format!("batch-{mode}")), &want, &format!("--dropbox-batch-mode {mode}"));
        let after = c.dbx.stats().requests;
        let more = |route: &str| after.get(route).unwrap_or(&0) - before.get(route).unwrap_or(&0);
        if mode == "off" {
            // Small files go up one call each; the large one through a session's finish.
            assert_eq!(more("files/upload_session/finish_batch_v2"), 0, "{after:?}");
            assert!(more("files/upload") >= 1 && more("files/upload_session/finish") == 1, "{after:?}");
        } else {
            // Every file is committed in batches.
            assert!(more("files/upload_session/finish_batch_v2") >= 1, "{after:?}");
            assert_eq!(more("files/upload") + more("files/upload_session/finish"), 0, "{after:?}");
        }
    }
    c.assert_only_routed_hosts();
}
