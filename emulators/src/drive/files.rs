//! The metadata endpoints (files.list, files.get, files.create without content,
//! files.update without content, files.delete, files.export, about.get, drives.list,
//! drives.get) and the download (`alt=media`), with the metadata rules uploads share.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::errors::ApiError;
use super::fields::Mask;
use super::query::Expr;
use super::server::{empty_response, error_response, json_response, Req, Resp, RespBody, State};
use super::store::{
    self, Body, File, ListSpec, NewFile, Store, FILE_FIELDS, FOLDER_MIME, GOOGLE_APPS_PREFIX, SHORTCUT_MIME,
};
use super::{time, DocKind};

/// Fields a request body may not set.
const READ_ONLY_FIELDS: &[&str] = &[
    "id",
    "kind",
    "size",
    "md5Checksum",
    "sha1Checksum",
    "sha256Checksum",
    "version",
    "headRevisionId",
    "quotaBytesUsed",
    "capabilities",
    "exportLinks",
    "driveId",
    "teamDriveId",
    "explicitlyTrashed",
    "fileExtension",
    "fullFileExtension",
    "spaces",
    "ownedByMe",
    "resourceKey",
    "webViewLink",
    "webContentLink",
];
/// about.get's fields.
const ABOUT_FIELDS: &[&str] = &[
    "kind",
    "user",
    "storageQuota",
    "importFormats",
    "exportFormats",
    "maxImportSizes",
    "maxUploadSize",
    "appInstalled",
    "folderColorPalette",
    "canCreateDrives",
    "driveThemes",
    "canCreateTeamDrives",
    "teamDriveThemes",
];
/// files.list's top-level fields.
const LIST_FIELDS: &[&str] = &["kind", "nextPageToken", "incompleteSearch", "files"];
/// Drive's largest upload (5 TiB), as about.get reports it.
const MAX_UPLOAD_BYTES: u64 = 5 << 40;
/// Candidates a listing page examines at most per result asked for.
const SCAN_PER_RESULT: usize = 20;

fn one<T>(state: &State, r: Result<T, ApiError>, f: impl FnOnce(T) -> Resp) -> Resp {
    match r {
        Ok(v) => f(v),
        Err(e) => error_response(state, &e),
    }
}

/// The mask for a file resource: `fields`, or Drive's default (kind, id, name, mimeType).
pub(crate) fn file_mask(fields: Option<&str>) -> Result<Mask, ApiError> {
    match fields {
        None => Ok(Mask::of(&["kind", "id", "name", "mimeType"])),
        Some(f) => {
            let m = Mask::parse(f)?;
            m.check(FILE_FIELDS)?;
            Ok(m)
        }
    }
}

/// A file resource answer shaped by `fields`.
pub(crate) fn file_response(state: &State, file: &File, fields: Option<&str>) -> Resp {
    one(state, file_mask(fields), |m| json_response(StatusCode::OK, &m.apply(&file.resource(&state.api_url))))
}

/// Whether a request may see `f`: items in shared drives need `supportsAllDrives=true`.
pub(crate) fn visible(f: &File, supports_all_drives: bool) -> bool {
    f.drive_id.is_none() || supports_all_drives
}

/// The file `id` (after `root` resolves), if this request may see it.
pub(crate) fn lookup<'a>(s: &'a Store, id: &str, supports_all_drives: bool) -> Result<&'a File, ApiError> {
    let id = s.resolve(id);
    s.get(&id).filter(|f| visible(f, supports_all_drives)).ok_or_else(|| ApiError::file_not_found(&id))
}

fn file_id(req: &Req) -> &str {
    &req.segments[3]
}

