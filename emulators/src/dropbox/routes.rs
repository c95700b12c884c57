//! The API functions: the route table (name, style, host, whether it commits), and
//! each route's argument reading and work. Work on the store happens under its lock,
//! never across a body read: content routes are split into `prepare` (checks that need
//! no body, and how to hash it) and `complete`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};

use super::content_hash::is_hash_shaped;
use super::namespace::{
    parse_target, Commit, Content, Kind, ListCursor, LookupErr, PathKind, Target, WriteErr, WriteMode,
};
use super::properties::{parse_filter, parse_groups, template_route};
use super::server::Shared;
use super::sessions::{Plan, Received, SessionType};
use super::wire::{now_unix_s, ApiError, ArgSource, Args};
use super::{auth, FINISH_BATCH_ENTRIES_MAX, LIST_LIMIT_MAX, UPLOAD_BYTES_MAX};

/// How a route is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// JSON argument and result in the bodies, on the api host.
    Rpc,
    /// Argument in `Dropbox-API-Arg`, data in the body, JSON result; content host.
    Upload,
    /// Argument in `Dropbox-API-Arg`, result in `Dropbox-API-Result`, data in the body.
    Download,
}

/// Which listener a route lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    Api,
    Content,
}

/// One API function.
#[derive(Debug)]
pub(crate) struct Route {
    pub name: &'static str,
    pub style: Style,
    /// Holds one of the namespace's commit slots while it runs.
    pub commits: bool,
    /// Takes no argument (Dropbox's `Void`): besides `null` as JSON, it may be called
    /// with no body and no `Content-Type`, as Dropbox's documentation calls it (`curl -X
    /// POST .../2/users/get_current_account --header "Authorization: Bearer ..."`) and
    /// as Dropbox's Go SDK sends it.
    pub void_arg: bool,
}

impl Route {
    pub(crate) fn host(&self) -> Host {
        match self.style {
            Style::Rpc => Host::Api,
            Style::Upload | Style::Download => Host::Content,
        }
    }
}

const fn rpc_route(name: &'static str, commits: bool) -> Route {
    Route { name, style: Style::Rpc, commits, void_arg: false }
}

const fn void_rpc_route(name: &'static str) -> Route {
    Route { name, style: Style::Rpc, commits: false, void_arg: true }
}

const fn upload_route(name: &'static str, commits: bool) -> Route {
    Route { name, style: Style::Upload, commits, void_arg: false }
}

pub(crate) const ROUTES: &[Route] = &[
    rpc_route("files/list_folder", false),
    rpc_route("files/list_folder/continue", false),
    rpc_route("files/list_folder/get_latest_cursor", false),
    rpc_route("files/get_metadata", false),
    rpc_route("files/delete_v2", false),
    rpc_route("files/create_folder_v2", false),
    rpc_route("files/upload_session/start_batch", false),
    rpc_route("files/upload_session/finish_batch_v2", true),
    rpc_route("files/upload_session/finish_batch", true),
    rpc_route("files/upload_session/finish_batch/check", false),
    rpc_route("file_properties/templates/add_for_user", false),
    void_rpc_route("file_properties/templates/list_for_user"),
    rpc_route("file_properties/templates/get_for_user", false),
    rpc_route("file_properties/templates/remove_for_user", false),
    void_rpc_route("users/get_current_account"),
    void_rpc_route("users/get_space_usage"),
    upload_route("files/upload", true),
    upload_route("files/upload_session/start", false),
    upload_route("files/upload_session/append_v2", false),
    upload_route("files/upload_session/finish", true),
    Route { name: "files/download", style: Style::Download, commits: false, void_arg: false },
];

pub(crate) fn find(name: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.name == name)
}

/// `finish_batch` (v1) jobs, answered `in_progress` on their first check.
#[derive(Default)]
pub(crate) struct Jobs {
    map: HashMap<String, (Value, u32)>,
    order: VecDeque<String>,
    serial: u64,
}

const JOBS_MAX: usize = 1024;

impl Jobs {
    fn add(&mut self, entries: Value) -> String {
        while self.map.len() >= JOBS_MAX {
            let old = self.order.pop_front().expect("order tracks the map");
            self.map.remove(&old);
        }
        self.serial += 1;
        let id = format!("dbjid:emu{:016x}", self.serial);
        self.order.push_back(id.clone());
        self.map.insert(id.clone(), (entries, 0));
        id
    }
}

fn path_err(tag: &str, inner: Value) -> ApiError {
    ApiError::Route(json!({ ".tag": tag, tag: inner }))
}

