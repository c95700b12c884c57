//! HTTP/1.1 on the worker's event loop: the byte path.
//!
//! A deliberately small client: keep-alive connection pools per worker and endpoint,
//! bounded per endpoint across the process and reaped when idle (`pool`), request
//! heads written by hand, response heads parsed with `httparse`, and bodies read straight into pool chunks and written from them, so no bytes are copied
//! through intermediate heap buffers and nothing is allocated per chunk. TLS (rustls)
//! wraps the same stream for `https` endpoints, through an `HTTPS_PROXY` tunnel when one is set. Metadata calls (listings, multipart
//! control) reuse it with small `Vec` bodies.

pub(crate) mod client;
mod conn;
mod head;
mod pool;
mod proxy;

pub use client::{limits, set_limits, HttpClient, Limits, Request, RequestBody, Response, StreamBody};
pub use conn::{set_socket_policy, socket_policy, Endpoint};
pub use head::{ContentRange, ResponseHead};
pub use pool::{connection_budgets, connections_per_endpoint, set_connections_per_endpoint, BudgetStats};
