//! The part layout behind a multipart ETag (`hex-N`, the MD5 of the parts' MD5s) or a
//! COMPOSITE checksum (`base64-N`), read from the store: `HEAD ?partNumber=K` answers part K's byte range
//! (`Content-Range`) and the part count (`x-amz-mp-parts-count`).
//!
//! Two requests per object, whatever its size: part 1 gives the part size, and part N
//! must then start where N - 1 parts of that size end. Every tool that uploads in parts
//! (the AWS CLI and SDKs, rclone, s5cmd, Laminar itself) cuts equal parts but the last;
//! a layout that is not, or a store that ignores `partNumber` (it answers 200 with the
//! whole object), gives no layout, and the object is checked hop by hop as before.
//! Both requests carry `If-Match` on the ETag, so the layout is of the version read.

use super::{Call, S3Store};
use crate::backend::ObjectInfo;
use crate::checksum::Composite;
use crate::error::{Error, Result};
use crate::http::RequestBody;

/// One part's place in its object, as a `HEAD ?partNumber=K` answers it.
#[derive(Debug, PartialEq, Eq)]
struct PartRange {
    start: u64,
    end: u64,
    total: u64,
    count: u32,
}

impl S3Store {
    /// See [`Source::composite`](crate::backend::Source::composite).
    /// A COMPOSITE checksum the store reported is taken before the ETag: it is the
    /// store's own checksum, checked when the parts were sent, while an ETag is the MD5
    /// of part MD5s only by custom (SSE-KMS objects and some stores' server-side
    /// copies have others).
    pub(super) async fn composite_of(&self, key: &str, info: &ObjectInfo) -> Result<Option<Composite>> {
        let Some(etag) = info.etag.as_deref() else { return Ok(None) };
        let checksum = info.composite_checksum.as_ref().and_then(|(algo, value)| {
            let parts = Composite::checksum_parts(value)?;
            Some((*algo, value.as_str(), parts))
        });
        let Some(parts) = checksum.map(|c| c.2).or_else(|| part_count(etag)) else { return Ok(None) };
        let Some(first) = self.part_range(key, 1, etag).await? else { return Ok(None) };
        let consistent = |r: &PartRange| r.total == info.size && r.count == parts;
        if !consistent(&first) || first.start != 0 {
            return Ok(None);
        }
        let part_bytes = first.end - first.start;
        let composite = match checksum {
            Some((algo, value, _)) => Composite::from_checksum(algo, value, info.size, part_bytes),
            None => Composite::from_etag(etag, info.size, part_bytes),
        };
        let Some(composite) = composite else { return Ok(None) };
        if parts > 1 {
            let Some(last) = self.part_range(key, parts, etag).await? else { return Ok(None) };
            let uniform = last.start == u64::from(parts - 1) * part_bytes && last.end == info.size;
            if !consistent(&last) || !uniform {
                return Ok(None);
            }
        }
        Ok(Some(composite))
    }

    /// Part `number`'s range, or None where the store does not answer by part.
    async fn part_range(&self, key: &str, number: u32, etag: &str) -> Result<Option<PartRange>> {
        let headers = vec![("if-match".to_string(), format!("\"{etag}\""))];
        let query = vec![("partNumber", number.to_string())];
        let call = Call { method: "HEAD", key: Some(key), query, headers, op: "stat", target: key };
        let (response, _) = self.call(call, RequestBody::Empty).await?;
        let head = response.head.clone();
        response.discard().await?;
        match head.status {
            206 => Ok(parse_part_range(head.header("content-range"), head.header("x-amz-mp-parts-count"))),
            412 => Err(Error::Changed {
                op: "stat",
                target: key.to_string(),
                detail: format!("its ETag is no longer {etag}: the object was overwritten during the relay"),
            }),
            404 => Err(Error::protocol("stat", key, "the object was deleted at the source during the relay")),
            // A store that ignores partNumber (200, the whole object) or refuses it.
            200 | 400 | 416 | 501 => Ok(None),
            _ => Err(self.http_error("stat", key, &head, &[])),
        }
    }
}

/// N in a multipart ETag `hex-N`.
fn part_count(etag: &str) -> Option<u32> {
    let (md5, count) = etag.trim_matches('"').split_once('-')?;
    let digits = !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit());
    (md5.len() == 32 && digits).then(|| count.parse().ok()).flatten().filter(|&n| n > 0)
}

/// `bytes START-END/TOTAL` and the part count, with END inclusive.
fn parse_part_range(range: Option<&str>, count: Option<&str>) -> Option<PartRange> {
    let spec = range?.trim().strip_prefix("bytes ")?;
    let (span, total) = spec.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end, total): (u64, u64, u64) = (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    let count = count?.trim().parse().ok()?;
    (start <= end && end < total).then_some(PartRange { start, end: end + 1, total, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_answers_are_parsed_strictly() {
        assert_eq!(
            parse_part_range(Some("bytes 0-5242879/23000000"), Some("5")),
            Some(PartRange { start: 0, end: 5 << 20, total: 23_000_000, count: 5 })
        );
        for (range, count) in [
            (Some("bytes 0-5242879/23000000"), None),
            (None, Some("5")),
            (Some("bytes 10-5/23"), Some("5")),
            (Some("bytes 0-23/23"), Some("5")),
            (Some("bytes */23"), Some("5")),
            (Some("0-5/23"), Some("5")),
            (Some("bytes 0-5/23"), Some("-1")),
        ] {
            assert_eq!(parse_part_range(range, count), None, "{range:?} {count:?}");
        }
        assert_eq!(part_count("5189df53abb431690856bd2d4ad5efcf-40"), Some(40));
        for etag in ["5189df53abb431690856bd2d4ad5efcf", "5189df53abb431690856bd2d4ad5efcf-0", "abc-4", "x-+4"] {
            assert_eq!(part_count(etag), None, "{etag}");
        }
    }
}
