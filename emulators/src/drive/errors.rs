//! Drive's error answers, in the shape Drive sends them:
//! `{"error": {"code", "message", "errors": [{"message", "domain", "reason", "location",
//! "locationType"}], "status"}}`. Clients read `errors[0].reason` (google-api-python-client
//! retries a 403 only when it is `userRateLimitExceeded` or `rateLimitExceeded`), so every
//! answer here carries the reason Drive would give, and the messages are Drive's where they
//! are known.

use http::StatusCode;
use serde_json::{json, Value};

/// One error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) domain: &'static str,
    pub(crate) message: String,
    /// (locationType, location), e.g. ("parameter", "fileId").
    pub(crate) location: Option<(&'static str, String)>,
}

/// The message Drive sends with the per-user rate limit (the per-minute quota).
pub(crate) const USER_RATE_LIMIT_MESSAGE: &str =
    "User Rate Limit Exceeded. Rate of requests for user exceed configured \
project quota. You may consider re-evaluating expected per-user traffic to the API and adjust project quota limits \
accordingly. You may monitor aggregate quota usage and adjust limits in the API Console: \
https://console.developers.google.com/apis/api/drive.googleapis.com/quotas?project=000000000000";

/// The message of the daily upload limit (750 GB per user per day). Drive gives it the
/// same reason as the per-minute limit, `userRateLimitExceeded`; only this message tells
/// them apart (rclone's `--drive-stop-on-upload-limit` matches on it).
pub(crate) const DAILY_UPLOAD_LIMIT_MESSAGE: &str = "User rate limit exceeded.";

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, domain: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, reason, domain, message: message.into(), location: None }
    }

    fn at(mut self, kind: &'static str, location: impl Into<String>) -> ApiError {
        self.location = Some((kind, location.into()));
        self
    }

    /// 404 for a file id that is not there (or not visible without `supportsAllDrives`).
    pub(crate) fn file_not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "notFound", "global", format!("File not found: {id}."))
            .at("parameter", "fileId")
    }

    /// 404 for a shared drive id.
    pub(crate) fn drive_not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "notFound", "global", format!("Shared drive not found: {id}"))
            .at("parameter", "driveId")
    }

    /// 404 for an upload session that expired, was evicted or never was.
    pub(crate) fn session_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "notFound", "global", "Upload session not found or expired.")
            .at("parameter", "upload_id")
    }

    /// 404 for a path Drive does not serve.
    pub(crate) fn no_such_method() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "notFound", "global", "Not Found")
    }

    /// 400 `badRequest`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "badRequest", "global", message)
    }

    /// 400 `invalid` on a named parameter (`q`, `pageSize`, `pageToken`, ...).
    pub(crate) fn invalid_parameter(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", "global", message).at("parameter", parameter)
    }

    /// 400 `invalidParameter` for a `fields` selection naming an unknown field.
    pub(crate) fn invalid_fields(selection: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalidParameter",
            "global",
            format!("Invalid field selection {selection}"),
        )
        .at("parameter", "fields")
    }

    /// 400 `required` for a missing parameter.
    pub(crate) fn required_parameter(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "required", "global", message).at("parameter", parameter)
    }

    /// 401 without an `Authorization` header.
    pub(crate) fn login_required() -> ApiError {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "required", "global", "Login Required.")
            .at("header", "Authorization");
        e.message = "Request is missing required authentication credential. Expected OAuth 2 access token, login \
cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
            .into();
        e
    }

    /// 401 for an expired, revoked or unknown access token.
    pub(crate) fn invalid_credentials() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authError", "global", "Invalid Credentials")
            .at("header", "Authorization")
    }

    /// 403 `userRateLimitExceeded`: the per-user, per-minute quota (retry with backoff).
    pub(crate) fn user_rate_limit() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "userRateLimitExceeded", "usageLimits", USER_RATE_LIMIT_MESSAGE)
    }

    /// 403 `rateLimitExceeded`: the project's rate (retry with backoff).
    pub(crate) fn rate_limit_403() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "rateLimitExceeded", "usageLimits", "Rate Limit Exceeded")
    }

    /// 429 `rateLimitExceeded`: Drive's backend rate checks (retry with backoff).
    pub(crate) fn rate_limit_429() -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rateLimitExceeded", "usageLimits", "Rate Limit Exceeded")
    }

    /// 403 for the daily upload limit: same reason as [`ApiError::user_rate_limit`], its
    /// own message. Retrying does not help until the day turns.
    pub(crate) fn daily_upload_limit() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "userRateLimitExceeded", "usageLimits", DAILY_UPLOAD_LIMIT_MESSAGE)
    }

    /// 403 `storageQuotaExceeded`.
    pub(crate) fn storage_quota() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "storageQuotaExceeded",
            "usageLimits",
            "The user's Drive storage quota has been exceeded.",
        )
    }

    /// 403 for `alt=media` on a Google Doc, a folder or a shortcut.
    pub(crate) fn not_downloadable() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "fileNotDownloadable",
            "global",
            "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
        )
        .at("parameter", "alt")
    }

    /// 403 for files.export on a file that is not a Docs Editors file.
    pub(crate) fn not_exportable() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "fileNotExportable", "global", "Export only supports Docs Editors files.")
    }

    /// 403 when the exported content is over the export limit (10 MB on Drive).
    pub(crate) fn export_too_large() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "exportSizeLimitExceeded",
            "global",
            "This file is too large to be exported.",
        )
    }

    /// 400 for an export format the file's type does not have.
    pub(crate) fn conversion_unsupported() -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "badRequest", "global", "The requested conversion is not supported.")
            .at("parameter", "convertTo")
    }

    /// 403 when a request would leave a file with more than one parent.
    pub(crate) fn cannot_add_parent() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "cannotAddParent",
            "global",
            "Increasing the number of parents is not allowed.",
        )
    }

    /// 403 for a field of the request body that is not writable.
    pub(crate) fn field_not_writable(field: &str) -> ApiError {
        let message = if field == "parents" {
            "The parents field is not directly writable in update requests. Use the addParents and removeParents \
parameters instead."
                .to_string()
        } else {
            format!("The resource body includes fields which are not directly writable: {field}.")
        };
        ApiError::new(StatusCode::FORBIDDEN, "fieldNotWritable", "global", message)
    }

    /// 403 for an operation on the root folder that Drive refuses.
    pub(crate) fn insufficient_permissions() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficientFilePermissions",
            "global",
            "The user does not have sufficient permissions for this file.",
        )
    }

    /// 413 for a one-request upload over the emulator's bound (an emulator limit, not Drive's).
    pub(crate) fn upload_too_large(max_bytes: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "uploadTooLarge",
            "global",
            format!("The emulator takes at most {max_bytes} bytes in one request; use a resumable upload."),
        )
    }

    /// 5xx `backendError`, injected.
    pub(crate) fn backend(status: StatusCode) -> ApiError {
        let message = if status == StatusCode::SERVICE_UNAVAILABLE { "Service Unavailable" } else { "Internal Error" };
        ApiError::new(status, "backendError", "global", message)
    }

    /// The answer's body.
    pub(crate) fn to_json(&self) -> Value {
        let mut item = json!({"message": self.message, "domain": self.domain, "reason": self.reason});
        if let Some((kind, location)) = &self.location {
            item["location"] = json!(location);
            item["locationType"] = json!(kind);
        }
        json!({"error": {
            "code": self.status.as_u16(),
            "message": self.message,
            "errors": [item],
            "status": grpc_status(self.status),
        }})
    }

    /// Whether this is one of the throttling answers (counted apart in the statistics).
    pub(crate) fn is_throttle(&self) -> bool {
        matches!(self.reason, "userRateLimitExceeded" | "rateLimitExceeded")
    }
}

/// The canonical gRPC status name Google's front end puts in `error.status`.
fn grpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        413 => "OUT_OF_RANGE",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// The OAuth token endpoint's error body: `{"error": "invalid_grant", "error_description": ...}`.
pub(crate) fn oauth_error(error: &str, description: &str) -> Value {
    json!({"error": error, "error_description": description})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_drive() {
        let v = ApiError::file_not_found("abc").to_json();
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["message"], "File not found: abc.");
        assert_eq!(v["error"]["errors"][0]["reason"], "notFound");
        assert_eq!(v["error"]["errors"][0]["domain"], "global");
        assert_eq!(v["error"]["errors"][0]["location"], "fileId");
        assert_eq!(v["error"]["errors"][0]["locationType"], "parameter");
        assert_eq!(v["error"]["status"], "NOT_FOUND");
        let daily = ApiError::daily_upload_limit();
        let minute = ApiError::user_rate_limit();
        assert_eq!(daily.reason, minute.reason, "Drive gives both the same reason");
        assert_ne!(daily.message, minute.message, "only the message tells them apart");
        assert!(
            daily.is_throttle() && ApiError::rate_limit_429().is_throttle() && !ApiError::storage_quota().is_throttle()
        );
    }
}
