//! The control protocol's wire types, shared by the server in the master and
//! by `rgunicornctl`.
//!
//! Framing: newline-delimited JSON over a Unix stream socket. A client sends
//! one request per line and gets exactly one response line per request, in
//! order, carrying the request's `id`:
//!
//! ```text
//! → {"id":1,"cmd":"scale","args":{"workers":8}}
//! ← {"id":1,"ok":true,"version":1,"data":{"previous":4,"target":8}}
//! → {"id":2,"cmd":"nope"}
//! ← {"id":2,"ok":false,"version":1,"error":{"code":"unknown_command","message":"..."}}
//! ```
//!
//! A request is decoded in two steps ([`RawRequest`], then [`Command`]), so a
//! malformed line, an unknown command and bad arguments each get their own
//! [`ErrorCode`]. Every response carries [`PROTOCOL_VERSION`]; a request may
//! carry `"version"` and is refused when it is newer than the server's.
//!
//! The user-facing description of every command, field and error code is
//! `docs/control-protocol.md`; keep the two in step.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version. Bumped when a field changes meaning or goes away;
/// new optional fields and new commands do not bump it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line accepted, newline excluded (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// A request as it arrives, before the command is interpreted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RawRequest {
    /// Echoed in the response; any JSON value (a number or a string, usually).
    #[serde(default)]
    pub id: Value,
    /// The command's name, e.g. `"status"`.
    pub cmd: String,
    /// The command's arguments; absent means `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The protocol version the client speaks; absent means "any".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// How `scale` changes the target number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTo {
    /// Exactly this many (at least 1).
    Absolute(u32),
    /// This many more (positive) or fewer (negative); the result is at least 1.
    Relative(i32),
}

/// Every command the server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The master, its listeners and every worker with live figures.
    Status,
    /// Ready, or why not: for health checks (Docker, Kubernetes).
    Health,
    /// Counters and gauges for a monitoring system (Prometheus).
    Metrics,
    /// Start a new generation of workers. With `wait` (the default) the
    /// answer comes once it is ready or has failed to boot.
    Reload { wait: bool },
    /// Change the target number of workers; the target survives reloads.
    Scale(ScaleTo),
    /// Stop: graceful (in-flight requests finish) or quick.
    Stop { quick: bool },
    /// Reopen log files (after rotation), in the master and every worker.
    ReopenLogs,
    /// Kill one worker (SIGTERM: graceful); the master replaces it.
    WorkerKill { pid: i32 },
}

