//! `laminar job ...`: the command-line client of a running appliance's API.
//!
//! Each subcommand is one request (reqwest, blocking; this is the control path).
//! Output is a short human summary, or the server's JSON with `--json`. Errors are
//! the server's own one-line message. `show --follow` draws the same progress bar
//! as `laminar relay` until the job ends, and exits as `laminar relay` would: 0
//! succeeded, 1 failed, 130 cancelled.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use laminar_tuning::HumanBytes;
use serde_json::{json, Value};

use crate::cli::Fail;

/// Flags every `laminar job` subcommand takes.
#[derive(Args)]
pub struct JobArgs {
    /// The appliance's API
    #[arg(long, env = "LAMINAR_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    server: String,
    /// File holding the bearer token, when the appliance requires one
    #[arg(long, env = "LAMINAR_TOKEN_FILE", value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
    /// PEM certificate of the CA that signed an https appliance's certificate (the
    /// system's roots are trusted too)
    #[arg(long, env = "LAMINAR_CA_CERT", value_name = "PATH", global = true)]
    ca_cert: Option<PathBuf>,
    /// Print the server's JSON
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a relay job
    Submit {
        /// Source: NAME:bucket/prefix, s3://bucket/prefix or file:///abs/path
        source: String,
        /// Destination, in the same forms
        destination: String,
        /// Hash computed in flight: crc32c, crc64nvme, sha256, sha1 or md5 (also spelt --checksum)
        #[arg(long = "hash", alias = "checksum", value_name = "ALGO")]
        checksum: Option<String>,
        /// A filter rule in rclone's syntax: "+ GLOB", "- GLOB" or "!"; repeatable, the first that matches decides
        #[arg(long, short = 'f', value_name = "RULE", allow_hyphen_values = true)]
        filter: Vec<String>,
        /// Only keys matching this glob (rclone's syntax); repeatable
        #[arg(long)]
        include: Vec<String>,
        /// Skip keys matching this glob (rclone's syntax); repeatable
        #[arg(long)]
        exclude: Vec<String>,
        /// Plan only
        #[arg(long)]
        dry_run: bool,
        /// Objects in flight across the workers
        #[arg(long)]
        transfers: Option<usize>,
        /// Path of large objects: auto, ram or stage
        #[arg(long)]
        route: Option<String>,
        /// With --route auto: how long a part may keep the source idle before spilling, e.g. 5s
        #[arg(long, value_name = "DURATION")]
        spill_wait: Option<String>,
        /// Follow the job's progress until it ends
        #[arg(long)]
        follow: bool,
    },
    /// List jobs
    List,
    /// Show one job
    Show {
        /// Job id
        id: String,
        /// Follow its progress until it ends
        #[arg(long)]
        follow: bool,
    },
    /// Pause a running job
    Pause {
        /// Job id
        id: String,
    },
    /// Resume a paused job
    Resume {
        /// Job id
        id: String,
    },
    /// Cancel a job
    Cancel {
        /// Job id
        id: String,
    },
    /// Change the transfers in flight and the rate limits of a job, live
    Scale {
        /// Job id
        id: String,
        /// Objects in flight across the workers
        transfers: Option<usize>,
        /// Bytes per second read, as relay's --bwlimit (off lifts it)
        #[arg(long, value_name = "RATE")]
        bwlimit: Option<String>,
        /// Requests per second to the stores (0 lifts it)
        #[arg(long, value_name = "N")]
        tpslimit: Option<f64>,
    },
    /// Check the destination of a finished job against its source
    Verify {
        /// Job id
        id: String,
        /// Re-read both copies and recompute their checksums
        #[arg(long)]
        download: bool,
        /// Wait for the check to end
        #[arg(long)]
        follow: bool,
    },
}

struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(args: &JobArgs) -> Result<Client, Fail> {
        let base = args.server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(fail(2, format!("--server {:?}: give a URL such as http://127.0.0.1:7070", args.server)));
        }
        let token = args.token_file.as_deref().map(crate::serve::read_token).transpose()?;
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| fail(2, format!("--ca-cert {}: cannot read it: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| fail(2, format!("--ca-cert {}: not a PEM certificate: {e}", path.display())))?;
            http = http.add_root_certificate(ca);
        }
        let http = http.build().map_err(|e| fail(2, format!("cannot make an HTTP client: {e}")))?;
        Ok(Client { http, base, token })
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Fail> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().map_err(|e| {
            fail(2, format!("cannot reach the appliance at {}: {e}; is `laminar serve` running there?", self.base))
        })?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or(value.to_string());
            let code = if status.is_client_error() { 2 } else { 1 };
            return Err(fail(code, format!("{message} (HTTP {})", status.as_u16())));
        }
        Ok(value)
    }
}

