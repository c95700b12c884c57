//! Upload sessions of the in-memory store, as strict as the services they stand in
//! for: a single put is visible once put (S3); parallel parts are held by number with
//! their receipt (the part's MD5, as S3's ETag) and completed from the list the relay
//! gives, which must name every part by its receipt, in order, contiguous, each but
//! the last at least the minimum size (S3's `InvalidPart`, `InvalidPartOrder`,
//! `EntityTooSmall`); an ordered stream takes each part only at the offset it has
//! committed (Dropbox's `incorrect_offset`, Drive's resumable offsets), and finishes
//! only when it holds the whole object. Parts but the last must be multiples of the
//! alignment (Dropbox's 4 MiB). A body that doesn't match a checksum the store
//! verifies is refused, and nothing of it is kept.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{checksum_of, http, too_large, MemState, MemStore};
use crate::backend::{
    Committed, CopySource, LocalFuture, PartRecord, PartSpec, PutArgs, Session, SessionState, UploadMode, UploadPlan,
    UploadSession,
};
use crate::checksum::{Checksum, ChecksumAlgo};
use crate::error::{Error, ErrorClass, Result};
use crate::pool::ring::{Drain, Next};
use crate::pool::Body;

/// An upload the store holds until it is finished or aborted.
pub(super) struct MemSession {
    plan: UploadPlan,
    args: PutArgs,
    /// Parallel parts, by number.
    parts: BTreeMap<u32, HeldPart>,
    /// An ordered stream: the bytes committed so far.
    stream: Vec<u8>,
}

struct HeldPart {
    offset: u64,
    bytes: Vec<u8>,
    token: String,
    /// In the algorithm the upload was begun with (empty when it named none).
    checksum: Checksum,
}

/// The store's part of a session's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemSessionState {
    /// The store the session is in.
    store: u64,
    /// The session's id; None for a single put.
    session: Option<u64>,
}

struct MemUpload<'a> {
    store: &'a MemStore,
    state: SessionState,
    session: Option<u64>,
    /// The generation a single put wrote, so that an abort removes that and no later
    /// object.
    put_done: Cell<Option<u64>>,
}

pub(super) fn begin<'a>(store: &'a MemStore, key: &'a str, plan: UploadPlan, args: &'a PutArgs) -> Result<Session<'a>> {
    let session = if plan.single {
        // A single put needs no request before its body.
        None
    } else {
        let mut state = store.shared.request("create-multipart");
        let id = state.next_session;
        state.next_session += 1;
        let session = MemSession { plan, args: args.clone(), parts: BTreeMap::new(), stream: Vec::new() };
        state.sessions.insert(id, session);
        Some(id)
    };
    let store_state = serde_json::to_value(MemSessionState { store: store.shared.id, session }).expect("serialisable");
    let state = SessionState { key: key.to_string(), plan, args: args.clone(), store: store_state, parts: Vec::new() };
    Ok(Box::new(MemUpload { store, state, session, put_done: Cell::new(None) }))
}

pub(super) fn resume(store: &MemStore, state: SessionState) -> Result<Session<'_>> {
    let parsed: MemSessionState = serde_json::from_value(state.store.clone()).map_err(|e| {
        Error::protocol("resume", &state.key, format!("the session's state is not a mem upload's: {e}"))
    })?;
    if parsed.store != store.shared.id {
        return Err(Error::protocol("resume", &state.key, "the session belongs to another mem store"));
    }
    Ok(Box::new(MemUpload { store, state, session: parsed.session, put_done: Cell::new(None) }))
}

fn no_such_upload(op: &'static str, key: &str) -> Error {
    http(
        op,
        key,
        404,
        "NoSuchUpload",
        "The specified upload does not exist: it was finished or aborted.".into(),
        ErrorClass::FatalObject,
    )
}

fn invalid_part(op: &'static str, key: &str, code: &str, message: String) -> Error {
    http(op, key, 400, code, message, ErrorClass::FatalObject)
}

/// Refuses `bytes` unless they match every checksum among `sums` that the store
/// verifies.
fn verify(store: &MemStore, op: &'static str, key: &str, bytes: &[u8], sums: &[Checksum]) -> Result<()> {
    for sum in sums.iter().filter(|s| store.shared.capabilities.verifies(s.algo)) {
        let computed = checksum_of(sum.algo, bytes);
        if &computed != sum {
            return Err(Error::Integrity {
                op,
                target: key.to_string(),
                detail: format!(
                    "the store computed {computed} over the {} bytes it received, the request carried {sum} \
                     (BadDigest); it kept none of them",
                    bytes.len()
                ),
            });
        }
    }
    Ok(())
}

