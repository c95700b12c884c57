//! Laminar's provenance record on Dropbox, through the File Properties API: a property
//! template of the user's (`file_properties/templates/*_for_user`), found or made once
//! per account and its id cached in the backend (every worker's handle shares it), a
//! property group in the `CommitInfo` of each upload, and `include_property_groups` on
//! listings and metadata so that the record comes back with them.
//!
//! The group holds two fields: the provenance record, and the `content_hash` of the
//! bytes Laminar wrote. A record is believed only while the file still has that
//! content hash, so a file changed since by anything else (which may keep the groups
//! of its earlier revision) is copied again rather than skipped.
//!
//! Dropbox takes field values of up to 1,024 bytes; a record longer than that is
//! stored as its source version alone (what a re-run compares), or not at all.

use std::sync::Mutex;

use serde_json::{json, Value};

use super::DropboxStore;
use crate::backend::{provenance_version, Store as _};
use crate::error::{Error, Result};

/// The template's name, by which Laminar finds it among the app's templates.
const TEMPLATE_NAME: &str = "Laminar";
const TEMPLATE_DESCRIPTION: &str = "What Laminar copied this file from, so that a re-run can skip it";
const FIELD_PROVENANCE: &str = "provenance";
const FIELD_CONTENT_HASH: &str = "content_hash";
/// The longest field value Dropbox takes.
const VALUE_BYTES_MAX: usize = 1024;
/// Templates looked at when finding Laminar's (an app has a handful at most).
const TEMPLATES_LOOKED_AT_MAX: usize = 64;

/// What the backend knows of its template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum State {
    /// Not asked yet.
    #[default]
    Unknown,
    /// The account has none (and nothing was written that needed one).
    Absent,
    /// Its id.
    Known(String),
}

/// The template id, shared by every worker's handle. Never locked across a request:
/// two handles that look it up at once both find the same template, and only the
/// pre-flight check (one thread, before any worker writes) makes one.
#[derive(Debug, Default)]
pub struct TemplateCache {
    state: Mutex<State>,
}

impl TemplateCache {
    fn get(&self) -> State {
        self.state.lock().expect("template cache lock").clone()
    }

    fn set(&self, state: State) {
        *self.state.lock().expect("template cache lock") = state;
    }

    /// Forgets the template (Dropbox said `template_not_found`): the next call looks
    /// again.
    pub fn forget(&self) {
        self.set(State::Unknown);
    }
}

/// `include_property_groups` for Laminar's template.
pub(super) fn filter(template_id: &str) -> Value {
    json!({ ".tag": "filter_some", "filter_some": [template_id] })
}

/// The `property_groups` of a commit: `provenance`, for bytes whose content hash is
/// `content_hash`. None when even the source version is too long for Dropbox.
pub(super) fn groups(template_id: &str, provenance: &str, content_hash: &str) -> Option<Value> {
    let value = if provenance.len() <= VALUE_BYTES_MAX { provenance } else { provenance_version(provenance) };
    (value.len() <= VALUE_BYTES_MAX).then(|| {
        json!([{
            "template_id": template_id,
            "fields": [
                { "name": FIELD_PROVENANCE, "value": value },
                { "name": FIELD_CONTENT_HASH, "value": content_hash },
            ],
        }])
    })
}

/// The provenance record in a file's metadata, if Laminar's group is there and the
/// file still has the bytes the record was written with.
pub(super) fn provenance_of(meta: &Value, template_id: &str) -> Option<String> {
    let group = meta
        .get("property_groups")?
        .as_array()?
        .iter()
        .find(|g| g.get("template_id").and_then(Value::as_str) == Some(template_id))?;
    let field = |name: &str| {
        group
            .get("fields")?
            .as_array()?
            .iter()
            .find(|f| f.get("name").and_then(Value::as_str) == Some(name))?
            .get("value")?
            .as_str()
    };
    let written = field(FIELD_CONTENT_HASH)?;
    let now = meta.get("content_hash").and_then(Value::as_str)?;
    written.eq_ignore_ascii_case(now).then(|| field(FIELD_PROVENANCE).map(str::to_string)).flatten()
}

