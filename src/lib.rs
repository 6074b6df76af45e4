//! rgunicorn: a drop-in replacement for Gunicorn.
//!
//! Theory of operation: a single-threaded master ([`arbiter`]) binds the
//! listeners ([`sock`]), forks worker processes and supervises them through
//! a shared-memory [`scoreboard`]. Each worker ([`worker`]) initialises
//! Python ([`python`]), imports the WSGI app, and serves HTTP/1.1 parsed in
//! Rust ([`http`]), calling the app through the WSGI bridge ([`wsgi`]).
//! Settings come from one table ([`config`]); logs are Gunicorn's
//! ([`logging`]). [`cli`] is the command line, shared by the cargo-built
//! binary and an installed wheel's console script (through the extension
//! module, feature `extension-module`).
//!
//! All of it is the default feature `server`: without it (`cargo build
//! --no-default-features --bin rgunicornctl`, build.rs's build of
//! rgunicornctl for the wheel) the library is empty, and none of its
//! dependencies (PyO3, tokio, rustls, ...) is compiled.
#![cfg(feature = "server")]
pub mod arbiter;
pub mod cli;
pub mod config;
pub mod control;
#[cfg(feature = "extension-module")]
mod extension;
pub mod hooks;
pub mod http;
pub mod http2;
pub mod http_date;
pub mod logging;
pub mod privileges;
pub mod proctitle;
pub mod python;
pub mod scoreboard;
pub mod sock;
pub mod systemd;
pub mod tls;
pub mod worker;
pub mod wsgi;
