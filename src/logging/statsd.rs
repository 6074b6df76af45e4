//! `--statsd-host`: Gunicorn's StatsD metrics, with its names and wire
//! format (`gunicorn/instrument/statsd.py`):
//! - per request, from the worker: `gunicorn.request.duration:MS|ms`,
//!   `gunicorn.requests:1|c|@1.0`, `gunicorn.request.status.CODE:1|c|@1.0`;
//! - from the master: `gunicorn.workers:N|g` when the count changes, and
//!   with `--enable-backlog-metric` `gunicorn.backlog:N|ms` every second
//!   (Gunicorn sends it as a histogram, which its client writes as `ms`);
//! - per error-log record at warning and above: `gunicorn.log.LEVEL:1|c|@1.0`.
//!
//! `--statsd-prefix` is prepended (with one dot), `--dogstatsd-tags` appended
//! as `|#tags`. One datagram per metric on a non-blocking UDP (or Unix
//! datagram) socket connected once in the master: a send never waits, and a
//! metric the socket cannot take is dropped. Nothing of this runs when the
//! setting is off.

use super::Severity;
use anyhow::{Context, Result};
use socket2::{Domain, SockAddr, Socket, Type};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct Statsd {
    sock: Socket,
    prefix: String,
    /// `|#tags`, or empty.
    tags: String,
    last_workers: AtomicUsize,
}

/// Gunicorn: `sub(r"^(.+[^.]+)\.*$", "\g<1>.", prefix)`.
fn normalize_prefix(p: &str) -> String {
    let t = p.trim_end_matches('.');
    if t.len() >= 2 {
        format!("{t}.")
    } else {
        p.to_string()
    }
}

/// Python's `str(float)` for the durations we send: `12.0`, `1.234`.
fn py_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl Statsd {
    /// `HOST[:PORT]` (port 8125 by default), `[V6]:PORT`, or `unix:PATH`.
    pub fn connect(host: &str, prefix: &str, tags: &str) -> Result<Statsd> {
        let sock = open(host).with_context(|| format!("cannot use statsd_host {host:?}"))?;
        sock.set_nonblocking(true)?;
        Ok(Statsd {
            sock,
            prefix: normalize_prefix(prefix),
            tags: if tags.is_empty() {
                String::new()
            } else {
                format!("|#{tags}")
            },
            last_workers: AtomicUsize::new(usize::MAX),
        })
    }

    fn send(&self, name: &str, value: &str, kind: &str) {
        let mut m = String::with_capacity(64);
        m.push_str(&self.prefix);
        m.push_str(name);
        m.push(':');
        m.push_str(value);
        m.push('|');
        m.push_str(kind);
        m.push_str(&self.tags);
        let _ = self.sock.send(m.as_bytes());
    }

    fn increment(&self, name: &str) {
        self.send(name, "1", "c|@1.0");
    }

    pub fn request(&self, status: u16, took: Duration) {
        let ms = took.as_secs() as f64 * 1000.0 + f64::from(took.subsec_micros()) / 1000.0;
        self.send("gunicorn.request.duration", &py_float(ms), "ms");
        self.increment("gunicorn.requests");
        let mut name = String::from("gunicorn.request.status.");
        name.push_str(itoa::Buffer::new().format(status));
        self.increment(&name);
    }

    pub fn workers(&self, n: usize) {
        if self.last_workers.swap(n, Ordering::Relaxed) != n {
            self.send("gunicorn.workers", itoa::Buffer::new().format(n), "g");
        }
    }

    pub fn backlog(&self, n: u64) {
        self.send("gunicorn.backlog", itoa::Buffer::new().format(n), "ms");
    }

    pub fn log_record(&self, sev: Severity) {
        match sev {
            Severity::Critical => self.increment("gunicorn.log.critical"),
            Severity::Error => self.increment("gunicorn.log.error"),
            Severity::Exception => self.increment("gunicorn.log.exception"),
            Severity::Warning => self.increment("gunicorn.log.warning"),
            Severity::Info | Severity::Debug => {}
        }
    }
}

fn open(host: &str) -> Result<Socket> {
    if let Some(path) = host.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        let sock = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
        sock.connect(&SockAddr::unix(path)?)?;
        return Ok(sock);
    }
    let (h, port) = if let Some(r) = host.strip_prefix('[') {
        let (h, p) = r.split_once(']').context("unbalanced '['")?;
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (host, ""),
        }
    };
    let port: u16 = if port.is_empty() {
        8125
    } else {
        port.parse().context("bad port")?
    };
    let h = if h.is_empty() { "localhost" } else { h };
    let addr = (h, port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{h} has no address"))?;
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    sock.connect(&SockAddr::from(addr))?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_floats_as_gunicorn() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("app"), "app.");
        assert_eq!(normalize_prefix("app..."), "app.");
        assert_eq!(normalize_prefix("a"), "a");
        assert_eq!(py_float(12.0), "12.0");
        assert_eq!(py_float(1.234), "1.234");
    }
}
