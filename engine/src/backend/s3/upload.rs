//! S3 uploads as sessions: a single PutObject for a session of one part, a
//! multipart upload otherwise. The session's state keeps the upload id and what the
//! store agreed to verify (the checksum algorithm, and whether it takes a
//! FULL_OBJECT checksum at completion), so any worker can send parts of it and a
//! later run can reopen it. `committed` is ListParts.

use serde::{Deserialize, Serialize};

use super::{part_checksum_element, xml_escape, Call, InitiateXml, S3Store};
use crate::backend::{
    Committed, CopySource, LocalFuture, PartRecord, PartSpec, PutArgs, Session, SessionState, UploadPlan, UploadSession,
};
use crate::checksum::{Checksum, ChecksumAlgo};
use crate::error::{Error, Result};
use crate::http::{RequestBody, StreamBody};
use crate::pool::ring::Drain;
use crate::pool::Body;

/// The S3 part of a session's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct S3Session {
    /// The multipart upload's id; None for a single put.
    upload_id: Option<String>,
    /// The checksum algorithm the store was told the parts carry; None when it refused
    /// one (parts then carry their checksum headers alone).
    checksum: Option<ChecksumAlgo>,
    /// Whether the store takes a whole-object checksum at completion.
    full_object: bool,
}

/// One upload on one worker's handle.
struct S3Upload<'a> {
    store: &'a S3Store,
    state: SessionState,
    session: S3Session,
    /// A single put that went through: aborting deletes the object it made.
    put_done: std::cell::Cell<bool>,
}

pub(super) async fn begin<'a>(
    store: &'a S3Store,
    key: &'a str,
    plan: UploadPlan,
    args: &'a PutArgs,
) -> Result<Session<'a>> {
    let session = if plan.single {
        S3Session { upload_id: None, checksum: plan.checksum, full_object: false }
    } else {
        create(store, key, args, plan.checksum).await?
    };
    let store_state = serde_json::to_value(&session).expect("serialisable");
    let state = SessionState { key: key.to_string(), plan, args: args.clone(), store: store_state, parts: Vec::new() };
    Ok(Box::new(S3Upload { store, state, session, put_done: std::cell::Cell::new(false) }))
}

pub(super) fn resume(store: &S3Store, state: SessionState) -> Result<Session<'_>> {
    let session: S3Session = serde_json::from_value(state.store.clone()).map_err(|e| {
        Error::protocol("resume", &state.key, format!("the session's state is not an S3 upload's: {e}"))
    })?;
    Ok(Box::new(S3Upload { store, state, session, put_done: std::cell::Cell::new(false) }))
}

/// CreateMultipartUpload, asking the store to verify `checksum`; a store that refuses
/// checksum algorithms on uploads gets one without (each part's checksum header is
/// still verified one by one).
async fn create(store: &S3Store, key: &str, args: &PutArgs, checksum: Option<ChecksumAlgo>) -> Result<S3Session> {
    let create = |algo: Option<ChecksumAlgo>| async move {
        let mut headers = Vec::with_capacity(10);
        store.meta_headers(args, &mut headers);
        // S3's rules: CRC32C may be whole-object, CRC64NVME must be, SHA-256 can't be.
        let full_object = matches!(algo, Some(ChecksumAlgo::Crc32c | ChecksumAlgo::Crc64nvme));
        if let Some(algorithm) = algo.and_then(ChecksumAlgo::s3_algorithm) {
            headers.push(("x-amz-checksum-algorithm".to_string(), algorithm.to_string()));
            if full_object {
                headers.push(("x-amz-checksum-type".to_string(), "FULL_OBJECT".to_string()));
            }
        }
        let query = vec![("uploads", String::new())];
        let call = Call { method: "POST", key: Some(key), query, headers, op: "create-multipart", target: key };
        let (_, body) = store.call_small(call, Vec::new()).await?;
        let parsed: InitiateXml = quick_xml::de::from_reader(&body[..]).map_err(|e| {
            Error::protocol("create-multipart", key, format!("unreadable CreateMultipartUpload response: {e}"))
        })?;
        Ok(S3Session { upload_id: Some(parsed.upload_id), checksum: algo, full_object })
    };
    let algo = checksum.filter(|c| c.s3_algorithm().is_some());
    match create(algo).await {
        Err(Error::Http { status: 400 | 501, .. }) if algo.is_some() => create(None).await,
        other => other,
    }
}

