//! Writing a file as an upload session: the bytes go to a temporary file beside the
//! final path (parts written in place at their offsets, in any order, by any
//! worker), which is read back against the checksum computed in flight and renamed
//! into place only then. The session's state names the temporary file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FileStore;
use crate::backend::{
    Committed, LocalFuture, PartRecord, PartSpec, PutArgs, Session, SessionState, UploadPlan, UploadSession,
};
use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::pool::Body;

/// The file part of a session's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileSession {
    /// The temporary file's name, beside the final path.
    temp: String,
}

struct FileUpload<'a> {
    store: &'a FileStore,
    state: SessionState,
    temp: PathBuf,
}

pub(super) async fn begin<'a>(
    store: &'a FileStore,
    key: &'a str,
    plan: UploadPlan,
    args: &'a PutArgs,
) -> Result<Session<'a>> {
    let op = if plan.single { "put" } else { "create-multipart" };
    let temp = store.temp_path(key)?;
    store.ensure_parent(op, key, &temp)?;
    if !plan.single {
        let f =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&temp).map_err(|e| Error::io(op, key, e))?;
        // The object's blocks are taken now, so that a disk without room for it says
        // so before a byte is read, not part-way through; the temp file goes if not.
        if let Err(e) = super::allocate(&f, plan.size) {
            drop(f);
            let _ = std::fs::remove_file(&temp);
            return Err(store.write_error(op, key, e));
        }
    }
    let name = temp.file_name().expect("temp has a name").to_string_lossy().into_owned();
    let store_state = serde_json::to_value(FileSession { temp: name }).expect("serialisable");
    let state = SessionState { key: key.to_string(), plan, args: args.clone(), store: store_state, parts: Vec::new() };
    Ok(Box::new(FileUpload { store, state, temp }))
}

pub(super) fn resume(store: &FileStore, state: SessionState) -> Result<Session<'_>> {
    let session: FileSession = serde_json::from_value(state.store.clone()).map_err(|e| {
        Error::protocol("resume", &state.key, format!("the session's state is not a file upload's: {e}"))
    })?;
    if !super::is_temp_name(session.temp.as_bytes()) || session.temp.contains('/') {
        return Err(Error::protocol("resume", &state.key, "the session names no temporary file of Laminar's"));
    }
    let temp = store.resolve("resume", &state.key)?.with_file_name(&session.temp);
    // A parted upload writes into a file made at its start: if that is gone (a sweep
    // removed what a killed relay left), there is nothing to go on with.
    if !state.plan.single && !temp.is_file() {
        return Err(Error::protocol("resume", &state.key, format!("its temporary file {} is gone", temp.display())));
    }
    Ok(Box::new(FileUpload { store, state, temp }))
}

impl UploadSession for FileUpload<'_> {
    fn state(&self) -> &SessionState {
        &self.state
    }

    fn put<'a>(&'a self, part: PartSpec, body: Body, sums: &'a [Checksum]) -> LocalFuture<'a, Result<String>> {
        Box::pin(async move {
            let key = &self.state.key;
            if !self.state.plan.single {
                self.store.write_chunks(key, &self.temp, part.offset, body, false).await?;
                return Ok(String::new());
            }
            let result = async {
                self.store.write_chunks(key, &self.temp, 0, body, true).await?;
                if let Some(sum) = sums.first() {
                    self.store.verify(key, &self.temp, sum).await?;
                }
                self.store.finish_file(key, &self.temp, &self.state.args)
            }
            .await;
            if result.is_err() {
                let _ = std::fs::remove_file(&self.temp);
            }
            result.map(|()| String::new())
        })
    }

    fn committed(&self) -> LocalFuture<'_, Result<Committed>> {
        // Bytes written in place say nothing of which parts are whole: none is vouched
        // for, so a retried part is written again.
        Box::pin(async move { Ok(Committed::Parts(Vec::new())) })
    }

    fn finish<'a>(&'a self, parts: &'a [PartRecord], full: Option<&'a Checksum>) -> LocalFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = &self.state.key;
            if self.state.plan.single {
                return Ok(());
            }
            let expected_len: u64 = parts.iter().map(|p| p.len).sum();
            let md = std::fs::metadata(&self.temp).map_err(|e| Error::io("complete-multipart", key, e))?;
            if md.len() != expected_len || expected_len != self.state.plan.size {
                return Err(Error::protocol(
                    "complete-multipart",
                    key,
                    format!(
                        "temporary file holds {} bytes, parts add up to {expected_len}, the object has {}",
                        md.len(),
                        self.state.plan.size
                    ),
                ));
            }
            if let Some(full) = full {
                self.store.verify(key, &self.temp, full).await?;
            }
            self.store.finish_file(key, &self.temp, &self.state.args)
        })
    }

    fn abort(&self) -> LocalFuture<'_, Result<()>> {
        Box::pin(async move {
            match std::fs::remove_file(&self.temp) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("abort-multipart", &self.state.key, e)),
            }
        })
    }
}
