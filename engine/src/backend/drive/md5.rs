//! The hash of what a resumable upload sent (MD5, or SHA-256 where the CPU computes it
//! in hardware: [`super::upload::check_algo`]; "MD5" below stands for either), kept while it is sent, so that the file
//! Drive completes is always checked against it (Drive checks no checksum sent with
//! an upload; its `md5Checksum` is the only end-to-end check there is).
//!
//! A session's bytes go out in order from 0, but Drive may keep less of a chunk than
//! it was sent (a 308 whose `Range` ends short of the chunk, or a connection that
//! dropped mid-chunk), and then the stream goes on from where Drive's bytes end, so
//! the bytes past that point are sent twice. MD5 cannot be wound back, so the state
//! of the running MD5 is kept at every 256 KiB boundary (where Drive keeps what it
//! keeps) and at the end of each chunk sent but not yet acknowledged; a chunk sent
//! from an earlier point goes on from the state kept there. An acknowledgement keeps
//! only the state at what Drive holds, so a track holds at most one chunk's states
//! (a 256 MiB chunk: 1,024 of them, about 128 KiB).
//!
//! Tracks are keyed by the session's URI and shared by the workers, so the session
//! reopened to finish it (or asked what it holds after the answer to its last chunk
//! was lost) finds the MD5 of the whole object and whether it was checked. When no
//! state is kept at the point a chunk starts (Drive lost bytes it had acknowledged
//! earlier), the whole object's MD5 is unknown, and the completed file is refused
//! rather than left unchecked.

use std::collections::HashMap;
use std::sync::Mutex;

use super::upload::CHUNK_ALIGNMENT_BYTES;
use crate::checksum::{Checksum, Hasher};

/// Most sessions tracked at once; a session past it is not tracked, and its file is
/// refused when it completes.
const TRACKS_MAX: usize = 4096;

/// One session's MD5 states.
enum Track {
    /// States of the MD5 of bytes `0..offset`, by offset, ascending.
    Running(Vec<(u64, Hasher)>),
    /// No state at a point the stream went back to: the whole MD5 is unknown.
    Lost,
    /// The completed file's MD5 was compared with the bytes sent.
    Checked,
    /// The completed file was refused (and deleted), for this reason.
    Refused(String),
}

/// Every session's track, by session URI.
#[derive(Default)]
pub(super) struct Tracks {
    map: Mutex<HashMap<String, Track>>,
}

