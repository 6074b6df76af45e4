//! rgunicorn: a drop-in replacement for Gunicorn.
//!
//! Theory of operation: a single-threaded master (`arbiter`) binds the
//! listeners (`sock`), forks worker processes and supervises them. Each
//! worker (`worker`) initialises Python (`python`), imports the WSGI app,
//! and serves HTTP/1.1 parsed in Rust (`http`), calling the app through the
//! WSGI bridge (`wsgi`). Settings come from one table (`config`).
pub mod config;
pub mod http;