pub(crate) fn about(state: &State, req: &Req) -> Resp {
    let Some(fields) = req.fields() else {
        return error_response(
            state,
            &ApiError::required_parameter("fields", "The 'fields' parameter is required for this method."),
        );
    };
    let mask = match Mask::parse(fields).and_then(|m| m.check(ABOUT_FIELDS).map(|()| m)) {
        Ok(m) => m,
        Err(e) => return error_response(state, &e),
    };
    let (usage, trash) = state.store().usage();
    let exports: Map<String, Value> =
        DocKind::ALL.iter().map(|k| (k.mime_type().to_string(), json!(k.export_formats()))).collect();
    let about = json!({
        "kind": "drive#about",
        "user": {
            "kind": "drive#user",
            "displayName": state.settings.user_name,
            "emailAddress": state.settings.user_email,
            "permissionId": "00000000000000000001",
            "me": true,
        },
        "storageQuota": {
            "limit": state.settings.storage_limit_bytes.to_string(),
            "usage": usage.to_string(),
            "usageInDrive": usage.to_string(),
            "usageInDriveTrash": trash.to_string(),
        },
        "importFormats": {
            "text/plain": [DocKind::Document.mime_type()],
            "text/csv": [DocKind::Spreadsheet.mime_type()],
        },
        "exportFormats": exports,
        "maxImportSizes": {},
        "maxUploadSize": MAX_UPLOAD_BYTES.to_string(),
        "appInstalled": false,
        "folderColorPalette": ["#ac725e"],
        "canCreateDrives": true,
        "driveThemes": [],
        "canCreateTeamDrives": true,
        "teamDriveThemes": [],
    });
    json_response(StatusCode::OK, &mask.apply(&about))
}

fn drive_json(d: &store::SharedDrive) -> Value {
    json!({"kind": "drive#drive", "id": d.id, "name": d.name, "createdTime": time::format_ms(d.created_ms)})
}

pub(crate) fn drives_list(state: &State, req: &Req) -> Resp {
    let size = match req.param("pageSize").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return error_response(state, &ApiError::invalid_parameter("pageSize", "Invalid Value")),
    };
    let start = match req.param("pageToken").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error_response(state, &ApiError::invalid_parameter("pageToken", "Invalid Value")),
    };
    let s = state.store();
    let drives: Vec<Value> = s.drives().iter().skip(start).take(size).map(drive_json).collect();
    let mut out = json!({"kind": "drive#driveList", "drives": drives});
    if start + size < s.drives().len() {
        out["nextPageToken"] = json!((start + size).to_string());
    }
    json_response(StatusCode::OK, &out)
}

pub(crate) fn drives_get(state: &State, req: &Req) -> Resp {
    let id = &req.segments[3];
    let s = state.store();
    match s.drives().iter().find(|d| &d.id == id) {
        Some(d) => json_response(StatusCode::OK, &drive_json(d)),
        None => error_response(state, &ApiError::drive_not_found(id)),
    }
}

fn encode_token(qhash: u64, cursor: &(u64, String)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{qhash:016x}:{:016x}:{}", cursor.0, cursor.1))
}

fn decode_token(token: &str, qhash: u64) -> Option<(u64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut it = text.splitn(3, ':');
    let h = u64::from_str_radix(it.next()?, 16).ok()?;
    let key = u64::from_str_radix(it.next()?, 16).ok()?;
    let id = it.next()?.to_string();
    (h == qhash).then_some((key, id))
}

pub(crate) fn list(state: &State, req: &Req) -> Resp {
    match list_inner(state, req) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(state, &e),
    }
}