/// Whether a command only reads (allowed to the read-only group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    Write,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadArgs {
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleArgs {
    #[serde(default)]
    workers: Option<u32>,
    #[serde(default)]
    delta: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopArgs {
    #[serde(default)]
    quick: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PidArgs {
    pid: i32,
}

impl Command {
    /// Every command name, as it appears on the wire.
    pub const NAMES: [&'static str; 8] = [
        "status",
        "health",
        "metrics",
        "reload",
        "scale",
        "stop",
        "reopen-logs",
        "worker-kill",
    ];

    /// The name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Health => "health",
            Command::Metrics => "metrics",
            Command::Reload { .. } => "reload",
            Command::Scale(_) => "scale",
            Command::Stop { .. } => "stop",
            Command::ReopenLogs => "reopen-logs",
            Command::WorkerKill { .. } => "worker-kill",
        }
    }

    /// Whether the command changes anything.
    pub fn access(&self) -> Access {
        match self {
            Command::Status | Command::Health | Command::Metrics => Access::ReadOnly,
            _ => Access::Write,
        }
    }

    /// The `args` object on the wire.
    pub fn args(&self) -> Value {
        match self {
            Command::Status | Command::Health | Command::Metrics | Command::ReopenLogs => {
                serde_json::json!({})
            }
            Command::Reload { wait } => serde_json::json!({ "wait": wait }),
            Command::Scale(ScaleTo::Absolute(n)) => serde_json::json!({ "workers": n }),
            Command::Scale(ScaleTo::Relative(d)) => serde_json::json!({ "delta": d }),
            Command::Stop { quick } => serde_json::json!({ "quick": quick }),
            Command::WorkerKill { pid } => serde_json::json!({ "pid": pid }),
        }
    }

    /// The request line a client sends (without the newline).
    pub fn to_request(&self, id: Value) -> RawRequest {
        RawRequest {
            id,
            cmd: self.name().to_string(),
            args: Some(self.args()),
            version: Some(PROTOCOL_VERSION),
        }
    }

    /// Interpret a decoded request.
    pub fn from_request(req: &RawRequest) -> Result<Command, ErrorBody> {
        if let Some(v) = req.version {
            if v > PROTOCOL_VERSION {
                return Err(ErrorBody::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {v} requested; this server speaks {PROTOCOL_VERSION}"
                    ),
                ));
            }
        }
        let args = match &req.args {
            None | Some(Value::Null) => serde_json::json!({}),
            Some(a) => a.clone(),
        };
        fn parse<T: serde::de::DeserializeOwned>(cmd: &str, args: Value) -> Result<T, ErrorBody> {
            serde_json::from_value(args).map_err(|e| {
                ErrorBody::new(
                    ErrorCode::BadArgs,
                    format!("bad arguments for `{cmd}`: {e}"),
                )
            })
        }
        let cmd = req.cmd.as_str();
        Ok(match cmd {
            "status" => parse::<NoArgs>(cmd, args).map(|_| Command::Status)?,
            "health" => parse::<NoArgs>(cmd, args).map(|_| Command::Health)?,
            "metrics" => parse::<NoArgs>(cmd, args).map(|_| Command::Metrics)?,
            "reopen-logs" => parse::<NoArgs>(cmd, args).map(|_| Command::ReopenLogs)?,
            "reload" => Command::Reload {
                wait: parse::<ReloadArgs>(cmd, args)?.wait,
            },
            "stop" => Command::Stop {
                quick: parse::<StopArgs>(cmd, args)?.quick,
            },
            "worker-kill" => {
                let pid = parse::<PidArgs>(cmd, args)?.pid;
                if pid <= 0 {
                    return Err(ErrorBody::new(
                        ErrorCode::BadArgs,
                        format!("bad arguments for `worker-kill`: pid {pid} is not a process id"),
                    ));
                }
                Command::WorkerKill { pid }
            }
            "scale" => {
                let a = parse::<ScaleArgs>(cmd, args)?;
                match (a.workers, a.delta) {
                    (Some(0), None) => {
                        return Err(ErrorBody::new(
                            ErrorCode::BadArgs,
                            "bad arguments for `scale`: workers must be at least 1".into(),
                        ))
                    }
                    (Some(n), None) => Command::Scale(ScaleTo::Absolute(n)),
                    (None, Some(d)) => Command::Scale(ScaleTo::Relative(d)),
                    _ => {
                        return Err(ErrorBody::new(
                            ErrorCode::BadArgs,
                            "bad arguments for `scale`: give exactly one of `workers` (absolute) \
                             or `delta` (relative)"
                                .into(),
                        ))
                    }
                }
            }
            other => {
                return Err(ErrorBody::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "unknown command {:?}; known: {}",
                        other,
                        Command::NAMES.join(", ")
                    ),
                ))
            }
        })
    }
}

