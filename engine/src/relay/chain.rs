//! The whole-object hash of a large object whose source vouches only with hashes that
//! do not combine from parts hashed apart (Google Drive's MD5 and SHA-256): the parts'
//! bytes are fed to one running hash in order, as each part's turn comes, so the
//! source's hash checks the object without reading it twice.
//!
//! Parts are still read in parallel. Each part, on its first attempt, takes its RAM
//! after the part before it did (so no part holds RAM while waiting on one that has
//! none), reads its bytes whole, waits until the parts before it are hashed, feeds its
//! bytes and goes on to send them. The relay's own checksum of the bytes hashed is
//! kept per part: a part read again later (a retry) must match it, and every part sent
//! must carry it. When the chain cannot be kept (a part's first read failed, a part went
//! through the stage, a re-read differed), it is broken and every waiting part goes on;
//! the object is then checked by reading it once more in order before it is completed
//! ([`verify_by_reading`]).

use super::transfer::{Ctx, ObjectJob};
use super::Side;
use crate::backend::{PartRecord, PartSpec};
use crate::checksum::{Checksum, ChecksumAlgo, Hasher, Hashers};
use crate::error::{Error, Result};
use crate::metrics::{timed, Op};
use crate::pool::Body;

/// A large object's running hash; see the module.
pub(super) struct Chain {
    /// What the source reports, which the running hash must come to.
    reported: Checksum,
    /// The running hash of the bytes before `next_offset`; out while a part feeds it.
    hasher: Option<Hasher>,
    /// The chain cannot be kept: the object is read again to be checked.
    broken: bool,
    /// Where the next bytes to hash start.
    next_offset: u64,
    /// Parts, from the first, that took their RAM on a first attempt.
    acquired: u32,
    /// Per part: the relay's checksum of the bytes hashed.
    sums: Vec<Option<Checksum>>,
}

/// The object's check by its chain, at completion.
pub(super) enum ChainCheck {
    /// The source reported a hash that combines, or none: no chain.
    None,
    /// Every byte hashed in order and every part sent as hashed: the hash matches.
    Matched(&'static str),
    /// The bytes read do not have the hash the source reports.
    Differs(Checksum, Checksum),
    /// The chain was broken: read the object again to check it.
    Broken,
}

/// The hash a chain checks an object by: whichever of MD5 and SHA-256 the source reports
/// is cheaper here, when it reports nothing that combines from parts.
pub(super) fn wanted(reported: &[Checksum]) -> Option<Checksum> {
    if reported.iter().any(|c| c.algo.combinable() || c.algo == ChecksumAlgo::DropboxContentHash) {
        return None;
    }
    let hashes: Vec<Checksum> =
        reported.iter().filter(|c| matches!(c.algo, ChecksumAlgo::Md5 | ChecksumAlgo::Sha256)).cloned().collect();
    crate::checksum::cheapest_of(&hashes).cloned()
}

impl Chain {
    pub(super) fn new(reported: Checksum, parts: u32) -> Chain {
        Chain {
            hasher: Some(Hasher::new(reported.algo)),
            broken: false,
            reported,
            next_offset: 0,
            acquired: 0,
            sums: vec![None; parts as usize],
        }
    }

    pub(super) fn break_off(&mut self) {
        self.broken = true;
    }

