//! `GET /metrics`: the Prometheus text exposition, built at scrape time.
//!
//! Nothing here counts anything: the engine's workers keep their own shards and the
//! jobs their own counters, and a scrape sums them into metric families. So a scrape
//! costs the workers nothing, and the numbers are never staler than the scrape.
//! Labels carry remote names, job ids, worker numbers and kinds; never a bucket
//! path, a key or a credential.

use std::sync::atomic::Ordering;

use std::time::Duration;

use laminar_engine::metrics::{Failures, Totals, BUCKETS_SECONDS, ERROR_KINDS, OPS};
use laminar_engine::relay::Side;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::Encoder;

use crate::jobs::{ForgottenTotals, Jobs, State};

/// How long a finished job keeps series of its own; after that its counts are summed
/// under `job="forgotten"`, so that a long-lived appliance does not grow a series per
/// job it ever ran (the job itself stays listed, see `--keep-jobs`).
pub const FINISHED_SERIES_KEPT: Duration = Duration::from_secs(10 * 60);

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

struct Family {
    mf: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(kind);
        Family { mf }
    }

    fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    fn push(&mut self, pairs: &[(&str, &str)], value: f64) {
        let mut m = Metric::from_label(labels(pairs));
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
    }

    fn push_histogram(&mut self, pairs: &[(&str, &str)], h: &laminar_engine::metrics::Histogram) {
        let mut m = Metric::from_label(labels(pairs));
        let mut out = Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS_SECONDS.len());
        for (le, n) in BUCKETS_SECONDS.iter().zip(h.buckets.iter()) {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*le);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        out.set_bucket(buckets);
        out.set_sample_count(h.count);
        out.set_sample_sum(h.sum_seconds);
        m.set_histogram(out);
        self.mf.mut_metric().push(m);
    }
}

