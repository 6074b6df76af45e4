//! `rgunicornctl`: the control-socket client.
//!
//! It speaks the protocol of `rgunicorn::control::protocol` (the very types
//! the server uses) over the server's Unix socket, prints a table or, with
//! `--json`, the response line itself. It uses nothing of the library that
//! touches Python, so it never links libpython.
//!
//! The three files it shares with the server (`src/control/{protocol, path,
//! prometheus}.rs`) are compiled into it from their source, not through the
//! library crate: so rgunicornctl builds without the feature `server` (with
//! `--no-default-features`, the library is empty and none of the server's
//! dependencies is compiled), which is how build.rs builds it for the wheel.
//!
//! Exit codes (also in `docs/control-protocol.md`):
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done (`health`: healthy) |
//! | 1 | the server refused or the command failed (`reload`: the new generation did not boot); `health`: any failure at all |
//! | 2 | bad command line (never for `health`) |
//! | 3 | no server to talk to: socket missing, connection refused, no permission on the socket file |
//! | 4 | no usable answer in time (`--timeout`), or an answer that is not the protocol |

/// The server's own `control::{protocol, path, prometheus}` source files
/// (what only the server uses of them is unused here).
#[allow(dead_code)]
#[path = "../control"]
mod control {
    pub mod path;
    pub mod prometheus;
    pub mod protocol;
}

use anyhow::Context;
use control::path::{candidates, PathEnv};
use control::protocol::{
    Command, HealthData, MetricsData, ReloadOutcome, Response, ScaleData, ScaleTo, StatusData,
    WorkerInfo,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const EXIT_OK: i32 = 0;
const EXIT_FAILED: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_UNREACHABLE: i32 = 3;
const EXIT_TIMEOUT: i32 = 4;

/// The parsed command line.
#[derive(Debug)]
struct Cli {
    socket: Option<PathBuf>,
    json: bool,
    timeout: Option<f64>,
    cmd: Cmd,
}

#[derive(Debug)]
enum Cmd {
    Status,
    Metrics,
    Reload { no_wait: bool },
    Scale { workers: String },
    Health,
    Stop { quick: bool },
    ReopenLogs,
    WorkerKill { pid: i32 },
}

fn clap_command() -> clap::Command {
    use clap::{Arg, ArgAction, Command as C};
    C::new("rgunicornctl")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Control a running rgunicorn server through its control socket")
        .after_help(
            "Exit codes: 0 done, 1 refused or failed, 2 bad usage, 3 no server, \
             4 timed out or bad answer.\n`health` exits 0 when healthy and 1 for every \
             failure (never 2: Docker reserves it).",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            Arg::new("socket")
                .long("socket")
                .short('s')
                .global(true)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "The control socket (default: where rgunicorn puts it: \
                     $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, then /tmp/rgunicorn-UID; \
                     the first that exists)",
                ),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .global(true)
                .action(ArgAction::SetTrue)
                .help("Print the server's response (or the client's error) as JSON"),
        )
        .arg(
            Arg::new("timeout")
                .long("timeout")
                .global(true)
                .value_name("SECS")
                .value_parser(clap::value_parser!(f64))
                .help("Give up after this many seconds (default 10; `reload` 120)"),
        )
        .subcommand(C::new("status").about("The master, its listeners and every worker"))
        .subcommand(
            C::new("metrics").about(
                "Counters and gauges as Prometheus text exposition (--json: the raw answer)",
            ),
        )
        .subcommand(
            C::new("reload")
                .about("Start a new generation; answers once it is ready or failed")
                .arg(
                    Arg::new("no-wait")
                        .long("no-wait")
                        .action(ArgAction::SetTrue)
                        .help("Answer at once instead of waiting for the new generation"),
                ),
        )
        .subcommand(
            C::new("scale")
                .about("Set the number of workers: N, +K or -K (never below 1; survives reload)")
                .arg(
                    Arg::new("workers")
                        .required(true)
                        .allow_hyphen_values(true)
                        .value_name("N|+K|-K"),
                ),
        )
        .subcommand(C::new("health").about("Exit 0 when ready to take traffic, 1 otherwise"))
        .subcommand(
            C::new("stop")
                .about("Stop the server gracefully (in-flight requests finish)")
                .arg(
                    Arg::new("quick")
                        .long("quick")
                        .action(ArgAction::SetTrue)
                        .help("Stop at once (as SIGINT)"),
                ),
        )
        .subcommand(C::new("reopen-logs").about("Reopen log files (after rotation)"))
        .subcommand(
            C::new("worker")
                .about("Act on one worker")
                .subcommand_required(true)
                .subcommand(
                    C::new("kill")
                        .about("Stop this worker gracefully; the master replaces it")
                        .arg(
                            Arg::new("pid")
                                .required(true)
                                .value_parser(clap::value_parser!(i32)),
                        ),
                ),
        )
}