/// The argument's `path` field, checked.
fn target(shared: &Shared, a: &Args, field: &str, kind: PathKind) -> Result<Target, ApiError> {
    parse_target(&a.field_name(field), a.str(field)?, kind, a.source(), &shared.ns_id)
}

fn parse_commit(shared: &Shared, a: &Args) -> Result<Commit, ApiError> {
    let target = target(shared, a, "path", PathKind::Write)?;
    let mode = match a.union("mode")? {
        None | Some(("add", _)) => WriteMode::Add,
        Some(("overwrite", _)) => WriteMode::Overwrite,
        Some(("update", Some(u))) => WriteMode::Update(u.str("update")?.to_string()),
        Some(("update", None)) => return Err(a.err("mode", "'update' needs a rev")),
        Some((other, _)) => return Err(a.err("mode", format!("unknown tag '{other}'"))),
    };
    Ok(Commit {
        target,
        mode,
        autorename: a.bool("autorename", false)?,
        strict_conflict: a.bool("strict_conflict", false)?,
        client_modified_s: a.opt_timestamp("client_modified")?,
        property_groups: parse_groups(a)?,
    })
}

/// Checks a commit's property groups against the templates. When one does not fit,
/// the file is committed without any (as the API's `properties_error` says: "the file
/// has uploaded without property groups") and the call still answers that error
/// (`InvalidPropertyGroupError`): returns the commit to make and that error.
fn check_groups(store: &super::server::Store, commit: Commit) -> (Commit, Option<ApiError>) {
    match store.templates.check_groups(&commit.property_groups) {
        Ok(()) => (commit, None),
        Err(v) => {
            let bare = Commit { property_groups: Vec::new(), ..commit };
            (bare, Some(ApiError::Route(json!({ ".tag": "properties_error", "properties_error": v }))))
        }
    }
}

fn content_hash_arg<'a>(a: &Args<'a>) -> Result<Option<&'a str>, ApiError> {
    let h = a.opt_str("content_hash")?;
    if let Some(h) = h {
        if !is_hash_shaped(h) {
            return Err(a.err("content_hash", format!("'{h}' must be 64 hex digits")));
        }
    }
    Ok(h)
}

fn check_call_hash(given: Option<&str>, received: &Received) -> Result<(), ApiError> {
    match (given, &received.call_hash) {
        (Some(g), Some(got)) if !g.eq_ignore_ascii_case(got) => Err(ApiError::tag("content_hash_mismatch")),
        _ => Ok(()),
    }
}

/// An RPC route's work.
pub(crate) fn rpc(shared: &Shared, route: &Route, arg: &Value) -> Result<Value, ApiError> {
    let a = Args::new(arg, ArgSource::Body)?;
    match route.name {
        "files/list_folder" | "files/list_folder/get_latest_cursor" => list_folder(shared, &a, route.name),
        "files/list_folder/continue" => list_continue(shared, &a),
        "files/get_metadata" => get_metadata(shared, &a),
        "files/delete_v2" => {
            let t = target(shared, &a, "path", PathKind::Write)?;
            let mut store = shared.store();
            let meta = store.ns.delete(&t).map_err(|l| path_err("path_lookup", l.value()))?;
            Ok(json!({ "metadata": meta }))
        }
        "files/create_folder_v2" => {
            let t = target(shared, &a, "path", PathKind::Write)?;
            let autorename = a.bool("autorename", false)?;
            let mut store = shared.store();
            let lower = store.ns.create_folder(&t, autorename).map_err(|w| path_err("path", w.value()))?;
            Ok(json!({ "metadata": store.ns.metadata_json(&lower, false) }))
        }
        "files/upload_session/start_batch" => {
            let n = a.u64("num_sessions")?;
            if !(1..=FINISH_BATCH_ENTRIES_MAX as u64).contains(&n) {
                return Err(a.err("num_sessions", format!("{n} is not between 1 and {FINISH_BATCH_ENTRIES_MAX}")));
            }
            let kind = session_type(&a)?;
            let mut store = shared.store();
            let mut ids = Vec::with_capacity(n as usize);
            for _ in 0..n {
                ids.push(store.sessions.start(kind, false, bytes::Bytes::new(), Box::default())?);
            }
            Ok(json!({ "session_ids": ids }))
        }
        "files/upload_session/finish_batch_v2" => Ok(json!({ "entries": finish_batch(shared, &a)? })),
        "files/upload_session/finish_batch" => {
            let entries = finish_batch(shared, &a)?;
            let id = shared.store().jobs.add(Value::Array(entries));
            Ok(json!({ ".tag": "async_job_id", "async_job_id": id }))
        }
        "files/upload_session/finish_batch/check" => {
            let id = a.str("async_job_id")?;
            let mut store = shared.store();
            let Some((entries, checks)) = store.jobs.map.get_mut(id) else {
                return Err(ApiError::tag("invalid_async_job_id"));
            };
            *checks += 1;
            if *checks == 1 {
                return Ok(json!({ ".tag": "in_progress" }));
            }
            Ok(json!({ ".tag": "complete", "entries": entries.clone() }))
        }
        "file_properties/templates/add_for_user"
        | "file_properties/templates/list_for_user"
        | "file_properties/templates/get_for_user"
        | "file_properties/templates/remove_for_user" => template_route(&mut shared.store().templates, route.name, &a),
        "users/get_current_account" => Ok(account(shared)),
        "users/get_space_usage" => {
            let store = shared.store();
            Ok(json!({
                "used": store.ns.used_bytes(),
                "allocation": { ".tag": "individual", "allocated": store.ns.quota_bytes() },
            }))
        }
        other => unreachable!("route {other} is in the table but has no handler"),
    }
}