    fn broken(&self) -> bool {
        self.broken
    }
}

/// Whether the object is hashed by a chain that still holds.
pub(super) fn active(job: &ObjectJob) -> bool {
    job.large().chain.as_ref().is_some_and(|c| !c.broken())
}

/// Breaks the object's chain, if it has one, and lets every waiting part go on.
pub(super) fn break_chain(job: &ObjectJob) {
    if let Some(chain) = job.large().chain.as_mut() {
        chain.break_off();
    }
    job.chain_changed.notify(usize::MAX);
}

/// Waits until `cond` holds for the chain (or it is broken, or there is none).
async fn wait_until(job: &ObjectJob, cond: impl Fn(&Chain) -> bool) {
    loop {
        let listener = job.chain_changed.listen();
        if job.large().chain.as_ref().is_none_or(|c| c.broken() || cond(c)) {
            return;
        }
        listener.await;
    }
}

/// On a part's first attempt, before it takes RAM: waits until every part before it
/// has taken its own.
pub(super) async fn wait_turn_to_acquire(job: &ObjectJob, index: u32) {
    wait_until(job, |c| c.acquired >= index).await;
}

/// A part has its RAM (first attempt): the next may take its own.
pub(super) fn acquired(job: &ObjectJob, index: u32) {
    if let Some(chain) = job.large().chain.as_mut() {
        chain.acquired = chain.acquired.max(index + 1);
    }
    job.chain_changed.notify(usize::MAX);
}

/// A part's read failed: unless its bytes were already hashed, the parts after it
/// cannot wait for them (this part may need RAM they hold to read again).
pub(super) fn read_failed(job: &ObjectJob, index: u32) {
    let unhashed = job.large().chain.as_ref().is_some_and(|c| c.sums[index as usize].is_none());
    if unhashed {
        break_chain(job);
    }
}

/// A part ended (sent, failed or abandoned): a chain still waiting for its bytes is
/// broken, so that no part waits for it forever.
pub(super) fn part_ended(job: &ObjectJob, index: u32) {
    read_failed(job, index);
}

/// Feeds part `spec`'s bytes (`sum` the relay's checksum of them) to the chain. In order, the bytes are hashed; bytes already hashed must have the
/// same checksum as then; a part ahead of the chain waits its turn when `wait`, and
/// breaks the chain otherwise (one ordered stream has no one else to wait for).
pub(super) async fn feed(job: &ObjectJob, spec: PartSpec, body: &Body, sum: &Checksum, wait: bool) {
    if wait {
        wait_until(job, |c| c.next_offset >= spec.offset).await;
    }
    let index = (spec.number - 1) as usize;
    // The hasher is taken out to be fed, so that the object's lock is not held while
    // the bytes are hashed; only the part at `next_offset` feeds it.
    let mut hasher = {
        let mut m = job.large();
        let Some(chain) = m.chain.as_mut() else { return };
        if chain.broken() {
            return;
        }
        if chain.next_offset != spec.offset {
            if chain.next_offset < spec.offset || chain.sums[index].as_ref() != Some(sum) {
                chain.break_off();
                drop(m);
                job.chain_changed.notify(usize::MAX);
            }
            return;
        }
        chain.hasher.take().expect("only the part in turn feeds the hasher")
    };
    for slice in body.slices() {
        hasher.update(slice);
    }
    {
        let mut m = job.large();
        let chain = m.chain.as_mut().expect("a chain is never removed");
        chain.hasher = Some(hasher);
        chain.next_offset += spec.len;
        chain.sums[index] = Some(sum.clone());
    }
    job.chain_changed.notify(usize::MAX);
}

/// Part `spec` was read again but only in part held (the rest of it sent on from where
/// the store's bytes end): its checksum `sum` must be the one hashed; a part not hashed
/// yet breaks the chain (its bytes were not all in RAM at once).
pub(super) fn recheck(job: &ObjectJob, spec: PartSpec, sum: &Checksum) {
    let mut m = job.large();
    let Some(chain) = m.chain.as_mut() else { return };
    let index = (spec.number - 1) as usize;
    if !chain.broken() && chain.sums[index].as_ref() != Some(sum) {
        chain.break_off();
        drop(m);
        job.chain_changed.notify(usize::MAX);
    }
}

/// The object's check by its chain, given the parts as they were sent.
pub(super) fn check(job: &ObjectJob, parts: &[PartRecord]) -> ChainCheck {
    let mut m = job.large();
    let size = m.progress.size;
    let Some(chain) = m.chain.as_mut() else { return ChainCheck::None };
    let sent_as_hashed =
        parts.len() == chain.sums.len() && parts.iter().zip(&chain.sums).all(|(p, s)| s.as_ref() == Some(&p.checksum));
    if chain.next_offset != size || !sent_as_hashed {
        chain.break_off();
    }
    if chain.broken() {
        return ChainCheck::Broken;
    }
    let hasher = chain.hasher.take().expect("no part feeds the hasher at completion");
    let got = hasher.finish();
    if got == chain.reported {
        ChainCheck::Matched(crate::relay::check_name(got.algo))
    } else {
        ChainCheck::Differs(chain.reported.clone(), got)
    }
}

/// Checks a large object whose chain broke by reading it from the source once more,
/// part by part in order: each part must have the checksum it was sent with, and the
/// whole the hash the source reports. Returns the check's name.
pub(super) async fn verify_by_reading(ctx: &Ctx, job: &ObjectJob, parts: &[PartRecord]) -> Result<&'static str> {
    let reported = {
        let m = job.large();
        m.chain.as_ref().map(|c| c.reported.clone()).expect("only a chained object is read again")
    };
    let mut whole = Hasher::new(reported.algo);
    let key = job.src_key();
    for part in parts {
        let (body, sum) = read_part_again(ctx, job, part).await?;
        if sum != part.checksum {
            return Err(Error::Integrity {
                op: "get",
                target: key.to_string(),
                detail: format!(
                    "part {} was sent with {}, reading it again gives {sum}: the source's bytes differ between reads",
                    part.number, part.checksum
                ),
            });
        }
        for slice in body.slices() {
            whole.update(slice);
        }
    }
    let got = whole.finish();
    if got != reported {
        return Err(Error::Integrity {
            op: "get",
            target: key.to_string(),
            detail: format!("the source reports {reported}, the bytes received have {got}"),
        });
    }
    Ok(crate::relay::check_name(got.algo))
}

/// Reads a part that was sent from the source again (retried as any read): its bytes,
/// and their checksum by the algorithm it was sent with.
pub(super) async fn read_part_again(ctx: &Ctx, job: &ObjectJob, part: &PartRecord) -> Result<(Body, Checksum)> {
    let spec = PartSpec { number: part.number, offset: part.offset, len: part.len };
    let algo = part.checksum.algo;
    let key = job.src_key();
    ctx.retry(Side::Source, || async {
        let chunks = ctx.pool.acquire(ctx.pool.chunks_for(spec.len)).await;
        let mut hashers = Hashers::new(algo, false);
        let read = ctx.src.read(key, Some(spec.range()), Body::new(chunks), &mut hashers);
        let (body, info) = timed(ctx.src_label(), Op::Get, read).await?;
        super::transfer::pinned(job, info.version_token())?;
        if body.len() != spec.len {
            return Err(Error::protocol("get", key, format!("part {} came back short", spec.number)));
        }
        Ok((body, hashers.finish().0))
    })
    .await
}
