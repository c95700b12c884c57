//! Upload sessions, with Dropbox's rules for each kind.
//!
//! - Sequential: data arrives in order; each append's cursor offset must equal what
//!   the session holds (`incorrect_offset` with `correct_offset` otherwise, also when
//!   the data was already received), and the running content hash is carried from
//!   append to append.
//! - Concurrent: `start` and `finish` carry no data; every append starts at a multiple
//!   of 4 MiB (`concurrent_session_invalid_offset`) and is a multiple of 4 MiB long
//!   (`concurrent_session_invalid_data_size`) except the one with `close: true`, which
//!   ends the file. Pieces arrive in any order, each hashed per 4 MiB block as it
//!   arrives; finish needs the session closed (`concurrent_session_not_closed`) and
//!   every byte up to the end present (`concurrent_session_missing_data`). A piece that
//!   overlaps another (other than an exact resend, which replaces it) is refused as an
//!   invalid offset.
//!
//! Sessions live `session_lifetime_s` (Dropbox: 7 days; then `not_found`). Their number
//! is bounded (the oldest is dropped first, as if expired) and so are the bytes they
//! hold (past it, an append is refused with a 507 that names the emulator's limit). A
//! finished session keeps its id, without data, so that a repeat gets `closed`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::content_hash::{hash_of_blocks, BlockDigest, ContentHasher, BLOCK_BYTES};
use super::namespace::Content;
use super::wire::ApiError;

/// Every concurrent append but the last starts and ends on this boundary.
pub const CONCURRENT_ALIGN_BYTES: u64 = BLOCK_BYTES as u64;
/// The largest file an upload session may build: 2^41 - 2^22 bytes.
pub const SESSION_FILE_BYTES_MAX: u64 = (1 << 41) - (1 << 22);
const _: () = assert!(SESSION_FILE_BYTES_MAX.is_multiple_of(CONCURRENT_ALIGN_BYTES));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionType {
    Sequential,
    Concurrent,
}

struct Piece {
    data: Bytes,
    digests: Vec<BlockDigest>,
}

enum Data {
    Sequential {
        hasher: Box<ContentHasher>,
        segments: Vec<Bytes>,
        len: u64,
    },
    Concurrent {
        pieces: BTreeMap<u64, Piece>,
        end: Option<u64>,
    },
    /// Committed: the id stays so a repeat is told `closed`.
    Finished,
}

struct Session {
    data: Data,
    closed: bool,
    created: Instant,
    /// Creation order, for the bound.
    serial: u64,
}

impl Session {
    fn held_bytes(&self) -> u64 {
        match &self.data {
            Data::Sequential { len, .. } => *len,
            Data::Concurrent { pieces, .. } => pieces.values().map(|p| p.data.len() as u64).sum(),
            Data::Finished => 0,
        }
    }
}

/// The body of an append or finish, read and hashed.
pub(crate) struct Received {
    pub data: Bytes,
    /// Sequential sessions: the session's hasher, advanced over `data`.
    pub continued: Option<Box<ContentHasher>>,
    /// Concurrent sessions: `data`'s block digests (it starts on a block boundary).
    pub digests: Option<Vec<BlockDigest>>,
    /// The content hash of `data` alone, when the call gave one to check.
    pub call_hash: Option<String>,
}

/// What the body of a call into a session must be hashed as, decided before reading it.
pub(crate) enum Plan {
    /// Sequential: continue this hasher (a copy of the session's) from `offset`.
    Continue { hasher: Box<ContentHasher>, offset: u64 },
    /// Concurrent: record block digests.
    Blocks,
}

/// A finished session's file, ready to commit.
pub(crate) struct Assembled {
    pub content: Content,
    pub hash: String,
}

/// The open sessions.
pub(crate) struct Sessions {
    map: HashMap<String, Session>,
    sessions_max: usize,
    lifetime: Duration,
    held_bytes: u64,
    held_bytes_max: u64,
    seed: u64,
    serial: u64,
}

