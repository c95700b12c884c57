//! The bare relay: the least a user-space relay can do, as a ceiling for Laminar.
//!
//! `laminar-bench limit` runs this program against the synthetic endpoints. It knows
//! the workload's keys (no listing), opens `connections` pairs of blocking keep-alive
//! connections, one thread per pair, and for each object (or 16 MiB part of a large
//! object) sends a GET to the source and a PUT to the destination and copies the body
//! from one socket to the other through one buffer. It checks nothing but status
//! codes and computes no checksum, so it is not a relay anyone should use; what it
//! costs is what moving the bytes through user space costs on this machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::compare::{machine, measured, Machine, Run};
use crate::pair::{Endpoints, Pair, SRC_PATH};
use crate::servers::find_tool;
use crate::workload::Workload;

/// Bytes copied per read/write on the relay path.
const COPY_BUFFER_BYTES: usize = 256 << 10;
/// Bytes a response head may take.
const HEAD_BYTES_MAX: usize = 64 << 10;

/// What to relay and how.
#[derive(Debug, Clone)]
pub struct BareRelay {
    /// Source endpoint.
    pub src: SocketAddr,
    /// Source bucket.
    pub src_bucket: String,
    /// Source key prefix (ends in `/` or is empty).
    pub src_prefix: String,
    /// Destination endpoint.
    pub dst: SocketAddr,
    /// Destination bucket.
    pub dst_bucket: String,
    /// Destination key prefix.
    pub dst_prefix: String,
    /// Connection pairs (threads).
    pub connections: usize,
    /// Part size for objects at least `multipart_cutoff_bytes` large.
    pub part_size_bytes: u64,
    /// Objects at least this large go in parts.
    pub multipart_cutoff_bytes: u64,
}

/// One unit of work: a whole object, or one part of a multipart upload.
struct Item {
    object: usize,
    /// (part number, offset, length, upload index) for a part; None for a whole object.
    part: Option<(u32, u64, u64, usize)>,
}

struct Upload {
    key: String,
    upload_id: String,
    etags: Mutex<Vec<(u32, String)>>,
}

/// A blocking HTTP/1.1 keep-alive connection.
struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read past the end of the last head.
    spill: Vec<u8>,
}

