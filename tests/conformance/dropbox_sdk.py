#!/usr/bin/env python3
"""Drives Laminar's Dropbox emulator with Dropbox's official Python SDK, unchanged.

Usage: dropbox_sdk.py CONFIG_JSON, where CONFIG_JSON is the line
`laminar-emulator dropbox` prints (api_url, content_url, admin_url, app_key,
app_secret, refresh_token, namespace_id) plus the file the caller seeded
(seeded_path, seeded_text, seeded_hash; client_modified 2019-06-01T12:00:00Z).
Exits 0 when every check passes; the first failure raises and exits non-zero with
a traceback. tests/it/dropbox_emulator.rs runs it.

How the SDK reaches the emulator without a line of it changed: the client is built
with the documented `session=` argument, a requests.Session whose transport adapter
rewrites https://api.dropboxapi.com, https://content.dropboxapi.com and
https://www.dropbox.com (the SDK's own host constants) to the emulator's loopback
listeners over plain HTTP, and refuses every other host, so nothing can reach
Dropbox. The OAuth flow object's `requests_session` attribute is set to the same
session.
"""

import concurrent.futures
import datetime
import hashlib
import json
import sys
import urllib.parse

import requests

import dropbox
from dropbox import file_properties, file_transfer, files
from dropbox import session as dbx_session
from dropbox.common import PathRoot
from dropbox.content_hash import content_hash as sdk_content_hash
from dropbox.exceptions import ApiError, AuthError, BadInputError, PathRootError, RateLimitError

MIB = 1 << 20
BLOCK = 4 * MIB
ROOT = "/Conformance"
PROPS = "/Conformance Properties"


class EmulatorAdapter(requests.adapters.HTTPAdapter):
    """Sends the SDK's Dropbox hosts to the emulator; refuses every other host."""

    def __init__(self, hosts):
        super().__init__()
        self.hosts = hosts

    def send(self, request, **kwargs):
        parts = urllib.parse.urlsplit(request.url)
        target = self.hosts.get(parts.netloc)
        if target is None:
            raise requests.exceptions.ConnectionError(
                "refusing %s: only the emulator is reachable from this script" % parts.netloc
            )
        request.url = urllib.parse.urlunsplit(("http", target, parts.path, parts.query, ""))
        return super().send(request, **kwargs)


def emulator_session(cfg):
    api = urllib.parse.urlsplit(cfg["api_url"]).netloc
    content = urllib.parse.urlsplit(cfg["content_url"]).netloc
    hosts = {
        dbx_session.API_HOST: api,
        dbx_session.API_CONTENT_HOST: content,
        dbx_session.WEB_HOST: api,
        api: api,
        content: content,
    }
    s = requests.Session()
    adapter = EmulatorAdapter(hosts)
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    return s


def documented_content_hash(data):
    """https://www.dropbox.com/developers/reference/content-hash, written out here."""
    digests = b"".join(hashlib.sha256(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK))
    return hashlib.sha256(digests).hexdigest()