fn fail(code: u8, message: String) -> Fail {
    Fail { code, message }
}

pub fn run(args: JobArgs) -> Result<u8, Fail> {
    use reqwest::Method;
    let client = Client::new(&args)?;
    let job = |id: &str| format!("/v1/jobs/{id}");
    let (value, follow) = match &args.command {
        JobCommand::Submit {
            source,
            destination,
            checksum,
            filter,
            include,
            exclude,
            dry_run,
            transfers,
            route,
            spill_wait,
            follow,
        } => {
            let mut spec = json!({
                "source": source, "destination": destination,
                "filter": filter, "include": include, "exclude": exclude, "dry_run": dry_run,
            });
            if let Some(c) = checksum {
                spec["checksum"] = json!(c);
            }
            if let Some(t) = transfers {
                spec["transfers"] = json!(t);
            }
            if let Some(r) = route {
                spec["route"] = json!(r);
            }
            if let Some(w) = spill_wait {
                spec["spill_wait"] = json!(w);
            }
            (client.call(Method::POST, "/v1/jobs", Some(spec))?, *follow)
        }
        JobCommand::List => {
            let value = client.call(Method::GET, "/v1/jobs", None)?;
            if args.json {
                outln!("{value}");
            } else {
                let jobs = value["jobs"].as_array().cloned().unwrap_or_default();
                if jobs.is_empty() {
                    outln!("no jobs");
                }
                for j in &jobs {
                    outln!("{}", summary(j));
                }
            }
            return Ok(0);
        }
        JobCommand::Show { id, follow } => (client.call(Method::GET, &job(id), None)?, *follow),
        JobCommand::Pause { id } => (client.call(Method::POST, &format!("{}/pause", job(id)), None)?, false),
        JobCommand::Resume { id } => (client.call(Method::POST, &format!("{}/resume", job(id)), None)?, false),
        JobCommand::Cancel { id } => (client.call(Method::POST, &format!("{}/cancel", job(id)), None)?, false),
        JobCommand::Scale { id, transfers, bwlimit, tpslimit } => {
            if transfers.is_none() && bwlimit.is_none() && tpslimit.is_none() {
                return Err(crate::cli::usage(
                    "job scale: give the transfers (laminar job scale ID 32), --bwlimit or --tpslimit".into(),
                ));
            }
            let scale = crate::jobs::Scale { transfers: *transfers, bwlimit: bwlimit.clone(), tpslimit: *tpslimit };
            let body = serde_json::to_value(&scale).expect("a scale serialises");
            (client.call(Method::PATCH, &job(id), Some(body))?, false)
        }
        JobCommand::Verify { id, download, follow } => {
            (client.call(Method::POST, &format!("{}/verify", job(id)), Some(json!({ "download": download })))?, *follow)
        }
    };
    let value = if follow { follow_job(&client, &value, args.json)? } else { value };
    if args.json {
        outln!("{value}");
    } else {
        outln!("{}", summary(&value));
        for f in value["failures"].as_array().into_iter().flatten() {
            outln!("  failed: {}: {}", f["key"].as_str().unwrap_or(""), f["reason"].as_str().unwrap_or(""));
        }
        if let Some(v) = value.get("verify").filter(|v| !v.is_null()) {
            outln!(
                "  verify ({}): {} checked, {} intact, {} missing, {} differ",
                v["state"].as_str().unwrap_or(""),
                v["objects_checked"],
                v["objects_matched"],
                v["objects_missing"],
                v["objects_mismatched"]
            );
            for p in v["problems"].as_array().into_iter().flatten() {
                outln!("  differs: {}: {}", p["key"].as_str().unwrap_or(""), p["reason"].as_str().unwrap_or(""));
            }
        }
        if let Some(e) = value["error"].as_str() {
            outln!("  error: {e}");
        }
    }
    Ok(if follow { exit_code(&value) } else { 0 })
}

