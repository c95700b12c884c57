//! `laminar serve`: the appliance. The engine's workers, plus the HTTP control
//! sidecar on a thread of its own (tokio and axum; the sidecar is not the byte path).
//!
//! Jobs live in the data directory's database (`$LAMINAR_DATA_DIR/laminar.db`, beside
//! the engine's journal): started again, the appliance lists every job as before and
//! sets the unfinished ones going (see `jobs`). One appliance at a time uses a data
//! directory (`serve.lock`).
//!
//! Connections: however many jobs run, the process opens at most the plan's
//! connections per endpoint (`laminar plan`) to any one store; a job's request beyond
//! them waits for one to come free (see the engine's `http::pool`).
//!
//! Shutdown on SIGTERM or SIGINT: new jobs are refused, every relay is stopped (no
//! new object starts, small transfers in flight finish, parts of large ones are cut and
//! their uploads aborted, so nothing partial looks complete), and the process waits up
//! to `--shutdown-grace` for that before it exits. Jobs are not cancelled: they go
//! on when the appliance starts again (with `--no-journal`, kept nowhere, they are
//! cancelled). A second signal exits at once; an upload cut that way was never
//! completed, so it is not visible either.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use clap::Args;
use laminar_engine::relay::{Engine, EngineOptions, RelayOptions};
use laminar_tuning::HumanBytes;

use crate::api::{self, App};
use crate::cli::{EngineArgs, Fail};
use crate::jobs::{JobStore, Jobs, Keeping, ServeLock};
use crate::listen::{self, Limits};

/// Flags of `laminar serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address of the control API; anything but loopback needs --token-file
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "HOST:PORT")]
    listen: String,
    /// File holding the bearer token the API requires (required off loopback; at least
    /// 32 bytes, e.g. from `openssl rand -hex 32`)
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM certificate chain: serve the API over HTTPS (with --tls-key)
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics without the token (it names jobs and remotes)
    #[arg(long)]
    metrics_public: bool,
    /// Connections the API holds open at once; one more is answered 429
    #[arg(long, default_value_t = Limits::default().max_connections, value_name = "N")]
    max_connections: usize,
    /// Time a client has to send a request's headers (and how long an idle
    /// connection stays open), e.g. 10s
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    header_timeout: String,
    /// How long to wait for jobs to wind down after SIGTERM, e.g. 30s
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    shutdown_grace: String,
    /// A job waiting for the destination's allowance (Google Drive's daily upload
    /// limit) tries again after at most this long, e.g. 1h (default: at the time the
    /// store gives, 24 hours for Drive)
    #[arg(long, value_name = "DURATION")]
    waiting_retry: Option<String>,
    /// How long jobs that ended are kept (listed, and in the database), e.g. 30d
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    keep_jobs: String,
    /// Keep jobs in memory only and no journal: a restart forgets every job, and
    /// half-copied objects start over
    #[arg(long)]
    no_journal: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

fn usage(message: String) -> Fail {
    Fail { code: 2, message }
}

/// The shortest token accepted: 32 bytes, e.g. `openssl rand -hex 16` and up.
pub const TOKEN_BYTES_MIN: usize = 32;

/// Reads the token: one line, no spaces, at least [`TOKEN_BYTES_MIN`] bytes. A file
/// that others can read gets a warning (the token is the appliance's only key).
pub fn read_token(path: &Path) -> Result<String, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--token-file {}: cannot read it: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(usage(format!(
            "--token-file {}: it must hold one token (no spaces), e.g. from `openssl rand -hex 32`",
            path.display()
        )));
    }
    if token.len() < TOKEN_BYTES_MIN {
        return Err(usage(format!(
            "--token-file {}: the token is {} bytes; it must be at least {TOKEN_BYTES_MIN} (e.g. `openssl rand -hex 32` writes 64)",
            path.display(),
            token.len()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "--token-file {} can be read by other users (mode {mode:03o}); `chmod 600` it",
                path.display()
            );
        }
    }
    Ok(token)
}

