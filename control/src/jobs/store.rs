//! Where jobs live across restarts: a `jobs` table in the appliance's database, the
//! same SQLite file as the engine's journal (`$LAMINAR_DATA_DIR/laminar.db`).
//!
//! One row per job: its spec as submitted, its state, and a record of everything its
//! view shows (history, counters, failures, what was left out, the last check, why it
//! waits). The row is written through on every state change, before the API answers,
//! and the counters of jobs in flight about once a second; so the database says what
//! the API says, and a restart (clean or `kill -9`) lists every job as before. Terminal
//! jobs older than `--keep-jobs` are pruned.
//!
//! Writes happen on the control path (the API's handlers, the job threads, the
//! sampler), never on the engine's event loops; each is one small transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::{JobSpec, State, Transition, VerifyView};
use laminar_engine::backend::LeftOut;
use laminar_engine::relay::{Failure, Waiting};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    finished_unix INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs (seq);
";

/// How long a statement waits for another connection's write.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters as last seen, so a restarted appliance shows them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SavedCounters {
    pub objects_total: u64,
    pub objects_copied: u64,
    pub objects_skipped: u64,
    pub objects_failed: u64,
    pub bytes_total: u64,
    pub bytes_copied: u64,
    pub throttle_cuts: u64,
    /// Failed attempts by store: source, destination (absent in rows of older
    /// versions).
    #[serde(default)]
    pub stores: [StoreCounters; 2],
}

/// One store's failed attempts, as last seen.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StoreCounters {
    pub retries: u64,
    pub throttled: u64,
    pub errors: u64,
}

/// Everything about a job but its spec, as kept.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub created_at: String,
    pub history: Vec<Transition>,
    pub error: Option<String>,
    pub failures: Vec<Failure>,
    pub left_out: Vec<LeftOut>,
    pub objects_planned: u64,
    pub finished_at: Option<String>,
    pub verify: Option<VerifyView>,
    /// The state a check started from, while one runs.
    pub verify_before: Option<State>,
    pub report_seconds: Option<f64>,
    pub waiting: Option<Waiting>,
    pub counters: SavedCounters,
    pub transfers: usize,
    /// The rate limits in force (None in rows kept before they were).
    #[serde(default)]
    pub rates: Option<SavedRates>,
}

/// A job's rate limits, as kept.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedRates {
    pub bwlimit: Option<String>,
    pub tpslimit: Option<f64>,
}

/// A job as read back.
pub struct SavedJob {
    pub id: String,
    pub seq: u64,
    pub spec: JobSpec,
    pub state: State,
    pub record: JobRecord,
}

/// The jobs table.
pub struct JobStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn db_error(path: &Path, e: impl std::fmt::Display) -> String {
    format!(
        "the appliance's database {} cannot be used: {e}; check that LAMINAR_DATA_DIR is writable, or pass --no-journal \
         to keep jobs in memory only",
        path.display()
    )
}

