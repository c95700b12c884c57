"""Conformance of Laminar's Drive emulator, checked with Google's own Python client.

google-api-python-client and google-auth drive the emulator unchanged: the only thing
pointed at it is the discovery document's rootUrl (the client's packaged drive v3
document, with rootUrl set to the emulator) and the credentials' token_uri. Setting only
client_options={"api_endpoint": ...} is not enough for plain http: the client keeps the
discovery document's https scheme for the upload URL and replaces only its host.

Usage: drive_sdk.py CONFIG_JSON, where CONFIG_JSON is the line `laminar-emulator drive`
prints (api_url, token_url, control_url, client_id, client_secret, refresh_token,
service_account_email, root_id) plus the seeds the caller made: doc_id and doc_text (a
Google Doc), big_doc_id (a Doc whose export is over 10 MB), shortcut_id and
shortcut_target (a shortcut and its target file), folder_shortcut_id and
folder_shortcut_target (a shortcut to a folder).

Prints one JSON line (the ids and sizes of what it uploaded, for the caller to check
against the emulator's store) and exits 0; exits 1 on a failed check, 3 when the client
libraries are not installed.
"""

import hashlib
import http.client
import io
import json
import sys
import urllib.request

try:
    import httplib2
    from google.oauth2 import service_account
    from google.oauth2.credentials import Credentials
    from googleapiclient import discovery_cache
    from googleapiclient.discovery import build_from_document
    from googleapiclient.errors import HttpError
    from googleapiclient.http import MediaIoBaseDownload, MediaIoBaseUpload
except ImportError as e:  # pragma: no cover - depends on the environment
    print(f"drive_sdk: missing client library: {e}", file=sys.stderr)
    sys.exit(3)

FOLDER = "application/vnd.google-apps.folder"
SCOPE = "https://www.googleapis.com/auth/drive"
UNIT = 256 * 1024
LIST_FIELDS = "nextPageToken, files(id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,parents,shortcutDetails)"
# What a dropped connection looks like to httplib2.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, httplib2.HttpLib2Error)

CFG = json.loads(sys.argv[1])
CHECKS = []
# Loopback only: no proxy from the environment may see these requests.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    CHECKS.append(what)


def pattern(n, seed):
    """Bytes the caller can regenerate: (i * 31 + seed) mod 251."""
    return bytes((i * 31 + seed) % 251 for i in range(n))


def control(path, body=None):
    url = CFG["control_url"] + "/" + path
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None and path == "stats" else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with DIRECT.open(req) as r:
        text = r.read()
    return json.loads(text) if text else None


def stats():
    return control("stats")


def faults(**patch):
    return control("faults", patch)


def reason(e):
    details = e.error_details if isinstance(e.error_details, list) else []
    return details[0].get("reason") if details else None


def expect_http_error(fn, status, want_reason, what):
    try:
        fn()
    except HttpError as e:
        check(e.status_code == status, f"{what}: status {e.status_code} == {status}")
        check(reason(e) == want_reason, f"{what}: reason {reason(e)} == {want_reason}")
        return e
    raise AssertionError(f"{what}: no HttpError")


def drive_document():
    doc = json.loads(discovery_cache.get_static_doc("drive", "v3"))
    doc["rootUrl"] = CFG["api_url"] + "/"
    return doc


def user_service():
    creds = Credentials(
        token=None,
        refresh_token=CFG["refresh_token"],
        client_id=CFG["client_id"],
        client_secret=CFG["client_secret"],
        token_uri=CFG["token_url"],
        scopes=[SCOPE],
    )
    return build_from_document(drive_document(), credentials=creds)


def hashes_match(meta, data, what):
    check(meta["size"] == str(len(data)), f"{what}: size is the string {len(data)}")
    check(meta["md5Checksum"] == hashlib.md5(data).hexdigest(), f"{what}: md5Checksum matches hashlib")
    check(meta["sha256Checksum"] == hashlib.sha256(data).hexdigest(), f"{what}: sha256Checksum matches hashlib")


