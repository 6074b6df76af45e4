//! `--log-syslog`: error-log and access-log records also go to syslog, in
//! the form Python's `logging.handlers.SysLogHandler` sends for Gunicorn:
//! `<PRI>gunicorn.PREFIX.error: [pid] message\0` (RFC 3164 priority, no
//! timestamp or host: the local syslog daemon adds them), one datagram or
//! one stream write per record.
//!
//! The socket is connected once in the master and inherited by every
//! worker. It is non-blocking: a record the socket cannot take at once is
//! dropped rather than stall a request or the master loop.

use super::Severity;
use anyhow::{bail, Context, Result};
use socket2::{Domain, SockAddr, Socket, Type};
use std::net::ToSocketAddrs;

/// Gunicorn's `SYSLOG_FACILITIES`.
const FACILITIES: &[(&str, u8)] = &[
    ("auth", 4),
    ("authpriv", 10),
    ("cron", 9),
    ("daemon", 3),
    ("ftp", 11),
    ("kern", 0),
    ("lpr", 6),
    ("mail", 2),
    ("news", 7),
    ("security", 4),
    ("syslog", 5),
    ("user", 1),
    ("uucp", 8),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// The facility number of a name (case-insensitive), as Gunicorn.
pub fn facility(name: &str) -> Option<u8> {
    let n = name.to_ascii_lowercase();
    FACILITIES.iter().find(|(f, _)| *f == n).map(|(_, v)| *v)
}

/// Where syslog records go (Gunicorn's `parse_syslog_address`).
#[derive(Debug, PartialEq)]
pub enum Addr {
    Udp(String, u16),
    Tcp(String, u16),
    /// A Unix socket; `dgram` when the address ends in `#dgram`.
    Unix(String, bool),
}

/// Parse `udp://host:port`, `tcp://host:port`, `unix:///path[#dgram]`.
pub fn parse_addr(addr: &str) -> Result<Addr> {
    if let Some(rest) = addr.strip_prefix("unix://") {
        return Ok(match rest.split_once('#') {
            Some((p, kind)) => Addr::Unix(p.to_string(), kind == "dgram"),
            None => Addr::Unix(rest.to_string(), false),
        });
    }
    let (rest, tcp) = if let Some(r) = addr.strip_prefix("udp://") {
        (r, false)
    } else if let Some(r) = addr.strip_prefix("tcp://") {
        (r, true)
    } else {
        bail!("invalid syslog address {addr:?} (udp://HOST:PORT, tcp://HOST:PORT or unix://PATH)");
    };
    let (host, port_part) = if let Some(r) = rest.strip_prefix('[') {
        match r.split_once(']') {
            Some((h, p)) => (h.to_ascii_lowercase(), p),
            None => bail!("invalid syslog address {addr:?}"),
        }
    } else {
        match rest.split_once(':') {
            Some((h, _)) => (h.to_ascii_lowercase(), &rest[h.len()..]),
            None if rest.is_empty() => ("localhost".to_string(), ""),
            None => (rest.to_ascii_lowercase(), ""),
        }
    };
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    let port = match port_part.strip_prefix(':') {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| anyhow::anyhow!("{p:?} is not a valid port number."))?,
        None => 514,
    };
    Ok(if tcp {
        Addr::Tcp(host, port)
    } else {
        Addr::Udp(host, port)
    })
}

/// The syslog destination, connected.
pub struct Syslog {
    sock: Socket,
    facility: u8,
    /// `gunicorn.PREFIX.error: ` and `gunicorn.PREFIX.access: `.
    error_tag: String,
    access_tag: String,
}