impl S3Upload<'_> {
    fn key(&self) -> &str {
        &self.state.key
    }

    fn upload_id(&self, op: &'static str) -> Result<&str> {
        self.session
            .upload_id
            .as_deref()
            .ok_or_else(|| Error::protocol(op, self.key(), "a single put has no parts to add to"))
    }

    fn part_query(&self, op: &'static str, number: u32) -> Result<Vec<(&'static str, String)>> {
        Ok(vec![("partNumber", number.to_string()), ("uploadId", self.upload_id(op)?.to_string())])
    }
}

/// The MD5 among `sums`, as hex, to check against a plain-MD5 ETag.
fn md5_of(sums: &[Checksum]) -> Option<String> {
    sums.iter().find(|c| c.algo == ChecksumAlgo::Md5).map(Checksum::to_hex)
}

impl UploadSession for S3Upload<'_> {
    fn state(&self) -> &SessionState {
        &self.state
    }

    fn put<'a>(&'a self, part: PartSpec, body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let key = self.key();
            let mut headers = Vec::with_capacity(8);
            if let Some(primary) = sums.first() {
                S3Store::checksum_headers(primary, &mut headers);
            }
            let md5 = md5_of(sums);
            if self.session.upload_id.is_none() {
                self.store.meta_headers(&self.state.args, &mut headers);
                let call = Call { method: "PUT", key: Some(key), query: Vec::new(), headers, op: "put", target: key };
                let result = self.store.send_data(call, body, md5.as_deref()).await;
                match &result {
                    // The store accepted bytes that differ from what was read: don't
                    // leave them looking complete.
                    Err(Error::Integrity { .. }) => {
                        let _ = crate::backend::Sink::delete(self.store, key).await;
                    }
                    Ok(_) => self.put_done.set(true),
                    Err(_) => {}
                }
                return result;
            }
            let query = self.part_query("upload-part", part.number)?;
            let call = Call { method: "PUT", key: Some(key), query, headers, op: "upload-part", target: key };
            self.store.send_data(call, body, md5.as_deref()).await
        })
    }

    fn streams(&self, algo: ChecksumAlgo) -> bool {
        self.session.upload_id.is_some() && self.store.streams_parts(algo)
    }

    fn put_stream<'a>(&'a self, part: PartSpec, algo: ChecksumAlgo, drain: Drain) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let key = self.key();
            let header = algo.s3_header().expect("streams admits only algorithms S3 has a header for");
            let headers = vec![
                ("content-encoding".to_string(), "aws-chunked".to_string()),
                ("x-amz-decoded-content-length".to_string(), part.len.to_string()),
                ("x-amz-trailer".to_string(), header.to_string()),
            ];
            let query = self.part_query("upload-part", part.number)?;
            let call = Call { method: "PUT", key: Some(key), query, headers, op: "upload-part", target: key };
            let body = StreamBody::new(drain, part.len, header, algo.base64_len());
            let (response, _) = self.store.call(call, RequestBody::Stream(body)).await?;
            let head = response.head.clone();
            let bytes = response.read_to_vec().await?;
            if head.status < 300 {
                return S3Store::check_etag("upload-part", key, &head, None);
            }
            let err = self.store.data_error("upload-part", key, &head, &bytes);
            if let Error::Http { status: 400 | 501, .. } = &err {
                // Not a checksum disagreement, so most likely no support for trailers
                // (older stores): send this worker's later parts whole.
                self.store.streaming_refused.set(true);
            }
            Err(err)
        })
    }

    fn copy_part<'a>(&'a self, source: &'a CopySource, part: PartSpec) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let key = self.key();
            let headers = vec![
                ("x-amz-copy-source".to_string(), source.reference.clone()),
                (
                    "x-amz-copy-source-range".to_string(),
                    format!("bytes={}-{}", part.offset, part.offset + part.len - 1),
                ),
            ];
            let query = self.part_query("copy-part", part.number)?;
            let call = Call { method: "PUT", key: Some(key), query, headers, op: "copy-part", target: key };
            let (_, body) = self.store.call_small(call, Vec::new()).await?;
            let parsed: super::CopyResultXml = quick_xml::de::from_reader(&body[..])
                .map_err(|e| Error::protocol("copy-part", key, format!("unreadable UploadPartCopy response: {e}")))?;
            Ok(parsed.etag.unwrap_or_default().trim_matches('"').to_string())
        })
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        Box::pin(async move {
            let Some(upload_id) = self.session.upload_id.as_deref() else {
                return Ok(Committed::Parts(Vec::new()));
            };
            let key = self.key();
            let mut parts = Vec::new();
            let mut marker: Option<String> = None;
            // Bounded: S3 holds at most 10,000 parts, listed 1,000 a page.
            for _ in 0..=10 {
                let mut query = vec![("max-parts", "1000".to_string())];
                if let Some(m) = marker.take() {
                    query.push(("part-number-marker", m));
                }
                query.push(("uploadId", upload_id.to_string()));
                let call =
                    Call { method: "GET", key: Some(key), query, headers: Vec::new(), op: "list-parts", target: key };
                let (_, body) = self.store.call_small(call, Vec::new()).await?;
                let page: ListPartsXml = quick_xml::de::from_reader(&body[..])
                    .map_err(|e| Error::protocol("list-parts", key, format!("unreadable ListParts response: {e}")))?;
                for p in page.parts {
                    let checksum = self
                        .session
                        .checksum
                        .and_then(|algo| {
                            let value = match algo {
                                ChecksumAlgo::Crc32c => p.checksum_crc32c.as_deref(),
                                ChecksumAlgo::Crc64nvme => p.checksum_crc64nvme.as_deref(),
                                ChecksumAlgo::Sha256 => p.checksum_sha256.as_deref(),
                                ChecksumAlgo::Sha1 => p.checksum_sha1.as_deref(),
                                _ => None,
                            }?;
                            Checksum::from_base64(algo, value)
                        })
                        .unwrap_or(Checksum { algo: ChecksumAlgo::Crc32c, bytes: Vec::new() });
                    parts.push(PartRecord {
                        number: p.part_number,
                        offset: 0,
                        len: p.size,
                        token: p.etag.trim_matches('"').to_string(),
                        checksum,
                    });
                }
                match (page.is_truncated, page.next_part_number_marker) {
                    (Some(true), Some(next)) => marker = Some(next),
                    _ => return Ok(Committed::Parts(parts)),
                }
            }
            Err(Error::protocol("list-parts", key, "ListParts kept answering more pages than an upload holds"))
        })
    }

    fn finish<'a>(&'a self, parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(upload_id) = self.session.upload_id.as_deref() else {
                // A single put is complete once it is sent.
                return Ok(());
            };
            let key = self.key();
            let session = &self.session;
            let full = full.filter(|f| session.full_object && session.checksum == Some(f.algo));
            let mut xml = String::with_capacity(64 + parts.len() * 128);
            xml.push_str("<CompleteMultipartUpload>");
            for part in parts {
                xml.push_str(&format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag>",
                    part.number,
                    xml_escape(&part.token)
                ));
                if let (Some(algo), Some(name)) = (session.checksum, part_checksum_element(part.checksum.algo)) {
                    if part.checksum.algo == algo && !part.checksum.bytes.is_empty() {
                        xml.push_str(&format!("<{name}>{}</{name}>", part.checksum.to_base64()));
                    }
                }
                xml.push_str("</Part>");
            }
            xml.push_str("</CompleteMultipartUpload>");
            let query = vec![("uploadId", upload_id.to_string())];
            let mut headers = vec![("content-type".to_string(), "application/xml".to_string())];
            if let Some(full) = full {
                S3Store::checksum_headers(full, &mut headers);
                headers.push(("x-amz-checksum-type".to_string(), "FULL_OBJECT".to_string()));
            }
            let call = Call { method: "POST", key: Some(key), query, headers, op: "complete-multipart", target: key };
            let (head, body) = self.store.call_small(call, xml.into_bytes()).await?;
            self.store.error_in_ok_body("complete-multipart", key, &head, &body)
        })
    }

    fn abort(&self) -> LocalFuture<'_, Result<()>> {
        Box::pin(async move {
            let key = self.key();
            let Some(upload_id) = self.session.upload_id.as_deref() else {
                if self.put_done.get() {
                    return crate::backend::Sink::delete(self.store, key).await;
                }
                return Ok(());
            };
            let query = vec![("uploadId", upload_id.to_string())];
            let call = Call {
                method: "DELETE",
                key: Some(key),
                query,
                headers: Vec::new(),
                op: "abort-multipart",
                target: key,
            };
            match self.store.call_small(call, Vec::new()).await {
                Ok(_) => Ok(()),
                Err(Error::Http { status: 404, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsXml {
    is_truncated: Option<bool>,
    next_part_number_marker: Option<String>,
    #[serde(default, rename = "Part")]
    parts: Vec<PartXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PartXml {
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
    size: u64,
    #[serde(rename = "ChecksumCRC32C")]
    checksum_crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME")]
    checksum_crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA256")]
    checksum_sha256: Option<String>,
    #[serde(rename = "ChecksumSHA1")]
    checksum_sha1: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_parts() {
        let xml = r#"<?xml version="1.0"?><ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>
            <NextPartNumberMarker>2</NextPartNumberMarker><IsTruncated>true</IsTruncated>
            <Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><Size>5242880</Size><ChecksumCRC32C>AAAAAQ==</ChecksumCRC32C></Part>
            <Part><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>3</Size></Part></ListPartsResult>"#;
        let page: ListPartsXml = quick_xml::de::from_reader(xml.as_bytes()).unwrap();
        assert_eq!(page.parts.len(), 2);
        assert_eq!(page.parts[0].checksum_crc32c.as_deref(), Some("AAAAAQ=="));
        assert_eq!(page.next_part_number_marker.as_deref(), Some("2"));
        assert_eq!(page.parts[1].size, 3);
    }

    #[test]
    fn state_round_trips() {
        let s = S3Session { upload_id: Some("u~1".into()), checksum: Some(ChecksumAlgo::Crc32c), full_object: true };
        let v = serde_json::to_value(&s).unwrap();
        let back: S3Session = serde_json::from_value(v).unwrap();
        assert_eq!(back.upload_id.as_deref(), Some("u~1"));
        assert!(back.full_object);
    }
}

#[cfg(test)]
mod proptests {
    //! ListParts answers: arbitrary and mutated documents never panic; a generated
    //! page (part numbers and sizes to their limits, quoted ETags, checksums) parses
    //! back to its parts.

    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0x9a27),
            ..ProptestConfig::default()
        }
    }

    /// One part: number, ETag (hex, quoting), size, CRC32C, SHA-256.
    type Part = (u32, (String, u8), u64, Option<String>, Option<String>);

    fn part() -> impl Strategy<Value = Part> {
        (
            prop_oneof![1u32..=10_000, any::<u32>()],
            ("[0-9a-f]{32}", 0u8..3),
            prop_oneof![any::<u64>(), Just(u64::MAX), Just(5 << 20)],
            prop::option::of("[A-Za-z0-9+/]{6}=="),
            prop::option::of("[A-Za-z0-9+/]{43}="),
        )
    }

    fn page_xml(parts: &[Part], marker: &Option<String>, truncated: bool, pretty: bool) -> String {
        let nl = if pretty { "\n  " } else { "" };
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str("<ListPartsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        x.push_str(&format!("{nl}<Bucket>bkt</Bucket>{nl}<Key>a &amp; b</Key>{nl}<UploadId>u~1</UploadId>"));
        x.push_str(&format!("{nl}<PartNumberMarker>0</PartNumberMarker>"));
        if let Some(m) = marker {
            x.push_str(&format!("{nl}<NextPartNumberMarker>{m}</NextPartNumberMarker>"));
        }
        x.push_str(&format!("{nl}<MaxParts>1000</MaxParts>{nl}<IsTruncated>{truncated}</IsTruncated>"));
        for (number, (hex, quoting), size, crc, sha) in parts {
            let etag = match quoting {
                0 => format!("&quot;{hex}&quot;"),
                1 => format!("\"{hex}\""),
                _ => hex.clone(),
            };
            x.push_str(&format!("{nl}<Part>{nl}<PartNumber>{number}</PartNumber>"));
            x.push_str(&format!("{nl}<LastModified>2024-01-02T03:04:05.000Z</LastModified>"));
            x.push_str(&format!("{nl}<ETag>{etag}</ETag>{nl}<Size>{size}</Size>"));
            if let Some(c) = crc {
                x.push_str(&format!("{nl}<ChecksumCRC32C>{c}</ChecksumCRC32C>"));
            }
            if let Some(s) = sha {
                x.push_str(&format!("{nl}<ChecksumSHA256>{s}</ChecksumSHA256>"));
            }
            x.push_str(&format!("{nl}</Part>"));
        }
        x.push_str(&format!("{nl}<Initiator><ID>i</ID></Initiator>{nl}<StorageClass>STANDARD</StorageClass>"));
        x.push_str("</ListPartsResult>");
        x
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        for &(kind, at, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind % 5 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {
                    let end = (at + usize::from(byte)).min(bytes.len());
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(at..at, copy);
                }
            }
        }
        bytes
    }

    fn parse_all(bytes: &[u8]) {
        let _ = quick_xml::de::from_reader::<_, ListPartsXml>(bytes);
        let _ = quick_xml::de::from_reader::<_, InitiateXml>(bytes);
    }

    proptest! {
        #![proptest_config(config(384))]

        #[test]
        fn arbitrary_documents_never_panic(text in "\\PC{0,300}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            parse_all(text.as_bytes());
            parse_all(&bytes);
        }

        #[test]
        fn mutated_pages_never_panic(
            parts in prop::collection::vec(part(), 0..4),
            edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
        ) {
            parse_all(&mutate(page_xml(&parts, &Some("3".into()), true, false).into_bytes(), &edits));
        }

        #[test]
        fn generated_pages_parse_back(
            parts in prop::collection::vec(part(), 0..12),
            marker in prop::option::of("[0-9]{1,5}"),
            truncated in any::<bool>(),
            pretty in any::<bool>(),
        ) {
            let page: ListPartsXml = quick_xml::de::from_reader(page_xml(&parts, &marker, truncated, pretty).as_bytes())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(page.is_truncated, Some(truncated));
            prop_assert_eq!(&page.next_part_number_marker, &marker);
            prop_assert_eq!(page.parts.len(), parts.len());
            for (got, (number, (hex, _), size, crc, sha)) in page.parts.iter().zip(&parts) {
                prop_assert_eq!(got.part_number, *number);
                prop_assert_eq!(got.etag.trim_matches('"'), hex.as_str());
                prop_assert_eq!(got.size, *size);
                prop_assert_eq!(&got.checksum_crc32c, crc);
                prop_assert_eq!(&got.checksum_sha256, sha);
                prop_assert_eq!(&got.checksum_sha1, &None);
            }
        }

        #[test]
        fn upload_ids_parse_back(id in "[A-Za-z0-9._~-][A-Za-z0-9._~+/=-]{0,120}") {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult \
                 xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>bkt</Bucket><Key>k</Key>\
                 <UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
            );
            let parsed: InitiateXml = quick_xml::de::from_reader(xml.as_bytes()).unwrap();
            prop_assert_eq!(parsed.upload_id, id);
        }
    }
}
