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
//!
//! A reload (HUP) sets everything up again from the new settings in the
//! master ([`reconfigure`]): log files, level, access format, syslog,
//! StatsD, as Gunicorn's reload makes a new logger; the new generation of
//! workers inherits that, including whether the error log goes to the
//! journal (`log_journald`): both ways are installed at start, and a flag
//! read per event picks one.
//!
//! Optional outputs, each set up in the master before any fork (the
//! workers inherit the sockets) and costing nothing when off:
//! - `--capture-output`: fd 1 and 2 point at the error log file;
//! - `--log-syslog`: error-log (and access-log) records also go to syslog
//!   as Gunicorn's `SysLogHandler` sends them ([`syslog`]);
//! - `--statsd-host`: Gunicorn's StatsD metrics ([`statsd`]).

pub mod statsd;
pub mod syslog;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
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
    /// `--capture-output` with a file error log: the file fd 1 and 2 follow.
    capture: Option<PathBuf>,
    syslog: Option<syslog::Syslog>,
    /// Access-log lines go to syslog too (`--log-syslog` without
    /// `--disable-redirect-access-to-syslog`).
    syslog_access: bool,
    statsd: Option<statsd::Statsd>,
}

/// Set by `init`, replaced by `reconfigure` (only ever in the master,
/// whose one thread is the only one that could be reading it then).
static LOGS: RwLock<Option<Logs>> = RwLock::new(None);

/// The level filter, which `reconfigure` changes.
static LEVEL: OnceLock<
    tracing_subscriber::reload::Handle<
        tracing_subscriber::filter::LevelFilter,
        tracing_subscriber::Registry,
    >,
> = OnceLock::new();

/// Run `f` on the logs, when they are set up.
fn with_logs<R>(f: impl FnOnce(&Logs) -> R) -> Option<R> {
    let g = LOGS.read().unwrap_or_else(|p| p.into_inner());
    g.as_ref().map(f)
}

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

/// Open every log output the settings name.
fn build(s: &crate::config::Settings) -> anyhow::Result<Logs> {
    let capture = if s.capture_output && s.errorlog != "-" {
        let path = PathBuf::from(&s.errorlog);
        redirect_stdio(&path)?;
        Some(path)
    } else {
        None
    };
    let syslog = if s.syslog {
        Some(syslog::Syslog::connect(s)?)
    } else {
        None
    };
    let statsd = match &s.statsd_host {
        Some(h) => Some(statsd::Statsd::connect(
            h,
            &s.statsd_prefix,
            &s.dogstatsd_tags,
        )?),
        None => None,
    };
    Ok(Logs {
        error: Sink::open(&s.errorlog, false)?,
        access: match s.accesslog.as_deref() {
            Some(a) => Some(Sink::open(a, true)?),
            None => None,
        },
        access_format: AccessFormat::parse(&s.access_log_format),
        capture,
        syslog_access: syslog.is_some() && !s.disable_redirect_access_to_syslog,
        syslog,
        statsd,
    })
}

/// The error log goes to the journal (else as text to its sink).
static JOURNALD: AtomicBool = AtomicBool::new(false);
/// The journal layers could be made at start (a reload can turn them on).
static JOURNALD_AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Whether the error log should go to the journal: `--log-journald`, or
/// stderr is the journal's stream (`JOURNAL_STREAM`).
pub fn wants_journald(s: &crate::config::Settings) -> bool {
    s.log_journald
        || crate::systemd::journal::stderr_is_journal(
            std::env::var("JOURNAL_STREAM").ok().as_deref(),
        )
}