impl Cli {
    fn try_parse_from(argv: &[String]) -> Result<Cli, clap::Error> {
        let m = clap_command().try_get_matches_from(argv)?;
        let (name, sub) = m.subcommand().ok_or_else(|| {
            clap_command().error(clap::error::ErrorKind::MissingSubcommand, "no command")
        })?;
        let cmd = match name {
            "status" => Cmd::Status,
            "metrics" => Cmd::Metrics,
            "reload" => Cmd::Reload {
                no_wait: sub.get_flag("no-wait"),
            },
            "scale" => Cmd::Scale {
                workers: sub
                    .get_one::<String>("workers")
                    .cloned()
                    .unwrap_or_default(),
            },
            "health" => Cmd::Health,
            "stop" => Cmd::Stop {
                quick: sub.get_flag("quick"),
            },
            "reopen-logs" => Cmd::ReopenLogs,
            _ => match sub.subcommand() {
                Some(("kill", k)) => Cmd::WorkerKill {
                    pid: k.get_one::<i32>("pid").copied().unwrap_or(0),
                },
                _ => {
                    return Err(clap_command()
                        .error(clap::error::ErrorKind::InvalidSubcommand, "unknown command"))
                }
            },
        };
        Ok(Cli {
            socket: m.get_one::<PathBuf>("socket").cloned(),
            json: m.get_flag("json"),
            timeout: m.get_one::<f64>("timeout").copied(),
            cmd,
        })
    }
}

/// Why the client got no answer.
#[derive(Debug)]
enum ClientError {
    Unreachable(String),
    Timeout(String),
    BadAnswer(String),
}

impl ClientError {
    fn code(&self) -> (&'static str, i32) {
        match self {
            ClientError::Unreachable(_) => ("unreachable", EXIT_UNREACHABLE),
            ClientError::Timeout(_) => ("timeout", EXIT_TIMEOUT),
            ClientError::BadAnswer(_) => ("bad_answer", EXIT_TIMEOUT),
        }
    }
    fn message(&self) -> &str {
        match self {
            ClientError::Unreachable(m) | ClientError::Timeout(m) | ClientError::BadAnswer(m) => m,
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // `health` must never exit 2 (Docker reserves it): a bad command line
    // for it is "unhealthy" too.
    let is_health = argv.iter().skip(1).any(|a| a == "health");
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => EXIT_OK,
                _ if is_health => EXIT_FAILED,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let is_health = matches!(cli.cmd, Cmd::Health);
    let code = match prepare(&cli) {
        Err(e) => {
            eprintln!("rgunicornctl: {e:#}");
            EXIT_USAGE
        }
        Ok((command, socket, timeout)) => match run(&cli, &command, &socket, timeout) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("rgunicornctl: {e:#}");
                EXIT_TIMEOUT
            }
        },
    };
    std::process::exit(if is_health && code != EXIT_OK {
        EXIT_FAILED
    } else {
        code
    });
}

