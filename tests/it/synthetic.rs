//! The synthetic endpoint answers like an S3 store where the benchmarks rely on it:
//! ranged reads match the workload's bytes, bad checksums and short parts are refused
//! with S3's error codes, and uploads in either body form land in the manifest.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use laminar_bench::synthetic::{Synthetic, SyntheticOptions};
use laminar_bench::workload::{fill, Workload};

/// Sends one request on a fresh connection; returns (status, head, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[end..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // Small test responses: one data chunk at most.
        let text = String::from_utf8_lossy(&body).into_owned();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        body = rest.as_bytes()[..size].to_vec();
    }
    (status, head, body)
}

fn b64_crc32c(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(bytes).to_be_bytes())
}

#[test]
fn ranges_checksums_parts_and_manifests() {
    let src = Synthetic::start(&SyntheticOptions::source("tiny", "src", "data/")).expect("source starts");
    let dst = Synthetic::start(&SyntheticOptions::sink()).expect("destination starts");
    let w = Workload::named("tiny").unwrap();
    let big = w.objects.iter().max_by_key(|o| o.size_bytes).unwrap();

    // A ranged GET is the workload's bytes at that offset.
    let path = format!("/src/data/{}", big.key);
    let (status, head, body) = request(src.addr(), "GET", &path, &[("Range", "bytes=1000-5999".into())], b"");
    assert_eq!(status, 206, "{head}");
    let mut want = vec![0u8; 5000];
    fill(&big.key, 1000, &mut want);
    assert_eq!(body, want);
    // The whole-object CRC32C is reported on request.
    let (_, head, _) = request(src.addr(), "HEAD", &path, &[("x-amz-checksum-mode", "ENABLED".into())], b"");
    let crc = laminar_bench::workload::object_crc32c(&big.key, big.size_bytes);
    assert!(
        head.contains(&base64::Engine::encode(&base64::engine::general_purpose::STANDARD, crc.to_be_bytes())),
        "{head}"
    );
    // Beyond the end: 416.
    let (status, _, body) = request(src.addr(), "GET", &path, &[("Range", format!("bytes={}-", big.size_bytes))], b"");
    assert_eq!(status, 416);
    assert!(String::from_utf8_lossy(&body).contains("InvalidRange"));

    // A PUT whose CRC32C header is wrong is refused; a right one lands.
    let data = b"hello synthetic".to_vec();
    let (status, _, body) =
        request(dst.addr(), "PUT", "/dst/x/a", &[("x-amz-checksum-crc32c", b64_crc32c(b"other"))], &data);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("BadDigest"));
    let (status, head, _) =
        request(dst.addr(), "PUT", "/dst/x/a", &[("x-amz-checksum-crc32c", b64_crc32c(&data))], &data);
    assert_eq!(status, 200, "{head}");

    // An aws-chunked PUT with a trailer, as Laminar streams parts, decodes to the same bytes.
    let framed =
        format!("{:x}\r\nhello synthetic\r\n0\r\nx-amz-checksum-crc32c:{}\r\n\r\n", data.len(), b64_crc32c(&data));
    let chunked_headers = [
        ("Content-Encoding", "aws-chunked".to_string()),
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_string()),
        ("x-amz-decoded-content-length", data.len().to_string()),
        ("x-amz-trailer", "x-amz-checksum-crc32c".to_string()),
    ];
    let (status, head, _) = request(dst.addr(), "PUT", "/dst/x/b", &chunked_headers, framed.as_bytes());
    assert_eq!(status, 200, "{head}");
    let bad = framed.replace(&b64_crc32c(&data), &b64_crc32c(b"nope"));
    let (status, _, _) = request(dst.addr(), "PUT", "/dst/x/c", &chunked_headers, bad.as_bytes());
    assert_eq!(status, 400);

    // Multipart: a small middle part makes Complete fail with EntityTooSmall.
    let (_, _, body) = request(dst.addr(), "POST", "/dst/x/mp?uploads", &[], b"");
    let body = String::from_utf8(body).unwrap();
    let id = body.split("<UploadId>").nth(1).unwrap().split("</UploadId>").next().unwrap().to_string();
    let mut etags = Vec::new();
    for (n, len) in [(1, 1000usize), (2, 1000)] {
        let part = vec![n as u8; len];
        let (status, head, _) =
            request(dst.addr(), "PUT", &format!("/dst/x/mp?partNumber={n}&uploadId={id}"), &[], &part);
        assert_eq!(status, 200);
        let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().trim().to_string();
        etags.push(etag);
    }
    let xml: String = etags
        .iter()
        .enumerate()
        .map(|(i, e)| format!("<Part><PartNumber>{}</PartNumber><ETag>{e}</ETag></Part>", i + 1))
        .collect();
    let xml = format!("<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>");
    let (status, _, body) = request(dst.addr(), "POST", &format!("/dst/x/mp?uploadId={id}"), &[], xml.as_bytes());
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("EntityTooSmall"));

    // What landed: a and b, with the CRC32C of their bytes, and nothing else.
    let manifest = dst.manifest("dst", "x/").unwrap();
    let keys: Vec<&str> = manifest.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["x/a", "x/b"]);
    assert!(manifest.iter().all(|e| e.crc32c == crc32c::crc32c(&data) && e.size_bytes == data.len() as u64));
    assert_eq!(src.manifest("src", "data/").unwrap().len(), w.object_count);
    assert!(dst.stats().unwrap()["checksum_mismatches"].as_u64().unwrap() >= 2);
}