/// A reload: set the logs up again from `s` (files, level, access format,
/// syslog, StatsD, journald). On an error the logs stay as they were.
pub fn reconfigure(s: &crate::config::Settings) -> anyhow::Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    let level = parse_level(&s.loglevel).map_err(anyhow::Error::msg)?;
    let logs = build(s)?;
    *LOGS.write().unwrap_or_else(|p| p.into_inner()) = Some(logs);
    let journald = wants_journald(s);
    if journald && !JOURNALD_AVAILABLE.load(Ordering::Relaxed) {
        tracing::warn!("cannot log to the journal (no journal socket at start); logging text");
    }
    JOURNALD.store(
        journald && JOURNALD_AVAILABLE.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    if let Some(h) = LEVEL.get() {
        h.reload(LevelFilter::from_level(level))
            .map_err(|e| anyhow::anyhow!("cannot change the log level: {e}"))?;
    }
    Ok(())
}

/// Install the logs. Called once in the master, before any fork; workers
/// inherit them (and the syslog and StatsD sockets).
/// `journald`: send the error log to the journal instead of as text.
pub fn init(s: &crate::config::Settings, journald: bool) -> anyhow::Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    let level = parse_level(&s.loglevel).map_err(anyhow::Error::msg)?;
    {
        let mut g = LOGS.write().unwrap_or_else(|p| p.into_inner());
        if g.is_some() {
            return Ok(());
        }
        *g = Some(build(s)?);
    }
    let (filter, handle) = tracing_subscriber::reload::Layer::new(LevelFilter::from_level(level));
    let _ = LEVEL.set(handle);
    // Both the journal and the text layer are installed; JOURNALD picks
    // one per event (a reload may change it). The filters are evaluated
    // per event, not cached per call site, so the switch takes effect at
    // once.
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::Layer;
    let journal = match journald_layer(Priority::Error)
        .and_then(|l| Ok((l, journald_layer(Priority::Critical)?)))
    {
        Ok(layers) => Some(layers),
        Err(e) => {
            if journald {
                // Say it in the plain log we fall back to.
                let line = format!(
                    "[{}] [{}] [WARNING] cannot log to the journal ({e}); logging text to {}\n",
                    chrono::Local::now().format("%Y-%m-%d %H:%M:%S %z"),
                    std::process::id(),
                    s.errorlog
                );
                error_log_raw(line.as_bytes());
            }
            None
        }
    };
    JOURNALD_AVAILABLE.store(journal.is_some(), Ordering::Relaxed);
    JOURNALD.store(journald && journal.is_some(), Ordering::Relaxed);
    let to_journal = |_: &tracing::Metadata<'_>| JOURNALD.load(Ordering::Relaxed);
    let is_critical = |m: &tracing::Metadata<'_>| m.target().ends_with("critical");
    let (layer, critical) = match journal {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(layer.with_filter(filter_fn(move |m| to_journal(m) && !is_critical(m))))
        .with(critical.with_filter(filter_fn(move |m| to_journal(m) && is_critical(m))))
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(GunicornFormat)
                .with_writer(ErrorLogWriter)
                .with_filter(filter_fn(move |m| !to_journal(m))),
        );
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

