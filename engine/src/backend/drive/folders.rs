//! Path → folder-id cache shared by every worker, and the only place folders are made.
//!
//! A path being resolved or created is marked in the map with an event; another
//! worker asking for the same path waits on it instead of listing or creating too,
//! so two workers never make two folders of one name. The lock is held only to read
//! or change the map, never across a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use event_listener::Event;

use super::{with_query, DriveStore, FileRes, FOLDER_MIME};
use crate::error::{Error, Result};
use crate::http::RequestBody;

/// Folders remembered; past this, new ones are looked up each time.
const FOLDERS_MAX: usize = 1 << 20;

enum Slot {
    Known(String),
    /// A worker is finding or making it; the event fires when it is done.
    Busy(Arc<Event>),
}

/// Folder ids by path below the root (`Backup/Photos`, no trailing slash).
#[derive(Default)]
pub(super) struct FolderCache {
    map: Mutex<HashMap<String, Slot>>,
}

impl FolderCache {
    /// Remembers a folder a listing found.
    pub(super) fn remember(&self, path: &str, id: &str) {
        let mut map = self.map.lock().expect("folder lock");
        if map.len() < FOLDERS_MAX && !map.contains_key(path) {
            map.insert(path.to_string(), Slot::Known(id.to_string()));
        }
    }
}

impl DriveStore {
    /// The id of folder `path` below the root; None if it does not exist and
    /// `create` is false.
    pub(super) async fn folder(&self, path: &str, create: bool, target: &str) -> Result<Option<String>> {
        let mut parent = self.cfg().root_folder_id.clone();
        let mut at = String::with_capacity(path.len());
        for name in path.split('/').filter(|c| !c.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(name);
            match self.folder_step(&at, &parent, name, create, target).await? {
                Some(id) => parent = id,
                None => return Ok(None),
            }
        }
        Ok(Some(parent))
    }

    async fn folder_step(
        &self,
        at: &str,
        parent: &str,
        name: &str,
        create: bool,
        target: &str,
    ) -> Result<Option<String>> {
        let cache = &self.shared.folders;
        let event = loop {
            let listener = {
                let mut map = cache.map.lock().expect("folder lock");
                match map.get(at) {
                    Some(Slot::Known(id)) => return Ok(Some(id.clone())),
                    Some(Slot::Busy(event)) => event.listen(),
                    None => {
                        let event = Arc::new(Event::new());
                        map.insert(at.to_string(), Slot::Busy(event.clone()));
                        break event;
                    }
                }
            };
            listener.await;
        };
        let found = self.find_or_make(parent, name, create, target).await;
        let mut map = cache.map.lock().expect("folder lock");
        match &found {
            Ok(Some(id)) if map.len() < FOLDERS_MAX => {
                map.insert(at.to_string(), Slot::Known(id.clone()));
            }
            _ => {
                map.remove(at);
            }
        }
        drop(map);
        event.notify(usize::MAX);
        found
    }

    async fn find_or_make(&self, parent: &str, name: &str, create: bool, target: &str) -> Result<Option<String>> {
        if let Some(f) = self.find_child(parent, name, true, target).await? {
            return Ok(Some(f.id));
        }
        if !create {
            return Ok(None);
        }
        let body = serde_json::json!({ "name": name, "mimeType": FOLDER_MIME, "parents": [parent] });
        let path = with_query("/drive/v3/files", &[("fields", "id,name,mimeType"), ("supportsAllDrives", "true")]);
        let call = super::Call {
            method: "POST",
            path,
            headers: vec![("content-type".to_string(), "application/json; charset=UTF-8".to_string())],
            op: "mkdir",
            target,
        };
        // A folder is a file to Drive's limit on creates a second: it takes a turn
        // under the relay's pace of uploads.
        if let Some(turns) = &self.turns {
            turns.turn().await;
        }
        let (_, bytes) = self.send_small(call, RequestBody::Bytes(body.to_string().into_bytes())).await?;
        if let Some(turns) = &self.turns {
            turns.made();
        }
        let made: FileRes = serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol("mkdir", target, format!("unreadable Drive answer: {e}")))?;
        Ok(Some(made.id))
    }
}