fn session_type(a: &Args) -> Result<SessionType, ApiError> {
    match a.union("session_type")? {
        None | Some(("sequential", _)) => Ok(SessionType::Sequential),
        Some(("concurrent", _)) => Ok(SessionType::Concurrent),
        Some((other, _)) => Err(a.err("session_type", format!("unknown tag '{other}'"))),
    }
}

fn list_folder(shared: &Shared, a: &Args, route: &str) -> Result<Value, ApiError> {
    let t = target(shared, a, "path", PathKind::List)?;
    let recursive = a.bool("recursive", false)?;
    let include_deleted = a.bool("include_deleted", false)?;
    let limit = match a.opt_u64("limit")? {
        None => shared.opts.list_limit_default,
        Some(l) if (1..=u64::from(LIST_LIMIT_MAX)).contains(&l) => l as u32,
        Some(l) => return Err(a.err("limit", format!("{l} is not between 1 and {LIST_LIMIT_MAX}"))),
    };
    let groups = parse_filter(a)?.unwrap_or_default();
    let store = shared.store();
    let scope = store.ns.resolve(&t).map_err(|l| path_err("path", l.value()))?;
    store.templates.check_filter(&groups).map_err(|v| path_err("template_error", v))?;
    if !scope.is_empty() && !matches!(store.ns.entry(&scope).map(|e| &e.kind), Some(Kind::Folder)) {
        return Err(path_err("path", LookupErr::NotFolder.value()));
    }
    if route == "files/list_folder/get_latest_cursor" {
        let mut cur = store.ns.latest_cursor(scope, recursive, include_deleted, limit, shared.epoch);
        cur.set_groups(groups);
        return Ok(json!({ "cursor": cur.encode() }));
    }
    let mut cur = store.ns.list_start(scope, recursive, include_deleted, limit, shared.epoch);
    cur.set_groups(groups);
    let (mut entries, has_more) = store.ns.list_page(&mut cur).expect("a new listing is never reset");
    add_groups(&store, &mut entries, cur.groups());
    Ok(json!({ "entries": entries, "cursor": cur.encode(), "has_more": has_more }))
}

/// Adds the property groups a listing asked for to its file entries.
fn add_groups(store: &super::server::Store, entries: &mut [Value], groups: &[String]) {
    if groups.is_empty() {
        return;
    }
    for e in entries.iter_mut().filter(|e| e[".tag"] == "file") {
        store.ns.add_groups(e, groups, &store.templates);
    }
}

fn list_continue(shared: &Shared, a: &Args) -> Result<Value, ApiError> {
    let raw = a.str("cursor")?;
    let Some(mut cur) = ListCursor::decode(raw, shared.epoch) else {
        return Err(ApiError::BadInput(format!("Invalid \"cursor\" parameter: {raw:?}")));
    };
    let store = shared.store();
    let (mut entries, has_more) = store.ns.list_page(&mut cur).map_err(|_| ApiError::tag("reset"))?;
    add_groups(&store, &mut entries, cur.groups());
    Ok(json!({ "entries": entries, "cursor": cur.encode(), "has_more": has_more }))
}

fn get_metadata(shared: &Shared, a: &Args) -> Result<Value, ApiError> {
    let t = target(shared, a, "path", PathKind::Read)?;
    let include_deleted = a.bool("include_deleted", false)?;
    // GetMetadataError has no template error: ids no template has show nothing.
    let groups = parse_filter(a)?.unwrap_or_default();
    let store = shared.store();
    match store.ns.resolve(&t) {
        Ok(lower) => {
            let mut meta = store.ns.metadata_json(&lower, true);
            store.ns.add_groups(&mut meta, &groups, &store.templates);
            Ok(meta)
        }
        Err(LookupErr::NotFound) if include_deleted => {
            store.ns.deleted_json(&t).ok_or_else(|| path_err("path", LookupErr::NotFound.value()))
        }
        Err(l) => Err(path_err("path", l.value())),
    }
}