/// `--capture-output`: point fd 1 and 2 at the error log file, as Gunicorn
/// does (in the master, so the workers inherit it).
fn redirect_stdio(path: &PathBuf) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = open_append(path)?;
    let _ = io::stdout().lock().flush();
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard descriptors; `f` stays open for the
        // call and the duplicates are independent of it.
        if unsafe { libc::dup2(f.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reopen every file log (SIGUSR1).
pub fn reopen() -> io::Result<()> {
    with_logs(|l| {
        l.error.reopen()?;
        if let Some(p) = &l.capture {
            redirect_stdio(p)?;
        }
        if let Some(a) = &l.access {
            a.reopen()?;
        }
        Ok(())
    })
    .unwrap_or(Ok(()))
}

/// Write raw text to the error log (wsgi.errors, tracebacks).
pub fn error_log_raw(buf: &[u8]) {
    if with_logs(|l| l.error.write_all(buf)).is_none() {
        let _ = io::stderr().write_all(buf);
    }
}

/// Is the access log on? Lets the request path skip collecting its figures.
pub fn access_enabled() -> bool {
    with_logs(|l| l.access.is_some() || l.syslog_access).unwrap_or(false)
}

/// The environ keys (lower case) the access-log format reads with
/// `%({key}e)s`, in the order [`AccessInfo::environ`] must give their values.
/// Empty when the format has no `e` atom (or the access log is off): the
/// worker then captures nothing per request.
pub fn access_environ_keys() -> Vec<String> {
    with_logs(|l| {
        if l.access.is_some() || l.syslog_access {
            l.access_format.environ_keys()
        } else {
            Vec::new()
        }
    })
    .unwrap_or_default()
}

/// One request is done: its StatsD metrics, when `--statsd-host` is set.
pub fn request_metrics(status: u16, took: Duration) {
    with_logs(|l| {
        if let Some(st) = &l.statsd {
            st.request(status, took);
        }
    });
}

/// The master's worker count, as Gunicorn's `gunicorn.workers` gauge (sent
/// when it changes).
pub fn workers_gauge(n: usize) {
    with_logs(|l| {
        if let Some(st) = &l.statsd {
            st.workers(n);
        }
    });
}

/// `--enable-backlog-metric`: the connections waiting in the listeners'
/// accept queues, as Gunicorn's arbiter reports them (a debug line and the
/// `gunicorn.backlog` metric).
pub fn backlog_metric(n: u64) {
    tracing::debug!("socket backlog: {n}");
    with_logs(|l| {
        if let Some(st) = &l.statsd {
            st.backlog(n);
        }
    });
}

struct ErrorLogWriter;

struct ErrorLogLine(Vec<u8>, Option<Severity>);

/// A record's level as syslog and StatsD see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Severity {
    Critical,
    Error,
    /// An ERROR record about an exception (Gunicorn's `log.exception`).
    Exception,
    Warning,
    Info,
    Debug,
}

impl Severity {
    fn of(meta: &tracing::Metadata<'_>) -> Severity {
        match *meta.level() {
            Level::ERROR if meta.target().ends_with("critical") => Severity::Critical,
            Level::ERROR if meta.target().ends_with("exception") => Severity::Exception,
            Level::ERROR => Severity::Error,
            Level::WARN => Severity::Warning,
            Level::INFO => Severity::Info,
            Level::DEBUG | Level::TRACE => Severity::Debug,
        }
    }
}

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
        let Some(sev) = self.1 else {
            return;
        };
        with_logs(|l| {
            if let Some(sys) = &l.syslog {
                sys.error_record(sev, message_of(&self.0));
            }
            if let Some(st) = &l.statsd {
                st.log_record(sev);
            }
        });
    }
}

/// The message of a formatted line: what follows `[date] [pid] [LEVEL] `,
/// without the final newline.
fn message_of(line: &[u8]) -> &[u8] {
    let mut rest = line;
    for _ in 0..3 {
        match rest.windows(2).position(|w| w == b"] ") {
            Some(i) => rest = &rest[i + 2..],
            None => return line,
        }
    }
    rest.strip_suffix(b"\n").unwrap_or(rest)
}

impl<'a> MakeWriter<'a> for ErrorLogWriter {
    type Writer = ErrorLogLine;
    fn make_writer(&'a self) -> Self::Writer {
        ErrorLogLine(Vec::with_capacity(128), None)
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        ErrorLogLine(Vec::with_capacity(128), Some(Severity::of(meta)))
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
    /// `%({key}e)s`: the index of the key in [`AccessFormat::environ_keys`].
    Environ(usize),
}

/// A parsed `access_log_format`: literal text and `%(atom)s` pieces.
#[derive(Debug, Clone)]
pub struct AccessFormat {
    pieces: Vec<Piece>,
    /// The lower-case environ keys `e` atoms name, each once.
    env_keys: Vec<String>,
}

impl AccessFormat {
    pub fn parse(fmt: &str) -> AccessFormat {
        let mut f = AccessFormat {
            pieces: Vec::new(),
            env_keys: Vec::new(),
        };
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
                        f.pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    let piece = f.classify(name);
                    f.pieces.push(piece);
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
            f.pieces.push(Piece::Lit(lit));
        }
        f
    }