fn lookup_err(tag: &str) -> Value {
    json!({ ".tag": tag })
}

fn incorrect_offset(correct: u64) -> Value {
    json!({ ".tag": "incorrect_offset", "correct_offset": correct })
}

impl Sessions {
    pub(crate) fn new(seed: u64, sessions_max: usize, lifetime: Duration, held_bytes_max: u64) -> Sessions {
        assert!(sessions_max > 0);
        Sessions { map: HashMap::new(), sessions_max, lifetime, held_bytes: 0, held_bytes_max, seed, serial: 0 }
    }

    /// Sessions started and neither finished nor expired.
    pub(crate) fn open(&self) -> usize {
        self.map.values().filter(|s| !matches!(s.data, Data::Finished) && s.created.elapsed() < self.lifetime).count()
    }

    /// Bytes held by open sessions.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    fn new_id(&mut self) -> String {
        self.serial += 1;
        let d = Sha256::new()
            .chain_update(self.seed.to_le_bytes())
            .chain_update(b"upload-session")
            .chain_update(self.serial.to_le_bytes());
        format!("pid_upload_session:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d.finalize()[..24]))
    }

    fn remove(&mut self, id: &str) {
        if let Some(s) = self.map.remove(id) {
            self.held_bytes -= s.held_bytes();
        }
    }

    /// Starts a session, with its first data (sequential only; `data` hashed by `hasher`).
    pub(crate) fn start(
        &mut self,
        kind: SessionType,
        close: bool,
        data: Bytes,
        hasher: Box<ContentHasher>,
    ) -> Result<String, ApiError> {
        if kind == SessionType::Concurrent {
            if !data.is_empty() {
                return Err(ApiError::tag("concurrent_session_data_not_allowed"));
            }
            if close {
                return Err(ApiError::tag("concurrent_session_close_not_allowed"));
            }
        }
        self.reserve(data.len() as u64)?;
        while self.map.len() >= self.sessions_max {
            // Finished ones first, then the oldest: to its client, as if it had expired.
            let victim = self
                .map
                .iter()
                .min_by_key(|(_, s)| (!matches!(s.data, Data::Finished), s.serial))
                .map(|(id, _)| id.clone())
                .expect("the map is not empty");
            self.remove(&victim);
        }
        let id = self.new_id();
        let len = data.len() as u64;
        let data = match kind {
            SessionType::Sequential => Data::Sequential { hasher, segments: vec![data], len },
            SessionType::Concurrent => Data::Concurrent { pieces: BTreeMap::new(), end: None },
        };
        self.held_bytes += len;
        self.map.insert(id.clone(), Session { data, closed: close, created: Instant::now(), serial: self.serial });
        assert!(self.map.len() <= self.sessions_max);
        Ok(id)
    }

    fn reserve(&self, more: u64) -> Result<(), ApiError> {
        if self.held_bytes + more > self.held_bytes_max {
            return Err(ApiError::EmulatorLimit(format!(
                "open upload sessions would hold {} bytes, over session_bytes_max = {}",
                self.held_bytes + more,
                self.held_bytes_max
            )));
        }
        Ok(())
    }

    /// The session, or the `UploadSessionLookupError` to answer (`not_found` when
    /// unknown or expired, `closed` when finished).
    fn get(&mut self, id: &str) -> Result<&mut Session, Value> {
        let expired = self.map.get(id).map(|s| s.created.elapsed() >= self.lifetime);
        match expired {
            None => return Err(lookup_err("not_found")),
            Some(true) => {
                self.remove(id);
                return Err(lookup_err("not_found"));
            }
            Some(false) => {}
        }
        let s = self.map.get_mut(id).expect("just checked");
        if matches!(s.data, Data::Finished) {
            return Err(lookup_err("closed"));
        }
        Ok(s)
    }