/// One line per job.
fn summary(j: &Value) -> String {
    let c = &j["counters"];
    let line = format!(
        "{} {:<10} {} -> {}  {}/{} objects ({} skipped, {} failed), {} of {}, {}/s",
        j["id"].as_str().unwrap_or("?"),
        j["state"].as_str().unwrap_or("?"),
        j["source"].as_str().unwrap_or(""),
        j["destination"].as_str().unwrap_or(""),
        c["objects_copied"].as_u64().unwrap_or(0).saturating_add(c["objects_skipped"].as_u64().unwrap_or(0)),
        c["objects_total"].as_u64().unwrap_or(0),
        c["objects_skipped"].as_u64().unwrap_or(0),
        c["objects_failed"].as_u64().unwrap_or(0),
        HumanBytes(c["bytes_copied"].as_u64().unwrap_or(0)),
        HumanBytes(c["bytes_total"].as_u64().unwrap_or(0)),
        HumanBytes(j["throughput_bytes_per_second"].as_f64().unwrap_or(0.0) as u64),
    );
    line + &throttled(j)
}

/// What a throttling store did to the job, if anything.
fn throttled(j: &Value) -> String {
    let cuts = j["counters"]["throttle_cuts"].as_u64().unwrap_or(0);
    let (allowed, transfers) = (j["transfers_allowed"].as_u64(), j["options"]["transfers"].as_u64());
    match (allowed, transfers) {
        (Some(a), Some(t)) if a < t && j["state"] == "running" => format!(", throttled: {a} of {t} in flight"),
        _ if cuts > 0 => format!(", throttled ({cuts} cuts)"),
        _ => String::new(),
    }
}

fn settled(j: &Value) -> bool {
    matches!(j["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

fn exit_code(j: &Value) -> u8 {
    match j["state"].as_str() {
        Some("succeeded") => 0,
        Some("cancelled") => 130,
        _ => 1,
    }
}

/// Polls the job until it settles, with the relay's progress bar on a terminal.
fn follow_job(client: &Client, first: &Value, quiet: bool) -> Result<Value, Fail> {
    let id = first["id"].as_str().unwrap_or_default().to_string();
    let bar = (!quiet && std::io::stderr().is_terminal()).then(crate::progress::bar);
    crate::logs::set_bar(bar.clone());
    let mut value = first.clone();
    while !settled(&value) {
        std::thread::sleep(Duration::from_millis(250));
        value = client.call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)?;
        if let Some(bar) = &bar {
            let c = &value["counters"];
            bar.set_length(c["bytes_total"].as_u64().unwrap_or(0));
            let done = c["bytes_streamed"].as_u64().or(c["bytes_copied"].as_u64()).unwrap_or(0);
            bar.set_position(done);
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let stores =
                |k: &str| ["source", "destination"].iter().filter_map(|s| value["stores"][s][k].as_u64()).sum();
            let verify = &value["verify"];
            let snapshot = crate::progress::Snapshot {
                bytes_done: done,
                bytes_total: n("bytes_total"),
                objects_done: n("objects_copied") + n("objects_skipped"),
                objects_total: n("objects_total"),
                skipped: n("objects_skipped"),
                failed: n("objects_failed"),
                retried: stores("retries"),
                throttled: stores("throttled"),
                listing: value["listing"] == true,
                paused: value["state"] == "paused",
                verifying: (verify["state"] == "running").then(|| verify["objects_checked"].as_u64().unwrap_or(0)),
                elapsed: Duration::ZERO,
            };
            bar.set_message(snapshot.message());
        }
    }
    crate::logs::set_bar(None);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_when_a_store_throttles() {
        let mut j = json!({"id": "j-1", "state": "running", "counters": {"throttle_cuts": 2},
                           "options": {"transfers": 64}, "transfers_allowed": 16});
        assert!(summary(&j).ends_with(", throttled: 16 of 64 in flight"), "{}", summary(&j));
        j["state"] = json!("succeeded");
        assert!(summary(&j).ends_with(", throttled (2 cuts)"), "{}", summary(&j));
        j["counters"]["throttle_cuts"] = json!(0);
        assert!(!summary(&j).contains("throttled"), "{}", summary(&j));
    }
}