struct Head {
    status: u16,
    content_length: u64,
    etag: Option<String>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn { addr, stream, spill: Vec::new() })
    }

    fn send_head(&mut self, method: &str, path: &str, extra: &str) -> Result<()> {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", self.addr);
        self.stream.write_all(head.as_bytes())?;
        Ok(())
    }

    fn read_head(&mut self) -> Result<Head> {
        let mut buf = std::mem::take(&mut self.spill);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HEAD_BYTES_MAX {
                bail!("{}: response head over {HEAD_BYTES_MAX} bytes", self.addr);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("{}: connection closed before a response", self.addr);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        self.spill = buf.split_off(end);
        let text = std::str::from_utf8(&buf).context("response head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .context("malformed status line")?;
        let mut head = Head { status, content_length: 0, etag: None };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = value.trim().parse().context("bad content-length")?;
            } else if name.eq_ignore_ascii_case("etag") {
                head.etag = Some(value.trim().to_string());
            }
        }
        Ok(head)
    }

    /// Reads a whole (small) body.
    fn read_body(&mut self, len: u64) -> Result<Vec<u8>> {
        let mut body = std::mem::take(&mut self.spill);
        let len = len as usize;
        if body.len() > len {
            self.spill = body.split_off(len);
        }
        let have = body.len();
        body.resize(len, 0);
        self.stream.read_exact(&mut body[have..])?;
        Ok(body)
    }

    /// Copies `len` body bytes from this connection to `to`.
    fn copy_body(&mut self, to: &mut TcpStream, len: u64, buf: &mut [u8]) -> Result<()> {
        let mut left = len;
        let spill = std::mem::take(&mut self.spill);
        let from_spill = (spill.len() as u64).min(left) as usize;
        to.write_all(&spill[..from_spill])?;
        self.spill = spill[from_spill..].to_vec();
        left -= from_spill as u64;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self.stream.read(&mut buf[..want])?;
            if n == 0 {
                bail!("{}: body ended {left} bytes early", self.addr);
            }
            to.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

impl BareRelay {
    fn src_path(&self, key: &str) -> String {
        format!("/{}/{}{}", self.src_bucket, self.src_prefix, key)
    }

    fn dst_path(&self, key: &str) -> String {
        format!("/{}/{}{}", self.dst_bucket, self.dst_prefix, key)
    }

    /// Relays every object of `workload`; returns the bytes moved.
    pub fn run(&self, workload: &Workload) -> Result<u64> {
        assert!(self.connections > 0 && self.part_size_bytes > 0);
        let mut control = Conn::open(self.dst)?;
        let mut uploads = Vec::new();
        let mut items = Vec::new();
        for (i, o) in workload.objects.iter().enumerate() {
            if o.size_bytes < self.multipart_cutoff_bytes {
                items.push(Item { object: i, part: None });
                continue;
            }
            control.send_head("POST", &format!("{}?uploads", self.dst_path(&o.key)), "Content-Length: 0\r\n")?;
            let head = control.read_head()?;
            let body = String::from_utf8(control.read_body(head.content_length)?)?;
            if head.status != 200 {
                bail!("create multipart upload of {}: {} {body}", o.key, head.status);
            }
            let upload_id = between(&body, "<UploadId>", "</UploadId>").context("no UploadId")?.to_string();
            let mut offset = 0;
            let mut number = 1;
            while offset < o.size_bytes {
                let len = self.part_size_bytes.min(o.size_bytes - offset);
                items.push(Item { object: i, part: Some((number, offset, len, uploads.len())) });
                offset += len;
                number += 1;
            }
            uploads.push(Upload { key: o.key.clone(), upload_id, etags: Mutex::new(Vec::new()) });
        }
        let next = AtomicUsize::new(0);
        let moved = std::thread::scope(|s| -> Result<u64> {
            let threads: Vec<_> =
                (0..self.connections).map(|_| s.spawn(|| self.worker(workload, &items, &uploads, &next))).collect();
            let mut moved = 0;
            for t in threads {
                moved += t.join().map_err(|_| anyhow::anyhow!("a relay thread panicked"))??;
            }
            Ok(moved)
        })?;
        for u in &uploads {
            let mut etags = u.etags.lock().expect("no thread panicked holding it").clone();
            etags.sort();
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (n, etag) in &etags {
                xml.push_str(&format!("<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"));
            }
            xml.push_str("</CompleteMultipartUpload>");
            let path = format!("{}?uploadId={}", self.dst_path(&u.key), u.upload_id);
            control.send_head("POST", &path, &format!("Content-Length: {}\r\n", xml.len()))?;
            control.stream.write_all(xml.as_bytes())?;
            let head = control.read_head()?;
            let body = control.read_body(head.content_length)?;
            if head.status != 200 || body.windows(7).any(|w| w == b"<Error>") {
                bail!("complete {}: {} {}", u.key, head.status, String::from_utf8_lossy(&body));
            }
        }
        Ok(moved)
    }

    fn worker(&self, workload: &Workload, items: &[Item], uploads: &[Upload], next: &AtomicUsize) -> Result<u64> {
        let mut src = Conn::open(self.src)?;
        let mut dst = Conn::open(self.dst)?;
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        let mut moved = 0;
        loop {
            // Relaxed: the counter only hands out distinct indices; nothing else is ordered by it.
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { return Ok(moved) };
            let key = &workload.objects[item.object].key;
            let (range, dst_path) = match item.part {
                None => (String::new(), self.dst_path(key)),
                Some((number, offset, len, u)) => (
                    format!("Range: bytes={offset}-{}\r\n", offset + len - 1),
                    format!("{}?partNumber={number}&uploadId={}", self.dst_path(key), uploads[u].upload_id),
                ),
            };
            src.send_head("GET", &self.src_path(key), &range)?;
            let head = src.read_head()?;
            if head.status != 200 && head.status != 206 {
                bail!("GET {key}: status {}", head.status);
            }
            let len = head.content_length;
            dst.send_head("PUT", &dst_path, &format!("Content-Length: {len}\r\n"))?;
            src.copy_body(&mut dst.stream, len, &mut buf)?;
            let put = dst.read_head()?;
            let body = dst.read_body(put.content_length)?;
            if put.status != 200 {
                bail!("PUT {key}: status {} {}", put.status, String::from_utf8_lossy(&body));
            }
            if let Some((number, _, _, u)) = item.part {
                let etag = put.etag.context("part without ETag")?;
                uploads[u].etags.lock().expect("no thread panicked holding it").push((number, etag));
            }
            moved += len;
        }
    }
}

/// One measured run of `limit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitReport {
    /// The workload.
    pub workload: Workload,
    /// Connection pairs the bare relay used.
    pub connections: usize,
    /// Runs, alternating: `bare-relay`, `laminar`, and the endpoint's own ceiling
    /// (`s5cmd-get`: s5cmd reading every object to /dev/null).
    pub runs: Vec<Run>,
    /// The machine.
    pub machine: Machine,
    /// The exact commands.
    pub commands: Vec<String>,
}

