//! Emulators of Dropbox and Google Drive, from the providers' documented protocols.
//!
//! No real Dropbox or Drive server can run on a test machine, and a client that works
//! only against a lax fake is broken; so these are strict where the services are
//! strict (argument encodings, offsets, chunk and alignment rules, real error bodies,
//! expiring tokens, paging) and are proven against the providers' official clients
//! (the `dropbox` and `google-api-python-client` SDKs) by conformance scripts in the
//! test suite. They are emulators, not the services: what they leave out is listed in
//! each module's documentation.
//!
//! Each binds 127.0.0.1 on a free port, runs on a thread of its own, and stops when
//! dropped. The tests, the benchmarks and the demo share them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod drive;
pub mod dropbox;
mod remote;
mod time;
