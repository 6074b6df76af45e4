//! The control interface: a Unix socket in the master that speaks
//! newline-delimited JSON, and the pieces `rgunicornctl` shares with it.
//!
//! - [`protocol`]: the wire types (requests, responses, error codes, the
//!   status and health payloads) used by both the server and the client, so
//!   the two cannot drift apart. No Python, no I/O.
//! - [`path`]: where the socket lives by default, computed the same way by
//!   the server (to bind) and the client (to find it).
//! - [`server`]: a non-blocking, single-threaded server driven by the
//!   master's `poll(2)` loop. It checks each caller's credentials, frames and
//!   parses requests, and calls the [`server::Master`] trait, which the
//!   arbiter implements.
//!
//! The protocol is documented for users in `docs/control-protocol.md`.
//!
//! This module must never use pyo3: `rgunicornctl` links it and must not
//! link libpython.

pub mod path;
pub mod protocol;
pub mod server;
