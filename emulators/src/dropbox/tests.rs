//! The emulator over HTTP, driven by a minimal HTTP/1.1 client: the strict rules as a
//! client meets them (status, body and headers), and the fault switches.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Value};

use super::*;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body was shorter than its Content-Length (the connection was cut).
    truncated: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer; `None` when the
/// server closed without answering.
fn send(url: &str, method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Option<Resp> {
    let addr = url.strip_prefix("http://").expect("http URL");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len())
            .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    // The server may answer (or hang up) before the body is all sent.
    let _ = s.write_all(&req).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    let body = raw[end..].to_vec();
    let want = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok());
    let truncated = want.is_some_and(|n: usize| body.len() < n);
    Some(Resp { status, headers, body, truncated })
}

struct Client {
    emu: DropboxEmulator,
    token: String,
}

impl Client {
    fn new(opts: DropboxOptions) -> Client {
        let emu = DropboxEmulator::start(opts).expect("start");
        let token = emu.access_token();
        Client { emu, token }
    }

    fn auth(&self) -> Vec<u8> {
        format!("Bearer {}", self.token).into_bytes()
    }

    fn rpc(&self, route: &str, arg: Value) -> Resp {
        let auth = self.auth();
        let body = serde_json::to_vec(&arg).unwrap();
        send(
            &self.emu.api_url(),
            "POST",
            &format!("/2/{route}"),
            &[("Authorization", &auth), ("Content-Type", b"application/json")],
            &body,
        )
        .expect("an answer")
    }

    /// A content route with this exact `Dropbox-API-Arg` header.
    fn content_raw(&self, route: &str, arg: &[u8], extra: &[(&str, &[u8])], body: &[u8]) -> Option<Resp> {
        let auth = self.auth();
        let mut headers: Vec<(&str, &[u8])> =
            vec![("Authorization", &auth), ("Dropbox-API-Arg", arg), ("Content-Type", b"application/octet-stream")];
        headers.extend_from_slice(extra);
        send(&self.emu.content_url(), "POST", &format!("/2/{route}"), &headers, body)
    }

    fn content(&self, route: &str, arg: Value, body: &[u8]) -> Resp {
        let arg = wire::ascii_json(&arg);
        self.content_raw(route, arg.as_bytes(), &[], body).expect("an answer")
    }