impl Tracks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Track>> {
        self.map.lock().expect("no panics holding the MD5 tracks")
    }

    /// Starts tracking a new session.
    pub(super) fn start(&self, uri: &str) {
        let mut map = self.lock();
        if map.len() < TRACKS_MAX {
            map.insert(uri.to_string(), Track::Running(vec![(0, Hasher::new(super::upload::check_algo()))]));
        }
    }

    /// Feeds a chunk about to be sent at `offset`; states past it are dropped (those
    /// bytes are being sent again).
    pub(super) fn feed<'b>(&self, uri: &str, offset: u64, slices: impl Iterator<Item = &'b [u8]>) {
        let start = {
            let mut map = self.lock();
            let Some(track) = map.get_mut(uri) else { return };
            let found = match track {
                Track::Running(points) => points.iter().find(|(at, _)| *at == offset).map(|(_, h)| h.clone()),
                Track::Lost | Track::Checked | Track::Refused(_) => return,
            };
            match found {
                Some(h) => h,
                None => {
                    *track = Track::Lost;
                    return;
                }
            }
        };
        // Hashed outside the lock: a chunk may be hundreds of MiB.
        let mut h = start.clone();
        let mut at = offset;
        let mut points = vec![(offset, start)];
        for mut slice in slices {
            while !slice.is_empty() {
                let to_boundary = CHUNK_ALIGNMENT_BYTES - at % CHUNK_ALIGNMENT_BYTES;
                let n = (slice.len() as u64).min(to_boundary) as usize;
                h.update(&slice[..n]);
                at += n as u64;
                slice = &slice[n..];
                if at.is_multiple_of(CHUNK_ALIGNMENT_BYTES) {
                    points.push((at, h.clone()));
                }
            }
        }
        if points.last().is_none_or(|(last, _)| *last != at) {
            points.push((at, h));
        }
        if let Some(track @ Track::Running(_)) = self.lock().get_mut(uri) {
            *track = Track::Running(points);
        }
    }

    /// Drive holds `held` bytes: only the state there is needed from now on.
    pub(super) fn confirm(&self, uri: &str, held: u64) {
        let mut map = self.lock();
        let Some(track) = map.get_mut(uri) else { return };
        if let Track::Running(points) = track {
            match points.iter().position(|(at, _)| *at == held) {
                Some(i) => {
                    let kept = points.swap_remove(i);
                    *points = vec![kept];
                }
                None => *track = Track::Lost,
            }
        }
    }

    /// What is known of the whole object of `total` bytes: Ok(Some(md5)), Ok(None)
    /// when it was checked already, Err when it cannot be known.
    pub(super) fn whole(&self, uri: &str, total: u64) -> Result<Option<Checksum>, ()> {
        match self.lock().get(uri) {
            Some(Track::Checked) => Ok(None),
            Some(Track::Running(points)) => {
                points.iter().find(|(at, _)| *at == total).map(|(_, h)| Some(h.clone().finish())).ok_or(())
            }
            Some(Track::Lost | Track::Refused(_)) | None => Err(()),
        }
    }

    /// Why the completed file was refused, if it was.
    pub(super) fn refused(&self, uri: &str) -> Option<String> {
        match self.lock().get(uri) {
            Some(Track::Refused(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// The completed file was refused for `why`.
    pub(super) fn refuse(&self, uri: &str, why: &str) {
        if let Some(track) = self.lock().get_mut(uri) {
            *track = Track::Refused(why.to_string());
        }
    }

    /// The completed file matched.
    pub(super) fn checked(&self, uri: &str) {
        if let Some(track) = self.lock().get_mut(uri) {
            *track = Track::Checked;
        }
    }

    /// The session is over.
    pub(super) fn forget(&self, uri: &str) {
        self.lock().remove(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(bytes: &[u8]) -> Checksum {
        let mut h = Hasher::new(super::super::upload::check_algo());
        h.update(bytes);
        h.finish()
    }

    #[test]
    fn a_stream_that_steps_back_keeps_its_md5() {
        const U: usize = CHUNK_ALIGNMENT_BYTES as usize;
        let data: Vec<u8> = (0..(3 * U + 5)).map(|i| (i * 7 % 251) as u8).collect();
        // Two slices per chunk, split off the 256 KiB boundaries.
        let body = |range: std::ops::Range<usize>| {
            let mid = range.start + 1000;
            [&data[range.start..mid], &data[mid..range.end]].into_iter()
        };
        let t = Tracks::default();
        t.start("u");
        t.feed("u", 0, body(0..2 * U));
        // Drive kept one unit of the two.
        t.confirm("u", U as u64);
        assert!(t.whole("u", data.len() as u64).is_err(), "not all sent yet");
        t.feed("u", U as u64, body(U..data.len()));
        // The answer to the last chunk was lost: the whole MD5 is known all the same.
        assert_eq!(t.whole("u", data.len() as u64), Ok(Some(md5(&data))));
        t.checked("u");
        assert_eq!(t.whole("u", data.len() as u64), Ok(None));
        // A stream going back past what was kept loses the MD5.
        t.start("v");
        t.feed("v", 0, body(0..2 * U));
        t.confirm("v", 2 * U as u64);
        t.feed("v", U as u64, body(U..data.len()));
        assert!(t.whole("v", data.len() as u64).is_err());
        t.forget("v");
        assert!(t.whole("v", 1).is_err());
    }
}