impl DropboxStore {
    /// Laminar's template id: cached, else found among the app's templates, else
    /// (`create`) made. None when there is none and `create` is false: nothing in the
    /// account carries a record then.
    pub(super) async fn template_id(&self, create: bool) -> Result<Option<String>> {
        match self.template.get() {
            State::Known(id) => return Ok(Some(id)),
            State::Absent if !create => return Ok(None),
            State::Absent | State::Unknown => {}
        }
        let id = match self.find_template().await? {
            Some(id) => Some(id),
            None if create => Some(self.add_template().await?),
            None => None,
        };
        self.template.set(id.clone().map_or(State::Absent, State::Known));
        Ok(id)
    }

    async fn find_template(&self) -> Result<Option<String>> {
        let target = self.describe();
        let list = self.rpc("file_properties/templates/list_for_user", "template", &target, &Value::Null).await?;
        let ids = list.get("template_ids").and_then(Value::as_array).cloned().unwrap_or_default();
        for id in ids.iter().filter_map(Value::as_str).take(TEMPLATES_LOOKED_AT_MAX) {
            let arg = json!({ "template_id": id });
            let template = match self.rpc("file_properties/templates/get_for_user", "template", &target, &arg).await {
                Ok(t) => t,
                // Removed since it was listed.
                Err(e) if is_template_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            let named = template.get("name").and_then(Value::as_str) == Some(TEMPLATE_NAME);
            let has = |name: &str| {
                template
                    .get("fields")
                    .and_then(Value::as_array)
                    .is_some_and(|fs| fs.iter().any(|f| f.get("name").and_then(Value::as_str) == Some(name)))
            };
            if named && has(FIELD_PROVENANCE) && has(FIELD_CONTENT_HASH) {
                return Ok(Some(id.to_string()));
            }
        }
        Ok(None)
    }

    async fn add_template(&self) -> Result<String> {
        let target = self.describe();
        let field =
            |name: &str, description: &str| json!({ "name": name, "description": description, "type": "string" });
        let arg = json!({
            "name": TEMPLATE_NAME,
            "description": TEMPLATE_DESCRIPTION,
            "fields": [
                field(FIELD_PROVENANCE, "The source version Laminar copied, and its checksum"),
                field(FIELD_CONTENT_HASH, "The content_hash of the bytes Laminar wrote"),
            ],
        });
        let answer = self.rpc("file_properties/templates/add_for_user", "template", &target, &arg).await?;
        answer.get("template_id").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            Error::protocol("template", &target, "file_properties/templates/add_for_user answered no template_id")
        })
    }

    /// The commit's `property_groups` for `provenance` over bytes of `content_hash`;
    /// makes the template if the account has none yet.
    pub(super) async fn commit_groups(
        &self,
        provenance: Option<&str>,
        content_hash: Option<&str>,
    ) -> Result<Option<Value>> {
        let (Some(provenance), Some(hash)) = (provenance, content_hash) else { return Ok(None) };
        Ok(self.template_id(true).await?.and_then(|id| groups(&id, provenance, hash)))
    }
}

/// Whether an error is Dropbox's `template_not_found`.
pub(super) fn is_template_not_found(e: &Error) -> bool {
    matches!(e, Error::Http { code, message, .. } if code == "template_not_found" || message.contains("template_not_found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn a_record_is_believed_only_with_the_bytes_it_was_written_with() {
        let g = groups("ptid:x", "etag;crc32c:00000000", HASH).unwrap();
        let mut meta = json!({ "content_hash": HASH, "property_groups": g });
        assert_eq!(provenance_of(&meta, "ptid:x").as_deref(), Some("etag;crc32c:00000000"));
        assert_eq!(provenance_of(&meta, "ptid:other"), None);
        meta["content_hash"] = json!("00".repeat(32));
        assert_eq!(provenance_of(&meta, "ptid:x"), None, "changed since Laminar wrote it");
        assert_eq!(provenance_of(&json!({ "content_hash": HASH }), "ptid:x"), None);
    }

    #[test]
    fn long_records_keep_their_version_or_nothing() {
        let long = format!("v1;{}", "x".repeat(2000));
        let g = groups("ptid:x", &long, HASH).unwrap();
        assert_eq!(g[0]["fields"][0]["value"], "v1");
        assert!(groups("ptid:x", &"v".repeat(1025), HASH).is_none());
        assert_eq!(filter("ptid:x"), json!({ ".tag": "filter_some", "filter_some": ["ptid:x"] }));
    }
}