fn account(shared: &Shared) -> Value {
    json!({
        "account_id": auth::ACCOUNT_ID,
        "name": {
            "given_name": "Laminar",
            "surname": "Emulator",
            "familiar_name": "Laminar",
            "display_name": "Laminar Emulator",
            "abbreviated_name": "LE",
        },
        "email": "emulator@example.invalid",
        "email_verified": true,
        "disabled": false,
        "country": "US",
        "locale": "en",
        "referral_link": "https://example.invalid/referrals",
        "is_paired": false,
        "account_type": { ".tag": "pro" },
        "root_info": { ".tag": "user", "root_namespace_id": shared.ns_id, "home_namespace_id": shared.ns_id },
    })
}

fn finish_batch(shared: &Shared, a: &Args) -> Result<Vec<Value>, ApiError> {
    let list = a.list("entries")?;
    if list.len() > FINISH_BATCH_ENTRIES_MAX {
        return Err(a.err("entries", format!("list has {} items, more than {FINISH_BATCH_ENTRIES_MAX}", list.len())));
    }
    let mut parsed = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let e = a.element("entries", i, v)?;
        let cursor = e.object("cursor")?;
        let commit = parse_commit(shared, &e.object("commit")?)?;
        parsed.push((cursor.str("session_id")?.to_string(), cursor.u64("offset")?, commit, content_hash_arg(&e)?));
    }
    let now = now_unix_s();
    let mut store = shared.store();
    let mut out = Vec::with_capacity(parsed.len());
    for (id, offset, commit, hash) in parsed {
        let failure = |e: ApiError| match e {
            ApiError::Route(v) => json!({ ".tag": "failure", "failure": v }),
            other => unreachable!("a batch entry fails only with a route error, not {other:?}"),
        };
        if shared.batch_entry_busy() {
            out.push(failure(ApiError::tag("too_many_write_operations")));
            continue;
        }
        let (commit, groups_err) = check_groups(&store, commit);
        let assembled = match store.sessions.assemble(&id, offset, None, true) {
            Ok(a) => a,
            Err(e) => {
                out.push(failure(e));
                continue;
            }
        };
        // No data comes in this call: an entry's content_hash is checked against the file.
        if hash.is_some_and(|h| !h.eq_ignore_ascii_case(&assembled.hash)) {
            out.push(failure(ApiError::tag("content_hash_mismatch")));
            continue;
        }
        match store.ns.commit_file(&commit, Arc::new(assembled.content), assembled.hash, now) {
            Ok(lower) => {
                store.sessions.finished(&id);
                if let Some(e) = groups_err {
                    out.push(failure(e));
                    continue;
                }
                let mut meta = store.ns.metadata_json(&lower, false);
                meta[".tag"] = "success".into();
                out.push(meta);
            }
            Err(w) => out.push(failure(path_err("path", w.value()))),
        }
    }
    Ok(out)
}

/// What a content-upload route needs once its body is read.
pub(crate) enum UploadJob {
    Upload { commit: Commit, hash: Option<String> },
    Start { kind: SessionType, close: bool, hash: Option<String> },
    Append { id: String, offset: u64, close: bool, hash: Option<String> },
    Finish { id: String, offset: u64, commit: Commit, hash: Option<String> },
}

/// Reads an upload route's argument and checks what needs no body; returns the job
/// and how to hash the body.
pub(crate) fn upload_prepare(
    shared: &Shared,
    route: &Route,
    arg: &Value,
    source: ArgSource,
) -> Result<(UploadJob, Plan, bool), ApiError> {
    let a = Args::new(arg, source)?;
    let fresh = || Plan::Continue { hasher: Box::default(), offset: 0 };
    let hash = content_hash_arg(&a)?.map(str::to_string);
    let want = hash.is_some();
    match route.name {
        "files/upload" => Ok((UploadJob::Upload { commit: parse_commit(shared, &a)?, hash }, fresh(), want)),
        "files/upload_session/start" => {
            let kind = session_type(&a)?;
            let close = a.bool("close", false)?;
            if kind == SessionType::Concurrent && close {
                return Err(ApiError::tag("concurrent_session_close_not_allowed"));
            }
            Ok((UploadJob::Start { kind, close, hash }, fresh(), want))
        }
        "files/upload_session/append_v2" => {
            let cursor = a.object("cursor")?;
            let (id, offset) = (cursor.str("session_id")?.to_string(), cursor.u64("offset")?);
            let close = a.bool("close", false)?;
            let plan = shared.store().sessions.plan(&id, offset, false).map_err(ApiError::Route)?;
            Ok((UploadJob::Append { id, offset, close, hash }, plan, want))
        }
        "files/upload_session/finish" => {
            let cursor = a.object("cursor")?;
            let (id, offset) = (cursor.str("session_id")?.to_string(), cursor.u64("offset")?);
            let commit = parse_commit(shared, &a.object("commit")?)?;
            let plan = shared
                .store()
                .sessions
                .plan(&id, offset, true)
                .map_err(|v| ApiError::Route(json!({ ".tag": "lookup_failed", "lookup_failed": v })))?;
            Ok((UploadJob::Finish { id, offset, commit, hash }, plan, want))
        }
        other => unreachable!("{other} is not an upload route"),
    }
}