    /// Checks an append (or a finish's data) before its body is read, and says how to
    /// hash the body. Errors are `UploadSessionLookupError` values.
    pub(crate) fn plan(&mut self, id: &str, offset: u64, finishing: bool) -> Result<Plan, Value> {
        let s = self.get(id)?;
        let closed = s.closed;
        match &s.data {
            Data::Sequential { hasher, len, .. } => {
                if closed && !finishing {
                    return Err(lookup_err("closed"));
                }
                if offset != *len {
                    return Err(incorrect_offset(*len));
                }
                Ok(Plan::Continue { hasher: hasher.clone(), offset })
            }
            Data::Concurrent { .. } => {
                if finishing {
                    // Checked with the (empty) body in `assemble`.
                    return Ok(Plan::Blocks);
                }
                if !offset.is_multiple_of(CONCURRENT_ALIGN_BYTES) {
                    return Err(lookup_err("concurrent_session_invalid_offset"));
                }
                Ok(Plan::Blocks)
            }
            Data::Finished => unreachable!("get refuses finished sessions"),
        }
    }

    /// Adds an append's body. Errors are `UploadSessionAppendError` values (or an
    /// emulator limit).
    pub(crate) fn append(&mut self, id: &str, offset: u64, close: bool, body: Received) -> Result<(), ApiError> {
        let n = body.data.len() as u64;
        self.reserve(n)?;
        let s = self.get(id).map_err(ApiError::Route)?;
        let mut freed = 0;
        match &mut s.data {
            Data::Sequential { hasher, segments, len } => {
                if s.closed {
                    return Err(ApiError::tag("closed"));
                }
                // Another append may have landed while this body was read.
                if offset != *len {
                    return Err(ApiError::Route(incorrect_offset(*len)));
                }
                if *len + n > SESSION_FILE_BYTES_MAX {
                    return Err(ApiError::tag("too_large"));
                }
                *hasher = body.continued.expect("sequential appends continue the session's hasher");
                segments.push(body.data);
                *len += n;
                s.closed = close;
            }
            Data::Concurrent { pieces, end } => {
                let piece_end = offset + n;
                if !close && !n.is_multiple_of(CONCURRENT_ALIGN_BYTES) {
                    return Err(ApiError::tag("concurrent_session_invalid_data_size"));
                }
                if piece_end > SESSION_FILE_BYTES_MAX {
                    return Err(ApiError::tag("too_large"));
                }
                if let Some(e) = *end {
                    if close || piece_end > e {
                        return Err(ApiError::tag("closed"));
                    }
                }
                if close && pieces.range(piece_end..).next().is_some() {
                    // Data already received past the end this piece declares.
                    return Err(ApiError::tag("concurrent_session_invalid_offset"));
                }
                let before = pieces.range(..offset).next_back().map(|(o, p)| o + p.data.len() as u64);
                let after = pieces.range(offset + 1..).next().map(|(o, _)| *o);
                let exact = pieces.get(&offset).map(|p| p.data.len() as u64);
                let overlaps = before.is_some_and(|b| b > offset)
                    || after.is_some_and(|a| a < piece_end)
                    || exact.is_some_and(|len| len != n);
                if overlaps {
                    return Err(ApiError::tag("concurrent_session_invalid_offset"));
                }
                if close {
                    *end = Some(piece_end);
                    s.closed = true;
                }
                if n > 0 {
                    let digests = body.digests.expect("concurrent appends record block digests");
                    if let Some(old) = pieces.insert(offset, Piece { data: body.data, digests }) {
                        freed = old.data.len() as u64;
                    }
                }
            }
            Data::Finished => unreachable!("get refuses finished sessions"),
        }
        self.held_bytes = self.held_bytes + n - freed;
        Ok(())
    }