/// Why a request failed. Serialized in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object with a string `cmd`.
    BadJson,
    /// The line is longer than [`MAX_LINE`]; the connection is closed.
    LineTooLong,
    /// `cmd` names no command.
    UnknownCommand,
    /// `args` do not fit the command.
    BadArgs,
    /// The request's `version` is newer than the server's.
    UnsupportedVersion,
    /// The caller's uid/gids may not run this command.
    PermissionDenied,
    /// The server has too many control clients; the connection is closed.
    TooManyClients,
    /// The client sent no complete request in time; the connection is closed.
    IdleTimeout,
    /// The server is stopping and does not take this command any more.
    Stopping,
    /// The new generation failed to boot; the old one keeps serving.
    ReloadFailed,
    /// `worker-kill`: no worker has that pid.
    NoSuchWorker,
    /// The master could not carry the command out.
    Internal,
    /// A code this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::BadArgs => "bad_args",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::TooManyClients => "too_many_clients",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Stopping => "stopping",
            ErrorCode::ReloadFailed => "reload_failed",
            ErrorCode::NoSuchWorker => "no_such_worker",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// The `error` member of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// For people; not meant to be parsed.
    pub message: String,
    /// Details for some codes (`reload_failed`: the [`ReloadOutcome`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: String) -> ErrorBody {
        ErrorBody {
            code,
            message,
            data: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's `id`; `null` when the request could not be read.
    pub id: Value,
    pub ok: bool,
    /// The server's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The command's result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Why it failed, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn success(id: Value, data: Value) -> Response {
        Response {
            id,
            ok: true,
            version: PROTOCOL_VERSION,
            data: Some(data),
            error: None,
        }
    }

    pub fn failure(id: Value, error: ErrorBody) -> Response {
        Response {
            id,
            ok: false,
            version: PROTOCOL_VERSION,
            data: None,
            error: Some(error),
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing these types cannot fail (string keys, no custom
        // serializers); fall back to a fixed line rather than panic.
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"id":null,"ok":false,"version":1,"error":{"code":"internal","message":"cannot encode the response"}}"#.to_vec()
        });
        v.push(b'\n');
        v
    }
}

/// A worker's state as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, app not yet imported.
    Booting,
    /// Ready, serving no request.
    Idle,
    /// Serving at least one request.
    Busy,
    /// Told to stop; finishing in-flight requests.
    Retiring,
    #[serde(other)]
    Unknown,
}

impl WorkerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerState::Booting => "booting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Retiring => "retiring",
            WorkerState::Unknown => "unknown",
        }
    }
}

/// One worker in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub pid: i32,
    /// The reload generation it belongs to (1 at start).
    pub generation: u64,
    pub state: WorkerState,
    /// Seconds since it was forked.
    pub age_s: f64,
    /// Requests served since it started.
    pub requests: u64,
    /// Requests in flight right now.
    pub active: u32,
    /// Seconds the oldest in-flight request has been running; null when idle.
    pub current_request_s: Option<f64>,
    /// Resident memory in bytes (from /proc); null when unreadable.
    pub rss_bytes: Option<u64>,
    /// How many workers held this worker's position before it (crashes,
    /// timeouts, recycling, kills).
    pub restarts: u64,
}

/// How the last reload ended, or that it is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadStatus {
    InProgress,
    Succeeded,
    Failed,
    /// A newer reload started before this one finished.
    Superseded,
    #[serde(other)]
    Unknown,
}

/// A reload's outcome: in `status` (`last_reload`), in `reload`'s answer,
/// and in the `data` of a `reload_failed` error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The generation the reload started.
    pub generation: u64,
    pub status: ReloadStatus,
    /// Seconds it took; null while in progress.
    pub duration_s: Option<f64>,
    /// Why it failed, for people.
    pub error: Option<String>,
}

/// The master's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterState {
    /// No worker of the current generation is ready yet (start-up).
    Booting,
    Running,
    /// A new generation is booting; the old one serves.
    Reloading,
    /// Stopping: no new connections, in-flight requests finishing.
    Draining,
    #[serde(other)]
    Unknown,
}

impl MasterState {
    pub fn as_str(&self) -> &'static str {
        match self {
            MasterState::Booting => "booting",
            MasterState::Running => "running",
            MasterState::Reloading => "reloading",
            MasterState::Draining => "draining",
            MasterState::Unknown => "unknown",
        }
    }
}

