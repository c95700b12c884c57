//! The journal: what a relay began at its destination and what the destination
//! committed, kept in a database in the data directory, so that a relay killed in the
//! middle of an object (`kill -9`, an OOM kill, a reboot) and started again goes on
//! from what was committed instead of from zero.
//!
//! **Why SQLite** (rusqlite, with SQLite bundled into the binary: no system library):
//! its write-ahead log survives a killed process by construction, one file holds every
//! relay and job of the appliance with many readers beside one writer (the CLI and
//! `laminar serve` may open it at once), and an operator can read it with the
//! `sqlite3` shell. redb would also do; SQLite's SQL makes the job queries of
//! `laminar serve` (by state, by age) one statement each.
//!
//! **What is kept.** A row per relay (source, destination, options, the process that
//! runs it and its state); a row per object with an upload session open at the
//! destination (its [`SessionState`], part size, and the source version and size it
//! was started from); a row per part the destination acknowledged (its [`PartRecord`]
//! and, for a Dropbox source, the part's block digests, so that a resumed object is
//! still checked against the source's content_hash). The journal never points at
//! stage bytes: only parts the destination holds are recorded.
//!
//! **Writes** go off the event loops: workers send records on a channel, and one writer
//! thread applies whatever has queued up in one transaction. The database runs in WAL
//! mode with `synchronous = NORMAL`: a killed process loses nothing that was written,
//! and a power cut can lose the last few milliseconds of records, whose parts are then
//! sent again. A part is recorded only after the destination acknowledged it, so the
//! journal never claims a part the destination may not hold; on resume, what it says
//! is reconciled with what the store says it holds anyway.
//!
//! **Resume.** A relay claims the open uploads to its destination from the same source
//! that were left by relays whose process is gone (pid and start time checked, so a
//! reused pid is not mistaken for the relay). Uploads no relay will resume (their
//! relay ended, or it died longer ago than the orphan age) are handed back as orphans,
//! for the relay to abort at its destination. Nothing the journal did not record is
//! ever aborted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::backend::{PartRecord, SessionState};
use crate::checksum::PartBlocks;
use crate::error::{Error, Result};

/// The database file in the data directory.
pub const FILE_NAME: &str = "laminar.db";
/// Records the writer applies in one transaction, at most.
const BATCH_MAX: usize = 4096;
/// How long a statement waits for another process's write to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The schema's version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS relays (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    options TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    dst TEXT NOT NULL,
    dst_key TEXT NOT NULL,
    relay_id INTEGER NOT NULL,
    src TEXT NOT NULL,
    src_key TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    part_size INTEGER NOT NULL,
    session TEXT NOT NULL,
    begun_at INTEGER NOT NULL,
    PRIMARY KEY (dst, dst_key)
);
CREATE TABLE IF NOT EXISTS parts (
    dst TEXT NOT NULL,
    dst_key TEXT NOT NULL,
    number INTEGER NOT NULL,
    record TEXT NOT NULL,
    blocks TEXT,
    PRIMARY KEY (dst, dst_key, number)
);
";