    fn upload(&self, path: &str, body: &[u8]) -> Value {
        let r = self.content("files/upload", json!({ "path": path }), body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

fn tag(r: &Resp) -> String {
    assert_eq!(r.status, 409, "{}", r.text());
    r.json()["error"][".tag"].as_str().unwrap().to_string()
}

#[test]
fn upload_metadata_and_ranged_download() {
    let c = Client::new(DropboxOptions::default());
    let data: Vec<u8> = (0..(BLOCK_BYTES + 1000)).map(|i| (i % 253) as u8).collect();
    let meta = c.upload("/Dir/File.bin", &data);
    assert_eq!(meta["content_hash"], content_hash_hex(&data));
    assert_eq!(meta["size"], data.len());
    assert_eq!(meta["path_display"], "/Dir/File.bin");
    assert_eq!(meta["path_lower"], "/dir/file.bin");
    assert!(meta.get(".tag").is_none(), "FileMetadata, not the Metadata union");
    let got = c.rpc("files/get_metadata", json!({ "path": "/dir/FILE.BIN" }));
    assert_eq!(got.status, 200);
    assert_eq!(got.json()[".tag"], "file");
    assert_eq!(got.json()["id"], meta["id"]);

    let r =
        c.content_raw("files/download", br#"{"path": "/dir/file.bin"}"#, &[("Range", b"bytes=10-19")], b"").unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..20]);
    assert_eq!(r.header("content-range"), Some(format!("bytes 10-19/{}", data.len()).as_str()));
    let result: Value = serde_json::from_str(r.header("dropbox-api-result").unwrap()).unwrap();
    assert_eq!(result["rev"], meta["rev"]);
    let whole = c.content("files/download", json!({ "path": meta["id"] }), b"");
    assert_eq!((whole.status, whole.body.len()), (200, data.len()));
    assert!(whole.body == data);
    let past = c
        .content_raw("files/download", br#"{"path": "/dir/file.bin"}"#, &[("Range", b"bytes=99999999-")], b"")
        .unwrap();
    assert_eq!(past.status, 416);
    assert_eq!(c.emu.file("/DIR/file.bin").unwrap(), data);
    let folder = c.content("files/download", json!({ "path": "/dir" }), b"");
    assert_eq!(tag(&folder), "path");
    assert_eq!(folder.json()["error"]["path"][".tag"], "not_file");
}

#[test]
fn dropbox_api_arg_is_utf8_json() {
    let c = Client::new(DropboxOptions::default());
    // Latin-1 bytes are not UTF-8: Dropbox cannot read them.
    let r = c.content_raw("files/upload", b"{\"path\": \"/caf\xe9.txt\"}", &[], b"x").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        r.text(),
        "Error in call to API function \"files/upload\": HTTP header \"Dropbox-API-Arg\": could not decode input as JSON"
    );
    // Escaped, as Dropbox asks, or raw UTF-8, as Dropbox's Go SDK sends it, it is the same path.
    let r = c.content_raw("files/upload", br#"{"path": "/caf\u00e9.txt"}"#, &[], b"x").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "caf\u{e9}.txt");
    let raw = "{\"path\": \"/CAF\u{c9}.txt\", \"mode\": \"overwrite\"}";
    let r = c.content_raw("files/upload", raw.as_bytes(), &[], b"x").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path_lower"], "/caf\u{e9}.txt");
    // DEL must be escaped.
    let r = c.content_raw("files/upload", b"{\"path\": \"/a\x7f.txt\"}", &[], b"x").unwrap();
    assert_eq!(r.status, 400);
    // The result header is ASCII, with the same escapes.
    let d = c.content_raw("files/download", br#"{"path": "/CAF\u00c9.txt"}"#, &[], b"").unwrap();
    let result = d.header("dropbox-api-result").unwrap();
    assert!(result.is_ascii() && result.contains("caf\\u00e9.txt"), "{result}");
    // The `arg` URL parameter takes UTF-8, percent-encoded.
    let auth = c.auth();
    let q = format!("/2/files/download?arg={}", server::form_encode("{\"path\": \"/caf\u{e9}.txt\"}"));
    let r = send(&c.emu.content_url(), "GET", &q, &[("Authorization", &auth)], b"").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"x".as_slice()));
    // A pattern failure is a 400 naming the pattern.
    let r = c.content("files/upload", json!({ "path": "relative.txt" }), b"x");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("path: 'relative.txt' did not match pattern"), "{}", r.text());
}

#[test]
fn tokens_expire_and_refresh() {
    let mut c = Client::new(DropboxOptions::default());
    assert_eq!(c.rpc("users/get_current_account", Value::Null).status, 200);
    c.emu.expire_tokens();
    let r = c.rpc("files/list_folder", json!({ "path": "" }));
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], json!({ ".tag": "expired_access_token" }));
    assert!(body["error_summary"].as_str().unwrap().starts_with("expired_access_token/"));
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={}&client_secret={}",
        c.emu.refresh_token(),
        c.emu.app_key(),
        c.emu.app_secret()
    );
    let t = send(
        &c.emu.api_url(),
        "POST",
        "/oauth2/token",
        &[("Content-Type", b"application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .unwrap();
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["token_type"], "bearer");
    assert_eq!(t.json()["expires_in"], 14_400);
    c.token = t.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(c.rpc("files/list_folder", json!({ "path": "" })).status, 200);
    c.token = "sl.not-a-token".into();
    let r = c.rpc("files/list_folder", json!({ "path": "" }));
    assert_eq!((r.status, r.json()["error"][".tag"].as_str()), (401, Some("invalid_access_token")));
    let r = send(
        &c.emu.api_url(),
        "POST",
        "/2/files/list_folder",
        &[("Content-Type", b"application/json")],
        b"{\"path\": \"\"}",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Must provide HTTP header \"Authorization\""), "{}", r.text());
    // Tokens issued with a short lifetime expire by themselves.
    c.emu.set_faults(Faults { token_lifetime_s: 0, ..Faults::default() }).unwrap();
    c.token = c.emu.access_token();
    assert_eq!(c.rpc("files/list_folder", json!({ "path": "" })).status, 401);
    assert_eq!(c.emu.stats().auth_rejected, 3);
}

#[test]
fn list_folder_pages_with_cursors() {
    let c = Client::new(DropboxOptions { seed: 5, ..DropboxOptions::default() });
    for i in 0..25 {
        c.emu.insert(&format!("/Tree/sub{}/f{i}", i % 2), vec![i as u8; i]).unwrap();
    }
    let mut r = c.rpc("files/list_folder", json!({ "path": "/tree", "recursive": true, "limit": 10 })).json();
    let mut seen = Vec::new();
    let mut pages = 1;
    loop {
        for e in r["entries"].as_array().unwrap() {
            seen.push(e["path_display"].as_str().unwrap().to_string());
            if e[".tag"] == "file" {
                assert!(e["content_hash"].is_string() && e["rev"].is_string() && e["client_modified"].is_string());
            }
        }
        if r["has_more"] == false {
            break;
        }
        r = c.rpc("files/list_folder/continue", json!({ "cursor": r["cursor"] })).json();
        pages += 1;
    }
    // 25 files, 2 subfolders and the listed folder itself.
    assert_eq!(seen.len(), 28);
    assert_eq!(pages, 3);
    assert!(seen.contains(&"/Tree".to_string()));
    let root = c.rpc("files/list_folder", json!({ "path": "/" }));
    assert_eq!(root.status, 400);
    assert!(
        root.text().contains("Specify the root folder as an empty string rather than as \"/\"."),
        "{}",
        root.text()
    );
    assert_eq!(c.rpc("files/list_folder", json!({ "path": "", "limit": 0 })).status, 400);
    assert_eq!(tag(&c.rpc("files/list_folder", json!({ "path": "/nope" }))), "path");
    let file = c.rpc("files/list_folder", json!({ "path": "/tree/sub0/f0" }));
    assert_eq!(file.json()["error"]["path"][".tag"], "not_folder");
    let bad = c.rpc("files/list_folder/continue", json!({ "cursor": "AAEmnotacursor" }));
    assert_eq!(bad.status, 400);
}

#[test]
fn session_rules_over_http() {
    let c = Client::new(DropboxOptions::default());
    let start = c.content("files/upload_session/start", json!({}), b"hello ");
    let id = start.json()["session_id"].as_str().unwrap().to_string();
    let stale =
        c.content("files/upload_session/append_v2", json!({ "cursor": { "session_id": id, "offset": 0 } }), b"x");
    assert_eq!(stale.json()["error"], json!({ ".tag": "incorrect_offset", "correct_offset": 6 }));
    assert!(stale.json()["error_summary"].as_str().unwrap().starts_with("incorrect_offset/"));
    let ok =
        c.content("files/upload_session/append_v2", json!({ "cursor": { "session_id": id, "offset": 6 } }), b"world");
    assert_eq!((ok.status, ok.text().as_str()), (200, "null"));
    let bad_hash = c.content(
        "files/upload_session/finish",
        json!({ "cursor": { "session_id": id, "offset": 11 }, "commit": { "path": "/s.txt" }, "content_hash": "0".repeat(64) }),
        b"",
    );
    assert_eq!(tag(&bad_hash), "content_hash_mismatch");
    let fin = c.content(
        "files/upload_session/finish",
        json!({
            "cursor": { "session_id": id, "offset": 11 },
            "commit": { "path": "/s.txt", "client_modified": "2020-01-02T03:04:05Z" },
            "content_hash": content_hash_hex(b""),
        }),
        b"",
    );
    assert_eq!(fin.status, 200, "{}", fin.text());
    assert_eq!(fin.json()["client_modified"], "2020-01-02T03:04:05Z");
    assert_eq!(c.emu.file("/s.txt").unwrap(), b"hello world");

    // Concurrent: aligned pieces, finished in a batch with a failure beside a success.
    let conc = c.content("files/upload_session/start", json!({ "session_type": "concurrent" }), b"");
    let cid = conc.json()["session_id"].as_str().unwrap().to_string();
    let misaligned =
        c.content("files/upload_session/append_v2", json!({ "cursor": { "session_id": cid, "offset": 1 } }), b"x");
    assert_eq!(tag(&misaligned), "concurrent_session_invalid_offset");
    let short =
        c.content("files/upload_session/append_v2", json!({ "cursor": { "session_id": cid, "offset": 0 } }), b"x");
    assert_eq!(tag(&short), "concurrent_session_invalid_data_size");
    let piece: Vec<u8> = (0..BLOCK_BYTES).map(|i| (i % 7) as u8).collect();
    let tail = c.content(
        "files/upload_session/append_v2",
        json!({ "cursor": { "session_id": cid, "offset": BLOCK_BYTES }, "close": true }),
        b"tail",
    );
    assert_eq!(tail.status, 200, "{}", tail.text());
    let head =
        c.content("files/upload_session/append_v2", json!({ "cursor": { "session_id": cid, "offset": 0 } }), &piece);
    assert_eq!(head.status, 200, "{}", head.text());
    let total = BLOCK_BYTES + 4;
    let batch = c.rpc(
        "files/upload_session/finish_batch_v2",
        json!({ "entries": [
            { "cursor": { "session_id": cid, "offset": total }, "commit": { "path": "/c.bin" } },
            { "cursor": { "session_id": "pid_upload_session:unknown", "offset": 0 }, "commit": { "path": "/d.bin" } },
        ]}),
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    let entries = batch.json()["entries"].clone();
    assert_eq!(entries[0][".tag"], "success");
    let mut whole = piece.clone();
    whole.extend_from_slice(b"tail");
    assert_eq!(entries[0]["content_hash"], content_hash_hex(&whole));
    assert_eq!(
        entries[1],
        json!({ ".tag": "failure", "failure": { ".tag": "lookup_failed", "lookup_failed": { ".tag": "not_found" } } })
    );
    assert_eq!(c.emu.open_sessions(), 0);
    let too_many: Vec<Value> = (0..=FINISH_BATCH_ENTRIES_MAX)
        .map(|_| json!({ "cursor": { "session_id": "x", "offset": 0 }, "commit": { "path": "/x" } }))
        .collect();
    assert_eq!(c.rpc("files/upload_session/finish_batch_v2", json!({ "entries": too_many })).status, 400);
    let conflict = c.content("files/upload", json!({ "path": "/s.txt", "mode": "add" }), b"other");
    assert_eq!(
        conflict.json()["error_summary"].as_str().unwrap().split('/').take(3).collect::<Vec<_>>(),
        ["path", "conflict", "file"]
    );
    assert!(conflict.json()["error"]["upload_session_id"].is_string(), "the data is kept in a session for a retry");
}

#[test]
fn hosts_content_types_and_path_root() {
    let c = Client::new(DropboxOptions::default());
    let auth = c.auth();
    let wrong_host = send(
        &c.emu.content_url(),
        "POST",
        "/2/files/list_folder",
        &[("Authorization", &auth), ("Content-Type", b"application/json")],
        b"{\"path\": \"\"}",
    )
    .unwrap();
    assert_eq!(wrong_host.status, 400);
    let form = send(
        &c.emu.api_url(),
        "POST",
        "/2/files/list_folder",
        &[("Authorization", &auth), ("Content-Type", b"text/plain")],
        b"{}",
    )
    .unwrap();
    assert_eq!(form.status, 400);
    assert!(form.text().contains("Bad HTTP \"Content-Type\" header: \"text/plain\""), "{}", form.text());
    // A route without an argument takes a bare POST (no body, no Content-Type); one with an
    // argument does not.
    let bare = |route: &str| send(&c.emu.api_url(), "POST", &format!("/2/{route}"), &[("Authorization", &auth)], b"");
    let usage = bare("users/get_space_usage").unwrap();
    assert_eq!(usage.status, 200, "{}", usage.text());
    assert!(usage.json()["used"].is_u64(), "{}", usage.text());
    assert_eq!(bare("users/get_current_account").unwrap().status, 200);
    let list = bare("files/list_folder").unwrap();
    assert_eq!(list.status, 400);
    assert!(list.text().contains("Bad HTTP \"Content-Type\" header: \"\""), "{}", list.text());
    let root = format!("{{\".tag\": \"root\", \"root\": \"{}\"}}", c.emu.namespace_id());
    let ok = send(
        &c.emu.api_url(),
        "POST",
        "/2/files/list_folder",
        &[("Authorization", &auth), ("Content-Type", b"application/json"), ("Dropbox-API-Path-Root", root.as_bytes())],
        b"{\"path\": \"\"}",
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    let wrong = send(
        &c.emu.api_url(),
        "POST",
        "/2/files/list_folder",
        &[
            ("Authorization", &auth),
            ("Content-Type", b"application/json"),
            ("Dropbox-API-Path-Root", b"{\".tag\": \"root\", \"root\": \"1\"}"),
        ],
        b"{\"path\": \"\"}",
    )
    .unwrap();
    assert_eq!(wrong.status, 422);
    assert_eq!(wrong.json()["error"][".tag"], "invalid_root");
    let unknown = c.rpc("files/no_such_function", json!({}));
    assert_eq!(unknown.status, 404);
}

#[test]
fn storms_server_errors_and_drops() {
    let c = Client::new(DropboxOptions::default());
    c.upload("/f", &[7u8; 100_000]);
    c.emu.throttle_next(2);
    for _ in 0..2 {
        let r = c.rpc("files/get_metadata", json!({ "path": "/f" }));
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"]["reason"][".tag"], "too_many_requests");
    }
    assert_eq!(c.rpc("files/get_metadata", json!({ "path": "/f" })).status, 200);
    assert_eq!(c.emu.stats().throttled, 2);

    c.emu.set_faults(Faults { server_error_rate: 1.0, ..Faults::default() }).unwrap();
    let r = c.rpc("files/get_metadata", json!({ "path": "/f" }));
    assert!(r.status == 500 || r.status == 503, "{}", r.status);

    c.emu.set_faults(Faults { drop_download_rate: 1.0, ..Faults::default() }).unwrap();
    let d = c.content("files/download", json!({ "path": "/f" }), b"");
    assert_eq!(d.status, 200);
    assert!(d.truncated && d.body.len() < 100_000, "{} bytes", d.body.len());

    c.emu.set_faults(Faults { drop_upload_rate: 1.0, ..Faults::default() }).unwrap();
    let up = c.content_raw("files/upload", br#"{"path": "/g"}"#, &[], &[1u8; 100_000]);
    assert!(up.is_none(), "no answer: the connection was dropped");
    assert!(c.emu.file("/g").is_none());
    assert_eq!(c.emu.stats().dropped_connections, 2);
    c.emu.set_faults(Faults::default()).unwrap();
    assert!(Faults { drop_upload_rate: 2.0, ..Faults::default() }.validate().is_err());
}

#[test]
fn the_commit_limit_answers_too_many_write_operations() {
    let c = Client::new(DropboxOptions::default());
    c.emu.set_faults(Faults { commits_concurrent_max: 1, retry_after_s: 3, ..Faults::default() }).unwrap();
    // One upload holds the only commit slot while its body is still coming.
    let addr = c.emu.content_url().strip_prefix("http://").unwrap().to_string();
    let mut held = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /2/files/upload HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nDropbox-API-Arg: {{\"path\": \"/held\"}}\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\nhello",
        c.token
    );
    held.write_all(head.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.emu.stats().commits_in_flight == 0 {
        assert!(Instant::now() < deadline, "the first upload never took its slot");
        std::thread::yield_now();
    }
    let r = c.content("files/upload", json!({ "path": "/second" }), b"x");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.json()["error"]["reason"][".tag"], "too_many_write_operations");
    held.write_all(b"world").unwrap();
    let mut raw = Vec::new();
    held.read_to_end(&mut raw).ok();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(c.emu.file("/held").unwrap(), b"helloworld");
    assert_eq!(c.emu.stats().write_throttled, 1);
}

#[test]
fn a_commit_holds_its_slot_for_commit_hold_ms() {
    let c = Client::new(DropboxOptions::default());
    let faults = Faults { commits_concurrent_max: 1, commit_hold_ms: 60_000, retry_after_s: 0, ..Faults::default() };
    c.emu.set_faults(faults).unwrap();
    let (content, token) = (c.emu.content_url(), c.token.clone());
    let first = std::thread::spawn(move || {
        let auth = format!("Bearer {token}");
        let headers: [(&str, &[u8]); 3] = [
            ("Authorization", auth.as_bytes()),
            ("Dropbox-API-Arg", br#"{"path": "/held"}"#),
            ("Content-Type", b"application/octet-stream"),
        ];
        // Unanswered when the emulator stops first: the hold outlasts the test.
        send(&content, "POST", "/2/files/upload", &headers, b"hello").map(|r| r.status)
    });
    // The first upload has committed and holds the slot (the namespace's lock).
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.emu.file("/held").is_none() {
        assert!(Instant::now() < deadline, "the first upload never committed");
        std::thread::yield_now();
    }
    assert_eq!(c.emu.stats().commits_in_flight, 1);
    let r = c.content("files/upload", json!({ "path": "/second" }), b"x");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["reason"][".tag"], "too_many_write_operations");
    assert_eq!(c.emu.file("/second"), None);
    assert_eq!(c.emu.stats().write_throttled, 1);
    drop((c, first));
}

#[test]
fn batch_entries_need_closed_sessions_and_a_busy_entry_can_be_finished_again() {
    let c = Client::new(DropboxOptions::default());
    let start = |data: &[u8], close: bool| {
        let arg = json!({ "close": close, "content_hash": content_hash_hex(data) });
        let r = c.content("files/upload_session/start", arg, data);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["session_id"].as_str().unwrap().to_string()
    };
    let entry = |id: &str, len: usize, path: &str| json!({ "cursor": { "session_id": id, "offset": len }, "commit": { "path": path, "mode": "overwrite" } });
    let (a, b, open) = (start(b"alpha", true), start(b"bravo!", true), start(b"open", false));
    c.emu.busy_batch_entries_next(1);
    let batch = c.rpc(
        "files/upload_session/finish_batch_v2",
        json!({ "entries": [entry(&a, 5, "/b/a"), entry(&b, 6, "/b/b"), entry(&open, 4, "/b/open")] }),
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    let entries = batch.json()["entries"].clone();
    assert_eq!(entries[0], json!({ ".tag": "failure", "failure": { ".tag": "too_many_write_operations" } }));
    assert_eq!(entries[1][".tag"], "success");
    assert_eq!(entries[1]["content_hash"], content_hash_hex(b"bravo!"));
    assert_eq!(
        entries[2],
        json!({ ".tag": "failure", "failure": { ".tag": "lookup_failed", "lookup_failed": { ".tag": "not_closed" } } })
    );
    assert_eq!(c.emu.file("/b/a"), None, "a busy entry commits nothing");
    assert_eq!(c.emu.stats().batch_entries_busy, 1);
    // The busy entry's session is as it was: the next batch finishes it.
    let again = c.rpc("files/upload_session/finish_batch_v2", json!({ "entries": [entry(&a, 5, "/b/a")] }));
    assert_eq!(again.json()["entries"][0][".tag"], "success", "{}", again.text());
    assert_eq!(c.emu.file("/b/a").unwrap(), b"alpha");
    let repeat = c.rpc("files/upload_session/finish_batch_v2", json!({ "entries": [entry(&a, 5, "/b/a")] }));
    assert_eq!(repeat.json()["entries"][0]["failure"]["lookup_failed"][".tag"], "closed");
    // The control switch over HTTP.
    let admin = send(&c.emu.api_url(), "POST", "/_emulator/busy_batch_entries", &[], br#"{"entries": 2}"#).unwrap();
    assert_eq!(admin.status, 200, "{}", admin.text());
    let batch = c.rpc("files/upload_session/finish_batch_v2", json!({ "entries": [entry(&open, 4, "/b/open")] }));
    assert_eq!(batch.json()["entries"][0]["failure"][".tag"], "too_many_write_operations");
    assert_eq!(c.emu.stats().batch_entries_busy, 2);
}

#[test]
fn a_capped_connection_still_carries_every_byte() {
    let c = Client::new(DropboxOptions::default());
    let data: Vec<u8> = (0..300_000).map(|i| (i % 241) as u8).collect();
    c.upload("/capped.bin", &data);
    c.emu.set_faults(Faults { throughput_bytes_per_s: 2 << 20, ..Faults::default() }).unwrap();
    let up = c.content("files/upload", json!({ "path": "/capped-up.bin" }), &data);
    assert_eq!(up.status, 200, "{}", up.text());
    let d = c.content("files/download", json!({ "path": "/capped.bin" }), b"");
    assert_eq!(d.status, 200);
    assert!(d.body == data && !d.truncated);
    assert_eq!(c.emu.file("/capped-up.bin").unwrap(), data);
}

#[test]
fn seeding_and_inspection() {
    let emu = DropboxEmulator::start(DropboxOptions::default()).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let info = emu.insert_with("/A/B.txt", &b"abc"[..], when).unwrap();
    assert_eq!((info.path_display.as_str(), info.client_modified_s, info.size), ("/A/B.txt", 1_600_000_000, 3));
    assert_eq!(info.content_hash, content_hash_hex(b"abc"));
    emu.create_folder("/Empty").unwrap();
    assert_eq!(emu.files().into_iter().collect::<Vec<_>>(), vec![("/A/B.txt".to_string(), b"abc".to_vec())]);
    assert_eq!(emu.file("/a/b.TXT").unwrap(), b"abc");
    assert!(emu.file("/a").is_none(), "a folder has no bytes");
    assert!(emu.insert("relative", &b""[..]).is_err());
    assert_eq!(emu.stats().entries, 3);
    let opts: DropboxOptions = serde_json::from_str(r#"{"seed": 9, "faults": {"latency_ms": 1}}"#).unwrap();
    assert_eq!((opts.seed, opts.faults.latency_ms, opts.faults.token_lifetime_s), (9, 1, 14_400));
    assert!(serde_json::from_str::<DropboxOptions>(r#"{"sed": 9}"#).is_err(), "a typo is refused");
}
