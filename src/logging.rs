//! Logging: the error log (through `tracing`, in Gunicorn's line format) and
//! the access log (Gunicorn's `access_log_format` atoms).
//!
//! Error-log lines look exactly like Gunicorn's:
//! `[2026-11-26 22:12:04 +0000] [1234] [INFO] Booting worker with pid: 1234`.
//! Both logs go to `-` (stderr for the error log, stdout for the access
//! log) or to a file opened in append mode, which `reopen()` opens again
//! (SIGUSR1, for logrotate). No logging thread exists: a write is a write.
//!
//! Under systemd, when stderr is the journal (`JOURNAL_STREAM`, see
//! [`crate::systemd::journal`]) or with `--log-journald`, the error log is
//! sent natively instead, through `tracing-journald` (one datagram per event
//! to journald's socket, no thread): `PRIORITY` from the level (CRITICAL is
//! 2), `SYSLOG_IDENTIFIER=rgunicorn`, `TARGET`, `CODE_FILE`/`CODE_LINE`,
//! any fields of the event, and the kernel-attested `_PID` of the process
//! that logged (the worker's or the master's). Raw text (tracebacks,
//! `wsgi.errors`) and the access log still go to their sinks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tracing::{Event, Level, Subscriber};
use tracing_journald::Priority;
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Where one log goes.
#[derive(Debug)]
enum Target {
    Stderr,
    Stdout,
    File(PathBuf, File),
}

/// A log destination that can be reopened (logrotate moves the file away,
/// SIGUSR1 makes us write to a fresh file at the same path).
#[derive(Debug)]
pub struct Sink {
    target: Mutex<Target>,
}

impl Sink {
    /// `-` means `default_std` (stderr or stdout); anything else is a path.
    fn open(spec: &str, stdout: bool) -> io::Result<Sink> {
        let target = if spec == "-" {
            if stdout {
                Target::Stdout
            } else {
                Target::Stderr
            }
        } else {
            let path = PathBuf::from(spec);
            let f = open_append(&path)?;
            Target::File(path, f)
        };
        Ok(Sink {
            target: Mutex::new(target),
        })
    }

    pub fn write_all(&self, buf: &[u8]) {
        let mut t = self.target.lock().unwrap_or_else(|p| p.into_inner());
        // A log write that fails (disk full, closed stderr) must never take
        // the server down; there is nowhere left to report it.
        let _ = match &mut *t {
            Target::Stderr => io::stderr().lock().write_all(buf),
            Target::Stdout => {
                let mut o = io::stdout().lock();
                o.write_all(buf).and_then(|_| o.flush())
            }
            Target::File(_, f) => f.write_all(buf),
        };
    }

    fn reopen(&self) -> io::Result<()> {
        let mut t = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Target::File(path, f) = &mut *t {
            *f = open_append(path)?;
        }
        Ok(())
    }

    /// The file descriptor behind this sink, for `--capture-output`.
    pub fn is_file(&self) -> bool {
        matches!(
            &*self.target.lock().unwrap_or_else(|p| p.into_inner()),
            Target::File(..)
        )
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })
}

struct Logs {
    error: Sink,
    access: Option<Sink>,
    access_format: AccessFormat,
}

static LOGS: OnceLock<Logs> = OnceLock::new();

/// Parse Gunicorn's `--log-level` names.
pub fn parse_level(s: &str) -> Result<Level, String> {
    match s.to_ascii_lowercase().as_str() {
        "debug" => Ok(Level::DEBUG),
        "info" => Ok(Level::INFO),
        "warning" | "warn" => Ok(Level::WARN),
        "error" => Ok(Level::ERROR),
        "critical" => Ok(Level::ERROR),
        other => Err(format!(
            "invalid log level `{other}` (debug, info, warning, error, critical)"
        )),
    }
}