pub fn run(config: Option<&Path>, args: ServeArgs) -> Result<u8, Fail> {
    let config = Config::load(config)?;
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        usage(format!("--listen {:?}: give HOST:PORT with an IP address, e.g. 127.0.0.1:7070", args.listen))
    })?;
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(usage(format!(
            "--listen {addr} is not a loopback address: give --token-file so that the API requires a bearer token"
        )));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(listen::tls_acceptor(cert, key).map_err(usage)?),
        _ => None,
    };
    if args.max_connections == 0 {
        return Err(usage("--max-connections 0: give at least 1".into()));
    }
    let header_timeout = humantime::parse_duration(&args.header_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| usage(format!("--header-timeout {:?}: give a duration such as 10s", args.header_timeout)))?;
    let limits = Limits { max_connections: args.max_connections, header_timeout, ..Limits::default() };
    let grace = humantime::parse_duration(&args.shutdown_grace)
        .map_err(|e| usage(format!("--shutdown-grace {:?}: {e}; write e.g. 30s", args.shutdown_grace)))?;
    let mut opts = crate::cli::options(&args.engine)?;
    let connections = connections_per_endpoint(&args.engine, &opts)?;
    // Before the engine's workers open any connection.
    laminar_engine::http::set_connections_per_endpoint(connections);
    let keep_jobs = humantime::parse_duration(&args.keep_jobs)
        .map_err(|e| usage(format!("--keep-jobs {:?}: {e}; give a duration such as 30d", args.keep_jobs)))?;
    let (store, _lock) = if args.no_journal {
        (None, None)
    } else {
        let dir = laminar_tuning::plan::default_data_dir();
        std::fs::create_dir_all(&dir).map_err(|e| {
            usage(format!(
                "cannot create the data directory {}: {e}; set LAMINAR_DATA_DIR to a directory you can write",
                dir.display()
            ))
        })?;
        let lock = ServeLock::take(&dir).map_err(usage)?;
        let journal = laminar_engine::journal::Journal::open(&dir)?;
        let store = JobStore::open(journal.path()).map_err(usage)?;
        opts.journal = Some(journal);
        (Some(Arc::new(store)), Some(lock))
    };
    let interrupted = laminar_tuning::catch_interrupts();
    let engine = Arc::new(Engine::start(&EngineOptions::from(&opts))?);
    let waiting_retry = args
        .waiting_retry
        .as_deref()
        .map(|w| {
            humantime::parse_duration(w)
                .map_err(|e| usage(format!("--waiting-retry {w:?}: {e}; give a duration such as \"1h\"")))
        })
        .transpose()?;
    let jobs = Jobs::new(engine.clone(), config, opts, waiting_retry, Keeping { store, keep_jobs });
    let (restored, going_on) = jobs.restore().map_err(usage)?;
    if restored > 0 {
        let jobs = if restored == 1 { "job" } else { "jobs" };
        tracing::info!("restored {restored} {jobs} from the data directory; {going_on} go on");
    }
    let guard = Arc::new(api::Guard { limits, listen: addr, metrics_public: args.metrics_public });
    let app = App { jobs: jobs.clone(), token: token.map(Arc::new), guard };

    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = {
        let jobs = jobs.clone();
        let stop = stop_sampler.clone();
        std::thread::Builder::new()
            .name("laminar-sampler".into())
            .spawn(move || jobs.sample_loop(&stop))
            .expect("spawn sampler thread")
    };

    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let sidecar = std::thread::Builder::new()
        .name("laminar-sidecar".into())
        .spawn(move || sidecar(addr, app, tls, bound_tx, stop_rx))
        .expect("spawn sidecar thread");
    let bound = match bound_rx.recv() {
        Ok(Ok(bound)) => bound,
        Ok(Err(why)) => {
            let _ = sidecar.join();
            engine.shutdown();
            return Err(usage(why));
        }
        Err(_) => return Err(usage("the control sidecar thread ended before it listened".into())),
    };
    tracing::info!(
        "serving on {scheme}://{bound} ({} workers, {}, {} RAM buffer, at most {connections} connections \
         per endpoint{})",
        engine.workers().len(),
        engine.driver(),
        HumanBytes(engine.ram_buffer_bytes()),
        if args.token_file.is_some() { ", bearer token required" } else { "" }
    );
    // One line on stdout with the bound address, for scripts that asked for port 0.
    outln!("listening on {scheme}://{bound}");

    while !interrupted.load(Ordering::Acquire) {
        std::thread::park_timeout(Duration::from_millis(100));
    }
    tracing::info!(
        "shutting down: no new jobs; {} (waiting up to {}; a second signal exits at once)",
        if args.no_journal {
            "cancelling running jobs"
        } else {
            "stopping running jobs, which go on at the next start"
        },
        humantime::format_duration(grace)
    );
    // A second signal now ends the process at once.
    interrupted.store(false, Ordering::Release);
    let clean = jobs.shutdown(grace, interrupted);
    let _ = stop_tx.send(());
    let _ = sidecar.join();
    stop_sampler.store(true, Ordering::Release);
    sampler.thread().unpark();
    let _ = sampler.join();
    if clean {
        engine.shutdown();
        tracing::info!("stopped");
        Ok(0)
    } else {
        tracing::warn!(
            "jobs still winding down after {}; exiting (unfinished uploads are never completed)",
            humantime::format_duration(grace)
        );
        Ok(1)
    }
}

/// The most connections the appliance opens to one endpoint, across all its jobs: the
/// plan's figure (`laminar plan`), or what `--transfers` and `--part-streams` ask for
/// when that is more. Jobs beyond it wait for a connection rather than open more.
fn connections_per_endpoint(engine: &EngineArgs, opts: &RelayOptions) -> Result<usize, Fail> {
    let plan = crate::cli::plan(engine)?;
    let asked = opts.transfers + opts.part_streams.unwrap_or(plan.part_streams);
    Ok(plan.connections_per_endpoint.max(asked))
}

/// The sidecar thread: a small tokio runtime serving the router until told to stop.
fn sidecar(
    addr: SocketAddr,
    app: App,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("laminar-http")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(format!("cannot start the control sidecar: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                let _ = bound.send(Err(format!(
                    "--listen {addr}: cannot listen there: {e}; pick another port or stop what holds it"
                )));
                return;
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        let _ = bound.send(Ok(local));
        let limits = app.guard.limits;
        listen::serve(listener, api::router(app), tls, limits, stop).await;
    });
}