impl JobStore {
    /// Opens the table in the database at `path` (the journal's file).
    pub fn open(path: &Path) -> Result<JobStore, String> {
        let conn = Connection::open(path).map_err(|e| db_error(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db_error(path, e))?;
        conn.execute_batch(SCHEMA).map_err(|e| db_error(path, e))?;
        Ok(JobStore { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("no panics holding the jobs connection")
    }

    /// Writes a job's row (inserted or replaced). A failed write is logged: the job
    /// goes on, and the next write carries its state.
    pub fn save(
        &self,
        id: &str,
        seq: u64,
        spec: &JobSpec,
        state: State,
        record: &JobRecord,
        finished_unix: Option<u64>,
    ) {
        let spec = serde_json::to_string(spec).expect("a spec serialises");
        let record = serde_json::to_string(record).expect("a record serialises");
        let result = self.conn().execute(
            "INSERT INTO jobs (id, seq, spec, state, record, finished_unix) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(id) DO UPDATE SET state = ?4, record = ?5, finished_unix = ?6",
            params![id, seq as i64, spec, state.name(), record, finished_unix.map(|t| t as i64)],
        );
        if let Err(e) = result {
            tracing::warn!("job {id} was not saved: {}", db_error(&self.path, e));
        }
    }

    /// Every job kept, oldest first. A row that cannot be read is skipped with a warning.
    pub fn load(&self) -> Result<Vec<SavedJob>, String> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, seq, spec, state, record FROM jobs ORDER BY seq")
            .map_err(|e| db_error(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| db_error(&self.path, e))?;
        let mut jobs = Vec::new();
        for row in rows {
            let (id, seq, spec, state, record) = row.map_err(|e| db_error(&self.path, e))?;
            let parsed = serde_json::from_str::<JobSpec>(&spec).map_err(|e| e.to_string()).and_then(|spec| {
                let state =
                    State::ALL.into_iter().find(|s| s.name() == state).ok_or(format!("unknown state {state:?}"))?;
                let record = serde_json::from_str::<JobRecord>(&record).map_err(|e| e.to_string())?;
                Ok((spec, state, record))
            });
            match parsed {
                Ok((spec, state, record)) => jobs.push(SavedJob { id, seq: seq as u64, spec, state, record }),
                Err(e) => tracing::warn!("job {id} in {} cannot be read ({e}); it is not listed", self.path.display()),
            }
        }
        Ok(jobs)
    }

    /// Deletes terminal jobs that ended before `before_unix`; returns their ids.
    pub fn prune(&self, before_unix: u64) -> Vec<String> {
        let conn = self.conn();
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM jobs WHERE finished_unix IS NOT NULL AND finished_unix <= ?1")
            .and_then(|mut s| s.query_map([before_unix as i64], |r| r.get(0))?.collect())
            .unwrap_or_default();
        if !ids.is_empty() {
            let deleted = conn.execute(
                "DELETE FROM jobs WHERE finished_unix IS NOT NULL AND finished_unix <= ?1",
                [before_unix as i64],
            );
            if let Err(e) = deleted {
                tracing::warn!("old jobs were not pruned: {}", db_error(&self.path, e));
                return Vec::new();
            }
        }
        ids
    }

    /// Deletes one job's row (a job forgotten beyond the in-memory bound).
    pub fn forget(&self, id: &str) {
        let _ = self.conn().execute("DELETE FROM jobs WHERE id = ?1", [id]);
    }
}

/// Holds `$LAMINAR_DATA_DIR/serve.lock` for the life of the process, so that two
/// appliances never run the same jobs from one database.
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    /// Takes the lock, or says who holds it.
    pub fn take(dir: &Path) -> Result<ServeLock, String> {
        use std::io::{Read, Seek, Write};
        let path = dir.join("serve.lock");
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(
                |e| format!("cannot open {}: {e}; set LAMINAR_DATA_DIR to a directory you can write", path.display()),
            )?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "another laminar serve (pid {}) runs jobs from {}; stop it, or give this one its own LAMINAR_DATA_DIR",
                holder.trim(),
                dir.display()
            ));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(ServeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        JobRecord {
            created_at: "2026-12-01T00:00:00.000Z".into(),
            history: Vec::new(),
            error: None,
            failures: vec![Failure { key: "k".into(), reason: "r".into() }],
            left_out: Vec::new(),
            objects_planned: 3,
            finished_at: None,
            verify: None,
            verify_before: None,
            report_seconds: None,
            waiting: None,
            counters: SavedCounters { bytes_copied: 42, ..SavedCounters::default() },
            transfers: 8,
            rates: Some(SavedRates { bwlimit: Some("08:00,10M 19:00,off".into()), tpslimit: Some(2.5) }),
        }
    }

    #[test]
    fn jobs_are_read_back_as_written_and_old_terminal_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(&dir.path().join("laminar.db")).unwrap();
        let spec: JobSpec = serde_json::from_str(r#"{"source":"a:x","destination":"b:y"}"#).unwrap();
        store.save("j-1", 1, &spec, State::Running, &record(), None);
        store.save("j-2", 2, &spec, State::Succeeded, &record(), Some(100));
        let mut r = record();
        r.counters.bytes_copied = 43;
        store.save("j-1", 1, &spec, State::Paused, &r, None);
        let jobs = store.load().unwrap();
        assert_eq!(
            jobs.iter().map(|j| (j.id.as_str(), j.state)).collect::<Vec<_>>(),
            [("j-1", State::Paused), ("j-2", State::Succeeded)]
        );
        assert_eq!(jobs[0].record.counters.bytes_copied, 43);
        let rates = jobs[0].record.rates.as_ref().expect("rates kept");
        assert_eq!((rates.bwlimit.as_deref(), rates.tpslimit), (Some("08:00,10M 19:00,off"), Some(2.5)));
        assert_eq!(jobs[0].spec.source, "a:x");
        assert_eq!(store.prune(99), Vec::<String>::new());
        assert_eq!(store.prune(100), ["j-2"]);
        assert_eq!(store.load().unwrap().len(), 1);
    }

    #[test]
    fn a_second_appliance_on_one_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = ServeLock::take(dir.path()).unwrap();
        let err = ServeLock::take(dir.path()).err().expect("refused");
        assert!(err.contains(&std::process::id().to_string()) && err.contains("LAMINAR_DATA_DIR"), "{err}");
        drop(held);
        assert!(ServeLock::take(dir.path()).is_ok());
    }
}