/// Install the logs. Called once in the master, before any fork; workers
/// inherit them.
pub fn init(
    level: &str,
    errorlog: &str,
    accesslog: Option<&str>,
    access_format: &str,
    journald: bool,
) -> anyhow::Result<()> {
    let level = parse_level(level).map_err(anyhow::Error::msg)?;
    let logs = Logs {
        error: Sink::open(errorlog, false)?,
        access: match accesslog {
            Some(a) => Some(Sink::open(a, true)?),
            None => None,
        },
        access_format: AccessFormat::parse(access_format),
    };
    if LOGS.set(logs).is_err() {
        return Ok(());
    }
    if journald {
        match journald_layer(Priority::Error)
            .and_then(|l| Ok((l, journald_layer(Priority::Critical)?)))
        {
            Ok((layer, critical)) => {
                use tracing_subscriber::filter::{filter_fn, LevelFilter};
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::Layer;
                let is_critical = |m: &tracing::Metadata<'_>| m.target().ends_with("critical");
                let subscriber = tracing_subscriber::registry()
                    .with(
                        layer
                            .with_filter(LevelFilter::from_level(level))
                            .with_filter(filter_fn(move |m| !is_critical(m))),
                    )
                    .with(critical.with_filter(filter_fn(is_critical)));
                let _ = tracing::subscriber::set_global_default(subscriber);
                return Ok(());
            }
            Err(e) => {
                // Say it in the plain log we fall back to.
                let line = format!(
                    "[{}] [{}] [WARNING] cannot log to the journal ({e}); logging text to {errorlog}\n",
                    chrono::Local::now().format("%Y-%m-%d %H:%M:%S %z"),
                    std::process::id()
                );
                error_log_raw(line.as_bytes());
            }
        }
    }
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .event_format(GunicornFormat)
        .with_writer(ErrorLogWriter)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

/// A journald layer: Gunicorn's level names mapped to syslog priorities;
/// `error` is what ERROR events get (2 for the CRITICAL layer, 3 otherwise).
fn journald_layer(error: Priority) -> io::Result<tracing_journald::Layer> {
    use tracing_journald::PriorityMappings;
    Ok(tracing_journald::layer()?
        .with_syslog_identifier("rgunicorn".to_string())
        .with_field_prefix(None)
        .with_priority_mappings(PriorityMappings {
            error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

/// Reopen every file log (SIGUSR1).
pub fn reopen() -> io::Result<()> {
    if let Some(l) = LOGS.get() {
        l.error.reopen()?;
        if let Some(a) = &l.access {
            a.reopen()?;
        }
    }
    Ok(())
}

/// Write raw text to the error log (wsgi.errors, tracebacks).
pub fn error_log_raw(buf: &[u8]) {
    match LOGS.get() {
        Some(l) => l.error.write_all(buf),
        None => {
            let _ = io::stderr().write_all(buf);
        }
    }
}

/// Is the access log on? Lets the request path skip collecting its figures.
pub fn access_enabled() -> bool {
    LOGS.get().is_some_and(|l| l.access.is_some())
}

struct ErrorLogWriter;

struct ErrorLogLine(Vec<u8>);

impl Write for ErrorLogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ErrorLogLine {
    fn drop(&mut self) {
        // One write per line, so lines of concurrent processes never interleave.
        error_log_raw(&self.0);
    }
}

impl<'a> MakeWriter<'a> for ErrorLogWriter {
    type Writer = ErrorLogLine;
    fn make_writer(&'a self) -> Self::Writer {
        ErrorLogLine(Vec::with_capacity(128))
    }
}

/// `[2026-11-26 22:12:04 +0000] [pid] [LEVEL] message`, as Gunicorn.
struct GunicornFormat;

impl<S, N> FormatEvent<S, N> for GunicornFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let now = chrono::Local::now();
        let level = match *event.metadata().level() {
            Level::ERROR => {
                if event.metadata().target().ends_with("critical") {
                    "CRITICAL"
                } else {
                    "ERROR"
                }
            }
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        write!(
            writer,
            "[{}] [{}] [{}] ",
            now.format("%Y-%m-%d %H:%M:%S %z"),
            std::process::id(),
            level
        )?;
        let _ = ctx;
        // The message, with any structured fields (request_id, ...) at the
        // end of its first line, so a traceback below it stays intact.
        let mut v = TextFields::default();
        event.record(&mut v);
        let (first, rest) = match v.message.split_once('\n') {
            Some((a, b)) => (a, Some(b)),
            None => (v.message.as_str(), None),
        };
        write!(writer, "{first}")?;
        if !v.extra.is_empty() {
            write!(writer, " ({})", v.extra.join(", "))?;
        }
        if let Some(rest) = rest {
            write!(writer, "\n{rest}")?;
        }
        writeln!(writer)
    }
}

/// Collects an event's message and its other fields as `key=value`.
#[derive(Default)]
struct TextFields {
    message: String,
    extra: Vec<String>,
}

impl tracing::field::Visit for TextFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.extra.push(format!("{}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.message, "{value:?}");
        } else {
            self.extra.push(format!("{}={value:?}", field.name()));
        }
    }
}

/// Log at Gunicorn's CRITICAL level (tracing has no such level: an ERROR
/// event whose target ends in `critical`).
#[macro_export]
macro_rules! critical {
    ($($arg:tt)*) => { tracing::error!(target: "rgunicorn::critical", $($arg)*) };
}

// ---------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------

/// Gunicorn's default `access_log_format`.
pub const DEFAULT_ACCESS_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Atom(String),
    ReqHeader(String),
    RespHeader(String),
    Environ(String),
}

/// A parsed `access_log_format`: literal text and `%(atom)s` pieces.
#[derive(Debug, Clone)]
pub struct AccessFormat(Vec<Piece>);

impl AccessFormat {
    pub fn parse(fmt: &str) -> AccessFormat {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = fmt;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(a) = after.strip_prefix('%') {
                lit.push('%');
                rest = a;
                continue;
            }
            let parsed = after
                .strip_prefix('(')
                .and_then(|a| a.find(")s").map(|end| (&a[..end], &a[end + 2..])));
            match parsed {
                Some((name, tail)) => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(classify(name));
                    rest = tail;
                }
                None => {
                    lit.push('%');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        AccessFormat(pieces)
    }
}

fn classify(name: &str) -> Piece {
    if let Some(inner) = name.strip_prefix('{') {
        if let Some((var, kind)) = inner.rsplit_once('}') {
            let var = var.to_ascii_lowercase();
            return match kind {
                "i" => Piece::ReqHeader(var),
                "o" => Piece::RespHeader(var),
                "e" => Piece::Environ(var.to_ascii_uppercase()),
                _ => Piece::Atom(name.to_string()),
            };
        }
    }
    Piece::Atom(name.to_string())
}

/// What the access log needs to know about one request.
pub struct AccessInfo<'a> {
    pub remote: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub sent: Option<u64>,
    pub request_headers: &'a [crate::http::Header],
    pub response_headers: &'a [(String, String)],
    pub duration: Duration,
    pub user: Option<&'a str>,
    pub environ: &'a dyn Fn(&str) -> Option<String>,
}

fn find_header<'a>(h: &'a [crate::http::Header], name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.as_slice())
}