def multipart(drive, name, parent, data, **extra):
    body = {"name": name, "parents": [parent], **extra}
    media = MediaIoBaseUpload(io.BytesIO(data), mimetype="application/octet-stream", resumable=False)
    return drive.files().create(body=body, media_body=media, fields="id,name,size,md5Checksum,sha256Checksum,modifiedTime,parents").execute()


def resumable(drive, name, parent, data, chunksize):
    media = MediaIoBaseUpload(io.BytesIO(data), mimetype="application/octet-stream", chunksize=chunksize, resumable=True)
    return drive.files().create(body={"name": name, "parents": [parent]}, media_body=media, fields="id,size,md5Checksum,sha256Checksum")


def list_all(drive, q, page_size):
    req = drive.files().list(q=q, pageSize=page_size, fields=LIST_FIELDS)
    files, pages = [], 0
    while req is not None:
        resp = req.execute()
        pages += 1
        check(len(resp.get("files", [])) <= page_size, f"a page holds at most pageSize={page_size}")
        files.extend(resp.get("files", []))
        req = drive.files().list_next(req, resp)
        check(pages < 1000, "paging ends")
    return files, pages


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def installed_app_flow():
    """The installed-app flow with PKCE, by hand (google-auth has no code flow of its own;
    google-auth-oauthlib, which has, is not installed): the consent page redirects to the
    loopback address with a code, the code is exchanged once, and google-auth's
    Credentials refresh with the refresh token issued, as with any other."""
    import base64
    import secrets
    import urllib.error
    import urllib.parse

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:50123/"
    query = urllib.parse.urlencode({
        "client_id": CFG["client_id"], "redirect_uri": redirect, "response_type": "code", "scope": SCOPE,
        "code_challenge": challenge, "code_challenge_method": "S256", "access_type": "offline",
        "prompt": "consent", "state": "st",
    })
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    try:
        opener.open(CFG["authorize_url"] + "?" + query)
        raise AssertionError("the consent page did not redirect")
    except urllib.error.HTTPError as e:
        check(e.code == 302, "the consent page redirects once approved")
        location = e.headers["Location"]
    check(location.startswith(redirect), "to the loopback redirect_uri")
    back = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    check(back["state"] == "st" and back["code"].startswith("4/"), "with the state and a code like Google's")

    def exchange(code, verifier):
        form = urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code, "client_id": CFG["client_id"],
            "client_secret": CFG["client_secret"], "redirect_uri": redirect, "code_verifier": verifier,
        }).encode()
        try:
            with DIRECT.open(urllib.request.Request(CFG["token_url"], data=form)) as r:
                return 200, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, wrong = exchange(back["code"], verifier[:-1] + ("A" if verifier[-1] != "A" else "B"))
    check((status, wrong) == (400, {"error": "invalid_grant", "error_description": "Invalid code verifier."}),
          f"a wrong verifier is Google's invalid_grant ({status} {wrong})")
    status, used = exchange(back["code"], verifier)
    check((status, used) == (400, {"error": "invalid_grant", "error_description": "Bad Request"}),
          "a code is spent by the failed exchange: Google's invalid_grant Bad Request")
    try:
        opener.open(CFG["authorize_url"] + "?" + query)
    except urllib.error.HTTPError as e:
        back = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(e.headers["Location"]).query))
    status, granted = exchange(back["code"], verifier)
    check(status == 200 and granted["refresh_token"].startswith("1//"), "the exchange issues a refresh token")
    check(granted["scope"] == SCOPE and granted["token_type"] == "Bearer", "with the scope asked for")
    creds = Credentials(
        token=None,
        refresh_token=granted["refresh_token"],
        client_id=CFG["client_id"],
        client_secret=CFG["client_secret"],
        token_uri=CFG["token_url"],
        scopes=[SCOPE],
    )
    drive = build_from_document(drive_document(), credentials=creds)
    before = stats()["refresh_grants"]
    check("user" in drive.about().get(fields="user").execute(), "google-auth refreshes the issued token")
    check(stats()["refresh_grants"] == before + 1 and stats()["code_grants"] == 1, "one code grant, one refresh")


