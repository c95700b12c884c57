//! The emulator over HTTP, from a bare HTTP/1.1 client: the strict rules as a client
//! meets them (the pure rules have unit tests beside their code; the official client's
//! view is `tests/conformance/drive_sdk.py`).

use std::io::{Read, Write};
use std::net::TcpStream;

use md5::Digest as _;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::*;

const U: usize = 256 << 10;

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn reason(&self) -> String {
        self.json()["error"]["errors"][0]["reason"].as_str().unwrap_or("").to_string()
    }
}

/// One request on a fresh connection; Err when the connection breaks before the
/// answer is whole.
fn call(url: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Answer> {
    let addr = url.strip_prefix("http://").expect("an http URL");
    let mut s = TcpStream::connect(addr)?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let body = raw[split + 4..].to_vec();
    let want = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok());
    if want.is_some_and(|n: usize| n != body.len()) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Answer { status, headers, body })
}

fn token(emu: &DriveEmulator) -> String {
    let e = emu.endpoints();
    let form = format!(
        "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
        utf8_percent_encode(&e.client_id, NON_ALPHANUMERIC),
        utf8_percent_encode(&e.client_secret, NON_ALPHANUMERIC),
        utf8_percent_encode(&e.refresh_token, NON_ALPHANUMERIC)
    );
    let a = call(
        emu.api_url(),
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .expect("token");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()["access_token"].as_str().expect("a token").to_string()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i * 7 % 251).expect("small")).collect()
}

#[test]
fn resumable_session_over_http() {
    let emu = DriveEmulator::start(DriveOptions::default()).unwrap();
    let auth = format!("Bearer {}", token(&emu));
    let data = pattern(3 * U + 10);
    let total = data.len().to_string();
    let start = call(
        emu.api_url(),
        "POST",
        "/upload/drive/v3/files?uploadType=resumable&fields=id,size,md5Checksum",
        &[("Authorization", &auth), ("Content-Type", "application/json"), ("X-Upload-Content-Length", &total)],
        br#"{"name": "r.bin"}"#,
    )
    .unwrap();
    assert_eq!(start.status, 200);
    let location = start.header("location").expect("a session URI").to_string();
    let path = location.strip_prefix(emu.api_url()).expect("on the emulator").to_string();
    let put = |first: usize, last: usize| {
        let range = format!("bytes {first}-{last}/{total}");
        call(emu.api_url(), "PUT", &path, &[("Content-Range", &range)], &data[first..=last]).unwrap()
    };
    let query = || call(emu.api_url(), "PUT", &path, &[("Content-Range", &format!("bytes */{total}"))], b"").unwrap();

    let s = query();
    assert_eq!((s.status, s.header("range")), (308, None), "nothing committed: 308 without Range");
    let a = put(0, U - 1);
    assert_eq!((a.status, a.header("range")), (308, Some("bytes=0-262143")));
    let a = put(U, U + 999);
    assert_eq!((a.status, a.reason().as_str()), (400, "badRequest"), "not a 256 KiB multiple");
    let a = put(2 * U, 3 * U - 1);
    assert_eq!(a.status, 400, "a gap");
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("exceeds already uploaded size of 262144"));
    let range = format!("bytes 0-{}/{}", U - 1, data.len() + 1);
    let a = call(emu.api_url(), "PUT", &path, &[("Content-Range", &range)], &data[..U]).unwrap();
    assert_eq!(a.status, 400, "a total that disagrees with X-Upload-Content-Length");
    let s = query();
    assert_eq!((s.status, s.header("range")), (308, Some("bytes=0-262143")), "the status query");
    let a = put(0, 2 * U - 1);
    assert_eq!((a.status, a.header("range")), (308, Some("bytes=0-524287")), "resent bytes are skipped");
    let done = put(2 * U, data.len() - 1);
    assert_eq!(done.status, 200);
    let f = done.json();
    assert_eq!(f["size"], total.as_str());
    assert_eq!(f["md5Checksum"], hex::encode(md5::Md5::digest(&data)));
    assert_eq!(query().json()["id"], f["id"], "a completed session answers its file");
    let session = emu.stats().sessions.into_iter().find(|s| s.name == "r.bin").unwrap();
    assert!(session.complete);
    assert_eq!(session.committed_bytes, data.len() as u64);
    assert_eq!(
        session.received_bytes,
        (U + 2 * U + (U + 10)) as u64,
        "received: the first chunk, the resent pair, the last"
    );
    emu.expire_sessions();
    assert_eq!(query().status, 404, "an expired session");
    assert_eq!(emu.read("r.bin"), Some(data));
}