fn list_inner(state: &State, req: &Req) -> Result<Value, ApiError> {
    let max = state.settings.page_size_max;
    let page_size = match req.param("pageSize") {
        None => 100.min(max),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid_parameter(
                    "pageSize",
                    format!("Invalid value '{v}'. Values must be within the range: [1, {max}]"),
                ))
            }
        },
    };
    let mask = match req.fields() {
        None => Mask::parse("kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)")?,
        Some(f) => Mask::parse(f)?,
    };
    mask.check(LIST_FIELDS)?;
    if let Some(Some(files_mask)) = mask.get("files") {
        files_mask.check(FILE_FIELDS)?;
    }
    if req.param("orderBy").is_some() {
        return Err(ApiError::invalid_parameter("orderBy", "orderBy is not emulated: results come in no order."));
    }
    if req.param("spaces").is_some_and(|s| s != "drive") {
        return Err(ApiError::invalid_parameter("spaces", "Only the drive space is emulated."));
    }
    let corpora = req.param("corpora").unwrap_or("user");
    let drive_id = req.param("driveId");
    let include = req.flag("includeItemsFromAllDrives") || req.flag("includeTeamDriveItems");
    match corpora {
        "user" | "allDrives" | "drive" => {}
        _ => return Err(ApiError::invalid_parameter("corpora", "Invalid Value")),
    }
    if (corpora == "drive") != drive_id.is_some() {
        return Err(ApiError::bad_request(
            "The driveId parameter must be specified if and only if corpora is set to drive.",
        ));
    }
    if matches!(corpora, "drive" | "allDrives") && !include {
        return Err(ApiError::bad_request(
            "The includeItemsFromAllDrives parameter must be set to true when corpora is set to drive or allDrives.",
        ));
    }
    let q = req.param("q").unwrap_or("");
    let qhash = store::fnv1a(&[q, corpora, drive_id.unwrap_or(""), if include { "1" } else { "0" }]);
    let after = match req.param("pageToken") {
        None => None,
        Some(t) => {
            Some(decode_token(t, qhash).ok_or_else(|| ApiError::invalid_parameter("pageToken", "Invalid Value"))?)
        }
    };
    let s = state.store();
    if let Some(d) = drive_id {
        if !s.drives().iter().any(|x| x.id == d) {
            return Err(ApiError::drive_not_found(d));
        }
    }
    let expr = if q.trim().is_empty() {
        None
    } else {
        let mut e = Expr::parse(q)?;
        e.resolve_parents(&|id| s.resolve(id));
        Some(e)
    };
    let limit = if state.faults.short_pages() {
        state.rng.lock().expect("no panics holding the rng").usize(0..=page_size)
    } else {
        page_size
    };
    let spec = ListSpec {
        expr: expr.as_ref(),
        include_shared: include,
        drive: drive_id,
        after,
        limit,
        scan_max: (page_size * SCAN_PER_RESULT).max(10_000),
    };
    let (page, next) = s.list(&spec);
    let files: Vec<Value> = page.iter().map(|f| f.resource(&state.api_url)).collect();
    let mut out = json!({"kind": "drive#fileList", "incompleteSearch": false, "files": files});
    if let Some(c) = next {
        out["nextPageToken"] = json!(encode_token(qhash, &c));
    }
    Ok(mask.apply(&out))
}

/// What a `Range` header asks of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses one `bytes=` range; anything else (several ranges, other units, nonsense) is
/// ignored and the whole content served, as HTTP allows.
pub(crate) fn parse_range(h: Option<&str>, len: u64) -> RangeAsk {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else { return RangeAsk::Whole };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => match num(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(len - n.min(len), len - 1),
            None => RangeAsk::Whole,
        },
        (false, _) => {
            let Some(first) = num(a) else { return RangeAsk::Whole };
            let last = if b.trim().is_empty() { Some(u64::MAX) } else { num(b) };
            match last {
                Some(l) if l < first => RangeAsk::Whole,
                Some(_) if first >= len => RangeAsk::Unsatisfiable,
                Some(l) => RangeAsk::Part(first, l.min(len - 1)),
                None => RangeAsk::Whole,
            }
        }
        (true, true) => RangeAsk::Whole,
    }
}