/// Finishes an upload route with its body.
pub(crate) fn upload_complete(shared: &Shared, job: UploadJob, body: Received) -> Result<Value, ApiError> {
    debug_assert!(body.data.len() as u64 <= UPLOAD_BYTES_MAX);
    let now = now_unix_s();
    match job {
        UploadJob::Upload { commit, hash } => {
            check_call_hash(hash.as_deref(), &body)?;
            let file_hash = body
                .call_hash
                .clone()
                .unwrap_or_else(|| body.continued.clone().expect("uploads hash from offset 0").finish_hex());
            let mut store = shared.store();
            let (commit, groups_err) = check_groups(&store, commit);
            let content = Arc::new(Content::from_segments(vec![body.data.clone()]));
            match store.ns.commit_file(&commit, content, file_hash, now) {
                Ok(_) if groups_err.is_some() => Err(groups_err.expect("checked")),
                Ok(lower) => Ok(store.ns.metadata_json(&lower, false)),
                Err(w) => Err(upload_failed(&mut store, w, body)),
            }
        }
        UploadJob::Start { kind, close, hash } => {
            check_call_hash(hash.as_deref(), &body)?;
            let hasher = body.continued.expect("starts hash from offset 0");
            let id = shared.store().sessions.start(kind, close, body.data, hasher)?;
            Ok(json!({ "session_id": id }))
        }
        UploadJob::Append { id, offset, close, hash } => {
            check_call_hash(hash.as_deref(), &body)?;
            shared.store().sessions.append(&id, offset, close, body)?;
            Ok(Value::Null)
        }
        UploadJob::Finish { id, offset, commit, hash } => {
            check_call_hash(hash.as_deref(), &body)?;
            let mut store = shared.store();
            let assembled = store.sessions.assemble(&id, offset, Some(body), false)?;
            // After assembling: the call's data joins the session even when the commit fails.
            let (commit, groups_err) = check_groups(&store, commit);
            let lower = store
                .ns
                .commit_file(&commit, Arc::new(assembled.content), assembled.hash, now)
                .map_err(|w| path_err("path", w.value()))?;
            store.sessions.finished(&id);
            match groups_err {
                Some(e) => Err(e),
                None => Ok(store.ns.metadata_json(&lower, false)),
            }
        }
    }
}

/// `files/upload` could not commit: as Dropbox does, the data is kept in a new upload
/// session whose id comes back with the error, so the commit can be retried.
fn upload_failed(store: &mut super::server::Store, w: WriteErr, body: Received) -> ApiError {
    let hasher = body.continued.expect("uploads hash from offset 0");
    let id = store.sessions.start(SessionType::Sequential, false, body.data, hasher).ok();
    let mut v = json!({ ".tag": "path", "reason": w.value() });
    if let Some(id) = id {
        v["upload_session_id"] = id.into();
    }
    ApiError::Route(v)
}

/// `files/download`: the file's metadata and bytes.
pub(crate) fn download(shared: &Shared, arg: &Value, source: ArgSource) -> Result<(Value, Arc<Content>), ApiError> {
    let a = Args::new(arg, source)?;
    let mut t = target(shared, &a, "path", PathKind::Read)?;
    if let Some(rev) = a.opt_str("rev")? {
        t = Target::Rev(rev.to_string());
    }
    let store = shared.store();
    let lower = store.ns.resolve(&t).map_err(|l| path_err("path", l.value()))?;
    match store.ns.entry(&lower).map(|e| &e.kind) {
        Some(Kind::File(f)) => Ok((store.ns.metadata_json(&lower, false), f.content.clone())),
        _ => Err(path_err("path", LookupErr::NotFile.value())),
    }
}