/// Options of `limit`.
pub struct LimitOptions {
    /// Workload name.
    pub workload: String,
    /// Runs per tool.
    pub runs: usize,
    /// Connection pairs of the bare relay.
    pub connections: usize,
    /// The laminar binary.
    pub laminar: PathBuf,
    /// The laminar-bench binary (the bare relay runs as its own process).
    pub bench: PathBuf,
    /// Where the raw JSON goes.
    pub out_dir: PathBuf,
}

/// Measures the bare relay, Laminar and s5cmd's GETs side by side on synthetic endpoints.
pub fn limit(opts: &LimitOptions) -> Result<LimitReport> {
    let workload = Workload::named(&opts.workload)?;
    let pair = Pair::start(Endpoints::Synthetic, &workload)?;
    let (src, dst) = pair.addrs();
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), pair.config_toml())?;
    let s5cmd = find_tool("s5cmd");
    let s5cmd_script = tempfile::NamedTempFile::new()?;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(s5cmd_script.as_file());
        for o in &workload.objects {
            writeln!(f, "cat s3://src/data/{}", o.key)?;
        }
    }
    let commands = vec![
        format!(
            "laminar-bench bare-relay --src {src} --dst {dst} --workload {} --connections {}",
            workload.name, opts.connections
        ),
        format!("laminar --config laminar.toml relay --json {SRC_PATH} dst:dst/<prefix>"),
        format!("s5cmd --endpoint-url http://{src} run <one `cat s3://src/data/KEY` per object> > /dev/null"),
    ];
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        for tool in ["bare-relay", "laminar", "s5cmd-get"] {
            let prefix = format!("limit{i}-{tool}");
            let mut cmd = match tool {
                "bare-relay" => {
                    let mut c = Command::new(&opts.bench);
                    c.args(["bare-relay", "--src", &src.to_string(), "--dst", &dst.to_string()])
                        .args(["--workload", &workload.name, "--dst-prefix", &prefix])
                        .args(["--connections", &opts.connections.to_string()]);
                    c
                }
                "laminar" => {
                    let mut c = Command::new(&opts.laminar);
                    c.arg("--config").arg(config.path()).args(["relay", "--json", SRC_PATH]);
                    c.arg(format!("dst:dst/{prefix}"));
                    c
                }
                _ => {
                    let Some(s5cmd) = &s5cmd else { continue };
                    let mut c = Command::new(s5cmd);
                    c.env("AWS_ACCESS_KEY_ID", "bench").env("AWS_SECRET_ACCESS_KEY", "bench");
                    c.env("AWS_REGION", "us-east-1");
                    c.args(["--endpoint-url", &format!("http://{src}"), "run"]).arg(s5cmd_script.path());
                    c
                }
            };
            let run = measured(tool, &mut cmd, workload.total_bytes)?;
            if tool != "s5cmd-get" {
                pair.verify(&prefix, &workload)?;
            }
            eprintln!(
                "run {i} {tool:>10}: {:.2}s wall, {:.0} MiB/s, {:.2}s cpu",
                run.wall_seconds,
                run.throughput_bytes_per_second / f64::from(1 << 20),
                run.cpu_seconds
            );
            runs.push(run);
        }
    }
    let rclone = find_tool("rclone").unwrap_or_default();
    let report = LimitReport {
        workload,
        connections: opts.connections,
        runs,
        machine: machine(&opts.laminar, &rclone, pair.server_version()),
        commands,
    };
    std::fs::create_dir_all(&opts.out_dir)?;
    let raw = opts.out_dir.join(format!("limit-{}.json", report.workload.name));
    std::fs::write(&raw, serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_xml_values() {
        assert_eq!(between("<a><UploadId>x-1</UploadId></a>", "<UploadId>", "</UploadId>"), Some("x-1"));
        assert_eq!(between("<a/>", "<UploadId>", "</UploadId>"), None);
    }
}