pub(crate) fn get(state: &Arc<State>, req: &Req) -> Resp {
    let supports = req.flag("supportsAllDrives") || req.flag("supportsTeamDrives");
    let s = state.store();
    let file = match lookup(&s, file_id(req), supports) {
        Ok(f) => f,
        Err(e) => return error_response(state, &e),
    };
    if req.param("alt") != Some("media") {
        return file_response(state, file, req.fields());
    }
    let Body::Blob { content, .. } = &file.body else {
        return error_response(state, &ApiError::not_downloadable());
    };
    let len = content.len();
    let (status, first, n) = match parse_range(req.header("range"), len) {
        RangeAsk::Whole => (StatusCode::OK, 0, len),
        RangeAsk::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeAsk::Unsatisfiable => {
            let mut r = empty_response(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut().insert("content-range", format!("bytes */{len}").parse().expect("ascii"));
            return r;
        }
    };
    let slices: VecDeque<Bytes> = content.slices(first, n).into();
    let mime = file.mime_type.clone();
    drop(s);
    let body = RespBody::Slices {
        slices,
        sent: 0,
        cut_after: state.faults.take_drop(false),
        conn: req.conn.clone(),
        state: state.clone(),
        left: n,
    };
    let mut b = Response::builder().status(status).header(CONTENT_TYPE, mime).header(CONTENT_LENGTH, n);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header("content-range", format!("bytes {first}-{}/{len}", first + n - 1));
    }
    b.body(body).expect("a valid response")
}

pub(crate) fn export(state: &Arc<State>, req: &Req) -> Resp {
    // files.export has no supportsAllDrives parameter (Google's client refuses one):
    // files in shared drives export as they are.
    let supports = true;
    let Some(mime) = req.param("mimeType") else {
        return error_response(state, &ApiError::required_parameter("mimeType", "Required parameter: mimeType"));
    };
    let s = state.store();
    let file = match lookup(&s, file_id(req), supports) {
        Ok(f) => f,
        Err(e) => return error_response(state, &e),
    };
    let Body::Doc { kind, text } = &file.body else {
        return error_response(state, &ApiError::not_exportable());
    };
    let Some(bytes) = store::export(*kind, text, mime) else {
        return error_response(state, &ApiError::conversion_unsupported());
    };
    drop(s);
    if bytes.len() as u64 > state.settings.export_bytes_max {
        return error_response(state, &ApiError::export_too_large());
    }
    let n = bytes.len() as u64;
    let body = RespBody::Slices {
        slices: VecDeque::from([bytes]),
        sent: 0,
        cut_after: state.faults.take_drop(false),
        conn: req.conn.clone(),
        state: state.clone(),
        left: n,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, mime)
        .header(CONTENT_LENGTH, n)
        .body(body)
        .expect("a valid response")
}

fn string_map(v: &Value, field: &str, allow_null: bool) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    let Some(obj) = v.as_object() else { return Err(ApiError::bad_request(format!("Invalid value at '{field}'."))) };
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), Some(s.clone()))),
            Value::Null if allow_null => Ok((k.clone(), None)),
            _ => Err(ApiError::bad_request(format!("Invalid value at '{field}.{k}'."))),
        })
        .collect()
}

/// Metadata from a create request's body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub(crate) name: Option<String>,
    pub(crate) mime_type: Option<String>,
    pub(crate) parent: Option<String>,
    pub(crate) created_ms: Option<i64>,
    pub(crate) modified_ms: Option<i64>,
    pub(crate) description: Option<String>,
    pub(crate) starred: bool,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) app_properties: BTreeMap<String, String>,
    pub(crate) original_filename: Option<String>,
    pub(crate) shortcut_target: Option<String>,
}

fn str_field(v: &Value, k: &str) -> Result<Option<String>, ApiError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("Invalid value at '{k}': a string is expected."))),
    }
}

fn time_field(v: &Value, k: &str) -> Result<Option<i64>, ApiError> {
    match str_field(v, k)? {
        None => Ok(None),
        Some(t) => {
            time::parse(&t).map(Some).ok_or_else(|| ApiError::bad_request(format!("Invalid value for {k}: {t}")))
        }
    }
}