    /// The environ keys (lower case) the format reads, each once.
    pub fn environ_keys(&self) -> Vec<String> {
        self.env_keys.clone()
    }

    fn classify(&mut self, name: &str) -> Piece {
        if let Some(inner) = name.strip_prefix('{') {
            if let Some((var, kind)) = inner.rsplit_once('}') {
                // Gunicorn's SafeAtoms looks `{..}` atoms up in lower case.
                let var = var.to_lowercase();
                return match kind.to_ascii_lowercase().as_str() {
                    "i" => Piece::ReqHeader(var),
                    "o" => Piece::RespHeader(var),
                    "e" => {
                        let idx = match self.env_keys.iter().position(|k| *k == var) {
                            Some(i) => i,
                            None => {
                                self.env_keys.push(var);
                                self.env_keys.len() - 1
                            }
                        };
                        Piece::Environ(idx)
                    }
                    _ => Piece::Atom(name.to_string()),
                };
            }
        }
        Piece::Atom(name.to_string())
    }
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
    /// The values of [`access_environ_keys`], in that order (`None`: not in
    /// the environ); empty when the format has no `e` atom.
    pub environ: &'a [Option<String>],
}

fn find_header<'a>(h: &'a [crate::http::Header], name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.as_slice())
}

/// `%(u)s`: the user name of an `Authorization: Basic` header, as
/// Gunicorn's `_get_user` finds it (None when absent or undecodable).
pub fn basic_auth_user(headers: &[crate::http::Header]) -> Option<String> {
    let v = find_header(headers, "authorization")?;
    if v.len() < 5 || !v[..5].eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let sp = v.iter().position(|&b| b == b' ')?;
    let decoded = b64decode(v[sp + 1..].trim_ascii())?;
    let user = decoded.split(|&b| b == b':').next().unwrap_or(&[]);
    String::from_utf8(user.to_vec()).ok()
}

/// Python's `base64.b64decode` without `validate`: characters outside the
/// alphabet are skipped; wrong padding is an error.
fn b64decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut n, mut pad) = (0u32, 0usize, 0usize);
    for &c in s {
        if c == b'=' {
            pad += 1;
            continue;
        }
        let Some(v) = val(c) else { continue };
        if pad > 0 {
            return None; // data after padding
        }
        acc = (acc << 6) | v;
        n += 1;
        if n % 4 == 0 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
        }
    }
    match n % 4 {
        0 => {}
        2 if pad >= 2 => out.push((acc >> 4) as u8),
        3 if pad >= 1 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => return None,
    }
    Some(out)
}

/// Append an atom's text as Gunicorn's SafeAtoms does: `"` becomes `\"`;
/// missing or empty values print as `-`.
fn push_atom(out: &mut String, v: Option<&str>) {
    match v.filter(|s| !s.is_empty()) {
        None => out.push('-'),
        Some(s) if s.contains('"') => out.push_str(&s.replace('"', "\\\"")),
        Some(s) => out.push_str(s),
    }
}