impl MemUpload<'_> {
    fn key(&self) -> &str {
        &self.state.key
    }

    /// Takes one body (a single put, a part, or a part's range copied in the store)
    /// under the store's lock.
    fn take(
        &self,
        state: &mut MemState,
        op: &'static str,
        part: PartSpec,
        bytes: Vec<u8>,
        sums: &[Checksum],
    ) -> Result<String> {
        let key = self.key();
        let shared = &self.store.shared;
        let limits = shared.options.parts;
        if bytes.len() as u64 != part.len {
            return Err(invalid_part(
                op,
                key,
                "IncompleteBody",
                format!("part {} is {} bytes but the request carried {}", part.number, part.len, bytes.len()),
            ));
        }
        verify(self.store, op, key, &bytes, sums)?;
        let Some(id) = self.session else {
            if part.len > limits.max_single_put_bytes {
                return Err(too_large(op, key, part.len, limits.max_single_put_bytes));
            }
            let md5 = checksum_of(ChecksumAlgo::Md5, &bytes).to_hex();
            let generation = shared.write(state, key, Arc::new(bytes), &self.state.args);
            self.put_done.set(Some(generation));
            return Ok(md5);
        };
        let session = state.sessions.get_mut(&id).ok_or_else(|| no_such_upload(op, key))?;
        let size = session.plan.size;
        let end = part.offset + part.len;
        if end > size {
            return Err(invalid_part(
                op,
                key,
                "InvalidArgument",
                format!("part {} ends at byte {end}, past the object's {size}", part.number),
            ));
        }
        if part.len > limits.max_part_bytes {
            return Err(too_large(op, key, part.len, limits.max_part_bytes));
        }
        let alignment = limits.part_alignment_bytes;
        if end < size && !part.len.is_multiple_of(alignment) {
            return Err(invalid_part(
                op,
                key,
                "InvalidPartSize",
                format!(
                    "part {} is {} bytes: parts but the last must be a multiple of {alignment} bytes",
                    part.number, part.len
                ),
            ));
        }
        match shared.options.upload {
            UploadMode::Parallel => {
                if part.number == 0 || part.number > limits.max_parts {
                    return Err(invalid_part(
                        op,
                        key,
                        "InvalidArgument",
                        format!("part number {} is not in 1..={}", part.number, limits.max_parts),
                    ));
                }
                let token = checksum_of(ChecksumAlgo::Md5, &bytes).to_hex();
                let checksum = match session.plan.checksum {
                    Some(algo) => checksum_of(algo, &bytes),
                    None => Checksum { algo: ChecksumAlgo::Crc32c, bytes: Vec::new() },
                };
                // As S3: the last upload of a part number is the one kept.
                session
                    .parts
                    .insert(part.number, HeldPart { offset: part.offset, bytes, token: token.clone(), checksum });
                Ok(token)
            }
            UploadMode::Ordered => {
                let held = session.stream.len() as u64;
                if part.offset != held {
                    // Retryable: the relay asks what the session holds and goes on from
                    // there.
                    return Err(http(
                        op,
                        key,
                        409,
                        "incorrect_offset",
                        format!(
                            "the session holds {held} bytes, so the next part must start at byte {held}; part {} \
                             starts at byte {}",
                            part.number, part.offset
                        ),
                        ErrorClass::Retryable,
                    ));
                }
                session.stream.extend_from_slice(&bytes);
                Ok(String::new())
            }
        }
    }

    /// The object a parallel upload's part list makes.
    fn assemble(&self, session: &MemSession, parts: &[PartRecord]) -> Result<Vec<u8>> {
        let (op, key) = ("complete-multipart", self.key());
        let limits = self.store.shared.options.parts;
        if parts.is_empty() {
            return Err(invalid_part(op, key, "MalformedXML", "a completion names at least one part".into()));
        }
        let mut bytes = Vec::with_capacity(session.plan.size as usize);
        let mut previous = 0;
        for (i, record) in parts.iter().enumerate() {
            if record.number <= previous {
                return Err(invalid_part(
                    op,
                    key,
                    "InvalidPartOrder",
                    format!("part {} is listed after part {previous}", record.number),
                ));
            }
            previous = record.number;
            let held = session.parts.get(&record.number).ok_or_else(|| {
                invalid_part(op, key, "InvalidPart", format!("part {} was never uploaded", record.number))
            })?;
            let same_sum = record.checksum.bytes.is_empty()
                || held.checksum.bytes.is_empty()
                || record.checksum.algo != held.checksum.algo
                || record.checksum == held.checksum;
            if held.token != record.token || !same_sum {
                return Err(invalid_part(
                    op,
                    key,
                    "InvalidPart",
                    format!("part {} is not the part uploaded under that number", record.number),
                ));
            }
            if held.offset != bytes.len() as u64 {
                return Err(invalid_part(
                    op,
                    key,
                    "InvalidPart",
                    format!(
                        "part {} starts at byte {}, but the parts before it end at {}",
                        record.number,
                        held.offset,
                        bytes.len()
                    ),
                ));
            }
            if i + 1 < parts.len() && (held.bytes.len() as u64) < limits.min_part_bytes {
                return Err(invalid_part(
                    op,
                    key,
                    "EntityTooSmall",
                    format!(
                        "part {} is {} bytes, below the {} bytes each part but the last must have",
                        record.number,
                        held.bytes.len(),
                        limits.min_part_bytes
                    ),
                ));
            }
            bytes.extend_from_slice(&held.bytes);
        }
        Ok(bytes)
    }
}