/// The command, the socket and the timeout, from the command line.
fn prepare(cli: &Cli) -> anyhow::Result<(Command, PathBuf, Duration)> {
    let command = match &cli.cmd {
        Cmd::Status => Command::Status,
        Cmd::Metrics => Command::Metrics,
        Cmd::Health => Command::Health,
        Cmd::Reload { no_wait } => Command::Reload { wait: !no_wait },
        Cmd::Scale { workers } => Command::Scale(parse_scale(workers)?),
        Cmd::Stop { quick } => Command::Stop { quick: *quick },
        Cmd::ReopenLogs => Command::ReopenLogs,
        Cmd::WorkerKill { pid } => Command::WorkerKill { pid: *pid },
    };
    let default_timeout = if matches!(command, Command::Reload { wait: true }) {
        120.0
    } else {
        10.0
    };
    let secs = cli.timeout.unwrap_or(default_timeout);
    if !(secs.is_finite() && secs > 0.0) {
        anyhow::bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(secs.min(86_400.0));
    let socket = match &cli.socket {
        Some(p) => p.clone(),
        None => find_socket(),
    };
    Ok((command, socket, timeout))
}

/// Ask, print, and say how to exit. Err: the answer has the wrong shape.
fn run(
    cli: &Cli,
    command: &Command,
    socket: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<i32> {
    match ask(socket, command, timeout) {
        Err(e) => {
            let (code, exit) = e.code();
            if cli.json {
                println!(
                    "{}",
                    json!({"id": null, "ok": false, "error": {"code": code, "message": e.message()}})
                );
            } else {
                eprintln!("rgunicornctl: {}", e.message());
            }
            Ok(exit)
        }
        Ok((line, resp)) => {
            if cli.json {
                println!("{}", line.trim_end());
            }
            if !resp.ok {
                if !cli.json {
                    match &resp.error {
                        Some(e) => eprintln!("rgunicornctl: {}: {}", e.code.as_str(), e.message),
                        None => eprintln!("rgunicornctl: the server reported a failure"),
                    }
                }
                return Ok(EXIT_FAILED);
            }
            let data = resp.data.unwrap_or(Value::Null);
            if let Command::Health = command {
                let h: HealthData = serde_json::from_value(data)
                    .context("the health answer has the wrong shape")?;
                if !cli.json {
                    print_health(&h);
                }
                return Ok(if h.healthy { EXIT_OK } else { EXIT_FAILED });
            }
            if !cli.json {
                print_human(command, data)?;
            }
            Ok(EXIT_OK)
        }
    }
}

fn parse_scale(s: &str) -> anyhow::Result<ScaleTo> {
    let bad = || anyhow::anyhow!("scale: expected N, +K or -K, got {s:?}");
    if let Some(k) = s.strip_prefix('+') {
        let k: i32 = k.parse().map_err(|_| bad())?;
        Ok(ScaleTo::Relative(k))
    } else if s.starts_with('-') {
        let k: i32 = s.parse().map_err(|_| bad())?;
        Ok(ScaleTo::Relative(k))
    } else {
        let n: u32 = s.parse().map_err(|_| bad())?;
        if n == 0 {
            anyhow::bail!("scale: at least 1 worker");
        }
        Ok(ScaleTo::Absolute(n))
    }
}

/// The first default location where a socket file exists, else the first
/// candidate (for the error message).
fn find_socket() -> PathBuf {
    let env = PathEnv::capture(&|k| std::env::var(k).ok());
    let all = candidates(&env);
    all.iter()
        .find(|p| p.exists())
        .cloned()
        .or_else(|| all.into_iter().next())
        .unwrap_or_else(|| PathBuf::from("rgunicorn.ctl"))
}

/// Send one request, read its one answer line, within `timeout` overall.
fn ask(
    path: &std::path::Path,
    command: &Command,
    timeout: Duration,
) -> Result<(String, Response), ClientError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ClientError::Timeout(format!(
                    "no answer from {} within {:.1} s",
                    path.display(),
                    timeout.as_secs_f64()
                ))
            })
    };
    let stream = connect(path, deadline)?;
    let mut req = serde_json::to_vec(&command.to_request(json!(1)))
        .map_err(|e| ClientError::BadAnswer(format!("cannot encode the request: {e}")))?;
    req.push(b'\n');
    let io_err = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout(format!(
                "no answer from {} within {:.1} s",
                path.display(),
                timeout.as_secs_f64()
            ))
        } else {
            ClientError::Unreachable(format!("{}: {e}", path.display()))
        }
    };
    stream.set_write_timeout(Some(left()?)).map_err(io_err)?;
    (&stream).write_all(&req).map_err(io_err)?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(io_err)?;
        match reader.read_line(&mut line) {
            Ok(0) => {
                return Err(ClientError::BadAnswer(format!(
                    "{} closed the connection without an answer",
                    path.display()
                )))
            }
            Ok(_) if line.ends_with('\n') => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    let resp: Response = serde_json::from_str(&line)
        .map_err(|e| ClientError::BadAnswer(format!("not a control-protocol answer: {e}")))?;
    Ok((line, resp))
}