/// `status`'s data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusData {
    pub master_pid: i32,
    /// rgunicorn's version.
    pub server_version: String,
    pub uptime_s: f64,
    pub state: MasterState,
    /// The current generation (1 at start, +1 per reload).
    pub generation: u64,
    /// Every listener, as `--bind` spells it.
    pub listeners: Vec<String>,
    /// The number of workers the master keeps (survives reloads).
    pub workers_target: u32,
    /// Workers alive now, every generation and state included.
    pub workers_actual: u32,
    /// Workers of the current generation that are ready.
    pub workers_ready: u32,
    /// The last reload, if any.
    pub last_reload: Option<ReloadOutcome>,
    pub workers: Vec<WorkerInfo>,
}

/// `health`'s data. The command itself succeeds whenever the master
/// answers; `healthy` says whether the server is fit to take traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthData {
    /// The master answers, at least one worker is ready, and the server is
    /// not draining.
    pub healthy: bool,
    pub state: MasterState,
    pub workers_ready: u32,
    pub workers_target: u32,
    /// Why not healthy; null when healthy.
    pub reason: Option<String>,
}

/// `metrics`' data: what a monitoring system scrapes. Counters (`_total`)
/// only go up while the master lives; everything else is a gauge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsData {
    pub master_pid: i32,
    /// rgunicorn's version.
    pub server_version: String,
    pub uptime_s: f64,
    pub state: MasterState,
    /// The current generation (1 at start, +1 per reload).
    pub generation: u64,
    /// Requests served since the master started: those of the workers alive
    /// now plus those of every worker already gone.
    pub requests_total: u64,
    /// Requests in flight right now, over all workers.
    pub requests_active: u64,
    /// Connections waiting in the TCP listeners' accept queues, which no
    /// worker has taken yet (0 for Unix sockets; absent from a server
    /// older than this field).
    #[serde(default)]
    pub connections_queued: u64,
    /// The number of workers the master keeps.
    pub workers_target: u32,
    /// Worker processes alive now, every generation and state.
    pub workers_alive: u32,
    /// Workers of the current generation that are ready (as in `status`).
    pub workers_ready: u32,
    /// Ready workers serving at least one request now.
    pub workers_busy: u32,
    /// Workers still importing the app.
    pub workers_booting: u32,
    /// Workers told to stop, finishing in-flight requests.
    pub workers_retiring: u32,
    /// Worker processes started since the master started.
    pub worker_spawns_total: u64,
    /// Workers that died unexpectedly (crash, signal, timeout kill, out of
    /// memory) and were replaced.
    pub worker_restarts_total: u64,
    /// Workers aborted by `--timeout`.
    pub worker_timeouts_total: u64,
    /// Reloads whose new generation became ready.
    pub reloads_succeeded_total: u64,
    /// Reloads that failed (bad configuration, new code that did not boot).
    pub reloads_failed_total: u64,
    pub workers: Vec<WorkerMetrics>,
}

/// One worker in `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerMetrics {
    pub pid: i32,
    /// Its position (scoreboard slot): reused by the worker that replaces it.
    pub slot: u32,
    pub generation: u64,
    pub state: WorkerState,
    /// Requests served since it started.
    pub requests: u64,
    /// Requests in flight now.
    pub active: u32,
    pub age_s: f64,
    /// Resident memory in bytes; null when unreadable.
    pub rss_bytes: Option<u64>,
}

/// `scale`'s data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleData {
    pub previous: u32,
    pub target: u32,
}

/// `reload`'s data: with `wait`, its outcome (`succeeded`); without, the
/// generation just started (`in_progress`).
pub type ReloadData = ReloadOutcome;

/// `stop`'s data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopData {
    pub quick: bool,
}

/// `worker-kill`'s data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerKillData {
    pub pid: i32,
}

