//! Large objects into a store that takes one ordered stream (Google Drive resumable
//! uploads, Dropbox upload sessions): one task sends the parts in order, each from
//! where the store's committed bytes end. When a part fails, the session is asked
//! what the store holds, and the stream goes on from there: the rest of a part half
//! sent, or an earlier part again if the store kept less than it acknowledged.

use std::rc::Rc;
use std::sync::Arc;

use super::parts::{finish_large, part_done, session_and_spec};
use super::spill::{fill, part_from_stage};
use super::transfer::{Ctx, ObjectJob, PartTask};
use super::Side;
use crate::backend::{Committed, PartRecord, PartSpec, UploadSession};
use crate::checksum::{Hasher, Hashers};
use crate::error::{Error, Result};
use crate::metrics::{timed, Op};
use crate::pool::Body;

/// What one step of the stream did.
enum Step {
    /// The part is in the store.
    Sent(PartRecord),
    /// The store holds only this many bytes: go back and send from there.
    Back(u64),
}

/// Parts read ahead into the stage, in parallel, while a part is sent: the stream never
/// waits for the source.
const READ_AHEAD_PARTS: u32 = 2;

pub(super) async fn run(ctx: Rc<Ctx>, job: Arc<ObjectJob>, staged: bool) {
    let (state, _) = session_and_spec(&job, 0);
    // From the start, or from what the store held of an upload an earlier run began:
    // the part that holds that point, and the bytes of it the store already holds.
    let (count, held, mut index, mut skip) = {
        let large = job.large();
        let (count, held) = (large.progress.part_count(), large.resumed_offset.unwrap_or(0));
        match held < job.size() {
            true => {
                let index = large.progress.part_of(held);
                (count, held, index, held - large.progress.part_spec(index).offset)
            }
            false => (count, held, count, 0),
        }
    };
    // Parts before this one were filled into the stage (or tried).
    let mut filled = index;
    // Steps back allowed: each is a store losing what it acknowledged, which the
    // retries bound like any other failure.
    let mut backs_left = ctx.shared.opts.retries + 1;
    let session = ctx.dst.resume(state.clone());
    if let (Ok(s), true) = (&session, held > 0) {
        if let Err(e) = rehash_held(&ctx, &job, s.as_ref(), held).await {
            part_done(&ctx, &job, index.min(count - 1), Err(e));
            index = count;
        }
    }
    while index < count {
        let session = match &session {
            Ok(s) => s.as_ref(),
            Err(e) => {
                part_done(&ctx, &job, index, Err(Error::protocol("upload-part", job.src_key(), e.to_string())));
                break;
            }
        };
        if ctx.stopped() {
            let e = Error::protocol("upload-part", job.src_key(), "abandoned: the relay was stopped");
            part_done(&ctx, &job, index, Err(e));
            break;
        }
        let spec = job.large().progress.part_spec(index);
        if staged && skip == 0 && index >= filled {
            fill(&ctx, &PartTask::new(job.clone(), index)).await;
            filled = index + 1;
        }
        // The next parts are read into the stage while this one is sent.
        let ahead_end = if staged { (index + 1 + READ_AHEAD_PARTS).min(count) } else { 0 };
        let ahead: Vec<PartTask> = (filled.max(index + 1)..ahead_end).map(|i| PartTask::new(job.clone(), i)).collect();
        filled = filled.max(ahead_end);
        let fills = futures_util::future::join_all(ahead.iter().map(|t| fill(&ctx, t)));
        let (sent, _) = monoio::join!(ctx.unless_stopped(job.src_key(), step(&ctx, &job, session, spec, skip)), fills);
        match sent {
            Ok(Step::Sent(record)) => {
                part_done(&ctx, &job, index, Ok(record));
                index += 1;
                skip = 0;
                if index < count {
                    continue;
                }
                // No later part will find out if the store kept less of the last ones
                // than it acknowledged: ask before finishing.
                match ctx.retry(Side::Destination, || session.committed()).await {
                    Ok(Committed::Offset(held)) if held < job.size() && backs_left > 0 => {
                        backs_left -= 1;
                        let large = job.large();
                        let progress = &large.progress;
                        index = progress.part_of(held);
                        skip = held - progress.part_spec(index).offset;
                    }
                    Ok(Committed::Offset(held)) if held < job.size() => {
                        let e = Error::protocol(
                            "upload-part",
                            job.src_key(),
                            format!("the store keeps losing bytes it acknowledged: it holds {held} of {}", job.size()),
                        );
                        part_done(&ctx, &job, index - 1, Err(e));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        part_done(&ctx, &job, index - 1, Err(e));
                        break;
                    }
                }
            }
            Ok(Step::Back(held)) if backs_left > 0 && held < spec.offset => {
                backs_left -= 1;
                let large = job.large();
                let progress = &large.progress;
                index = progress.part_of(held);
                skip = held - progress.part_spec(index).offset;
            }
            Ok(Step::Back(held)) => {
                let e = Error::protocol(
                    "upload-part",
                    job.src_key(),
                    format!(
                        "the store keeps losing bytes it acknowledged: it holds {held}, part {} starts at {}",
                        spec.number, spec.offset
                    ),
                );
                part_done(&ctx, &job, index, Err(e));
                break;
            }
            Err(e) => {
                part_done(&ctx, &job, index, Err(e));
                break;
            }
        }
    }
    finish_large(&ctx, &job, state).await;
}