/// Connect before `deadline`. A Unix socket whose backlog is full refuses a
/// non-blocking connect with EAGAIN: retry until the deadline.
fn connect(path: &std::path::Path, deadline: Instant) -> Result<UnixStream, ClientError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path)
        .map_err(|e| ClientError::Unreachable(format!("{}: {e}", path.display())))?;
    loop {
        let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
            .map_err(|e| ClientError::Unreachable(format!("cannot create a socket: {e}")))?;
        let _ = sock.set_nonblocking(true);
        match sock.connect(&addr) {
            Ok(()) => {
                let _ = sock.set_nonblocking(false);
                return Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock)));
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout(format!(
                        "{}: the server accepts no connection (backlog full)",
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let hint = match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "; is rgunicorn running? (--socket PATH, or --no-control-socket was given)"
                    }
                    std::io::ErrorKind::ConnectionRefused => "; the server is gone (stale socket)",
                    _ => "",
                };
                return Err(ClientError::Unreachable(format!(
                    "cannot connect to {}: {e}{hint}",
                    path.display()
                )));
            }
        }
    }
}

fn print_health(h: &HealthData) {
    if h.healthy {
        println!(
            "healthy: {}, {}/{} workers ready",
            h.state.as_str(),
            h.workers_ready,
            h.workers_target
        );
    } else {
        println!(
            "unhealthy: {} ({}, {}/{} workers ready)",
            h.reason.as_deref().unwrap_or("not ready"),
            h.state.as_str(),
            h.workers_ready,
            h.workers_target
        );
    }
}

fn print_human(command: &Command, data: Value) -> anyhow::Result<()> {
    let shape = || format!("the `{}` answer has the wrong shape", command.name());
    match command {
        Command::Status => {
            let s: StatusData = serde_json::from_value(data).with_context(shape)?;
            print!("{}", status_table(&s));
        }
        Command::Metrics => {
            let m: MetricsData = serde_json::from_value(data).with_context(shape)?;
            print!("{}", control::prometheus::render(&m));
        }
        Command::Reload { .. } => {
            let r: ReloadOutcome = serde_json::from_value(data).with_context(shape)?;
            match r.duration_s {
                Some(d) => println!("reload: generation {} ready in {d:.2} s", r.generation),
                None => println!("reload: generation {} started", r.generation),
            }
        }
        Command::Scale(_) => {
            let s: ScaleData = serde_json::from_value(data).with_context(shape)?;
            println!("workers: {} -> {}", s.previous, s.target);
        }
        Command::Stop { quick } => {
            println!("stopping ({})", if *quick { "quick" } else { "graceful" })
        }
        Command::ReopenLogs => println!("log files reopened"),
        Command::WorkerKill { pid } => println!("worker {pid} told to stop; it will be replaced"),
        Command::Health => {}
    }
    Ok(())
}

fn human_secs(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86_400.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else {
        format!(
            "{}d{:02}h",
            (s / 86_400.0) as u64,
            ((s % 86_400.0) / 3600.0) as u64
        )
    }
}

fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MIB {
        format!("{:.1}G", b as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1}M", b as f64 / MIB)
    }
}

fn status_table(s: &StatusData) -> String {
    let mut out = String::new();
    out += &format!(
        "master     pid {}  rgunicorn {}  up {}  {}  generation {}\n",
        s.master_pid,
        s.server_version,
        human_secs(s.uptime_s),
        s.state.as_str(),
        s.generation
    );
    out += &format!("listening  {}\n", s.listeners.join(", "));
    out += &format!(
        "workers    {} target, {} alive, {} ready\n",
        s.workers_target, s.workers_actual, s.workers_ready
    );
    if let Some(r) = &s.last_reload {
        let how = match (&r.error, r.duration_s) {
            (Some(e), _) => format!("{:?}: {e}", r.status),
            (None, Some(d)) => format!("{:?} in {d:.2}s", r.status),
            (None, None) => format!("{:?}", r.status),
        };
        out += &format!(
            "reload     generation {} {}\n",
            r.generation,
            how.to_lowercase()
        );
    }
    out += "\n";
    let header = [
        "PID", "GEN", "STATE", "AGE", "REQUESTS", "ACTIVE", "CURRENT", "RSS", "RESTARTS",
    ];
    let rows: Vec<[String; 9]> = s.workers.iter().map(worker_row).collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    out += &line(&header.map(String::from));
    for r in &rows {
        out += &line(r);
    }
    out
}

fn worker_row(w: &WorkerInfo) -> [String; 9] {
    [
        w.pid.to_string(),
        w.generation.to_string(),
        w.state.as_str().to_string(),
        human_secs(w.age_s),
        w.requests.to_string(),
        w.active.to_string(),
        w.current_request_s
            .map(human_secs)
            .unwrap_or_else(|| "-".into()),
        w.rss_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
        w.restarts.to_string(),
    ]
}