/// `%({key}e)s` for a request with no WSGI environ (the ASGI worker): the
/// minimal environ Gunicorn's ASGI worker builds for its access log:
/// REQUEST_METHOD, RAW_URI, PATH_INFO, QUERY_STRING, SERVER_PROTOCOL,
/// REMOTE_ADDR and an `HTTP_*` key per request header. `key` is lower case.
fn request_environ(key: &str, i: &AccessInfo<'_>) -> Option<String> {
    match key {
        "request_method" => Some(i.method.to_owned()),
        "raw_uri" => Some(i.uri.to_owned()),
        "path_info" => Some(i.path.to_owned()),
        "query_string" => Some(i.query.to_owned()),
        "server_protocol" => Some(i.protocol.to_owned()),
        "remote_addr" => Some(i.remote.to_owned()),
        _ => {
            let name = key.strip_prefix("http_")?;
            let v = i.request_headers.iter().rev().find(|h| {
                h.name.len() == name.len()
                    && h.name
                        .iter()
                        .zip(name.bytes())
                        .all(|(&a, b)| a.to_ascii_lowercase() == if b == b'_' { b'-' } else { b })
            })?;
            Some(String::from_utf8_lossy(&v.value).into_owned())
        }
    }
}

/// Format one access-log line (without the newline).
pub fn format_access(fmt: &AccessFormat, i: &AccessInfo<'_>) -> String {
    let mut out = String::with_capacity(160);
    let lossy = |v: Option<&[u8]>| v.map(|v| String::from_utf8_lossy(v).into_owned());
    for p in &fmt.pieces {
        match p {
            Piece::Lit(s) => out.push_str(s),
            Piece::ReqHeader(n) => push_atom(
                &mut out,
                lossy(find_header(i.request_headers, n)).as_deref(),
            ),
            Piece::RespHeader(n) => push_atom(
                &mut out,
                i.response_headers
                    .iter()
                    .rev()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.as_str()),
            ),
            Piece::Environ(idx) if i.environ.is_empty() => push_atom(
                &mut out,
                fmt.env_keys
                    .get(*idx)
                    .and_then(|k| request_environ(k, i))
                    .as_deref(),
            ),
            Piece::Environ(idx) => {
                push_atom(&mut out, i.environ.get(*idx).and_then(|v| v.as_deref()))
            }
            Piece::Atom(a) => match a.as_str() {
                "h" => push_atom(&mut out, Some(i.remote)),
                "l" => out.push('-'),
                "u" => push_atom(&mut out, basic_auth_user(i.request_headers).as_deref()),
                "t" => out.push_str(
                    &chrono::Local::now()
                        .format("[%d/%b/%Y:%H:%M:%S %z]")
                        .to_string(),
                ),
                "r" => push_atom(
                    &mut out,
                    Some(&format!("{} {} {}", i.method, i.uri, i.protocol)),
                ),
                "m" => push_atom(&mut out, Some(i.method)),
                "U" => push_atom(&mut out, Some(i.path)),
                "q" => push_atom(&mut out, Some(i.query)),
                "H" => push_atom(&mut out, Some(i.protocol)),
                "s" => out.push_str(itoa::Buffer::new().format(i.status)),
                "B" => out.push_str(itoa::Buffer::new().format(i.sent.unwrap_or(0))),
                "b" => match i.sent {
                    Some(n) => out.push_str(itoa::Buffer::new().format(n)),
                    None => out.push('-'),
                },
                "f" => push_atom(
                    &mut out,
                    lossy(find_header(i.request_headers, "referer")).as_deref(),
                ),
                "a" => push_atom(
                    &mut out,
                    lossy(find_header(i.request_headers, "user-agent")).as_deref(),
                ),
                "T" => out.push_str(itoa::Buffer::new().format(i.duration.as_secs())),
                "M" => out.push_str(itoa::Buffer::new().format(i.duration.as_millis())),
                "D" => out.push_str(itoa::Buffer::new().format(i.duration.as_micros())),
                "L" => out.push_str(&format!(
                    "{}.{:06}",
                    i.duration.as_secs(),
                    i.duration.subsec_micros()
                )),
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

/// Write one access-log line to the access log and, with `--log-syslog`,
/// to syslog.
pub fn access(i: &AccessInfo<'_>) {
    with_logs(|l| {
        if l.access.is_none() && !l.syslog_access {
            return;
        }
        let mut line = format_access(&l.access_format, i);
        if l.syslog_access {
            if let Some(sys) = &l.syslog {
                sys.access_record(line.as_bytes());
            }
        }
        if let Some(sink) = &l.access {
            line.push('\n');
            sink.write_all(line.as_bytes());
        }
    });
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
            environ: &[],
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

#[cfg(test)]
mod more_tests {
    use super::*;

    fn hdr(n: &str, v: &str) -> crate::http::Header {
        crate::http::Header {
            name: n.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn basic_auth_user_as_gunicorn() {
        // "alice:secret"
        let h = [hdr("Authorization", "Basic YWxpY2U6c2VjcmV0")];
        assert_eq!(basic_auth_user(&h).as_deref(), Some("alice"));
        // "bob" (no colon), padded
        let h = [hdr("authorization", "basic Ym9i")];
        assert_eq!(basic_auth_user(&h).as_deref(), Some("bob"));
        let h = [hdr("Authorization", "Basic Ym9iOg==")];
        assert_eq!(basic_auth_user(&h).as_deref(), Some("bob"));
        assert_eq!(basic_auth_user(&[hdr("Authorization", "Bearer x")]), None);
        assert_eq!(
            basic_auth_user(&[hdr("Authorization", "Basic Ym9iO")]),
            None
        );
        assert_eq!(basic_auth_user(&[]), None);
    }

    #[test]
    fn environ_atoms_and_quotes() {
        let f = AccessFormat::parse(
            "%({REMOTE_ADDR}e)s %({wsgi.url_scheme}e)s %({remote_addr}e)s %({x}e)s %(a)s",
        );
        assert_eq!(
            f.environ_keys(),
            vec!["remote_addr", "wsgi.url_scheme", "x"]
        );
        let hdrs = [hdr("User-Agent", "a \"b\"")];
        let env = [Some("1.2.3.4".to_string()), Some("http".to_string()), None];
        let i = AccessInfo {
            remote: "h",
            method: "GET",
            uri: "/",
            path: "/",
            query: "",
            protocol: "HTTP/1.1",
            status: 200,
            sent: None,
            request_headers: &hdrs,
            response_headers: &[],
            duration: Duration::from_micros(1_000_001),
            environ: &env,
        };
        assert_eq!(format_access(&f, &i), r#"1.2.3.4 http 1.2.3.4 - a \"b\""#);
        let l = format_access(&AccessFormat::parse("%(L)s %(M)s"), &i);
        assert_eq!(l, "1.000001 1000");
    }

    #[test]
    fn without_a_wsgi_environ_e_atoms_read_gunicorns_asgi_access_environ() {
        let f = AccessFormat::parse(
            "%({REQUEST_METHOD}e)s %({raw_uri}e)s %({PATH_INFO}e)s %({QUERY_STRING}e)s \
             %({SERVER_PROTOCOL}e)s %({REMOTE_ADDR}e)s %({HTTP_X_REQUEST_ID}e)s \
             %({wsgi.url_scheme}e)s %({HTTP_NONE}e)s",
        );
        let hdrs = [hdr("X-Request-Id", "abc"), hdr("Host", "h")];
        let i = AccessInfo {
            remote: "10.0.0.1",
            method: "POST",
            uri: "/a%20b?x=1",
            path: "/a b",
            query: "x=1",
            protocol: "HTTP/1.1",
            status: 200,
            sent: None,
            request_headers: &hdrs,
            response_headers: &[],
            duration: Duration::from_micros(1),
            environ: &[],
        };
        assert_eq!(
            format_access(&f, &i),
            "POST /a%20b?x=1 /a b x=1 HTTP/1.1 10.0.0.1 abc - -"
        );
    }

    #[test]
    fn message_of_strips_prefix() {
        assert_eq!(
            message_of(b"[2026-11-26 22:12:04 +0000] [12] [INFO] Booting [x] ok\n"),
            b"Booting [x] ok"
        );
    }
}