/// Decode one request line (newline already removed).
pub fn parse_request(line: &[u8]) -> Result<(Value, Command), (Value, ErrorBody)> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            ErrorBody::new(ErrorCode::BadJson, format!("not valid JSON: {e}")),
        )
    })?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let req: RawRequest = serde_json::from_value(v).map_err(|e| {
        (
            id.clone(),
            ErrorBody::new(
                ErrorCode::BadJson,
                format!(
                    "not a request object (`cmd` string, optional `id`, `args`, `version`): {e}"
                ),
            ),
        )
    })?;
    Command::from_request(&req)
        .map(|c| (id.clone(), c))
        .map_err(|e| (id, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(line: &str) -> Command {
        match parse_request(line.as_bytes()) {
            Ok((_, c)) => c,
            Err((_, e)) => panic!("{line}: {e}"),
        }
    }

    fn code(line: &str) -> ErrorCode {
        match parse_request(line.as_bytes()) {
            Ok((_, c)) => panic!("{line}: parsed as {c:?}"),
            Err((_, e)) => e.code,
        }
    }

    #[test]
    fn every_command_round_trips() {
        let all = [
            Command::Status,
            Command::Health,
            Command::Metrics,
            Command::Reload { wait: true },
            Command::Reload { wait: false },
            Command::Scale(ScaleTo::Absolute(8)),
            Command::Scale(ScaleTo::Relative(-2)),
            Command::Stop { quick: false },
            Command::Stop { quick: true },
            Command::ReopenLogs,
            Command::WorkerKill { pid: 42 },
        ];
        for c in all {
            assert!(Command::NAMES.contains(&c.name()));
            let line = serde_json::to_vec(&c.to_request(json!(7))).unwrap();
            let (id, back) = parse_request(&line).unwrap();
            assert_eq!((id, back), (json!(7), c));
        }
    }

    #[test]
    fn the_issue_example_and_defaults() {
        assert_eq!(
            ok(r#"{"id":1,"cmd":"scale","args":{"workers":8}}"#),
            Command::Scale(ScaleTo::Absolute(8))
        );
        assert_eq!(ok(r#"{"cmd":"status"}"#), Command::Status);
        assert_eq!(ok(r#"{"cmd":"metrics","args":{}}"#), Command::Metrics);
        assert_eq!(ok(r#"{"cmd":"status","args":null}"#), Command::Status);
        assert_eq!(ok(r#"{"cmd":"reload"}"#), Command::Reload { wait: true });
        assert_eq!(ok(r#"{"cmd":"stop"}"#), Command::Stop { quick: false });
    }

    #[test]
    fn errors_have_their_own_codes() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"cmd":5}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"cmd":"fly"}"#), ErrorCode::UnknownCommand);
        assert_eq!(
            code(r#"{"cmd":"status","args":{"x":1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(code(r#"{"cmd":"scale","args":{}}"#), ErrorCode::BadArgs);
        assert_eq!(
            code(r#"{"cmd":"scale","args":{"workers":0}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"cmd":"scale","args":{"workers":2,"delta":1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"cmd":"scale","args":{"workers":-1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"cmd":"worker-kill","args":{"pid":0}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"cmd":"status","version":99}"#),
            ErrorCode::UnsupportedVersion
        );
        // The id survives when the line is an object.
        let Err((id, _)) = parse_request(br#"{"id":"a","cmd":"fly"}"#) else {
            panic!()
        };
        assert_eq!(id, json!("a"));
    }

    #[test]
    fn responses_are_one_line_and_decode() {
        let r = Response::failure(
            json!(3),
            ErrorBody::new(ErrorCode::PermissionDenied, "no\nway".into()),
        );
        let line = r.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let back: Response = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains(r#""code":"permission_denied""#), "{text}");
        // A code from a newer server still decodes.
        let e: ErrorBody = serde_json::from_str(r#"{"code":"brand_new","message":"m"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
    }

    #[test]
    fn only_status_health_and_metrics_are_read_only() {
        assert_eq!(Command::Status.access(), Access::ReadOnly);
        assert_eq!(Command::Health.access(), Access::ReadOnly);
        assert_eq!(Command::Metrics.access(), Access::ReadOnly);
        assert_eq!(Command::ReopenLogs.access(), Access::Write);
        assert_eq!(Command::Reload { wait: true }.access(), Access::Write);
    }
}