/// Reads the first `held` bytes again, which the store holds of an upload an earlier
/// run began, for a backend that checks the upload by a hash of everything sent
/// (Drive): nothing is sent.
async fn rehash_held(ctx: &Ctx, job: &ObjectJob, session: &dyn UploadSession, held: u64) -> Result<()> {
    if !session.wants_held_bytes() {
        return Ok(());
    }
    let algo = ctx.shared.opts.checksum;
    let step = job.large().progress.part_size.max(1);
    let mut offset = 0;
    while offset < held {
        let len = step.min(held - offset);
        let (body, sum) = ctx
            .retry(Side::Source, || async {
                let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len)).await;
                let mut hashers = Hashers::new(algo, false);
                let read = ctx.src.read(job.src_key(), Some((offset, offset + len)), Body::new(chunks), &mut hashers);
                let (body, info) = timed(ctx.src_label(), Op::Get, read).await?;
                super::transfer::pinned(job, info.version_token())?;
                if body.len() != len {
                    let detail = "the source came back short while reading again what the store holds";
                    return Err(Error::protocol("get", job.src_key(), detail));
                }
                Ok((body, hashers.finish().0))
            })
            .await?;
        session.held(offset, &body)?;
        // A whole part the store holds that the journal had no record of (acknowledged
        // just before a kill): its record, from the bytes just read.
        let rebuilt = {
            let mut large = job.large();
            let index = large.progress.part_of(offset);
            let spec = large.progress.part_spec(index);
            let missing = large.progress.parts[index as usize].is_none();
            (missing && spec.offset == offset && spec.len == len).then(|| {
                let record = PartRecord::new(spec, String::new(), sum);
                large.progress.parts[index as usize] = Some(record.clone());
                record
            })
        };
        if let (Some(record), Some(journal)) = (rebuilt, &ctx.shared.journal) {
            journal.part(job.dst_key(), &record, None);
        }
        offset += len;
    }
    Ok(())
}

