//! Reading: a key resolved to the file whose bytes it names (the file itself, a
//! followed shortcut's target, or a Google file's export), and the bytes fetched:
//! `alt=media` ranges for binary files, the export spool for Google files.

use std::sync::Arc;

use percent_encoding::utf8_percent_encode;

use super::export::{Format, Spool, Spooled};
use super::list::{duplicate_id, is_made_up, listed, Listed};
use super::{
    quote, with_query, Call, DriveStore, FileRes, FILE_FIELDS, FOLDER_MIME, GOOGLE_APPS_PREFIX, LOOKUPS_MAX, QUERY_SET,
    SHORTCUT_MIME,
};
use crate::backend::{Entry, ObjectInfo};
use crate::checksum::Hashers;
use crate::error::{Error, ErrorClass, Result};
use crate::http::{RequestBody, Response};
use crate::pool::ring::Filler;
use crate::pool::Body;

/// What a key's bytes are.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// The file the bytes come from: the listed file, or a shortcut's target.
    pub(super) file: FileRes,
    /// The format a Google file is exported in.
    pub(super) export: Option<&'static Format>,
}

impl Resolved {
    /// The export's version: Drive's `version` and `modifiedTime`, which change with
    /// every edit, and the format.
    fn export_version(&self, format: &Format) -> String {
        let f = &self.file;
        format!("v{}@{}.{}", f.version.as_deref().unwrap_or("0"), f.modified_time.as_deref().unwrap_or(""), format.ext)
    }
}

fn not_found(key: &str) -> Error {
    Error::Http {
        op: "get",
        target: key.to_string(),
        status: 404,
        code: "notFound".into(),
        message: "no such file".into(),
        hint: String::new(),
        retry_after: None,
        class: ErrorClass::FatalObject,
    }
}

/// Copies `bytes` into `body`'s chunks, feeding `hashers`.
fn fill_body(key: &str, mut body: Body, mut rest: &[u8], hashers: &mut Hashers) -> Result<Body> {
    for chunk in &mut body.chunks {
        let before = chunk.len();
        let n = chunk.extend_from(rest);
        hashers.update(&chunk.as_slice()[before..before + n]);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(Error::protocol("get", key, "the buffers reserved for the read were too small"));
    }
    Ok(body)
}

/// `range` of an export of `size` bytes, checked.
fn export_range(key: &str, range: Option<(u64, u64)>, size: u64) -> Result<(usize, usize)> {
    let (start, end) = range.unwrap_or((0, size));
    if start > end || end > size {
        let detail = format!("bytes {start}-{end} asked of an export of {size} bytes; run the relay again");
        return Err(Error::protocol("get", key, detail));
    }
    Ok((start as usize, end as usize))
}

impl DriveStore {
    /// File `id`'s metadata.
    pub(super) async fn get_file(&self, id: &str, target: &str) -> Result<FileRes> {
        let path = with_query(
            &format!("/drive/v3/files/{}", utf8_percent_encode(id, QUERY_SET)),
            &[("fields", FILE_FIELDS), ("supportsAllDrives", "true")],
        );
        self.get_json::<FileRes>("stat", target, path).await
    }