/// One record for the writer.
enum Write {
    Begun { relay: i64, upload: Box<Resumable>, src: String, dst: String },
    Part { dst: String, dst_key: String, record: Box<PartRecord>, blocks: Option<Box<PartBlocks>> },
    Ended { dst: String, dst_key: String },
    RelayEnded { relay: i64, state: &'static str },
    Flush(crossbeam_channel::Sender<()>),
}

/// The appliance's journal: one database, one writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// For reads and claims, on the caller's thread.
    conn: Mutex<Connection>,
    tx: crossbeam_channel::Sender<Write>,
    /// This process, as the relays' rows name it.
    pid: u32,
    pid_start: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.inner.path).finish()
    }
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Usage(format!(
        "the journal {} cannot be used: {e}; check that the data directory (LAMINAR_DATA_DIR) is writable, or pass \
         --no-journal",
        path.display()
    ))
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| db_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db_error(path, e))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| db_error(path, e))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| db_error(path, e))?;
    Ok(conn)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Journal> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("journal", dir.display().to_string(), e))?;
        let path = dir.join(FILE_NAME);
        let conn = open_conn(&path)?;
        let version: i64 =
            conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| db_error(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Usage(format!(
                "the journal {} was written by a newer Laminar (schema {version}, this one knows {SCHEMA_VERSION}); \
                 run that version, or point LAMINAR_DATA_DIR elsewhere",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(|e| db_error(&path, e))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| db_error(&path, e))?;
        let writer = open_conn(&path)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("laminar-journal".into())
            .spawn(move || write_loop(writer, &thread_path, &rx))
            .map_err(|e| Error::io("journal", path.display().to_string(), e))?;
        let crate::owner::Owner { pid, start: pid_start } = crate::owner::Owner::me();
        Ok(Journal { inner: Arc::new(Inner { path, conn: Mutex::new(conn), tx, pid, pid_start }) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Waits until every record sent so far is written.
    pub fn flush(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.inner.tx.send(Write::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    fn send(&self, w: Write) {
        // The writer ends only with the process; a send cannot fail before.
        let _ = self.inner.tx.send(w);
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.inner.conn.lock().expect("no panics holding the journal connection")
    }

    /// Records a relay starting from `src` to `dst` (locations as the operator wrote
    /// them) with `options` (JSON, no secrets).
    pub fn start_relay(&self, src: &str, dst: &str, options: &str) -> Result<RelayJournal> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO relays (src, dst, options, pid, pid_start, started_at, state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running')",
            params![src, dst, options, self.inner.pid, self.inner.pid_start as i64, now_s()],
        )
        .map_err(|e| db_error(&self.inner.path, e))?;
        let id = conn.last_insert_rowid();
        Ok(RelayJournal { journal: self.clone(), id, src: src.to_string(), dst: dst.to_string() })
    }
}

/// An upload the journal knows of: enough to reopen its session and go on.
#[derive(Debug, Clone)]
pub struct Resumable {
    /// Source key.
    pub src_key: String,
    /// Destination key.
    pub dst_key: String,
    /// The source version it was started from.
    pub version: String,
    /// The object's size.
    pub size: u64,
    /// The part size it was planned with.
    pub part_size: u64,
    /// The session, with the parts the destination acknowledged.
    pub state: SessionState,
    /// The source's block digests of those parts, by part number (Dropbox sources).
    pub blocks: HashMap<u32, PartBlocks>,
}

/// What a relay found in the journal at its start.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Uploads this relay may go on with, by source key.
    pub resumable: HashMap<String, Resumable>,
    /// Uploads to this destination that no relay will go on with: to abort.
    pub orphans: Vec<Resumable>,
}

/// One relay's handle on the journal.
#[derive(Debug)]
pub struct RelayJournal {
    journal: Journal,
    id: i64,
    src: String,
    dst: String,
}

impl RelayJournal {
    /// Claims the uploads to this relay's destination that relays now gone left open:
    /// those from this relay's source to go on with, and the orphans (left by a relay
    /// that ended, or by one that died more than `orphan_age` ago).
    pub fn claim(&self, orphan_age: Duration) -> Result<Claimed> {
        let path = &self.journal.inner.path;
        let err = |e| db_error(path, e);
        let mut conn = self.journal.conn();
        let tx = conn.transaction().map_err(err)?;
        // The relays whose uploads are in question, and whether each is gone.
        // Whether each is orphaned (it ended, or died longer ago than the orphan age).
        let mut owners: HashMap<i64, bool> = HashMap::new();
        {
            let mut q = tx
                .prepare(
                    "SELECT r.id, r.pid, r.pid_start, r.started_at, r.state FROM relays r \
                     WHERE r.id != ?1 AND r.id IN (SELECT relay_id FROM uploads WHERE dst = ?2)",
                )
                .map_err(err)?;
            let rows = q
                .query_map(params![self.id, self.dst], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .map_err(err)?;
            let old_before = now_s() - orphan_age.as_secs() as i64;
            for row in rows {
                let (id, pid, pid_start, started_at, state) = row.map_err(err)?;
                let alive =
                    state == "running" && crate::owner::process_start(pid).is_some_and(|s| s as i64 == pid_start);
                if alive {
                    continue;
                }
                // A relay that stopped or failed, or died, left its uploads for the next
                // run; one that finished had covered everything it would resume.
                owners.insert(id, state == "done" || started_at < old_before);
            }
        }
        let mut claimed = Claimed::default();
        {
            let mut q = tx
                .prepare(
                    "SELECT dst_key, relay_id, src, src_key, version, size, part_size, session FROM uploads WHERE dst = ?1",
                )
                .map_err(err)?;
            let rows = q
                .query_map(params![self.dst], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .map_err(err)?;
            let mut parts_q = tx
                .prepare("SELECT record, blocks FROM parts WHERE dst = ?1 AND dst_key = ?2 ORDER BY number")
                .map_err(err)?;
            for row in rows {
                let (dst_key, relay, src, src_key, version, size, part_size, session) = row.map_err(err)?;
                let Some(&orphaned) = owners.get(&relay) else { continue };
                if !orphaned && src != self.src {
                    continue;
                }
                let Ok(mut state) = serde_json::from_str::<SessionState>(&session) else {
                    // A record this version cannot read: nothing to go on with or abort.
                    continue;
                };
                let mut blocks = HashMap::new();
                state.parts.clear();
                let parts = parts_q
                    .query_map(params![self.dst, dst_key], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                    })
                    .map_err(err)?;
                for part in parts {
                    let (record, blocks_json) = part.map_err(err)?;
                    let Ok(record) = serde_json::from_str::<PartRecord>(&record) else { continue };
                    if let Some(b) = blocks_json.and_then(|b| serde_json::from_str::<PartBlocks>(&b).ok()) {
                        blocks.insert(record.number, b);
                    }
                    state.parts.push(record);
                }
                let upload = Resumable {
                    src_key,
                    dst_key,
                    version,
                    size: size as u64,
                    part_size: part_size as u64,
                    state,
                    blocks,
                };
                if orphaned {
                    claimed.orphans.push(upload);
                } else {
                    claimed.resumable.insert(upload.src_key.clone(), upload);
                }
            }
        }
        // Claimed, orphans too: no other relay touches them from now on.
        for upload in claimed.resumable.values().chain(&claimed.orphans) {
            tx.execute(
                "UPDATE uploads SET relay_id = ?1 WHERE dst = ?2 AND dst_key = ?3",
                params![self.id, self.dst, upload.dst_key],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(claimed)
    }

    /// Records an upload begun (or begun again): its session, the source version and
    /// size it reads, and the part size.
    pub fn begun(&self, src_key: &str, version: &str, size: u64, part_size: u64, state: &SessionState) {
        let mut state = state.clone();
        state.parts.clear();
        let upload = Resumable {
            src_key: src_key.to_string(),
            dst_key: state.key.clone(),
            version: version.to_string(),
            size,
            part_size,
            state,
            blocks: HashMap::new(),
        };
        self.journal.send(Write::Begun {
            relay: self.id,
            upload: Box::new(upload),
            src: self.src.clone(),
            dst: self.dst.clone(),
        });
    }

    /// Records a part the destination acknowledged.
    pub fn part(&self, dst_key: &str, record: &PartRecord, blocks: Option<&PartBlocks>) {
        self.journal.send(Write::Part {
            dst: self.dst.clone(),
            dst_key: dst_key.to_string(),
            record: Box::new(record.clone()),
            blocks: blocks.cloned().map(Box::new),
        });
    }

    /// Records that the upload of `dst_key` is over: completed, or aborted.
    pub fn ended(&self, dst_key: &str) {
        self.journal.send(Write::Ended { dst: self.dst.clone(), dst_key: dst_key.to_string() });
    }

    /// Records the relay's end and waits until every record is written: `done` (what it
    /// did not resume, it aborted), or `stopped` / `failed` (its open uploads are the
    /// next run's to go on with).
    pub fn finish(&self, state: &'static str) {
        self.journal.send(Write::RelayEnded { relay: self.id, state });
        self.journal.flush();
    }

    /// The journal this relay writes to.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

fn write_loop(mut conn: Connection, path: &Path, rx: &crossbeam_channel::Receiver<Write>) {
    let mut warned = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let result = apply(&mut conn, batch, &mut flushes);
        if let Err(e) = result {
            if !warned {
                warned = true;
                tracing::warn!(
                    "the journal {} could not be written ({e}); a relay killed now starts its \
                     half-copied objects over",
                    path.display()
                );
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn apply(
    conn: &mut Connection,
    batch: Vec<Write>,
    flushes: &mut Vec<crossbeam_channel::Sender<()>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for w in batch {
        match w {
            Write::Begun { relay, upload, src, dst } => {
                let session = serde_json::to_string(&upload.state).expect("session states serialise");
                tx.execute("DELETE FROM parts WHERE dst = ?1 AND dst_key = ?2", params![dst, upload.dst_key])?;
                tx.execute(
                    "INSERT OR REPLACE INTO uploads \
                     (dst, dst_key, relay_id, src, src_key, version, size, part_size, session, begun_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        dst,
                        upload.dst_key,
                        relay,
                        src,
                        upload.src_key,
                        upload.version,
                        upload.size as i64,
                        upload.part_size as i64,
                        session,
                        now_s()
                    ],
                )?;
            }
            Write::Part { dst, dst_key, record, blocks } => {
                let json = serde_json::to_string(&*record).expect("part records serialise");
                let blocks = blocks.map(|b| serde_json::to_string(&*b).expect("block digests serialise"));
                tx.execute(
                    "INSERT OR REPLACE INTO parts (dst, dst_key, number, record, blocks) \
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM uploads WHERE dst = ?1 AND dst_key = ?2)",
                    params![dst, dst_key, record.number, json, blocks],
                )?;
            }
            Write::Ended { dst, dst_key } => {
                tx.execute("DELETE FROM parts WHERE dst = ?1 AND dst_key = ?2", params![dst, dst_key])?;
                tx.execute("DELETE FROM uploads WHERE dst = ?1 AND dst_key = ?2", params![dst, dst_key])?;
            }
            Write::RelayEnded { relay, state } => {
                tx.execute(
                    "UPDATE relays SET state = ?2, ended_at = ?3 WHERE id = ?1",
                    params![relay, state, now_s()],
                )?;
            }
            Write::Flush(f) => flushes.push(f),
        }
    }
    tx.commit()
}

/// How many uploads the journal holds open (for tests and `laminar plan`).
pub fn open_uploads(journal: &Journal) -> Result<u64> {
    let conn = journal.conn();
    let n: Option<i64> = conn
        .query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get(0))
        .optional()
        .map_err(|e| db_error(&journal.inner.path, e))?;
    Ok(n.unwrap_or(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{PartSpec, PutArgs, UploadPlan};
    use crate::checksum::{Checksum, ChecksumAlgo};

    fn state(key: &str) -> SessionState {
        SessionState {
            key: key.to_string(),
            plan: UploadPlan { size: 100, single: false, checksum: Some(ChecksumAlgo::Crc32c) },
            args: PutArgs::default(),
            store: serde_json::json!({ "upload_id": "u-1" }),
            parts: Vec::new(),
        }
    }

    fn record(number: u32) -> PartRecord {
        let spec = PartSpec { number, offset: (number as u64 - 1) * 50, len: 50 };
        PartRecord::new(spec, format!("etag-{number}"), Checksum::from_crc32c(number))
    }

    /// Marks relay `id` as run by a process that is gone.
    fn crash(journal: &Journal, id: i64) {
        journal.flush();
        journal.conn().execute("UPDATE relays SET pid_start = -1 WHERE id = ?1", params![id]).unwrap();
    }

    #[test]
    fn a_crashed_relays_uploads_are_claimed_by_the_next_one_from_the_same_source() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let first = j.start_relay("s3:src", "gd:dst", "{}").unwrap();
        first.begun("a.bin", "v1", 100, 50, &state("dst/a.bin"));
        first.part("dst/a.bin", &record(1), None);
        first.begun("b.bin", "v1", 100, 50, &state("dst/b.bin"));
        first.ended("dst/b.bin");
        crash(&j, first.id);

        // A relay from another source leaves it alone; one from this source claims it.
        let other = j.start_relay("s3:elsewhere", "gd:dst", "{}").unwrap();
        let c = other.claim(Duration::from_secs(3600)).unwrap();
        assert!(c.resumable.is_empty() && c.orphans.is_empty(), "{c:?}");
        let again = Journal::open(dir.path()).unwrap().start_relay("s3:src", "gd:dst", "{}").unwrap();
        let c = again.claim(Duration::from_secs(3600)).unwrap();
        assert_eq!(c.resumable.len(), 1, "{c:?}");
        let a = &c.resumable["a.bin"];
        assert_eq!((a.dst_key.as_str(), a.version.as_str(), a.size, a.part_size), ("dst/a.bin", "v1", 100, 50));
        assert_eq!(a.state.parts, vec![record(1)]);
        assert_eq!(a.state.store["upload_id"], "u-1");
        // Claimed: a third relay finds nothing while this one runs.
        let third = j.start_relay("s3:src", "gd:dst", "{}").unwrap();
        assert!(third.claim(Duration::from_secs(3600)).unwrap().resumable.is_empty());
    }

    #[test]
    fn uploads_of_an_ended_or_long_dead_relay_are_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let ended = j.start_relay("s3:src", "gd:dst", "{}").unwrap();
        ended.begun("a.bin", "v1", 100, 50, &state("dst/a.bin"));
        ended.finish("done");
        let dead = j.start_relay("s3:other", "gd:dst", "{}").unwrap();
        dead.begun("b.bin", "v1", 100, 50, &state("dst/b.bin"));
        crash(&j, dead.id);
        j.conn().execute("UPDATE relays SET started_at = 0 WHERE id = ?1", params![dead.id]).unwrap();
        let live = j.start_relay("s3:src", "gd:dst", "{}").unwrap();
        live.begun("c.bin", "v1", 100, 50, &state("dst/c.bin"));
        j.flush();
        let next = j.start_relay("s3:src", "gd:dst", "{}").unwrap();
        let c = next.claim(Duration::from_secs(3600)).unwrap();
        let mut orphans: Vec<&str> = c.orphans.iter().map(|o| o.dst_key.as_str()).collect();
        orphans.sort();
        assert_eq!(orphans, ["dst/a.bin", "dst/b.bin"], "the live relay's upload is its own");
        assert!(c.resumable.is_empty());
    }

    #[test]
    fn a_part_of_an_upload_that_ended_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let r = j.start_relay("s3:src", "gd:dst", "{}").unwrap();
        r.begun("a.bin", "v1", 100, 50, &state("dst/a.bin"));
        r.ended("dst/a.bin");
        r.part("dst/a.bin", &record(2), None);
        j.flush();
        let parts: i64 = j.conn().query_row("SELECT COUNT(*) FROM parts", [], |row| row.get(0)).unwrap();
        assert_eq!(parts, 0);
        assert_eq!(open_uploads(&j).unwrap(), 0);
    }
}