def pattern(n, seed):
    # Deterministic bytes that differ between blocks.
    return bytes((i * 31 + seed + i // 4093) % 251 for i in range(n))


class Checks:
    def __init__(self, cfg):
        self.cfg = cfg
        self.session = emulator_session(cfg)
        self.dbx = dropbox.Dropbox(
            oauth2_refresh_token=cfg["refresh_token"],
            app_key=cfg["app_key"],
            app_secret=cfg["app_secret"],
            session=self.session,
        )
        self.uploaded = {}

    def admin(self, method, cmd, body=None):
        r = self.session.request(method, self.cfg["admin_url"] + "/" + cmd, json=body, timeout=30)
        assert r.status_code == 200, (cmd, r.status_code, r.text)
        return r.json()

    def stats(self):
        return self.admin("GET", "stats")

    def expect_api_error(self, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except ApiError as e:
            return e.error
        raise AssertionError("expected an ApiError from %s" % fn.__name__)

    def check_file(self, meta, path, data):
        assert isinstance(meta, files.FileMetadata), meta
        assert meta.size == len(data), (meta.size, len(data))
        assert meta.content_hash == documented_content_hash(data) == sdk_content_hash(data), meta
        assert meta.path_display == path, (meta.path_display, path)
        assert meta.path_lower == path.lower()
        self.uploaded[path] = data

    # --- checks, in order -------------------------------------------------------

    def refresh_token_auth(self):
        account = self.dbx.users_get_current_account()
        assert account.account_id.startswith("dbid:"), account
        before = self.stats()
        assert before["requests"].get("oauth2/token") == 1, before
        # Server-side expiry: the SDK's next call gets 401 expired_access_token and
        # refreshes by itself.
        self.admin("POST", "expire_tokens")
        usage = self.dbx.users_get_space_usage()
        assert usage.used >= 0
        after = self.stats()
        assert after["requests"]["oauth2/token"] == 2, after
        assert after["auth_rejected"] == before["auth_rejected"] + 1, after
        # A wrong secret is refused at the token endpoint.
        bad = dropbox.Dropbox(
            oauth2_refresh_token=self.cfg["refresh_token"],
            app_key=self.cfg["app_key"],
            app_secret="wrong",
            session=self.session,
        )
        try:
            bad.users_get_current_account()
            raise AssertionError("a wrong app secret refreshed")
        except BadInputError as e:
            assert "invalid_client" in e.message, e.message
        # A made-up access token is AuthError invalid_access_token.
        try:
            dropbox.Dropbox("sl.made-up", session=self.session).files_list_folder("")
            raise AssertionError("a made-up token was accepted")
        except AuthError as e:
            assert e.error.is_invalid_access_token(), e

    def pkce_flow(self):
        flow = dropbox.DropboxOAuth2FlowNoRedirect(self.cfg["app_key"], use_pkce=True, token_access_type="offline")
        flow.requests_session = self.session
        url = flow.start()
        assert url.startswith("https://%s/oauth2/authorize?" % dbx_session.WEB_HOST), url
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["token_access_type"] == ["offline"], query
        page = self.session.get(url, timeout=30)
        assert page.status_code == 200, page.text
        code = page.text.strip()
        result = flow.finish(code)
        assert result.refresh_token and result.access_token, result
        # A code works once: finishing again is Dropbox's 400 invalid_grant.
        try:
            flow.finish(code)
            raise AssertionError("a used code was exchanged again")
        except requests.HTTPError as e:
            assert e.response.status_code == 400, e.response.text
            assert e.response.json() == {
                "error": "invalid_grant",
                "error_description": "code doesn't exist or has expired",
            }, e.response.text
        # A code approved for another flow's challenge, finished with this flow's verifier.
        other = dropbox.DropboxOAuth2FlowNoRedirect(self.cfg["app_key"], use_pkce=True, token_access_type="offline")
        other.requests_session = self.session
        stray = self.session.get(other.start(), timeout=30).text.strip()
        try:
            flow.finish(stray)
            raise AssertionError("a code was exchanged with another flow's verifier")
        except requests.HTTPError as e:
            assert e.response.status_code == 400, e.response.text
            assert e.response.json() == {"error": "invalid_grant", "error_description": "invalid code verifier"}
        # Codes are single use: the failed exchange spent the stray one.
        try:
            other.finish(stray)
            raise AssertionError("a code survived a failed exchange")
        except requests.HTTPError as e:
            assert e.response.json()["error"] == "invalid_grant", e.response.text
        # A PKCE refresh token refreshes with the app key alone.
        pkce_dbx = dropbox.Dropbox(
            oauth2_refresh_token=result.refresh_token, app_key=self.cfg["app_key"], session=self.session
        )
        assert pkce_dbx.users_get_current_account().account_id == result.account_id

    def simple_upload(self):
        path = ROOT + "/Small.bin"
        data = pattern(100_000, 1)
        when = datetime.datetime(2021, 3, 4, 5, 6, 7)
        meta = self.dbx.files_upload(data, path, mode=files.WriteMode.overwrite, client_modified=when)
        self.check_file(meta, path, data)
        assert meta.client_modified == when, meta.client_modified
        # The SDK sends a content hash by itself; a wrong one is refused.
        err = self.expect_api_error(self.dbx.files_upload, data, ROOT + "/bad-hash.bin", content_hash="0" * 64)
        assert err.is_content_hash_mismatch(), err
        # Same bytes under add: no conflict, no new revision.
        again = self.dbx.files_upload(data, path, mode=files.WriteMode.add)
        assert again.rev == meta.rev
        # Different bytes under add: a conflict, with the SDK's tags.
        err = self.expect_api_error(self.dbx.files_upload, b"other bytes", path, mode=files.WriteMode.add)
        assert err.is_path(), err
        reason = err.get_path().reason
        assert reason.is_conflict() and reason.get_conflict().is_file(), reason
        renamed = self.dbx.files_upload(b"other bytes", path, mode=files.WriteMode.add, autorename=True)
        assert renamed.name == "Small (1).bin", renamed.name
        self.uploaded[renamed.path_display] = b"other bytes"
        empty = self.dbx.files_upload(b"", ROOT + "/empty.txt")
        self.check_file(empty, ROOT + "/empty.txt", b"")

    def sequential_session(self):
        path = ROOT + "/Seq/Big.bin"
        data = pattern(2 * BLOCK + 123_457, 2)
        chunk = 3 * MIB  # not block-aligned: the hash is carried across appends
        start = self.dbx.files_upload_session_start(data[:chunk])
        offset = chunk
        while len(data) - offset > chunk:
            cursor = files.UploadSessionCursor(start.session_id, offset)
            self.dbx.files_upload_session_append_v2(data[offset : offset + chunk], cursor)
            offset += chunk
        # A stale offset is incorrect_offset with the offset the session holds.
        stale = files.UploadSessionCursor(start.session_id, 0)
        err = self.expect_api_error(self.dbx.files_upload_session_append_v2, b"xyz", stale)
        assert err.is_incorrect_offset(), err
        assert err.get_incorrect_offset().correct_offset == offset, err
        cursor = files.UploadSessionCursor(start.session_id, offset)
        commit = files.CommitInfo(path, client_modified=datetime.datetime(2020, 1, 2, 3, 4, 5))
        meta = self.dbx.files_upload_session_finish(data[offset:], cursor, commit)
        self.check_file(meta, path, data)
        assert meta.client_modified == datetime.datetime(2020, 1, 2, 3, 4, 5)
        # The finished session is closed.
        err = self.expect_api_error(self.dbx.files_upload_session_append_v2, b"x", files.UploadSessionCursor(start.session_id, len(data)))
        assert err.is_closed(), err

    def concurrent_sessions(self):
        wanted = {
            ROOT + "/Conc/a.bin": pattern(2 * BLOCK + 5, 3),
            ROOT + "/Conc/b.bin": pattern(3 * BLOCK, 4),
        }
        session_type = files.UploadSessionType.concurrent
        ids = {p: self.dbx.files_upload_session_start(b"", session_type=session_type).session_id for p in wanted}
        probe = ids[ROOT + "/Conc/a.bin"]
        err = self.expect_api_error(self.dbx.files_upload_session_append_v2, b"x" * 10, files.UploadSessionCursor(probe, 1000))
        assert err.is_concurrent_session_invalid_offset(), err
        err = self.expect_api_error(self.dbx.files_upload_session_append_v2, b"x" * 10, files.UploadSessionCursor(probe, 0))
        assert err.is_concurrent_session_invalid_data_size(), err
        err = self.expect_api_error(self.dbx.files_upload_session_start, b"data", session_type=session_type)
        assert err.is_concurrent_session_data_not_allowed(), err
        # A session finished before its close piece, or with a gap, is refused; nothing
        # may be appended past a closed end.
        gappy = self.dbx.files_upload_session_start(b"", session_type=session_type).session_id
        self.dbx.files_upload_session_append_v2(b"g" * BLOCK, files.UploadSessionCursor(gappy, BLOCK))
        err = self.expect_api_error(self.dbx.files_upload_session_finish, b"", files.UploadSessionCursor(gappy, 2 * BLOCK), files.CommitInfo(ROOT + "/gap.bin"))
        assert err.is_concurrent_session_not_closed(), err
        self.dbx.files_upload_session_append_v2(b"end", files.UploadSessionCursor(gappy, 2 * BLOCK), close=True)
        err = self.expect_api_error(self.dbx.files_upload_session_append_v2, b"z" * BLOCK, files.UploadSessionCursor(gappy, 3 * BLOCK))
        assert err.is_closed(), err
        err = self.expect_api_error(self.dbx.files_upload_session_finish, b"", files.UploadSessionCursor(gappy, 2 * BLOCK + 3), files.CommitInfo(ROOT + "/gap.bin"))
        assert err.is_concurrent_session_missing_data(), err

        def piece(path, offset):
            data = wanted[path]
            part = data[offset : offset + BLOCK]
            close = offset + BLOCK >= len(data)
            cursor = files.UploadSessionCursor(ids[path], offset)
            self.dbx.files_upload_session_append_v2(part, cursor, close=close)

        jobs = [(p, o) for p, d in wanted.items() for o in range(0, len(d), BLOCK)]
        # Last pieces first: the pieces of a concurrent session may come in any order.
        jobs.reverse()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(piece, p, o) for p, o in jobs]:
                f.result()
        entries = [
            files.UploadSessionFinishArg(files.UploadSessionCursor(ids[p], len(d)), files.CommitInfo(p))
            for p, d in wanted.items()
        ]
        entries.append(
            files.UploadSessionFinishArg(files.UploadSessionCursor("pid_upload_session:nope", 0), files.CommitInfo(ROOT + "/x"))
        )
        result = self.dbx.files_upload_session_finish_batch_v2(entries)
        assert len(result.entries) == 3
        for (path, data), entry in zip(wanted.items(), result.entries):
            assert entry.is_success(), entry
            self.check_file(entry.get_success(), path, data)
        failure = result.entries[2]
        assert failure.is_failure() and failure.get_failure().is_lookup_failed(), failure
        assert failure.get_failure().get_lookup_failed().is_not_found()

    def finish_batch_and_check(self):
        path = ROOT + "/Batch/v1.bin"
        data = pattern(1000, 5)
        start = self.dbx.files_upload_session_start(data, close=True)
        entry = files.UploadSessionFinishArg(files.UploadSessionCursor(start.session_id, len(data)), files.CommitInfo(path))
        launch = self.dbx.files_upload_session_finish_batch([entry])
        assert launch.is_async_job_id(), launch
        job = launch.get_async_job_id()
        for _ in range(10):
            status = self.dbx.files_upload_session_finish_batch_check(job)
            if status.is_complete():
                break
            assert status.is_in_progress(), status
        else:
            raise AssertionError("finish_batch never completed")
        (only,) = status.get_complete().entries
        assert only.is_success(), only
        self.check_file(only.get_success(), path, data)

    def small_files_in_one_batch(self):
        # Each file's bytes in a session of its own, closed at start with the bytes'
        # content hash, then one finish_batch_v2 for all: each entry answers for itself.
        # A session not closed is refused (not_closed); an entry the namespace is too
        # busy for fails alone (too_many_write_operations) and can be sent again.
        wanted = {ROOT + "/Small/s%d.txt" % i: pattern(100 + i, 20 + i) for i in range(3)}
        ids = {}
        for path, data in wanted.items():
            start = self.dbx.files_upload_session_start(data, close=True, content_hash=sdk_content_hash(data))
            ids[path] = start.session_id
        still_open = self.dbx.files_upload_session_start(b"open").session_id

        def entry(path, session, length):
            commit = files.CommitInfo(path, mode=files.WriteMode.overwrite)
            return files.UploadSessionFinishArg(files.UploadSessionCursor(session, length), commit)

        entries = [entry(p, ids[p], len(d)) for p, d in wanted.items()]
        entries.append(entry(ROOT + "/Small/open.txt", still_open, 4))
        self.admin("POST", "busy_batch_entries", {"entries": 1})
        result = self.dbx.files_upload_session_finish_batch_v2(entries)
        assert len(result.entries) == 4
        busy, ok1, ok2, not_closed = result.entries
        assert busy.is_failure() and busy.get_failure().is_too_many_write_operations(), busy
        for (path, data), e in list(zip(wanted.items(), result.entries))[1:]:
            assert e.is_success(), e
            self.check_file(e.get_success(), path, data)
        assert not_closed.is_failure() and not_closed.get_failure().is_lookup_failed(), not_closed
        assert not_closed.get_failure().get_lookup_failed().is_not_closed(), not_closed
        first = next(iter(wanted))
        again = self.dbx.files_upload_session_finish_batch_v2([entry(first, ids[first], len(wanted[first]))])
        (only,) = again.entries
        assert only.is_success(), only
        self.check_file(only.get_success(), first, wanted[first])
        assert self.stats()["batch_entries_busy"] >= 1

    def sdk_transfer_helpers(self):
        # The SDK's own parallel uploader (concurrent session, 8 MiB pieces) and
        # parallel ranged downloader.
        path = ROOT + "/Helpers/parallel.bin"
        data = pattern(2 * 8 * MIB + 99, 6)
        up = file_transfer.Uploader(self.dbx).upload(
            file_transfer.BytesUpload(data), files.CommitInfo(path), file_transfer.UploadOptions(parallel_uploads=3)
        )
        self.check_file(up.metadata, path, data)
        target = file_transfer.Bytes()
        file_transfer.Downloader(self.dbx).download(path, target, file_transfer.DownloadOptions(parallel_downloads=4))
        assert target.bytes() == data

    def list_folder(self):
        self.dbx.files_create_folder_v2(ROOT + "/Empty Folder")
        err = self.expect_api_error(self.dbx.files_create_folder_v2, ROOT + "/empty folder")
        assert err.is_path() and err.get_path().is_conflict() and err.get_path().get_conflict().is_folder(), err
        result = self.dbx.files_list_folder(ROOT.lower(), recursive=True, limit=3)
        entries = list(result.entries)
        pages = 1
        while result.has_more:
            result = self.dbx.files_list_folder_continue(result.cursor)
            entries.extend(result.entries)
            pages += 1
        assert pages > 2, pages
        got_files = {e.path_display: e for e in entries if isinstance(e, files.FileMetadata)}
        got_folders = {e.path_display for e in entries if isinstance(e, files.FolderMetadata)}
        assert set(got_files) == set(self.uploaded), (sorted(got_files), sorted(self.uploaded))
        for p, e in got_files.items():
            assert e.content_hash == documented_content_hash(self.uploaded[p]), p
        for folder in [ROOT, ROOT + "/Seq", ROOT + "/Conc", ROOT + "/Empty Folder"]:
            assert folder in got_folders, (folder, got_folders)
        assert len(entries) == len(got_files) + len(got_folders), "each entry once"
        # A root-relative join, "//name" (how rclone lists a folder of the root), is "/name".
        joined = self.dbx.files_list_folder("/" + ROOT, limit=2000).entries
        assert {e.path_display for e in joined} == {
            e.path_display for e in self.dbx.files_list_folder(ROOT, limit=2000).entries
        }, joined
        err = self.expect_api_error(self.dbx.files_list_folder, ROOT + "//Seq")
        assert err.is_path() and err.get_path().is_malformed_path(), err
        # Nothing new since: the cursor reports no changes; then one file is deleted.
        assert self.dbx.files_list_folder_continue(result.cursor).entries == []
        deleted = self.dbx.files_delete_v2(ROOT + "/empty.txt")
        assert isinstance(deleted.metadata, files.FileMetadata), deleted
        del self.uploaded[ROOT + "/empty.txt"]
        changes = self.dbx.files_list_folder_continue(result.cursor).entries
        assert [type(c).__name__ for c in changes] == ["DeletedMetadata"], changes
        err = self.expect_api_error(self.dbx.files_list_folder, "/no/such/folder")
        assert err.is_path() and err.get_path().is_not_found(), err

    def downloads_and_metadata(self):
        path = ROOT + "/Seq/Big.bin"
        data = self.uploaded[path]
        meta, resp = self.dbx.files_download(path.upper())
        assert resp.content == data
        assert meta.content_hash == documented_content_hash(data)
        meta, resp = self.dbx.files_download(path, extra_headers={"Range": "bytes=%d-%d" % (BLOCK - 5, BLOCK + 4)})
        assert resp.status_code == 206, resp.status_code
        assert resp.headers["Content-Range"] == "bytes %d-%d/%d" % (BLOCK - 5, BLOCK + 4, len(data))
        assert resp.content == data[BLOCK - 5 : BLOCK + 5]
        md = self.dbx.files_get_metadata(path.lower())
        assert isinstance(md, files.FileMetadata) and md.id == meta.id and md.rev == meta.rev
        by_id = self.dbx.files_get_metadata(md.id)
        assert by_id.path_display == path
        folder = self.dbx.files_get_metadata(ROOT + "/seq")
        assert isinstance(folder, files.FolderMetadata), folder
        err = self.expect_api_error(self.dbx.files_get_metadata, ROOT + "/missing.txt")
        assert err.is_path() and err.get_path().is_not_found(), err
        err = self.expect_api_error(self.dbx.files_download, ROOT + "/Seq")
        assert err.is_path() and err.get_path().is_not_file(), err

    def non_ascii_paths(self):
        path = ROOT + "/Ünïcødé/файл 文件 😀.txt"
        data = "déjà vu ✓".encode("utf-8")
        meta = self.dbx.files_upload(data, path)
        self.check_file(meta, path, data)
        got, resp = self.dbx.files_download(path)
        assert resp.content == data and got.name == "файл 文件 😀.txt", got
        assert self.dbx.files_get_metadata(path.lower()).path_display == path
        # The SDK always escapes Dropbox-API-Arg; Dropbox also reads it as raw UTF-8 (as
        # Dropbox's Go SDK sends it), but not as bytes in another encoding.
        token = self.dbx._oauth2_access_token  # the SDK's current token, read only
        raw = json.dumps({"path": path}, ensure_ascii=False).encode("utf-8")
        r = self.session.post(
            "https://%s/2/files/download" % dbx_session.API_CONTENT_HOST,
            headers={"Authorization": "Bearer " + token, "Dropbox-API-Arg": raw},
            timeout=30,
        )
        assert r.status_code == 200 and r.content == data, r.status_code
        result = r.headers["Dropbox-API-Result"]
        assert result.isascii() and json.loads(result)["path_display"] == path, result
        latin1 = json.dumps({"path": "/caf\u00e9.txt"}, ensure_ascii=False).encode("latin-1")
        r = self.session.post(
            "https://%s/2/files/download" % dbx_session.API_CONTENT_HOST,
            headers={"Authorization": "Bearer " + token, "Dropbox-API-Arg": latin1},
            timeout=30,
        )
        assert r.status_code == 400, r.status_code
        assert r.text == (
            'Error in call to API function "files/download": '
            'HTTP header "Dropbox-API-Arg": could not decode input as JSON'
        ), r.text

    def seeded_file(self):
        # A file the Rust side put in before the script ran, with its client_modified.
        path = self.cfg["seeded_path"]
        md, resp = self.dbx.files_download(path)
        assert resp.content.decode("utf-8") == self.cfg["seeded_text"], resp.content
        assert md.path_display == path and md.content_hash == self.cfg["seeded_hash"], md
        assert md.client_modified == datetime.datetime(2019, 6, 1, 12, 0, 0), md.client_modified

    def path_root(self):
        ns = self.cfg["namespace_id"]
        rooted = self.dbx.with_path_root(PathRoot.root(ns))
        assert ROOT.lower() in {e.path_lower for e in rooted.files_list_folder("").entries}
        try:
            self.dbx.with_path_root(PathRoot.root("1")).files_list_folder("")
            raise AssertionError("a wrong root namespace was accepted")
        except PathRootError as e:
            assert e.error.is_invalid_root(), e

    def rate_limits(self):
        before = self.stats()["throttled"]
        self.admin("POST", "throttle", {"requests": 1})
        # The SDK waits Retry-After and retries by itself.
        assert self.dbx.files_get_metadata(ROOT).name == ROOT[1:]
        self.admin("POST", "throttle", {"requests": 1})
        strict = self.dbx.clone(max_retries_on_rate_limit=0)
        try:
            strict.files_get_metadata(ROOT)
            raise AssertionError("expected a RateLimitError")
        except RateLimitError as e:
            assert e.error.reason.is_too_many_requests() and e.backoff == 1, e
        assert self.stats()["throttled"] == before + 2

    def properties(self):
        fp = file_properties
        string = fp.PropertyType.string
        fields = [fp.PropertyFieldTemplate("source", "where it came from", string),
                  fp.PropertyFieldTemplate("digest", "its hash", string)]
        tid = self.dbx.file_properties_templates_add_for_user("Conformance", "SDK checks", fields).template_id
        assert tid.startswith("ptid:"), tid
        assert tid in self.dbx.file_properties_templates_list_for_user().template_ids
        got = self.dbx.file_properties_templates_get_for_user(tid)
        assert got.name == "Conformance" and [f.name for f in got.fields] == ["source", "digest"], got
        assert got.fields[0].type.is_string()
        # Templates are checked as they are made: ModifyTemplateError.
        many = [fp.PropertyFieldTemplate("f%d" % i, "", string) for i in range(33)]
        err = self.expect_api_error(self.dbx.file_properties_templates_add_for_user, "Many", "", many)
        assert err.is_too_many_properties(), err
        twice = [fp.PropertyFieldTemplate("a", "", string), fp.PropertyFieldTemplate("a", "", string)]
        err = self.expect_api_error(self.dbx.file_properties_templates_add_for_user, "Twice", "", twice)
        assert err.is_conflicting_property_names(), err
        err = self.expect_api_error(self.dbx.file_properties_templates_add_for_user, "n" * 257, "", fields)
        assert err.is_template_attribute_too_large(), err
        err = self.expect_api_error(self.dbx.file_properties_templates_get_for_user, "ptid:nope")
        assert err.is_template_not_found() and err.get_template_not_found() == "ptid:nope", err

        # A commit carries groups (files/upload and a session's finish) ...
        def group(**values):
            return fp.PropertyGroup(tid, [fp.PropertyField(k, v) for k, v in values.items()])

        data = pattern(5000, 7)
        meta = self.dbx.files_upload(data, PROPS + "/a.bin", property_groups=[group(source="s3://b/a", digest="x")])
        assert meta.size == len(data)
        start = self.dbx.files_upload_session_start(data[:1000])
        commit = files.CommitInfo(PROPS + "/b.bin", property_groups=[group(source="s3://b/b")])
        self.dbx.files_upload_session_finish(data[1000:], files.UploadSessionCursor(start.session_id, 1000), commit)
        # ... that must fit their templates: InvalidPropertyGroupError under properties_error,
        # and "the file has uploaded without property groups".
        for groups, check in [
            ([fp.PropertyGroup("ptid:nope", [])], lambda e: e.is_template_not_found() and e.get_template_not_found() == "ptid:nope"),
            ([group(source="v" * 1025)], lambda e: e.is_property_field_too_large()),
            ([group(other="x")], lambda e: e.is_does_not_fit_template()),
            ([group(source="x"), group(digest="y")], lambda e: e.is_duplicate_property_groups()),
        ]:
            err = self.expect_api_error(self.dbx.files_upload, b"x", PROPS + "/bad.bin", property_groups=groups)
            assert err.is_properties_error() and check(err.get_properties_error()), err
        start = self.dbx.files_upload_session_start(b"abc", close=True)
        bad = files.CommitInfo(PROPS + "/bad2.bin", property_groups=[fp.PropertyGroup("ptid:nope", [])])
        err = self.expect_api_error(self.dbx.files_upload_session_finish, b"", files.UploadSessionCursor(start.session_id, 3), bad)
        assert err.is_properties_error() and err.get_properties_error().is_template_not_found(), err
        for name, size in [("bad.bin", 1), ("bad2.bin", 3)]:
            md = self.dbx.files_get_metadata(PROPS + "/" + name, include_property_groups=fp.TemplateFilterBase.filter_some([tid]))
            assert md.size == size and not md.property_groups, md

        # Listings and metadata carry the groups of the templates asked for.
        only = fp.TemplateFilterBase.filter_some([tid])
        listed = self.dbx.files_list_folder(PROPS, include_property_groups=only).entries
        by_name = {e.name: e for e in listed}
        assert set(by_name) == {"a.bin", "b.bin", "bad.bin", "bad2.bin"}, by_name
        (ga,) = by_name["a.bin"].property_groups
        assert ga.template_id == tid and {(f.name, f.value) for f in ga.fields} == {("source", "s3://b/a"), ("digest", "x")}
        (gb,) = by_name["b.bin"].property_groups
        assert [(f.name, f.value) for f in gb.fields] == [("source", "s3://b/b")], gb
        assert self.dbx.files_list_folder(PROPS).entries[0].property_groups is None, "not asked for"
        md = self.dbx.files_get_metadata(PROPS + "/a.bin", include_property_groups=only)
        assert md.property_groups[0].template_id == tid, md
        err = self.expect_api_error(self.dbx.files_list_folder, PROPS, include_property_groups=fp.TemplateFilterBase.filter_some(["ptid:nope"]))
        assert err.is_template_error() and err.get_template_error().is_template_not_found(), err
        # Removing the template removes its groups.
        self.dbx.file_properties_templates_remove_for_user(tid)
        assert tid not in self.dbx.file_properties_templates_list_for_user().template_ids
        err = self.expect_api_error(self.dbx.files_list_folder, PROPS, include_property_groups=only)
        assert err.is_template_error(), err


def main():
    cfg = json.loads(sys.argv[1])
    c = Checks(cfg)
    steps = [
        c.refresh_token_auth,
        c.pkce_flow,
        c.simple_upload,
        c.sequential_session,
        c.concurrent_sessions,
        c.finish_batch_and_check,
        c.small_files_in_one_batch,
        c.sdk_transfer_helpers,
        c.list_folder,
        c.downloads_and_metadata,
        c.non_ascii_paths,
        c.seeded_file,
        c.path_root,
        c.rate_limits,
        c.properties,
    ]
    for step in steps:
        step()
        print("ok: " + step.__name__, flush=True)
    print("dropbox SDK %s: %d checks passed" % (dropbox.__version__, len(steps)))


if __name__ == "__main__":
    main()