    /// What listed file `f` reads as: itself, or a shortcut's target (None when the
    /// target is gone, trashed, or nothing that can be read).
    pub(super) async fn resolve(
        &self,
        f: &FileRes,
        export: Option<&'static Format>,
        key: &str,
    ) -> Result<Option<Resolved>> {
        if f.mime_type != SHORTCUT_MIME {
            return Ok(Some(Resolved { file: f.clone(), export }));
        }
        let Some(d) = &f.shortcut_details else { return Ok(None) };
        let t = match self.get_file(&d.target_id, key).await {
            Ok(t) => t,
            Err(Error::Http { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if t.trashed || t.is_folder() || t.mime_type == SHORTCUT_MIME {
            return Ok(None);
        }
        // The target's own type decides (the shortcut's record of it may be stale).
        let export = if t.mime_type.starts_with(GOOGLE_APPS_PREFIX) {
            match super::export::choose(&self.cfg().export, &t.mime_type) {
                Ok(f) if export.is_some() => Some(f),
                _ => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Resolved { file: t, export }))
    }

    /// The listing's entry for `key`: a Google file is exported (once) to know its size.
    pub(super) async fn listed_entry(&self, r: &Resolved, key: String) -> Result<Entry> {
        match r.export {
            None => Ok(r.file.entry(key)),
            Some(format) => {
                let spooled = self.spooled(r, format, &key).await?;
                let version = Some(r.export_version(format));
                let modified_unix_ms = r.file.entry(String::new()).modified_unix_ms;
                Ok(Entry { key, size: spooled.size, version, modified_unix_ms, ..Entry::default() })
            }
        }
    }

    /// What a read of `key` reports about it.
    pub(super) async fn info_of(&self, r: &Resolved, key: &str) -> Result<ObjectInfo> {
        let mut info = r.file.info();
        if let Some(format) = r.export {
            let spooled = self.spooled(r, format, key).await?;
            info.size = spooled.size;
            info.etag = None;
            info.checksums = spooled.checksums();
            info.provenance = None;
            info.meta.content_type = Some(format.mime.to_string());
        }
        Ok(info)
    }

    /// The spool's record of `r`'s export, exporting it first if it has none.
    async fn spooled(&self, r: &Resolved, format: &'static Format, key: &str) -> Result<Arc<Spooled>> {
        let spool_key = Spool::key(&r.file.id, format, &r.export_version(format));
        if let Some(s) = self.shared.spool.get(&spool_key) {
            return Ok(s);
        }
        let bytes = self.export_bytes(&r.file.id, format, key).await?;
        self.shared.spool.put(&spool_key, &bytes, key)
    }

    /// files.export of file `id` as `format`, whole.
    async fn export_bytes(&self, id: &str, format: &Format, key: &str) -> Result<Vec<u8>> {
        // files.export takes no supportsAllDrives: files in shared drives export as they are.
        let path = with_query(
            &format!("/drive/v3/files/{}/export", utf8_percent_encode(id, QUERY_SET)),
            &[("mimeType", format.mime)],
        );
        let call = Call { method: "GET", path, headers: Vec::new(), op: "export", target: key };
        let (_, bytes) = self.send_small(call, RequestBody::Empty).await?;
        Ok(bytes)
    }

    /// The bytes of `r`'s export: the spooled ones, or (when the spool kept only the
    /// digests) a new export that must be the same bytes.
    async fn export_body(&self, r: &Resolved, key: &str) -> Result<(Vec<u8>, Arc<Spooled>)> {
        let format = r.export.expect("an export");
        let spooled = self.spooled(r, format, key).await?;
        if let Some(bytes) = spooled.bytes(key)? {
            return Ok((bytes, spooled));
        }
        let bytes = self.export_bytes(&r.file.id, format, key).await?;
        if !spooled.matches(&bytes) {
            return Err(Error::Integrity {
                op: "export",
                target: key.to_string(),
                detail: format!(
                    "Drive exported other bytes than when the file was listed ({} bytes, then {}), and the export \
                     spool was full so the first ones were not kept; run the relay again for this file",
                    spooled.size,
                    bytes.len()
                ),
            });
        }
        Ok((bytes, spooled))
    }

    /// The listed file of folder `parent` that `name` names: by its listed name (an
    /// export's extension included) or a duplicate's name with its id.
    pub(super) async fn find_source(&self, parent: &str, name: &str, target: &str) -> Result<Option<FileRes>> {
        let cfg = self.cfg();
        let mut names = vec![name.to_string()];
        for f in &cfg.export {
            let dot_ext = format!(".{}", f.ext);
            if name.len() > dot_ext.len() && name.is_char_boundary(name.len() - dot_ext.len()) {
                let (stem, ext) = name.split_at(name.len() - dot_ext.len());
                if ext.eq_ignore_ascii_case(&dot_ext) && !names.iter().any(|n| n == stem) {
                    names.push(stem.to_string());
                }
            }
        }
        let named: Vec<String> = names.iter().map(|n| format!("name = {}", quote(n))).collect();
        let q = format!(
            "({}) and {} in parents and trashed = false and mimeType != {}",
            named.join(" or "),
            quote(parent),
            quote(FOLDER_MIME)
        );
        let is = |f: &FileRes, want: &dyn Fn(&str) -> bool| match listed(cfg, f) {
            Listed::File { name, .. } => want(&name),
            _ => false,
        };
        let fields = format!("nextPageToken,files({FILE_FIELDS})");
        let mut found: Option<FileRes> = None;
        let mut page: Option<String> = None;
        for _ in 0..super::FOLDER_PAGES_MAX {
            let list = self.list_query(&q, &fields, page.as_deref(), target).await?;
            for f in list.files {
                if is(&f, &|n| n == name) && found.as_ref().is_none_or(|g| f.id < g.id) {
                    found = Some(f);
                }
            }
            match list.next_page_token {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        if found.is_some() {
            return Ok(found);
        }
        let Some(id) = duplicate_id(name) else { return Ok(None) };
        match self.get_file(id, target).await {
            Ok(f) if f.parents.iter().any(|p| p == parent) && !f.trashed && is(&f, &|n| is_made_up(name, n, id)) => {
                Ok(Some(f))
            }
            Ok(_) => Ok(None),
            Err(Error::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `key` reads as, if it names a file that is copied.
    pub(super) async fn lookup(&self, key: &str) -> Result<Option<Resolved>> {
        if let Some(r) = self.lookups.borrow().get(key) {
            return Ok(Some(r.clone()));
        }
        let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
        if name.is_empty() {
            return Ok(None);
        }
        let Some(parent) = self.folder(dir, false, key).await? else { return Ok(None) };
        let Some(f) = self.find_source(&parent, name, key).await? else { return Ok(None) };
        let Listed::File { export, .. } = listed(self.cfg(), &f) else { return Ok(None) };
        let found = self.resolve(&f, export, key).await?;
        if let Some(r) = &found {
            let mut lookups = self.lookups.borrow_mut();
            if lookups.len() >= LOOKUPS_MAX {
                lookups.clear();
            }
            lookups.insert(key.to_string(), r.clone());
        }
        Ok(found)
    }

    pub(super) fn forget(&self, key: &str) {
        self.lookups.borrow_mut().remove(key);
    }

    /// Reads `range` of binary file `file` (listed as `key`): the response, checked.
    async fn get_media(&self, key: &str, file: &FileRes, range: Option<(u64, u64)>) -> Result<Response> {
        let path = with_query(
            &format!("/drive/v3/files/{}", utf8_percent_encode(&file.id, QUERY_SET)),
            &[("alt", "media"), ("supportsAllDrives", "true")],
        );
        let mut headers = Vec::with_capacity(1);
        if let Some((start, end)) = range {
            assert!(end > start, "empty range");
            headers.push(("range".to_string(), format!("bytes={}-{}", start, end - 1)));
        }
        let call = Call { method: "GET", path, headers, op: "get", target: key };
        let response = self.send(call, RequestBody::Empty).await?;
        let head = response.head.clone();
        if head.status >= 300 {
            let bytes = response.read_to_vec().await.unwrap_or_default();
            if head.status == 404 {
                self.forget(key);
            }
            return Err(self.http_error("get", key, &head, &bytes));
        }
        let want = match range {
            Some((start, end)) => end - start,
            None => file.size(),
        };
        if head.content_length() != Some(want) || (range.is_some() && head.status != 206 && want != file.size()) {
            self.forget(key);
            let detail = format!(
                "expected {want} bytes, Drive answered {} with {:?}; the file may have changed during the relay: \
                 run it again",
                head.status_text(),
                head.content_length()
            );
            return Err(Error::protocol("get", key, detail));
        }
        Ok(response)
    }

    pub(super) async fn read_key(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        body: Body,
        hashers: &mut Hashers,
    ) -> Result<(Body, ObjectInfo)> {
        let r = self.lookup(key).await?.ok_or_else(|| not_found(key))?;
        let mut info = self.info_of(&r, key).await?;
        let whole = match range {
            None => true,
            Some((start, end)) => start == 0 && end == info.size,
        };
        if !whole {
            info.checksums.clear();
        }
        hashers.check_against(&info.checksums);
        if r.export.is_some() {
            let (bytes, spooled) = self.export_body(&r, key).await?;
            let (start, end) = export_range(key, range, spooled.size)?;
            return Ok((fill_body(key, body, &bytes[start..end], hashers)?, info));
        }
        let response = self.get_media(key, &r.file, range).await?;
        let body = response.read_into(body, hashers).await?;
        Ok((body, info))
    }

    pub(super) async fn read_stream_key(
        &self,
        key: &str,
        range: (u64, u64),
        filler: &Filler,
        hashers: &mut Hashers,
    ) -> Result<()> {
        let r = self.lookup(key).await?.ok_or_else(|| not_found(key))?;
        if r.export.is_some() {
            let (bytes, spooled) = self.export_body(&r, key).await?;
            if range == (0, spooled.size) {
                hashers.check_against(&spooled.checksums());
            }
            let (start, end) = export_range(key, Some(range), spooled.size)?;
            let mut rest = &bytes[start..end];
            while !rest.is_empty() {
                let Some(mut chunk) = filler.empty_chunk().await else {
                    return Err(Error::protocol("get", key, "the upload this read feeds failed"));
                };
                let n = chunk.extend_from(rest);
                hashers.update(&rest[..n]);
                rest = &rest[n..];
                filler.send(chunk);
            }
            return Ok(());
        }
        let response = self.get_media(key, &r.file, Some(range)).await?;
        if range == (0, r.file.size()) {
            hashers.check_against(&r.file.checksums());
        }
        response.read_stream(filler, hashers).await.map(drop)
    }
}