def main():
    drive = user_service()
    out = {}

    # OAuth: the first request refreshes (no token yet); about.get needs `fields`.
    about = drive.about().get(fields="user(emailAddress),storageQuota(limit,usage)").execute()
    check("@" in about["user"]["emailAddress"], "about.get answers the user")
    check(int(about["storageQuota"]["limit"]) > 0, "about.get answers the quota, int64 as a string")
    check(stats()["refresh_grants"] == 1, "the client refreshed once to get its first token")
    expect_http_error(lambda: drive.about().get().execute(), 400, "required", "about.get without fields")

    folder = drive.files().create(body={"name": "sdk", "mimeType": FOLDER}, fields="id,name,mimeType").execute()
    check(folder["mimeType"] == FOLDER and folder["name"] == "sdk", "files.create makes a folder")

    # Multipart upload, modifiedTime kept, checksums from the server equal hashlib's.
    small = pattern(70_001, 1)
    m = multipart(drive, "small.bin", folder["id"], small, modifiedTime="2020-01-02T03:04:05.678Z")
    hashes_match(m, small, "multipart upload")
    check(m["modifiedTime"] == "2020-01-02T03:04:05.678Z", "modifiedTime is kept as given")
    check(m["parents"] == [folder["id"]], "the file is in the folder")
    out["small"] = {"id": m["id"], "size": len(small), "seed": 1}
    links = drive.files().get(fileId=m["id"], fields="webViewLink,webContentLink").execute()
    check(
        links["webViewLink"].startswith("https://drive.google.com/file/d/" + m["id"])
        and links["webContentLink"].startswith("https://drive.google.com/uc?id=" + m["id"]),
        "a binary file has viewer and download links",
    )

    # Resumable upload in chunks, the first chunk's connection dropped mid-body; the
    # client asks what was committed (bytes */total) and resumes from there.
    big = pattern(5 * UNIT + 1000, 2)
    faults(drop_uploads={"after_bytes": 300_000, "next": 1})
    req = resumable(drive, "big.bin", folder["id"], big, chunksize=2 * UNIT)
    resp, interrupted, progress = None, 0, []
    while resp is None:
        try:
            status, resp = req.next_chunk()
        except TRANSPORT_ERRORS:
            interrupted += 1
            check(interrupted <= 2, "one interruption only")
            continue
        if status:
            progress.append(status.resumable_progress)
    check(interrupted == 1, "the dropped chunk reached the client as a transport error")
    # The server kept 256 KiB of the 300,000 bytes that got through (cut to a 256 KiB
    # boundary); the status query said so and the client went on from there.
    check(progress == [3 * UNIT, 5 * UNIT], f"the client resumed from 256 KiB (308 Ranges {progress})")
    hashes_match(resp, big, "resumable upload after an interruption")
    session = [s for s in stats()["sessions"] if s["name"] == "big.bin"][0]
    check(session["complete"] and session["committed_bytes"] == len(big), "the session completed with every byte")
    check(session["received_bytes"] == 300_000 + len(big) - UNIT, "the server received the cut chunk and the rest once")
    check(stats()["dropped_connections"] >= 1, "the emulator counted the dropped connection")
    out["big"] = {"id": resp["id"], "size": len(big), "seed": 2}

    # A chunk that is not a multiple of 256 KiB (and not the last) is refused with 400.
    bad = resumable(drive, "misaligned.bin", folder["id"], pattern(300_000, 3), chunksize=100_000)
    expect_http_error(lambda: bad.next_chunk(), 400, "badRequest", "a 100,000-byte chunk")

    # An expired session answers 404.
    req = resumable(drive, "expiring.bin", folder["id"], pattern(3 * UNIT, 4), chunksize=UNIT)
    status, resp = req.next_chunk()
    check(resp is None and status.resumable_progress == UNIT, "a first chunk is acknowledged with 308")
    control("expire_sessions", {})
    expect_http_error(lambda: req.next_chunk(), 404, "notFound", "a chunk to an expired session")

    # Listing: q, paging of at most pageSize, duplicates, trash.
    lst = drive.files().create(body={"name": "list", "mimeType": FOLDER, "parents": [folder["id"]]}, fields="id").execute()
    names = [f"f{i}.txt" for i in range(5)] + ["dup.txt", "dup.txt"]
    made = [multipart(drive, n, lst["id"], pattern(100 + i, 10 + i)) for i, n in enumerate(names)]
    sub = drive.files().create(body={"name": "sub", "mimeType": FOLDER, "parents": [lst["id"]]}, fields="id").execute()
    q = f"'{lst['id']}' in parents and trashed = false"
    files, pages = list_all(drive, q, 2)
    check(sorted(f["name"] for f in files) == sorted(names + ["sub"]), "paging lists every child once, duplicates too")
    check(pages >= 4, "eight children in pages of two")
    by_id = {f["id"]: f for f in files}
    check(all(by_id[m["id"]]["md5Checksum"] == m["md5Checksum"] for m in made), "listings carry md5Checksum")
    check(all(by_id[m["id"]]["parents"] == [lst["id"]] for m in made), "listings carry parents")
    check("size" not in by_id[sub["id"]] and "md5Checksum" not in by_id[sub["id"]], "folders have no size or checksum")
    drive.files().update(fileId=made[0]["id"], body={"trashed": True}).execute()
    files, _ = list_all(drive, q, 100)
    check(made[0]["id"] not in {f["id"] for f in files}, "trashed = false leaves trashed files out")
    files, _ = list_all(drive, f"'{lst['id']}' in parents", 100)
    check(made[0]["id"] in {f["id"] for f in files}, "without trashed = false the trash is listed too")
    files, _ = list_all(drive, f"{q} and name = 'dup.txt'", 100)
    check(len(files) == 2, "name = finds both duplicates")
    files, _ = list_all(drive, f"{q} and mimeType = '{FOLDER}'", 100)
    check([f["id"] for f in files] == [sub["id"]], "mimeType = finds the folder")
    expect_http_error(lambda: drive.files().list(q="name = unquoted").execute(), 400, "invalid", "a malformed q")
    expect_http_error(lambda: drive.files().list(q=q, pageSize=1001).execute(), 400, "invalid", "pageSize 1001")
    faults(short_pages=True)
    files, pages = list_all(drive, q, 3)
    faults(short_pages=False)
    check(sorted(f["name"] for f in files) == sorted(names[1:] + ["sub"]), "short and empty pages still list everything once")

    # Downloads: MediaIoBaseDownload in ranged chunks, a Range request, a dropped download.
    fh = io.BytesIO()
    dl = MediaIoBaseDownload(fh, drive.files().get_media(fileId=out["big"]["id"]), chunksize=UNIT)
    done, chunks = False, 0
    while not done:
        _, done = dl.next_chunk()
        chunks += 1
    check(fh.getvalue() == big and chunks == 6, "MediaIoBaseDownload fetched the file in 256 KiB ranges")
    ranged = drive.files().get_media(fileId=out["big"]["id"])
    ranged.headers["Range"] = "bytes=100-199"
    check(ranged.execute() == big[100:200], "a Range request answers those bytes")
    faults(drop_downloads={"after_bytes": 100_000, "next": 1})
    fh = io.BytesIO()
    dl = MediaIoBaseDownload(fh, drive.files().get_media(fileId=out["big"]["id"]), chunksize=2 * UNIT)
    done, broken = False, 0
    while not done:
        try:
            _, done = dl.next_chunk()
        except TRANSPORT_ERRORS:
            broken += 1
            check(broken <= 1, "one broken download")
    check(broken == 1 and fh.getvalue() == big, "a download cut mid-body is retried and completes")

    # Google Docs: not downloadable, exported; shortcuts describe their target.
    expect_http_error(
        lambda: drive.files().get_media(fileId=CFG["doc_id"]).execute(), 403, "fileNotDownloadable", "alt=media on a Doc"
    )
    text = drive.files().export(fileId=CFG["doc_id"], mimeType="text/plain").execute()
    check(text == b"\xef\xbb\xbf" + CFG["doc_text"].encode(), "a Doc exports as text/plain (BOM + text)")
    pdf = drive.files().export(fileId=CFG["doc_id"], mimeType="application/pdf").execute()
    check(pdf == drive.files().export(fileId=CFG["doc_id"], mimeType="application/pdf").execute(), "exports are deterministic")
    expect_http_error(
        lambda: drive.files().export(fileId=CFG["doc_id"], mimeType="text/csv").execute(), 400, "badRequest", "a Doc as CSV"
    )
    doc = drive.files().get(fileId=CFG["doc_id"], fields="mimeType,exportLinks,md5Checksum").execute()
    check("text/plain" in doc["exportLinks"] and "md5Checksum" not in doc, "a Doc has export links and no md5Checksum")
    links = drive.files().get(fileId=CFG["doc_id"], fields="webViewLink,webContentLink").execute()
    check(links == {"webViewLink": f"https://docs.google.com/document/d/{CFG['doc_id']}/edit?usp=drivesdk"}, "a Doc has a viewer link, no download link")
    sc = drive.files().get(fileId=CFG["shortcut_id"], fields="mimeType,shortcutDetails").execute()
    check(sc["shortcutDetails"]["targetId"] == CFG["shortcut_target"], "a shortcut names its target")
    sc = drive.files().get(fileId=CFG["folder_shortcut_id"], fields="shortcutDetails").execute()
    check(sc["shortcutDetails"] == {"targetId": CFG["folder_shortcut_target"], "targetMimeType": FOLDER}, "a shortcut to a folder says so")
    # export_media, in chunks, gives the bytes export gives; past 10 MB Drive refuses.
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    fh = io.BytesIO()
    dl = MediaIoBaseDownload(fh, drive.files().export_media(fileId=CFG["doc_id"], mimeType=docx), chunksize=16)
    done = False
    while not done:
        _, done = dl.next_chunk()
    whole = drive.files().export(fileId=CFG["doc_id"], mimeType=docx).execute()
    check(fh.getvalue() == whole and CFG["doc_text"].encode() in whole, "export_media downloads the export")
    expect_http_error(
        lambda: drive.files().export_media(fileId=CFG["big_doc_id"], mimeType=docx).execute(),
        403,
        "exportSizeLimitExceeded",
        "an export over 10 MB",
    )
    expect_http_error(
        lambda: drive.files().export_media(fileId=CFG["shortcut_target"], mimeType=docx).execute(),
        403,
        "fileNotExportable",
        "export of a binary file",
    )

    # Drive keeps less of a chunk than it carried: the client resumes from its Range.
    data = pattern(3 * UNIT + 5, 9)
    faults(short_commits={"keep_bytes": UNIT + 100, "next": 1})
    req = resumable(drive, "short.bin", folder["id"], data, 2 * UNIT)
    resp = None
    while resp is None:
        _, resp = req.next_chunk()
    hashes_match(resp, data, "an upload whose first chunk was kept short")
    # The answer that the upload is complete is lost: the client asks the session
    # (bytes */TOTAL) and finds the file, one file.
    faults(lose_completion_answers=1)
    req = resumable(drive, "lost.bin", folder["id"], data, 2 * UNIT)
    resp, broken = None, 0
    while resp is None:
        try:
            _, resp = req.next_chunk()
        except TRANSPORT_ERRORS:
            broken += 1
            check(broken <= 1, "one lost answer")
    check(broken == 1, "the last chunk's answer was lost")
    hashes_match(resp, data, "an upload whose last answer was lost")
    named = drive.files().list(q=f"name = 'lost.bin' and '{folder['id']}' in parents", fields="files(id)").execute()
    check(named["files"] == [{"id": resp["id"]}], "the status query made no second file")

    # Throttling: the reasons the client itself treats as retryable.
    faults(throttle={"kind": "user_rate_limit", "next": 1, "rate": 0.0, "scope": "all"})
    e = expect_http_error(lambda: drive.files().get(fileId=folder["id"]).execute(), 403, "userRateLimitExceeded", "a storm")
    check("Rate of requests for user exceed" in str(e.reason), "the per-minute limit's message")
    faults(throttle={"kind": "user_rate_limit", "next": 1})
    check(drive.files().get(fileId=folder["id"]).execute(num_retries=2)["id"] == folder["id"], "the client retries 403 userRateLimitExceeded")
    faults(throttle={"kind": "rate_limit_429", "next": 1})
    expect_http_error(lambda: drive.files().get(fileId=folder["id"]).execute(), 429, "rateLimitExceeded", "a 429")
    faults(server_errors={"status": 503, "next": 1})
    check(drive.files().get(fileId=folder["id"]).execute(num_retries=2)["id"] == folder["id"], "the client retries a 503")
    throttled = stats()["throttled"]
    check(throttled.get("userRateLimitExceeded/403") == 2 and throttled.get("rateLimitExceeded/429") == 1, "throttled answers are counted")

    # The daily upload limit: same reason as the per-minute limit, its own message.
    faults(daily_upload_bytes_max=stats()["uploaded_today_bytes"])
    e = expect_http_error(
        lambda: multipart(drive, "over.bin", folder["id"], b"x"), 403, "userRateLimitExceeded", "an upload past the day's budget"
    )
    check(e.error_details[0]["message"] == "User rate limit exceeded.", "the daily limit's message")
    faults(daily_upload_bytes_max=None)

    expect_http_error(lambda: drive.files().get(fileId="no-such-file").execute(), 404, "notFound", "files.get of a missing id")

    # Tokens: expired ones get 401 and the client refreshes and retries by itself.
    before = stats()
    control("expire_tokens", {})
    check(drive.files().get(fileId=folder["id"], fields="id").execute()["id"] == folder["id"], "a request after expiry succeeds")
    after = stats()
    check(after["refresh_grants"] == before["refresh_grants"] + 1, "the client refreshed after the 401")
    check(after["unauthorized"] == before["unauthorized"] + 1, "one 401 was answered")

    # Update: rename, modifiedTime, new content, move; parents in the body is refused.
    upd = drive.files().update(
        fileId=out["small"]["id"], body={"name": "renamed.bin", "modifiedTime": "2021-05-06T07:08:09.000Z"}, fields="name,modifiedTime"
    ).execute()
    check(upd == {"name": "renamed.bin", "modifiedTime": "2021-05-06T07:08:09.000Z"}, "files.update renames and sets modifiedTime")
    new = pattern(5000, 5)
    media = MediaIoBaseUpload(io.BytesIO(new), mimetype="application/octet-stream", resumable=False)
    upd = drive.files().update(fileId=out["small"]["id"], body={}, media_body=media, fields="size,md5Checksum,sha256Checksum").execute()
    hashes_match(upd, new, "files.update with new content")
    out["small"] = {"id": out["small"]["id"], "size": len(new), "seed": 5}
    moved = drive.files().update(
        fileId=out["small"]["id"], addParents=sub["id"], removeParents=folder["id"], fields="parents"
    ).execute()
    check(moved["parents"] == [sub["id"]], "addParents/removeParents move a file")
    expect_http_error(
        lambda: drive.files().update(fileId=out["small"]["id"], body={"parents": [folder["id"]]}).execute(),
        403,
        "fieldNotWritable",
        "parents in an update body",
    )
    expect_http_error(
        lambda: drive.files().update(fileId=out["small"]["id"], addParents=folder["id"]).execute(),
        403,
        "cannotAddParent",
        "a second parent",
    )

    # Delete.
    drive.files().delete(fileId=made[1]["id"]).execute()
    expect_http_error(lambda: drive.files().get(fileId=made[1]["id"]).execute(), 404, "notFound", "a deleted file")

    # A service account: the JWT bearer flow, with a key made here.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "laminar-emulator",
        "private_key_id": "emulator-key",
        "private_key": pem.decode(),
        "client_email": CFG["service_account_email"],
        "client_id": "1",
        "token_uri": CFG["token_url"],
    }
    sa = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    sa_drive = build_from_document(drive_document(), credentials=sa)
    check("user" in sa_drive.about().get(fields="user").execute(), "a service account's JWT grant works")
    check(stats()["jwt_grants"] == 1, "one JWT grant")

    installed_app_flow()

    out["checks"] = len(CHECKS)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"drive_sdk: check failed: {e} (after {len(CHECKS)} passed)", file=sys.stderr)
        sys.exit(1)