/// Parses a create request's metadata.
pub(crate) fn parse_create(v: &Value) -> Result<Meta, ApiError> {
    if let Some(k) = READ_ONLY_FIELDS.iter().find(|k| v.get(**k).is_some() && **k != "kind") {
        return Err(ApiError::field_not_writable(k));
    }
    let parents = match v.get("parents") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| p.as_str().map(str::to_string).ok_or_else(|| ApiError::bad_request("Invalid value at 'parents'.")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(ApiError::bad_request("Invalid value at 'parents'.")),
    };
    if parents.len() > 1 {
        return Err(ApiError::cannot_add_parent());
    }
    let map = |k: &str| -> Result<BTreeMap<String, String>, ApiError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(m) => Ok(string_map(m, k, false)?.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()),
        }
    };
    let shortcut_target = match v.get("shortcutDetails") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            str_field(d, "targetId")?.ok_or_else(|| ApiError::bad_request("shortcutDetails.targetId is required."))?,
        ),
    };
    Ok(Meta {
        name: str_field(v, "name")?,
        mime_type: str_field(v, "mimeType")?,
        parent: parents.into_iter().next(),
        created_ms: time_field(v, "createdTime")?,
        modified_ms: time_field(v, "modifiedTime")?,
        description: str_field(v, "description")?,
        starred: v.get("starred").and_then(Value::as_bool).unwrap_or(false),
        properties: map("properties")?,
        app_properties: map("appProperties")?,
        original_filename: str_field(v, "originalFilename")?,
        shortcut_target,
    })
}

/// Resolves the parent of a new file (default: My Drive's root) and checks it.
pub(crate) fn new_parent(s: &Store, meta: &Meta, supports_all_drives: bool) -> Result<String, ApiError> {
    let parent = s.resolve(meta.parent.as_deref().unwrap_or("root"));
    let p = s.check_parent(&parent)?;
    if !visible(p, supports_all_drives) {
        return Err(ApiError::file_not_found(&parent));
    }
    Ok(parent)
}

/// A new file from metadata and a body.
pub(crate) fn new_file(meta: &Meta, parent: String, mime: String, body: Body) -> NewFile {
    let mut n = NewFile::new(meta.name.as_deref().unwrap_or("Untitled"), &parent, &mime, body);
    n.created_ms = meta.created_ms;
    n.modified_ms = meta.modified_ms;
    n.starred = meta.starred;
    n.description = meta.description.clone();
    n.properties = meta.properties.clone();
    n.app_properties = meta.app_properties.clone();
    n
}

/// files.create without content: a folder, an empty Doc, a shortcut, or an empty file.
pub(crate) async fn create(state: &State, req: &mut Req) -> Resp {
    let v = match req.json_body().await {
        Ok(v) => v,
        Err(e) => return error_response(state, &e),
    };
    let supports = req.flag("supportsAllDrives") || req.flag("supportsTeamDrives");
    let r = (|| {
        let meta = parse_create(&v)?;
        let mut s = state.store();
        let parent = new_parent(&s, &meta, supports)?;
        let mime = meta.mime_type.clone().unwrap_or_else(|| "application/octet-stream".to_string());
        let body = if mime == FOLDER_MIME {
            Body::Folder
        } else if mime == SHORTCUT_MIME {
            let target = meta
                .shortcut_target
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("A shortcut needs shortcutDetails.targetId."))?;
            let t = lookup(&s, target, supports)?;
            Body::Shortcut { target_id: t.id.clone(), target_mime: t.mime_type.clone() }
        } else if let Some(kind) = DocKind::from_mime(&mime) {
            Body::Doc { kind, text: Bytes::new() }
        } else if mime.starts_with(GOOGLE_APPS_PREFIX) {
            return Err(ApiError::bad_request(format!("Creating files of type {mime} is not emulated.")));
        } else {
            let content = store::Content::default();
            let digests = store::Hashers::of(&content);
            Body::Blob { content, digests, original_filename: meta.original_filename.clone(), revision: 1 }
        };
        let id = s.create(new_file(&meta, parent, mime, body))?;
        Ok(s.get(&id).expect("just created").clone())
    })();
    one(state, r, |f| file_response(state, &f, req.fields()))
}