#[test]
fn tokens_expire_and_grants_refuse() {
    let emu = DriveEmulator::start(DriveOptions::default()).unwrap();
    let about = "/drive/v3/about?fields=user";
    let a = call(emu.api_url(), "GET", about, &[], b"").unwrap();
    assert_eq!((a.status, a.reason().as_str()), (401, "required"));
    let a = call(emu.api_url(), "GET", about, &[("Authorization", "Bearer ya29.bogus")], b"").unwrap();
    assert_eq!((a.status, a.reason().as_str()), (401, "authError"));
    assert!(a.header("www-authenticate").is_some());
    let auth = format!("Bearer {}", token(&emu));
    assert_eq!(call(emu.api_url(), "GET", about, &[("Authorization", &auth)], b"").unwrap().status, 200);
    emu.expire_tokens();
    assert_eq!(call(emu.api_url(), "GET", about, &[("Authorization", &auth)], b"").unwrap().status, 401);
    emu.update_faults(|f| f.token_lifetime_s = 0);
    let dead = format!("Bearer {}", token(&emu));
    assert_eq!(
        call(emu.api_url(), "GET", about, &[("Authorization", &dead)], b"").unwrap().status,
        401,
        "born expired"
    );
    let bad =
        call(emu.api_url(), "POST", "/token", &[], b"grant_type=refresh_token&client_id=x&client_secret=y").unwrap();
    assert_eq!((bad.status, bad.json()["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(emu.stats().refused_grants, 1);
    assert_eq!(emu.stats().unauthorized, 4);
}

#[test]
fn daily_budget_and_storage_quota() {
    let emu = DriveEmulator::start(DriveOptions { storage_limit_bytes: 1000, ..DriveOptions::default() }).unwrap();
    let auth = format!("Bearer {}", token(&emu));
    let h = [("Authorization", auth.as_str()), ("Content-Type", "application/octet-stream")];
    let media = "/upload/drive/v3/files?uploadType=media";
    emu.update_faults(|f| f.daily_upload_bytes_max = Some(10));
    // A session opened before the budget is spent may finish after.
    let start = call(emu.api_url(), "POST", "/upload/drive/v3/files?uploadType=resumable", &h, b"").unwrap();
    let session = start.header("location").unwrap().strip_prefix(emu.api_url()).unwrap().to_string();
    assert_eq!(call(emu.api_url(), "POST", media, &h, &[1u8; 20]).unwrap().status, 200, "starts under the budget");
    let over = call(emu.api_url(), "POST", media, &h, &[1u8; 20]).unwrap();
    assert_eq!((over.status, over.reason().as_str()), (403, "userRateLimitExceeded"));
    assert_eq!(over.json()["error"]["message"], "User rate limit exceeded.");
    let late = call(emu.api_url(), "POST", "/upload/drive/v3/files?uploadType=resumable", &h, b"").unwrap();
    assert_eq!(late.status, 403, "no new session once the budget is spent");
    assert_eq!(call(emu.api_url(), "PUT", &session, &[], &[2u8; 30]).unwrap().status, 200, "under way: completes");
    assert_eq!(emu.stats().throttled.get("dailyUploadLimit/403"), Some(&2));
    emu.new_day();
    let full = call(emu.api_url(), "POST", media, &h, &[3u8; 2000]).unwrap();
    assert_eq!((full.status, full.reason().as_str()), (403, "storageQuotaExceeded"));
    let about = call(emu.api_url(), "GET", "/drive/v3/about?fields=storageQuota", &h, b"").unwrap().json();
    assert_eq!(about["storageQuota"]["usage"], "50");
}

#[test]
fn listing_paging_fields_and_shared_drives() {
    let emu =
        DriveEmulator::start(DriveOptions { shared_drives: vec!["Team".into()], ..DriveOptions::default() }).unwrap();
    let auth = format!("Bearer {}", token(&emu));
    let h = [("Authorization", auth.as_str())];
    let folder = emu.mkdir("many").unwrap();
    for i in 0..25 {
        emu.insert(&format!("many/f{i}"), vec![u8::try_from(i).unwrap(); 3]).unwrap();
    }
    let q = utf8_percent_encode(&format!("'{folder}' in parents and trashed = false"), NON_ALPHANUMERIC).to_string();
    let (mut names, mut token, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut path = format!("/drive/v3/files?q={q}&pageSize=10&fields=nextPageToken,files(name,size)");
        if let Some(t) = &token {
            path.push_str(&format!("&pageToken={t}"));
        }
        let page = call(emu.api_url(), "GET", &path, &h, b"").unwrap().json();
        pages += 1;
        let files = page["files"].as_array().unwrap();
        assert!(files.len() <= 10);
        names.extend(files.iter().map(|f| f["name"].as_str().unwrap().to_string()));
        assert!(files.iter().all(|f| f["size"] == "3" && f.as_object().unwrap().len() == 2), "only the fields asked");
        match page["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    names.sort();
    names.dedup();
    assert_eq!((names.len(), pages), (25, 3));
    let other_q = call(emu.api_url(), "GET", "/drive/v3/files?q=trashed%20%3D%20true&pageToken=x", &h, b"").unwrap();
    assert_eq!((other_q.status, other_q.reason().as_str()), (400, "invalid"));
    let bad_fields = call(emu.api_url(), "GET", "/drive/v3/files?fields=files(bogus)", &h, b"").unwrap();
    assert_eq!((bad_fields.status, bad_fields.reason().as_str()), (400, "invalidParameter"));
    assert_eq!(call(emu.api_url(), "GET", "/drive/v3/files?pageSize=0", &h, b"").unwrap().status, 400);
    // An empty selection (`fields=`, Google's Go client's `Fields("")`) is the default one.
    let file = emu.insert("links/a.bin", b"a".to_vec()).unwrap();
    let empty = call(emu.api_url(), "GET", &format!("/drive/v3/files/{file}?fields="), &h, b"").unwrap().json();
    let default = call(emu.api_url(), "GET", &format!("/drive/v3/files/{file}"), &h, b"").unwrap().json();
    assert_eq!(empty, default);
    assert_eq!(empty["kind"], "drive#file");
    let links = format!("/drive/v3/files/{file}?fields=webViewLink,webContentLink");
    let links = call(emu.api_url(), "GET", &links, &h, b"").unwrap().json();
    assert_eq!(links["webViewLink"], format!("https://drive.google.com/file/d/{file}/view?usp=drivesdk").as_str());
    assert_eq!(links["webContentLink"], format!("https://drive.google.com/uc?id={file}&export=download").as_str());

    let team = emu.shared_drive_id("Team").unwrap();
    let id = emu.insert_at(&team, "t.txt", b"team".to_vec()).unwrap();
    assert_eq!(call(emu.api_url(), "GET", &format!("/drive/v3/files/{id}"), &h, b"").unwrap().status, 404);
    let f = call(emu.api_url(), "GET", &format!("/drive/v3/files/{id}?supportsAllDrives=true&fields=driveId"), &h, b"");
    assert_eq!(f.unwrap().json()["driveId"], team.as_str());
    let without = format!("/drive/v3/files?corpora=drive&driveId={team}");
    assert_eq!(call(emu.api_url(), "GET", &without, &h, b"").unwrap().status, 400);
    let with = format!("{without}&includeItemsFromAllDrives=true&supportsAllDrives=true&fields=files(id)");
    let listed = call(emu.api_url(), "GET", &with, &h, b"").unwrap().json();
    assert_eq!(listed["files"], serde_json::json!([{"id": id}]));
    let mine = call(emu.api_url(), "GET", "/drive/v3/files?fields=files(id)&pageSize=1000", &h, b"").unwrap().json();
    assert!(
        !mine["files"].as_array().unwrap().iter().any(|f| f["id"] == id.as_str()),
        "shared items need includeItemsFromAllDrives"
    );
}

#[test]
fn downloads_ranges_drops_and_throughput() {
    let emu = DriveEmulator::start(DriveOptions::default()).unwrap();
    let auth = format!("Bearer {}", token(&emu));
    let data = pattern(300_000);
    let id = emu.insert("d.bin", data.clone()).unwrap();
    let media = format!("/drive/v3/files/{id}?alt=media");
    let h = |range: &'static str| vec![("Authorization", auth.clone()), ("Range", range.to_string())];
    let get = |hs: Vec<(&str, String)>| {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        call(emu.api_url(), "GET", &media, &hs, b"")
    };
    let a = get(h("bytes=10-19")).unwrap();
    assert_eq!((a.status, a.header("content-range"), &a.body[..]), (206, Some("bytes 10-19/300000"), &data[10..20]));
    let a = get(h("bytes=-5")).unwrap();
    assert_eq!(&a.body[..], &data[data.len() - 5..]);
    let a = get(h("bytes=300000-")).unwrap();
    assert_eq!((a.status, a.header("content-range")), (416, Some("bytes */300000")));
    let doc = emu.insert_doc("doc", DocKind::Spreadsheet, "a,b\n").unwrap();
    let h2 = [("Authorization", auth.as_str())];
    let a = call(emu.api_url(), "GET", &format!("/drive/v3/files/{doc}?alt=media"), &h2, b"").unwrap();
    assert_eq!((a.status, a.reason().as_str()), (403, "fileNotDownloadable"));
    let a = call(emu.api_url(), "GET", &format!("/drive/v3/files/{doc}/export?mimeType=text%2Fcsv"), &h2, b"").unwrap();
    assert_eq!((a.status, &a.body[..]), (200, &b"a,b\n"[..]));

    emu.update_faults(|f| f.drop_downloads = Some(DropAfter { after_bytes: 1000, next: 1 }));
    assert!(get(h("bytes=0-")).is_err(), "the body is cut");
    assert_eq!(emu.stats().dropped_connections, 1);
    assert_eq!(get(h("bytes=0-")).unwrap().body, data, "the next download is whole");

    // The cap slows the bytes but keeps them right (no timing is asserted).
    emu.update_faults(|f| f.throughput_bytes_per_s = 4 << 20);
    assert_eq!(get(h("bytes=0-")).unwrap().body, data);
}

#[test]
fn export_size_limit() {
    let emu = DriveEmulator::start(DriveOptions { export_bytes_max: 16, ..DriveOptions::default() }).unwrap();
    let auth = format!("Bearer {}", token(&emu));
    let h = [("Authorization", auth.as_str())];
    let small = emu.insert_doc("small", DocKind::Document, "0123456789").unwrap();
    let big = emu.insert_doc("big", DocKind::Document, "0123456789abcdefghij").unwrap();
    let export = |id: &str| format!("/drive/v3/files/{id}/export?mimeType=text%2Fplain");
    let a = call(emu.api_url(), "GET", &export(&small), &h, b"").unwrap();
    assert_eq!((a.status, a.body.len()), (200, 13), "BOM and text");
    let a = call(emu.api_url(), "GET", &export(&big), &h, b"").unwrap();
    assert_eq!((a.status, a.reason().as_str()), (403, "exportSizeLimitExceeded"));
    let blob = emu.insert("blob", b"x".to_vec()).unwrap();
    let a = call(emu.api_url(), "GET", &export(&blob), &h, b"").unwrap();
    assert_eq!((a.status, a.reason().as_str()), (403, "fileNotExportable"));
}