    /// Puts together a session's file for `finish` (with that call's `data`, sequential
    /// only) or `finish_batch` (`batch`: the session must be closed). Errors are
    /// `UploadSessionFinishError` values. The session keeps its data until
    /// [`Sessions::finished`].
    pub(crate) fn assemble(
        &mut self,
        id: &str,
        offset: u64,
        body: Option<Received>,
        batch: bool,
    ) -> Result<Assembled, ApiError> {
        let lookup_failed = |v: Value| ApiError::Route(json!({ ".tag": "lookup_failed", "lookup_failed": v }));
        if let Some(b) = &body {
            self.reserve(b.data.len() as u64)?;
        }
        let s = self.get(id).map_err(lookup_failed)?;
        if batch && !s.closed {
            return Err(lookup_failed(lookup_err("not_closed")));
        }
        let mut added = 0;
        let result = match &mut s.data {
            Data::Sequential { hasher, segments, len } => {
                if offset != *len {
                    return Err(lookup_failed(incorrect_offset(*len)));
                }
                if let Some(b) = body {
                    // The call's data joins the session even if the commit then fails.
                    *hasher = b.continued.expect("sequential finishes continue the session's hasher");
                    *len += b.data.len() as u64;
                    added = b.data.len() as u64;
                    segments.push(b.data);
                }
                let content = Content::from_segments(segments.clone());
                assert_eq!(content.len(), *len);
                Ok(Assembled { content, hash: hasher.clone().finish_hex() })
            }
            Data::Concurrent { pieces, end } => {
                if body.as_ref().is_some_and(|b| !b.data.is_empty()) {
                    return Err(ApiError::tag("concurrent_session_data_not_allowed"));
                }
                let Some(end) = *end else {
                    return Err(ApiError::tag("concurrent_session_not_closed"));
                };
                if offset != end {
                    return Err(lookup_failed(incorrect_offset(end)));
                }
                let mut at = 0;
                for (&o, p) in pieces.iter() {
                    if o != at {
                        break;
                    }
                    at = o + p.data.len() as u64;
                }
                if at != end {
                    return Err(ApiError::tag("concurrent_session_missing_data"));
                }
                let hash = hash_of_blocks(pieces.values().flat_map(|p| p.digests.iter()));
                let content = Content::from_segments(pieces.values().map(|p| p.data.clone()).collect());
                Ok(Assembled { content, hash })
            }
            Data::Finished => unreachable!("get refuses finished sessions"),
        };
        self.held_bytes += added;
        result
    }

    /// Marks a session committed: its data goes (the file holds it now), its id stays.
    pub(crate) fn finished(&mut self, id: &str) {
        if let Some(s) = self.map.get_mut(id) {
            self.held_bytes -= s.held_bytes();
            s.data = Data::Finished;
        }
    }
}

/// Hashes a call's body as it arrives, as a [`Plan`] says, with the call's own
/// content hash when the call gave one to check.
pub(crate) struct BodyHasher {
    plan: Plan,
    recording: Option<ContentHasher>,
    call: Option<ContentHasher>,
    want_call_hash: bool,
}

impl BodyHasher {
    pub(crate) fn new(plan: Plan, want_call_hash: bool) -> BodyHasher {
        let (recording, call) = match &plan {
            Plan::Blocks => (Some(ContentHasher::recording()), None),
            // From offset 0 the session's hash so far is the call's; otherwise hash twice.
            Plan::Continue { offset, .. } => (None, (want_call_hash && *offset != 0).then(ContentHasher::new)),
        };
        BodyHasher { plan, recording, call, want_call_hash }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.plan {
            Plan::Continue { hasher, .. } => hasher.update(data),
            Plan::Blocks => self.recording.as_mut().expect("blocks record").update(data),
        }
        if let Some(c) = &mut self.call {
            c.update(data);
        }
    }