/// Checks an update's metadata (before any content is read).
pub(crate) fn check_patch(v: &Value) -> Result<(), ApiError> {
    for k in ["parents", "createdTime", "shortcutDetails"] {
        if v.get(k).is_some() {
            return Err(ApiError::field_not_writable(k));
        }
    }
    if let Some(k) = READ_ONLY_FIELDS.iter().find(|k| v.get(**k).is_some() && **k != "kind") {
        return Err(ApiError::field_not_writable(k));
    }
    str_field(v, "name")?;
    str_field(v, "mimeType")?;
    str_field(v, "description")?;
    str_field(v, "originalFilename")?;
    time_field(v, "modifiedTime")?;
    for k in ["properties", "appProperties"] {
        if let Some(m) = v.get(k).filter(|m| !m.is_null()) {
            string_map(m, k, true)?;
        }
    }
    for k in ["trashed", "starred"] {
        if v.get(k).is_some_and(|b| !b.is_boolean()) {
            return Err(ApiError::bad_request(format!("Invalid value at '{k}': a boolean is expected.")));
        }
    }
    Ok(())
}

fn id_list(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Applies a checked update (metadata patch, parent moves) to file `id`.
pub(crate) fn apply_patch(
    s: &mut Store,
    id: &str,
    v: &Value,
    add_parents: Option<&str>,
    remove_parents: Option<&str>,
    supports_all_drives: bool,
) -> Result<(), ApiError> {
    check_patch(v)?;
    let file = s.get(id).ok_or_else(|| ApiError::file_not_found(id))?.clone();
    if let Some(m) = str_field(v, "mimeType")? {
        // Folders, Docs and shortcuts keep their type; a binary file cannot become one.
        let google = |t: &str| t.starts_with(GOOGLE_APPS_PREFIX);
        if m != file.mime_type && (google(&m) || google(&file.mime_type)) {
            return Err(ApiError::bad_request(format!("The mimeType of {} cannot change to {m}.", file.mime_type)));
        }
    }
    // Parents: at most one, no cycles, not across drives.
    let mut parents = file.parents.clone();
    let remove: Vec<String> = id_list(remove_parents).iter().map(|p| s.resolve(p)).collect();
    let add: Vec<String> = id_list(add_parents).iter().map(|p| s.resolve(p)).collect();
    parents.retain(|p| !remove.contains(p));
    for a in &add {
        let p = s.check_parent(a)?;
        if !visible(p, supports_all_drives) {
            return Err(ApiError::file_not_found(a));
        }
        if p.drive_id != file.drive_id {
            return Err(ApiError::bad_request("Moving files between My Drive and shared drives is not emulated."));
        }
        let mut cur = Some(a.clone());
        while let Some(c) = cur {
            if c == id {
                return Err(ApiError::bad_request("The move would create a cycle in the folder graph."));
            }
            cur = s.get(&c).and_then(|f| f.parents.first().cloned());
        }
        if !parents.contains(a) {
            parents.push(a.clone());
        }
    }
    if parents.len() > 1 {
        return Err(ApiError::cannot_add_parent());
    }
    if parents.is_empty() && !file.parents.is_empty() {
        return Err(ApiError::bad_request("A file must keep one parent."));
    }
    let props = |k: &str| v.get(k).filter(|m| !m.is_null()).map(|m| string_map(m, k, true)).transpose();
    let (properties, app_properties) = (props("properties")?, props("appProperties")?);
    let modified = time_field(v, "modifiedTime")?;
    let trashed = v.get("trashed").and_then(Value::as_bool);
    s.modify(id, |f| {
        f.parents = parents;
        if let Some(Value::String(n)) = v.get("name") {
            f.name = n.clone();
        }
        if let Some(Value::String(m)) = v.get("mimeType") {
            f.mime_type = m.clone();
        }
        if let Some(d) = v.get("description") {
            f.description = d.as_str().map(str::to_string);
        }
        if let Some(b) = v.get("starred").and_then(Value::as_bool) {
            f.starred = b;
        }
        if let (Some(Value::String(o)), Body::Blob { original_filename, .. }) = (v.get("originalFilename"), &mut f.body)
        {
            *original_filename = Some(o.clone());
        }
        for (target, patch) in [(&mut f.properties, properties), (&mut f.app_properties, app_properties)] {
            for (k, val) in patch.into_iter().flatten() {
                match val {
                    Some(val) => target.insert(k, val),
                    None => target.remove(&k),
                };
            }
        }
        if let Some(m) = modified {
            f.modified_ms = m;
        }
        f.version += 1;
    });
    if let Some(t) = trashed {
        s.set_trashed(id, t);
    }
    Ok(())
}

/// files.update without content.
pub(crate) async fn update(state: &State, req: &mut Req) -> Resp {
    let v = match req.json_body().await {
        Ok(v) => v,
        Err(e) => return error_response(state, &e),
    };
    let supports = req.flag("supportsAllDrives") || req.flag("supportsTeamDrives");
    let r = (|| {
        let mut s = state.store();
        let id = lookup(&s, file_id(req), supports)?.id.clone();
        if s.get(&id).is_some_and(|f| f.parents.is_empty()) {
            return Err(ApiError::insufficient_permissions());
        }
        apply_patch(&mut s, &id, &v, req.param("addParents"), req.param("removeParents"), supports)?;
        Ok(s.get(&id).expect("still there").clone())
    })();
    one(state, r, |f| file_response(state, &f, req.fields()))
}

/// files.delete: for good, with everything under a folder.
pub(crate) fn delete(state: &State, req: &Req) -> Resp {
    let supports = req.flag("supportsAllDrives") || req.flag("supportsTeamDrives");
    let mut s = state.store();
    let id = match lookup(&s, file_id(req), supports) {
        Ok(f) if f.parents.is_empty() => return error_response(state, &ApiError::insufficient_permissions()),
        Ok(f) => f.id.clone(),
        Err(e) => return error_response(state, &e),
    };
    s.delete(&id);
    empty_response(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=2-4"), 10), RangeAsk::Part(2, 4));
        assert_eq!(parse_range(Some("bytes=2-"), 10), RangeAsk::Part(2, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), RangeAsk::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeAsk::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeAsk::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-99"), 0), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), RangeAsk::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeAsk::Whole);
    }

    #[test]
    fn page_tokens_belong_to_their_query() {
        let t = encode_token(42, &(7, "1abc".to_string()));
        assert_eq!(decode_token(&t, 42), Some((7, "1abc".to_string())));
        assert_eq!(decode_token(&t, 43), None);
        assert_eq!(decode_token("garbage!", 42), None);
    }

    #[test]
    fn create_metadata_rules() {
        assert_eq!(parse_create(&json!({"id": "x"})).unwrap_err().reason, "fieldNotWritable");
        assert_eq!(parse_create(&json!({"parents": ["a", "b"]})).unwrap_err().reason, "cannotAddParent");
        assert!(parse_create(&json!({"modifiedTime": "yesterday"})).is_err());
        let m =
            parse_create(&json!({"name": "n", "parents": ["p"], "modifiedTime": "2020-01-02T03:04:05.006Z"})).unwrap();
        assert_eq!((m.name.as_deref(), m.parent.as_deref()), (Some("n"), Some("p")));
        assert_eq!(m.modified_ms.map(time::format_ms).as_deref(), Some("2020-01-02T03:04:05.006Z"));
        assert_eq!(check_patch(&json!({"parents": ["x"]})).unwrap_err().reason, "fieldNotWritable");
        assert!(check_patch(&json!({"name": "b", "trashed": true, "properties": {"a": null}})).is_ok());
    }
}