impl UploadSession for MemUpload<'_> {
    fn state(&self) -> &SessionState {
        &self.state
    }

    fn put<'a>(&'a self, part: PartSpec, body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let mut bytes = Vec::with_capacity(body.len() as usize);
            body.slices().for_each(|s| bytes.extend_from_slice(s));
            drop(body);
            self.store.shared.wait().await;
            let op = if self.session.is_none() { "put" } else { "upload-part" };
            let mut state = self.store.shared.request(op);
            self.take(&mut state, op, part, bytes, sums)
        })
    }

    fn streams(&self, _algo: ChecksumAlgo) -> bool {
        let options = &self.store.shared.options;
        self.session.is_some() && options.streams && options.upload == UploadMode::Parallel
    }

    fn put_stream<'a>(&'a self, part: PartSpec, algo: ChecksumAlgo, drain: Drain) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let key = self.key();
            if !self.streams(algo) {
                return Err(Error::protocol("upload-part", key, "this session takes no streamed parts"));
            }
            let mut bytes = Vec::with_capacity(part.len as usize);
            let sum = loop {
                match drain.next().await {
                    Next::Chunk(chunk) => {
                        bytes.extend_from_slice(chunk.as_slice());
                        drain.recycle(chunk);
                    }
                    Next::End(sum) if bytes.len() as u64 == part.len => break sum,
                    // As a real client does, the request is never completed: the store
                    // sees a broken body, not a short part.
                    Next::End(_) => {
                        let detail = format!("the source ended after {} of {} bytes", bytes.len(), part.len);
                        return Err(Error::protocol("upload-part", key, detail));
                    }
                    Next::Aborted => {
                        let cut = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the body ended after {} of {} bytes, before its trailer", bytes.len(), part.len),
                        );
                        return Err(Error::io("upload-part", key, cut));
                    }
                }
            };
            drop(drain);
            self.store.shared.wait().await;
            let mut state = self.store.shared.request("upload-part");
            self.take(&mut state, "upload-part", part, bytes, &[sum])
        })
    }

    fn copy_part<'a>(&'a self, source: &'a CopySource, part: PartSpec) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            use crate::backend::Sink as _;
            let key = self.key();
            self.store.shared.wait().await;
            let mut state = self.store.shared.request("copy-part");
            if !self.store.can_copy_from(source) || self.session.is_none() {
                return Err(http(
                    "copy-part",
                    key,
                    501,
                    "NotImplemented",
                    "no server-side copy into this session".into(),
                    ErrorClass::FatalObject,
                ));
            }
            let object = state.objects.get(&source.reference).ok_or_else(|| super::no_such_key("copy-part", key))?;
            let (start, end) = super::checked_range("copy-part", key, Some(part.range()), object.bytes.len() as u64)?;
            let bytes = object.bytes[start as usize..end as usize].to_vec();
            self.take(&mut state, "copy-part", part, bytes, &[])
        })
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        Box::pin(async move {
            let Some(id) = self.session else { return Ok(Committed::Parts(Vec::new())) };
            self.store.shared.wait().await;
            let state = self.store.shared.request("list-parts");
            let session = state.sessions.get(&id).ok_or_else(|| no_such_upload("list-parts", self.key()))?;
            Ok(match self.store.shared.options.upload {
                UploadMode::Ordered => Committed::Offset(session.stream.len() as u64),
                UploadMode::Parallel => Committed::Parts(
                    session
                        .parts
                        .iter()
                        .map(|(number, p)| PartRecord {
                            number: *number,
                            offset: p.offset,
                            len: p.bytes.len() as u64,
                            token: p.token.clone(),
                            checksum: p.checksum.clone(),
                        })
                        .collect(),
                ),
            })
        })
    }

    fn finish<'a>(&'a self, parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            // A single put is complete once it is put.
            let Some(id) = self.session else { return Ok(()) };
            let (op, key) = ("complete-multipart", self.key());
            self.store.shared.wait().await;
            let mut state = self.store.shared.request(op);
            let session = state.sessions.get(&id).ok_or_else(|| no_such_upload(op, key))?;
            let size = session.plan.size;
            let bytes = match self.store.shared.options.upload {
                UploadMode::Parallel => self.assemble(session, parts)?,
                UploadMode::Ordered => session.stream.clone(),
            };
            if bytes.len() as u64 != size {
                return Err(invalid_part(
                    op,
                    key,
                    "IncompleteUpload",
                    format!("the upload holds {} bytes, the object was begun as {size}", bytes.len()),
                ));
            }
            if let Some(full) = full.filter(|f| self.store.shared.capabilities.verifies(f.algo)) {
                let computed = checksum_of(full.algo, &bytes);
                if &computed != full {
                    return Err(http(
                        op,
                        key,
                        400,
                        "BadDigest",
                        format!("the object's {} is {computed}, the completion carried {full}", full.algo.name()),
                        ErrorClass::FatalObject,
                    ));
                }
            }
            let session = state.sessions.remove(&id).expect("looked up above");
            self.store.shared.write(&mut state, key, Arc::new(bytes), &session.args);
            Ok(())
        })
    }

    fn abort(&self) -> LocalFuture<'_, Result<()>> {
        Box::pin(async move {
            let key = self.key();
            self.store.shared.wait().await;
            match self.session {
                None => {
                    // As S3's backend: a single put already made is deleted.
                    if let Some(generation) = self.put_done.take() {
                        let mut state = self.store.shared.request("delete");
                        let held = self.store.shared.resolve(&state, key);
                        if state.objects.get(&held).is_some_and(|o| o.generation == generation) {
                            state.objects.remove(&held);
                        }
                    }
                }
                Some(id) => {
                    self.store.shared.request("abort-multipart").sessions.remove(&id);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MemBackend, MemOptions};
    use super::*;
    use crate::backend::{Backend, Sink, WorkerCtx};
    use crate::pool::BufferPool;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::runtime::block_on(crate::runtime::Driver::Epoll, f).expect("runtime")
    }

    async fn body(pool: &BufferPool, bytes: &[u8]) -> Body {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        for mut c in pool.acquire(pool.chunks_for(bytes.len() as u64)).await {
            let n = c.extend_from(rest);
            rest = &rest[n..];
            chunks.push(c);
        }
        Body::new(chunks)
    }

    fn crc(bytes: &[u8]) -> Checksum {
        checksum_of(ChecksumAlgo::Crc32c, bytes)
    }

    fn open(mem: &MemBackend) -> std::rc::Rc<dyn Sink> {
        mem.open_sink(&WorkerCtx::new(Default::default())).unwrap()
    }

    fn plan(size: u64) -> UploadPlan {
        UploadPlan { size, single: false, checksum: Some(ChecksumAlgo::Crc32c) }
    }

    #[test]
    fn parts_become_visible_only_when_finished() {
        let pool = BufferPool::new(4096, 16);
        let mem = MemBackend::new(MemOptions::default());
        let sink = open(&mem);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let args = PutArgs::default();
        block_on(async {
            let session = sink.begin("k", plan(10_000), &args).await.unwrap();
            let (a, b) = data.split_at(6000);
            let p2 = PartSpec { number: 2, offset: 6000, len: 4000 };
            let p1 = PartSpec { number: 1, offset: 0, len: 6000 };
            let t2 = session.put(p2, body(&pool, b).await, &[crc(b)]).await.unwrap();
            // A corrupt part is refused and not kept.
            let mut bad = a.to_vec();
            bad[7] ^= 1;
            let err = session.put(p1, body(&pool, &bad).await, &[crc(a)]).await.unwrap_err();
            assert!(matches!(err, Error::Integrity { .. }), "{err}");
            assert!(matches!(session.committed().await.unwrap(), Committed::Parts(p) if p.len() == 1));
            let t1 = session.put(p1, body(&pool, a).await, &[crc(a)]).await.unwrap();
            assert!(mem.objects().is_empty());
            let records = [PartRecord::new(p1, t1, crc(a)), PartRecord::new(p2, t2.clone(), crc(b))];
            // Parts out of order, or a wrong receipt, are refused.
            let swapped = [records[1].clone(), records[0].clone()];
            assert!(session.finish(&swapped, None).await.is_err());
            let mut wrong = records.clone();
            wrong[0].token = t2;
            assert!(session.finish(&wrong, None).await.is_err());
            let mut bad_full = crc(&data);
            bad_full.bytes[0] ^= 1;
            assert!(session.finish(&records, Some(&bad_full)).await.is_err());
            assert_eq!(mem.open_sessions(), 1);
            session.finish(&records, Some(&crc(&data))).await.unwrap();
        });
        assert_eq!(mem.objects().get("k"), Some(&data));
        assert_eq!(mem.open_sessions(), 0);
    }

    #[test]
    fn an_ordered_stream_takes_parts_at_its_offset_and_aligned() {
        let pool = BufferPool::new(4096, 16);
        let mem = MemBackend::new(MemOptions::ordered(4096));
        let sink = open(&mem);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let args = PutArgs::default();
        block_on(async {
            let session = sink.begin("k", plan(10_000), &args).await.unwrap();
            let part = |offset: u64, len: u64| PartSpec { number: 1, offset, len };
            let slice = |p: PartSpec| &data[p.offset as usize..(p.offset + p.len) as usize];
            // Misaligned: refused for good.
            let p = part(0, 5000);
            let e = session.put(p, body(&pool, slice(p)).await, &[crc(slice(p))]).await.unwrap_err();
            assert_eq!(e.class(), ErrorClass::FatalObject, "{e}");
            let p = part(0, 8192);
            session.put(p, body(&pool, slice(p)).await, &[crc(slice(p))]).await.unwrap();
            // Not at the committed offset: retryable, naming both offsets.
            let p = part(4096, 4096);
            let e = session.put(p, body(&pool, slice(p)).await, &[crc(slice(p))]).await.unwrap_err();
            assert_eq!(e.class(), ErrorClass::Retryable);
            assert!(e.to_string().contains("8192") && e.to_string().contains("4096"), "{e}");
            assert_eq!(session.committed().await.unwrap(), Committed::Offset(8192));
            assert!(session.finish(&[], None).await.is_err(), "finishing short of the size");
            let p = part(8192, 10_000 - 8192);
            session.put(p, body(&pool, slice(p)).await, &[crc(slice(p))]).await.unwrap();
            session.finish(&[], Some(&crc(&data))).await.unwrap();
        });
        assert_eq!(mem.objects().get("k"), Some(&data));
    }

    #[test]
    fn an_aborted_single_put_is_removed() {
        let pool = BufferPool::new(4096, 4);
        let mut options = MemOptions::default();
        options.parts.max_single_put_bytes = 100;
        let mem = MemBackend::new(options);
        let sink = open(&mem);
        let args = PutArgs::default();
        block_on(async {
            let single = UploadPlan { size: 3, single: true, checksum: None };
            let session = sink.begin("k", single, &args).await.unwrap();
            session.put(PartSpec { number: 1, offset: 0, len: 3 }, body(&pool, b"abc").await, &[]).await.unwrap();
            assert_eq!(mem.objects().len(), 1);
            session.abort().await.unwrap();
            assert!(mem.objects().is_empty());
            let big = UploadPlan { size: 101, single: true, checksum: None };
            let session = sink.begin("k", big, &args).await.unwrap();
            let e = session.put(PartSpec { number: 1, offset: 0, len: 101 }, body(&pool, &[0; 101]).await, &[]).await;
            assert!(e.unwrap_err().to_string().contains("EntityTooLarge"));
        });
        assert_eq!(mem.request_count("put"), 2);
    }
}