    /// The body, with what was computed over it.
    pub(crate) fn finish(self, data: Bytes) -> Received {
        match self.plan {
            Plan::Continue { hasher, offset } => {
                let call_hash = match self.call {
                    Some(c) => Some(c.finish_hex()),
                    None => (self.want_call_hash && offset == 0).then(|| hasher.clone().finish_hex()),
                };
                Received { data, continued: Some(hasher), digests: None, call_hash }
            }
            Plan::Blocks => {
                let digests = self.recording.expect("blocks record").finish_blocks();
                let call_hash = self.want_call_hash.then(|| hash_of_blocks(&digests));
                Received { data, continued: None, digests: Some(digests), call_hash }
            }
        }
    }
}

/// Hashes a whole body at once (tests, seeding).
#[cfg(test)]
pub(crate) fn hash_body(plan: Plan, data: Bytes, want_call_hash: bool) -> Received {
    let mut h = BodyHasher::new(plan, want_call_hash);
    h.update(&data);
    h.finish(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB4: usize = CONCURRENT_ALIGN_BYTES as usize;

    fn sessions() -> Sessions {
        Sessions::new(3, 4, Duration::from_secs(3600), 1 << 30)
    }

    fn body(s: &mut Sessions, id: &str, offset: u64, data: Vec<u8>) -> Result<Received, Value> {
        let plan = s.plan(id, offset, false)?;
        Ok(hash_body(plan, Bytes::from(data), true))
    }

    fn tag(e: ApiError) -> String {
        match e {
            ApiError::Route(v) => v[".tag"].as_str().unwrap().to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sequential_offsets_must_match() {
        let mut s = sessions();
        let mut h = Box::<ContentHasher>::default();
        h.update(b"abc");
        let id = s.start(SessionType::Sequential, false, Bytes::from_static(b"abc"), h).unwrap();
        assert_eq!(s.plan(&id, 0, false).err().unwrap(), incorrect_offset(3), "data already received");
        assert_eq!(s.plan(&id, 5, false).err().unwrap(), incorrect_offset(3));
        let b = body(&mut s, &id, 3, b"def".to_vec()).unwrap();
        assert_eq!(b.call_hash.as_deref(), Some(super::super::content_hash_hex(b"def").as_str()));
        s.append(&id, 3, true, b).unwrap();
        assert_eq!(s.plan(&id, 6, false).err().unwrap(), lookup_err("closed"));
        let err = s.assemble(&id, 5, None, false).err().unwrap();
        assert!(matches!(err, ApiError::Route(ref v) if v["lookup_failed"]["correct_offset"] == 6), "{err:?}");
        let a = s.assemble(&id, 6, None, true).unwrap();
        assert_eq!(a.content.to_vec(), b"abcdef");
        assert_eq!(a.hash, super::super::content_hash_hex(b"abcdef"));
        s.finished(&id);
        assert_eq!(s.held_bytes(), 0);
        assert_eq!(s.plan(&id, 6, false).err().unwrap(), lookup_err("closed"));
        assert_eq!(s.plan("pid_upload_session:nope", 0, false).err().unwrap(), lookup_err("not_found"));
    }

    #[test]
    fn concurrent_alignment_rules() {
        let mut s = sessions();
        assert_eq!(
            tag(s.start(SessionType::Concurrent, false, Bytes::from_static(b"x"), Box::default()).unwrap_err()),
            "concurrent_session_data_not_allowed"
        );
        assert_eq!(
            tag(s.start(SessionType::Concurrent, true, Bytes::new(), Box::default()).unwrap_err()),
            "concurrent_session_close_not_allowed"
        );
        let id = s.start(SessionType::Concurrent, false, Bytes::new(), Box::default()).unwrap();
        assert_eq!(s.plan(&id, 100, false).err().unwrap(), lookup_err("concurrent_session_invalid_offset"));
        let short = body(&mut s, &id, 0, vec![1; 1000]).unwrap();
        assert_eq!(tag(s.append(&id, 0, false, short).unwrap_err()), "concurrent_session_invalid_data_size");
        // The final piece first, then the middle, then the start: any order.
        let data: Vec<u8> = (0..2 * MIB4 + 10).map(|i| (i % 251) as u8).collect();
        let last = body(&mut s, &id, 2 * MIB4 as u64, data[2 * MIB4..].to_vec()).unwrap();
        s.append(&id, 2 * MIB4 as u64, true, last).unwrap();
        let err = s.assemble(&id, data.len() as u64, None, false).err().unwrap();
        assert_eq!(tag(err), "concurrent_session_missing_data");
        let mid = body(&mut s, &id, MIB4 as u64, data[MIB4..2 * MIB4].to_vec()).unwrap();
        s.append(&id, MIB4 as u64, false, mid).unwrap();
        // Two blocks at 0 overlap the piece at 4 MiB.
        let overlap = body(&mut s, &id, 0, data[..2 * MIB4].to_vec()).unwrap();
        assert_eq!(tag(s.append(&id, 0, false, overlap).unwrap_err()), "concurrent_session_invalid_offset");
        let first = body(&mut s, &id, 0, data[..MIB4].to_vec()).unwrap();
        s.append(&id, 0, false, first).unwrap();
        // A resend of the same piece replaces it.
        let again = body(&mut s, &id, 0, data[..MIB4].to_vec()).unwrap();
        s.append(&id, 0, false, again).unwrap();
        assert_eq!(s.held_bytes(), data.len() as u64);
        let past = body(&mut s, &id, 3 * MIB4 as u64, vec![0; MIB4]).unwrap();
        assert_eq!(tag(s.append(&id, 3 * MIB4 as u64, false, past).unwrap_err()), "closed");
        let err = s.assemble(&id, 5, None, false).err().unwrap();
        assert!(matches!(err, ApiError::Route(ref v) if v["lookup_failed"]["correct_offset"] == data.len()), "{err:?}");
        let with_data = Received { data: Bytes::from_static(b"x"), continued: None, digests: None, call_hash: None };
        assert_eq!(
            tag(s.assemble(&id, data.len() as u64, Some(with_data), false).err().unwrap()),
            "concurrent_session_data_not_allowed"
        );
        let a = s.assemble(&id, data.len() as u64, None, true).unwrap();
        assert_eq!(a.content.to_vec(), data);
        assert_eq!(a.hash, super::super::content_hash_hex(&data));
    }

    #[test]
    fn concurrent_finish_needs_a_close() {
        let mut s = sessions();
        let id = s.start(SessionType::Concurrent, false, Bytes::new(), Box::default()).unwrap();
        let b = body(&mut s, &id, 0, vec![0; MIB4]).unwrap();
        s.append(&id, 0, false, b).unwrap();
        assert_eq!(tag(s.assemble(&id, MIB4 as u64, None, false).err().unwrap()), "concurrent_session_not_closed");
        let err = s.assemble(&id, MIB4 as u64, None, true).err().unwrap();
        assert!(matches!(err, ApiError::Route(ref v) if v["lookup_failed"][".tag"] == "not_closed"), "{err:?}");
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut s = Sessions::new(3, 2, Duration::from_secs(3600), 10);
        let a = s.start(SessionType::Sequential, false, Bytes::new(), Box::default()).unwrap();
        let _b = s.start(SessionType::Sequential, false, Bytes::new(), Box::default()).unwrap();
        let _c = s.start(SessionType::Sequential, false, Bytes::new(), Box::default()).unwrap();
        assert_eq!(s.open(), 2);
        assert_eq!(s.plan(&a, 0, false).err().unwrap(), lookup_err("not_found"), "the oldest went");
        let err = s.start(SessionType::Sequential, false, Bytes::from(vec![0; 11]), Box::default()).unwrap_err();
        assert!(matches!(err, ApiError::EmulatorLimit(_)));
        let mut expiring = Sessions::new(3, 2, Duration::ZERO, 10);
        let id = expiring.start(SessionType::Sequential, false, Bytes::new(), Box::default()).unwrap();
        assert_eq!(expiring.plan(&id, 0, false).err().unwrap(), lookup_err("not_found"));
    }
}