impl Syslog {
    pub fn connect(s: &crate::config::Settings) -> Result<Syslog> {
        let facility = facility(&s.syslog_facility)
            .with_context(|| format!("unknown syslog facility name {:?}", s.syslog_facility))?;
        let prefix = match s.syslog_prefix.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => p.to_string(),
            None => s
                .proc_name
                .as_deref()
                .unwrap_or(&s.default_proc_name)
                .replace(':', "."),
        };
        let sock = open(&parse_addr(&s.syslog_addr)?)
            .with_context(|| format!("cannot connect to syslog at {}", s.syslog_addr))?;
        sock.set_nonblocking(true)?;
        Ok(Syslog {
            sock,
            facility,
            error_tag: format!("gunicorn.{prefix}.error: "),
            access_tag: format!("gunicorn.{prefix}.access: "),
        })
    }

    fn send(&self, tag: &str, sev: Severity, msg: &[u8]) {
        // Python's SysLogHandler.mapPriority.
        let severity = match sev {
            Severity::Critical => 2,
            Severity::Error | Severity::Exception => 3,
            Severity::Warning => 4,
            Severity::Info => 6,
            Severity::Debug => 7,
        };
        let pri = u32::from(self.facility) * 8 + severity;
        let mut b = Vec::with_capacity(msg.len() + tag.len() + 24);
        b.push(b'<');
        b.extend_from_slice(itoa::Buffer::new().format(pri).as_bytes());
        b.push(b'>');
        b.extend_from_slice(tag.as_bytes());
        b.push(b'[');
        b.extend_from_slice(itoa::Buffer::new().format(std::process::id()).as_bytes());
        b.extend_from_slice(b"] ");
        b.extend_from_slice(msg);
        b.push(0);
        // Dropped when the socket cannot take it now (see the module doc).
        let _ = self.sock.send(&b);
    }

    pub fn error_record(&self, sev: Severity, msg: &[u8]) {
        self.send(&self.error_tag, sev, msg);
    }

    pub fn access_record(&self, line: &[u8]) {
        self.send(&self.access_tag, Severity::Info, line);
    }
}

fn inet(host: &str, port: u16, ty: Type) -> Result<Socket> {
    let addrs: Vec<_> = (host, port).to_socket_addrs()?.collect();
    let mut last = None;
    for a in addrs {
        let sock = Socket::new(Domain::for_address(a), ty, None)?;
        match sock.connect(&SockAddr::from(a)) {
            Ok(()) => return Ok(sock),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .map(Into::into)
        .unwrap_or_else(|| anyhow::anyhow!("{host} has no address")))
}

fn open(addr: &Addr) -> Result<Socket> {
    match addr {
        Addr::Udp(h, p) => inet(h, *p, Type::DGRAM),
        Addr::Tcp(h, p) => inet(h, *p, Type::STREAM),
        Addr::Unix(path, dgram) => {
            let sa = SockAddr::unix(path)?;
            let ty = if *dgram { Type::DGRAM } else { Type::STREAM };
            let sock = Socket::new(Domain::UNIX, ty, None)?;
            match sock.connect(&sa) {
                Ok(()) => Ok(sock),
                // A datagram socket (as /dev/log is) named without `#dgram`:
                // Gunicorn fails here; we use it as what it is.
                Err(e) if !dgram && e.raw_os_error() == Some(libc::EPROTOTYPE) => {
                    let d = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
                    d.connect(&sa)?;
                    Ok(d)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_gunicorn() {
        assert_eq!(
            parse_addr("udp://localhost:514").unwrap(),
            Addr::Udp("localhost".into(), 514)
        );
        assert_eq!(
            parse_addr("udp://").unwrap(),
            Addr::Udp("localhost".into(), 514)
        );
        assert_eq!(
            parse_addr("tcp://[::1]:601").unwrap(),
            Addr::Tcp("::1".into(), 601)
        );
        assert_eq!(
            parse_addr("unix:///dev/log#dgram").unwrap(),
            Addr::Unix("/dev/log".into(), true)
        );
        assert_eq!(
            parse_addr("unix:///run/x.sock").unwrap(),
            Addr::Unix("/run/x.sock".into(), false)
        );
        assert!(parse_addr("udp://h:x").is_err());
        assert!(parse_addr("h:514").is_err());
        assert_eq!(facility("LOCAL7"), Some(23));
        assert_eq!(facility("nope"), None);
    }
}