/// The exposition text for the appliance.
pub fn render(jobs: &Jobs) -> String {
    let engine = jobs.engine();
    let mut families = Vec::new();

    let mut info = Family::gauge("laminar_build_info", "Laminar's version and the event-loop driver; always 1.");
    info.push(&[("version", env!("CARGO_PKG_VERSION")), ("driver", &engine.driver().to_string())], 1.0);
    families.push(info);

    // Per-job counters, plus what forgotten jobs had, so no counter ever goes down.
    let mut bytes = Family::counter("laminar_relayed_bytes_total", "Bytes written to destinations, by job.");
    let mut objects = Family::counter(
        "laminar_relayed_objects_total",
        "Objects finished, by job and outcome (copied, skipped because already there, failed).",
    );
    let mut by_state = Family::gauge("laminar_jobs", "Jobs listed, by state.");
    let mut limits = JobLimits::new();
    let mut stores = JobStores::new();
    let list = jobs.list();
    for state in State::ALL {
        let n = list.iter().filter(|j| j.state() == state).count();
        by_state.push(&[("state", state.name())], n as f64);
    }
    let mut gone = jobs.forgotten.lock().expect("forgotten lock").clone();
    for job in &list {
        let c = job.counters();
        if job.finished_ago().is_some_and(|ago| ago > FINISHED_SERIES_KEPT) {
            gone.bytes += c.bytes_copied;
            gone.copied += c.objects_copied;
            gone.skipped += c.objects_skipped;
            gone.failed += c.objects_failed;
            gone.not_attempted += job.progress.objects_not_attempted.load(Ordering::Relaxed);
            continue;
        }
        let p = &job.progress;
        bytes.push(&[("job", &job.id)], c.bytes_copied as f64);
        objects.push(&[("job", &job.id), ("outcome", "copied")], c.objects_copied as f64);
        objects.push(&[("job", &job.id), ("outcome", "skipped")], c.objects_skipped as f64);
        objects.push(&[("job", &job.id), ("outcome", "failed")], c.objects_failed as f64);
        let not_attempted = p.objects_not_attempted.load(Ordering::Relaxed) as f64;
        objects.push(&[("job", &job.id), ("outcome", "not_attempted")], not_attempted);
        limits.push(&job.id, p);
        stores.push(&job.id, &job.stores(), &c);
    }
    if gone != ForgottenTotals::default() {
        bytes.push(&[("job", "forgotten")], gone.bytes as f64);
        objects.push(&[("job", "forgotten"), ("outcome", "copied")], gone.copied as f64);
        objects.push(&[("job", "forgotten"), ("outcome", "skipped")], gone.skipped as f64);
        objects.push(&[("job", "forgotten"), ("outcome", "failed")], gone.failed as f64);
        objects.push(&[("job", "forgotten"), ("outcome", "not_attempted")], gone.not_attempted as f64);
    }
    families.extend([bytes, objects, by_state]);
    families.extend(limits.families());
    families.extend(stores.families());

    // Worker shards, summed; per-worker gauges.
    let mut totals = Totals::default();
    let mut worker_bytes =
        Family::counter("laminar_worker_relayed_bytes_total", "Bytes written to destinations, by worker.");
    let mut cpu = Family::counter("laminar_worker_cpu_seconds_total", "CPU time of each worker thread.");
    let mut transfers = Family::gauge("laminar_transfers_in_flight", "Transfers a worker is moving, by kind.");
    let mut ram = Family::gauge("laminar_ram_buffer_bytes", "RAM tier each worker owns.");
    let mut ram_used = Family::gauge("laminar_ram_buffer_used_bytes", "RAM tier each worker has lent to transfers.");
    let mut driver =
        Family::gauge("laminar_worker_driver", "The event-loop driver each worker runs (1 for the one in use).");
    for w in engine.workers() {
        totals.add(&w.shard);
        let index = w.index.to_string();
        let i = [("worker", index.as_str())];
        worker_bytes.push(&i, w.shard.bytes_written.load(Ordering::Relaxed) as f64);
        if let Some(s) = w.cpu_seconds() {
            cpu.push(&i, s);
        }
        transfers.push(&[("worker", &index), ("kind", "object")], w.objects_in_flight.load(Ordering::Relaxed) as f64);
        transfers.push(&[("worker", &index), ("kind", "part")], w.parts_in_flight.load(Ordering::Relaxed) as f64);
        ram.push(&i, w.pool_bytes() as f64);
        ram_used.push(&i, w.pool_bytes_in_use() as f64);
        if let Some(d) = w.driver() {
            driver.push(&[("worker", &index), ("driver", &d.to_string())], 1.0);
        }
    }
    // Planners and checks record into the shared shard.
    totals.add(laminar_engine::metrics::shared_shard());
    families.extend([worker_bytes, cpu, transfers, ram, ram_used, driver]);

    let [retries, errors, throttled] = failure_families(&totals);
    let mut mismatches = Family::counter(
        "laminar_checksum_mismatches_total",
        "Transfers whose bytes did not match a checksum (each attempt counts).",
    );
    mismatches.push(&[], totals.checksum_mismatches as f64);
    let mut ops = Family::new(
        "laminar_backend_operation_duration_seconds",
        "Latency of backend operations, by remote and operation.",
        MetricType::HISTOGRAM,
    );
    for (remote, hists) in &totals.ops {
        for (i, op) in OPS.iter().enumerate() {
            if hists[i].count > 0 {
                ops.push_histogram(&[("remote", remote), ("op", op)], &hists[i]);
            }
        }
    }
    let policy = laminar_engine::http::socket_policy();
    let mut sockets = Family::gauge("laminar_socket_policy", "The per-socket policy every connection gets; always 1.");
    let keepalive = policy.keepalive_secs.map_or("off".to_string(), |s| s.to_string());
    let sndbuf = policy.send_buffer_bytes.map_or("auto".to_string(), |b| b.to_string());
    let rcvbuf = policy.recv_buffer_bytes.map_or("auto".to_string(), |b| b.to_string());
    sockets.push(
        &[
            ("congestion", policy.congestion.as_deref().unwrap_or("default")),
            ("nodelay", if policy.nodelay { "true" } else { "false" }),
            ("keepalive_seconds", &keepalive),
            ("send_buffer_bytes", &sndbuf),
            ("recv_buffer_bytes", &rcvbuf),
        ],
        1.0,
    );
    let mut refused =
        Family::counter("laminar_socket_options_refused_total", "Socket options the kernel refused, by option.");
    for (i, option) in laminar_engine::metrics::SOCKET_OPTIONS.iter().enumerate() {
        refused.push(
            &[("option", option)],
            laminar_engine::metrics::SOCKET_OPTIONS_REFUSED[i].load(Ordering::Relaxed) as f64,
        );
    }
    families.extend([retries, errors, throttled, mismatches, ops, sockets, refused]);
    families.extend(process_families());
    families.extend(connection_families());
    if let Some(stage) = engine.stage() {
        let mut bytes =
            Family::gauge("laminar_stage_bytes", "The NVMe stage: bytes reserved by staged objects, and the quota.");
        bytes.push(&[("kind", "used")], stage.used_bytes() as f64);
        bytes.push(&[("kind", "quota")], stage.quota_bytes() as f64);
        let mut io = Family::counter("laminar_stage_io_bytes_total", "Bytes written to and read from stage files.");
        io.push(&[("op", "write")], stage.bytes_written.load(Ordering::Relaxed) as f64);
        io.push(&[("op", "read")], stage.bytes_read.load(Ordering::Relaxed) as f64);
        families.extend([bytes, io]);
    }

    let families: Vec<MetricFamily> =
        families.into_iter().map(|f| f.mf).filter(|mf| !mf.get_metric().is_empty()).collect();
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&families, &mut out).expect("text encoding to memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Failed attempts by remote: every remote seen so far gets a series of each kind,
/// zero or not, so that a rate over them starts from the first scrape.
fn failure_families(totals: &Totals) -> [Family; 3] {
    let mut retries =
        Family::counter("laminar_retries_total", "Attempts retried after a transient error, by remote and kind.");
    let mut errors =
        Family::counter("laminar_errors_total", "Operations that failed for good (after retries), by remote and kind.");
    let mut throttled = Family::counter(
        "laminar_throttled_total",
        "Answers that refused an attempt as one too many (429, 503, SlowDown), retried or not, by remote.",
    );
    let none = Failures::default();
    let remotes: std::collections::BTreeSet<&String> = totals.ops.keys().chain(totals.failures.keys()).collect();
    for remote in remotes {
        let f = totals.failures.get(remote).unwrap_or(&none);
        for (i, kind) in ERROR_KINDS.iter().enumerate() {
            retries.push(&[("remote", remote), ("kind", kind)], f.retries[i] as f64);
            errors.push(&[("remote", remote), ("kind", kind)], f.errors[i] as f64);
        }
        throttled.push(&[("remote", remote)], f.throttled() as f64);
    }
    [retries, errors, throttled]
}

/// What a job may use and what it uses, as separate series: a limit is a gauge that
/// moves when an operator scales the job; usage is a counter (rate it) or a gauge of
/// what is under way now.
struct JobLimits {
    transfers: Family,
    allowed: Family,
    operations: Family,
    bwlimit: Family,
    tpslimit: Family,
    requests: Family,
    waited: Family,
}

impl JobLimits {
    fn new() -> JobLimits {
        JobLimits {
            transfers: Family::gauge("laminar_job_transfers", "Limit: objects a job may have in flight (its transfers setting)."),
            allowed: Family::gauge(
                "laminar_job_transfers_allowed",
                "Limit: objects a job may have in flight now, its transfers setting or fewer while a store throttles.",
            ),
            operations: Family::gauge(
                "laminar_job_operations_in_flight",
                "Usage: store operations of a job's transfers under way now, parts included.",
            ),
            bwlimit: Family::gauge(
                "laminar_job_bwlimit_bytes_per_second",
                "Limit: bytes per second a job may read (--bwlimit, as in force now); absent when unlimited. Its usage \
                 is the rate of laminar_relayed_bytes_total.",
            ),
            tpslimit: Family::gauge(
                "laminar_job_tpslimit_requests_per_second",
                "Limit: requests per second a job may send (--tpslimit); absent when unlimited.",
            ),
            requests: Family::counter("laminar_job_requests_total", "Usage: requests a job has sent to its stores."),
            waited: Family::counter(
                "laminar_job_rate_limit_wait_seconds_total",
                "Time a job's transfers spent waiting for its --bwlimit or --tpslimit, summed over workers.",
            ),
        }
    }

    fn push(&mut self, id: &str, p: &laminar_engine::relay::Progress) {
        let job = [("job", id)];
        let transfers = p.transfers.load(Ordering::Relaxed);
        self.transfers.push(&job, transfers as f64);
        self.allowed.push(&job, p.throttle.limit(transfers) as f64);
        self.operations.push(&job, p.operations.load(Ordering::Relaxed) as f64);
        if let Some(b) = p.rates.bytes.get() {
            self.bwlimit.push(&job, b);
        }
        if let Some(r) = p.rates.requests.get() {
            self.tpslimit.push(&job, r);
        }
        self.requests.push(&job, p.rates.requests_sent() as f64);
        self.waited.push(&job, p.rates.waited().as_secs_f64());
    }

    fn families(self) -> [Family; 7] {
        [self.transfers, self.allowed, self.operations, self.bwlimit, self.tpslimit, self.requests, self.waited]
    }
}

/// Each job's failed attempts by store.
struct JobStores {
    retries: Family,
    throttled: Family,
    errors: Family,
}

impl JobStores {
    fn new() -> JobStores {
        JobStores {
            retries: Family::counter(
                "laminar_job_retries_total",
                "Attempts a job retried, by store (side and remote).",
            ),
            throttled: Family::counter(
                "laminar_job_throttled_total",
                "Answers that refused a job's attempt as one too many, by store (side and remote).",
            ),
            errors: Family::counter(
                "laminar_job_errors_total",
                "A job's operations that failed for good (after retries), by store (side and remote).",
            ),
        }
    }

    fn push(&mut self, id: &str, remotes: &[String; 2], c: &crate::jobs::SavedCounters) {
        for side in [Side::Source, Side::Destination] {
            let (s, remote) = (c.stores[side as usize], &remotes[side as usize]);
            let labels = [("job", id), ("side", side.name()), ("remote", remote.as_str())];
            self.retries.push(&labels, s.retries as f64);
            self.throttled.push(&labels, s.throttled as f64);
            self.errors.push(&labels, s.errors as f64);
        }
    }

    fn families(self) -> [Family; 3] {
        [self.retries, self.throttled, self.errors]
    }
}

/// The process's CPU time, memory, open file descriptors and threads, under the
/// standard `process_*` names.
fn process_families() -> Vec<Family> {
    use prometheus::core::Collector;
    static COLLECTOR: std::sync::OnceLock<prometheus::process_collector::ProcessCollector> = std::sync::OnceLock::new();
    let collector = COLLECTOR.get_or_init(prometheus::process_collector::ProcessCollector::for_self);
    collector.collect().into_iter().map(|mf| Family { mf }).collect()
}

/// The process's connections to each endpoint, bounded across every job (see
/// `laminar_engine::http::connection_budgets`).
fn connection_families() -> [Family; 4] {
    let mut open = Family::gauge(
        "laminar_http_connections",
        "Connections to each endpoint: open (in use or idle), idle, waited for, and the most the process opens.",
    );
    let mut peak =
        Family::gauge("laminar_http_connections_peak", "The most connections open at once to each endpoint.");
    let mut waits = Family::counter(
        "laminar_http_connection_waits_total",
        "Requests that waited for a connection to come free, the endpoint's bound being reached.",
    );
    let mut reaped = Family::counter(
        "laminar_http_connections_reaped_total",
        "Idle connections closed because their server had closed them or they had aged.",
    );
    for (endpoint, b) in laminar_engine::http::connection_budgets() {
        let e = endpoint.as_str();
        open.push(&[("endpoint", e), ("state", "open")], b.open as f64);
        open.push(&[("endpoint", e), ("state", "idle")], b.idle as f64);
        open.push(&[("endpoint", e), ("state", "waiting")], b.waiting as f64);
        if b.limit != usize::MAX {
            open.push(&[("endpoint", e), ("state", "limit")], b.limit as f64);
        }
        peak.push(&[("endpoint", e)], b.peak as f64);
        waits.push(&[("endpoint", e)], b.waits as f64);
        reaped.push(&[("endpoint", e)], b.reaped as f64);
    }
    [open, peak, waits, reaped]
}