/// Sends part `spec` from byte `skip` of it on, retrying; before each retry asks the
/// store what it holds and sends only the rest.
async fn step(ctx: &Ctx, job: &ObjectJob, session: &dyn UploadSession, spec: PartSpec, skip: u64) -> Result<Step> {
    let skip = std::cell::Cell::new(skip);
    let attempts = std::cell::Cell::new(0u32);
    let sent_sum = std::cell::RefCell::new(None);
    // What the store kept of a failed attempt beyond what the attempt skipped: bytes
    // not sent again.
    let resumed = |from: u64, held: u64| {
        let kept = held.saturating_sub(spec.offset).min(spec.len).saturating_sub(from);
        ctx.shared.stats.bytes_resumed.fetch_add(kept, std::sync::atomic::Ordering::Relaxed);
    };
    ctx.retry_both(|| async {
        if attempts.replace(attempts.get() + 1) > 0 {
            if let Committed::Offset(held) = session.committed().await? {
                let end = spec.offset + spec.len;
                if held < spec.offset {
                    return Ok(Step::Back(held));
                }
                if held >= end {
                    if let Some(sum) = sent_sum.borrow().clone() {
                        resumed(skip.get(), held);
                        return Ok(Step::Sent(PartRecord::new(spec, String::new(), sum)));
                    }
                    return Ok(Step::Back(spec.offset));
                }
                resumed(skip.get(), held);
                skip.set(held - spec.offset);
            }
        }
        if skip.get() == 0 {
            let staged = {
                let m = job.multipart_staged(spec.number - 1);
                m.map(|(file, (sum, _))| (file, sum))
            };
            if let Some((file, sum)) = staged {
                *sent_sum.borrow_mut() = Some(sum.clone());
                if let Ok((record, _)) = part_from_stage(ctx, job, session, spec, &file, &sum).await {
                    return Ok(Step::Sent(record));
                }
                // The staged send failed, perhaps part way: what the store kept of it
                // is not sent again from the source.
                if let Committed::Offset(held) = session.committed().await? {
                    if held < spec.offset {
                        return Ok(Step::Back(held));
                    }
                    resumed(0, held);
                    if held >= spec.offset + spec.len {
                        return Ok(Step::Sent(PartRecord::new(spec, String::new(), sum)));
                    }
                    skip.set(held - spec.offset);
                }
            }
        }
        send_from(ctx, job, session, spec, skip.get(), &sent_sum).await.map(Step::Sent)
    })
    .await
}

/// Reads part `spec` from the source and sends its bytes from `skip` on. The part's
/// checksum covers all of it (the object's checksum is combined from parts); what is
/// sent carries the checksum of what is sent.
async fn send_from(
    ctx: &Ctx,
    job: &ObjectJob,
    session: &dyn UploadSession,
    spec: PartSpec,
    skip: u64,
    sent_sum: &std::cell::RefCell<Option<crate::checksum::Checksum>>,
) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let mut whole = Hashers::new(algo, false);
    super::parts::keep_source_blocks(job, &mut whole, spec.len);
    let key = job.src_key();
    if skip > 0 {
        // The bytes the store holds are read again only to be hashed.
        let chunks = ctx.pool.acquire(ctx.pool.chunks_for(skip)).await;
        let range = (spec.offset, spec.offset + skip);
        let read = ctx.src.read(key, Some(range), Body::new(chunks), &mut whole);
        // Dropped before the rest is read: a stream must not hold chunks while it
        // waits for more.
        let (held, info) = timed(ctx.src_label(), Op::Get, read).await?;
        super::transfer::pinned(job, info.version_token())?;
        if held.len() != skip {
            return Err(Error::protocol("get", key, format!("part {} came back short", spec.number)));
        }
    }
    let rest = PartSpec { number: spec.number, offset: spec.offset + skip, len: spec.len - skip };
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(rest.len)).await;
    let read = ctx.src.read(key, Some(rest.range()), Body::new(chunks), &mut whole);
    let (body, info) = timed(ctx.src_label(), Op::Get, read).await?;
    super::transfer::pinned(job, info.version_token())?;
    if body.len() != rest.len {
        return Err(Error::protocol(
            "get",
            key,
            format!("part {} came back short: {} of {} bytes", spec.number, body.len(), rest.len),
        ));
    }
    super::parts::record_source_blocks(job, spec.offset, whole.take_blocks());
    let (part_sum, _) = whole.finish();
    *sent_sum.borrow_mut() = Some(part_sum.clone());
    if skip == 0 {
        super::chain::feed(job, spec, &body, &part_sum, false).await;
    } else {
        super::chain::recheck(job, spec, &part_sum);
    }
    let sent = if skip == 0 {
        part_sum.clone()
    } else {
        let mut h = Hasher::new(algo);
        for slice in body.slices() {
            h.update(slice);
        }
        h.finish()
    };
    let token = timed(ctx.dst_label(), Op::PutPart, session.put(rest, body, std::slice::from_ref(&sent))).await?;
    Ok(PartRecord::new(spec, token, part_sum))
}