/// Format one access-log line (without the newline).
pub fn format_access(fmt: &AccessFormat, i: &AccessInfo<'_>) -> String {
    let mut out = String::with_capacity(160);
    let dash =
        |o: &mut String, v: Option<&str>| o.push_str(v.filter(|s| !s.is_empty()).unwrap_or("-"));
    for p in &fmt.0 {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::ReqHeader(n) => dash(
                &mut out,
                find_header(i.request_headers, n)
                    .map(|v| String::from_utf8_lossy(v))
                    .as_deref(),
            ),
            Piece::RespHeader(n) => dash(
                &mut out,
                i.response_headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.as_str()),
            ),
            Piece::Environ(n) => dash(&mut out, (i.environ)(n).as_deref()),
            Piece::Atom(a) => match a.as_str() {
                "h" => out.push_str(i.remote),
                "l" => out.push('-'),
                "u" => dash(&mut out, i.user),
                "t" => out.push_str(
                    &chrono::Local::now()
                        .format("[%d/%b/%Y:%H:%M:%S %z]")
                        .to_string(),
                ),
                "r" => {
                    out.push_str(i.method);
                    out.push(' ');
                    out.push_str(i.uri);
                    out.push(' ');
                    out.push_str(i.protocol);
                }
                "m" => out.push_str(i.method),
                "U" => out.push_str(i.path),
                "q" => out.push_str(i.query),
                "H" => out.push_str(i.protocol),
                "s" => out.push_str(itoa::Buffer::new().format(i.status)),
                "B" => out.push_str(itoa::Buffer::new().format(i.sent.unwrap_or(0))),
                "b" => match i.sent {
                    Some(n) => out.push_str(itoa::Buffer::new().format(n)),
                    None => out.push('-'),
                },
                "f" => dash(
                    &mut out,
                    find_header(i.request_headers, "referer")
                        .map(|v| String::from_utf8_lossy(v))
                        .as_deref(),
                ),
                "a" => dash(
                    &mut out,
                    find_header(i.request_headers, "user-agent")
                        .map(|v| String::from_utf8_lossy(v))
                        .as_deref(),
                ),
                "T" => out.push_str(itoa::Buffer::new().format(i.duration.as_secs())),
                "M" => out.push_str(itoa::Buffer::new().format(i.duration.as_millis())),
                "D" => out.push_str(itoa::Buffer::new().format(i.duration.as_micros())),
                "L" => out.push_str(&format!("{:.6}", i.duration.as_secs_f64())),
                "p" => {
                    out.push('<');
                    out.push_str(itoa::Buffer::new().format(std::process::id()));
                    out.push('>');
                }
                // Unknown atoms print as '-', as Gunicorn's safe_atoms dict does.
                _ => out.push('-'),
            },
        }
    }
    out
}

/// Write one access-log line, if the access log is on.
pub fn access(i: &AccessInfo<'_>) {
    if let Some(l) = LOGS.get() {
        if let Some(sink) = &l.access {
            let mut line = format_access(&l.access_format, i);
            line.push('\n');
            sink.write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_matches_gunicorn() {
        let f = AccessFormat::parse(DEFAULT_ACCESS_FORMAT);
        let hdrs = vec![crate::http::Header {
            name: b"User-Agent".to_vec(),
            value: b"curl/8".to_vec(),
        }];
        let env = |_: &str| None;
        let i = AccessInfo {
            remote: "127.0.0.1",
            method: "GET",
            uri: "/a?b=1",
            path: "/a",
            query: "b=1",
            protocol: "HTTP/1.1",
            status: 200,
            sent: Some(13),
            request_headers: &hdrs,
            response_headers: &[],
            duration: Duration::from_micros(1500),
            user: None,
            environ: &env,
        };
        let line = format_access(&f, &i);
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with(r#"] "GET /a?b=1 HTTP/1.1" 200 13 "-" "curl/8""#),
            "{line}"
        );
        let f2 = AccessFormat::parse("%(D)s %({x-id}o)s %(p)s 100%%");
        let line2 = format_access(&f2, &i);
        assert!(line2.starts_with("1500 - <"), "{line2}");
        assert!(line2.ends_with("> 100%"), "{line2}");
    }
}
