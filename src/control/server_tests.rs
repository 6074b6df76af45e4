//! Unit tests for the control server, driven by a fake [`Master`] and real
//! Unix sockets in a temporary directory, on one thread (as in the master).

use super::*;
use crate::control::protocol::{MasterState, Response, WorkerState};
use serde_json::json;
use std::io::{BufRead, BufReader};

#[derive(Default)]
struct FakeMaster {
    calls: Vec<String>,
    target: u32,
    generation: u64,
    reload_fails_at_once: bool,
}

impl Master for FakeMaster {
    fn status(&mut self) -> StatusData {
        self.calls.push("status".into());
        StatusData {
            master_pid: 1,
            server_version: "test".into(),
            uptime_s: 1.0,
            state: MasterState::Running,
            generation: self.generation,
            listeners: vec!["127.0.0.1:8000".into()],
            workers_target: self.target,
            workers_actual: 1,
            workers_ready: 1,
            last_reload: None,
            workers: vec![crate::control::protocol::WorkerInfo {
                pid: 2,
                generation: 1,
                state: WorkerState::Idle,
                age_s: 1.0,
                requests: 0,
                active: 0,
                current_request_s: None,
                rss_bytes: Some(1),
                restarts: 0,
            }],
        }
    }
    fn health(&mut self) -> HealthData {
        self.calls.push("health".into());
        HealthData {
            healthy: true,
            state: MasterState::Running,
            workers_ready: 1,
            workers_target: 1,
            reason: None,
        }
    }
    fn metrics(&mut self) -> MetricsData {
        self.calls.push("metrics".into());
        MetricsData {
            master_pid: 1,
            server_version: "test".into(),
            uptime_s: 1.0,
            state: MasterState::Running,
            generation: self.generation,
            requests_total: 7,
            connections_queued: 0,
            requests_active: 0,
            workers_target: self.target,
            workers_alive: 1,
            workers_ready: 1,
            workers_busy: 0,
            workers_booting: 0,
            workers_retiring: 0,
            worker_spawns_total: 1,
            worker_restarts_total: 0,
            worker_timeouts_total: 0,
            reloads_succeeded_total: 0,
            reloads_failed_total: 0,
            workers: Vec::new(),
        }
    }
    fn reload(&mut self) -> Result<ReloadOutcome, ErrorBody> {
        self.calls.push("reload".into());
        self.generation += 1;
        Ok(ReloadOutcome {
            generation: self.generation,
            status: if self.reload_fails_at_once {
                ReloadStatus::Failed
            } else {
                ReloadStatus::InProgress
            },
            duration_s: None,
            error: None,
        })
    }
    fn scale(&mut self, to: ScaleTo) -> Result<ScaleData, ErrorBody> {
        self.calls.push(format!("scale {to:?}"));
        let previous = self.target;
        self.target = match to {
            ScaleTo::Absolute(n) => n,
            ScaleTo::Relative(d) => (i64::from(self.target) + i64::from(d)).max(1) as u32,
        };
        Ok(ScaleData {
            previous,
            target: self.target,
        })
    }
    fn stop(&mut self, quick: bool) -> Result<StopData, ErrorBody> {
        self.calls.push(format!("stop {quick}"));
        Ok(StopData { quick })
    }
    fn reopen_logs(&mut self) -> Result<(), ErrorBody> {
        self.calls.push("reopen-logs".into());
        Ok(())
    }
    fn kill_worker(&mut self, pid: i32) -> Result<WorkerKillData, ErrorBody> {
        self.calls.push(format!("kill {pid}"));
        if pid == 2 {
            Ok(WorkerKillData { pid })
        } else {
            Err(ErrorBody::new(ErrorCode::NoSuchWorker, "no".into()))
        }
    }
}

struct Rig {
    _dir: TempDir,
    path: PathBuf,
    server: ControlServer,
    master: FakeMaster,
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "rgctl-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Rig {
    fn new(tweak: impl FnOnce(&mut ServerOptions)) -> Rig {
        let dir = TempDir::new();
        let path = dir.0.join("c.sock");
        let mut opts = ServerOptions::new(path.clone(), 0o600);
        tweak(&mut opts);
        let server = ControlServer::bind(opts).unwrap();
        Rig {
            _dir: dir,
            path,
            server,
            master: FakeMaster {
                target: 2,
                generation: 1,
                ..FakeMaster::default()
            },
        }
    }

    fn connect(&mut self) -> UnixStream {
        let s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        self.turn();
        s
    }

    /// One turn of a master loop: poll (10 ms), dispatch, timers.
    fn turn(&mut self) {
        use nix::poll::{poll, PollFd, PollTimeout};
        let ready: Vec<(RawFd, PollFlags)> = {
            let fds = self.server.poll_fds();
            let mut pfds: Vec<PollFd> = fds.iter().map(|(fd, f)| PollFd::new(*fd, *f)).collect();
            let _ = poll(&mut pfds, PollTimeout::from(10u8));
            fds.iter()
                .zip(&pfds)
                .map(|((fd, _), p)| (fd.as_raw_fd(), p.revents().unwrap_or(PollFlags::empty())))
                .collect()
        };
        for (fd, rev) in ready {
            self.server.on_ready(fd, rev, &mut self.master);
        }
        self.server.on_timer(&mut self.master);
    }

    fn turns(&mut self, n: usize) {
        for _ in 0..n {
            self.turn();
        }
    }

    /// Send `line`, run the loop, read one response line.
    fn ask(&mut self, s: &mut UnixStream, line: &str) -> Response {
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        self.turns(3);
        read_response(s)
    }
}

fn read_response(s: &UnixStream) -> Response {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn err_code(r: &Response) -> ErrorCode {
    assert!(!r.ok, "{r:?}");
    r.error.as_ref().unwrap().code
}

/// Read until EOF (or the 5 s timeout): everything the server sent.
fn read_to_end(s: &mut UnixStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn socket_mode_and_removal_on_drop() {
    let rig = Rig::new(|o| o.mode = 0o660);
    let m = std::fs::metadata(&rig.path).unwrap();
    assert_eq!(m.mode() & 0o777, 0o660);
    let path = rig.path.clone();
    drop(rig.server);
    assert!(!path.exists());
}

#[test]
fn stale_socket_is_replaced_live_one_and_files_are_not() {
    let dir = TempDir::new();
    let path = dir.0.join("c.sock");
    // A socket file nobody listens on (a killed server's).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = ControlServer::bind(ServerOptions::new(path.clone(), 0o600)).unwrap();
    match ControlServer::bind(ServerOptions::new(path.clone(), 0o600)) {
        Err(ControlError::InUse { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    drop(live);
    let file = dir.0.join("f");
    std::fs::write(&file, "x").unwrap();
    match ControlServer::bind(ServerOptions::new(file.clone(), 0o600)) {
        Err(ControlError::NotASocket { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
    assert!(file.exists());
}

#[test]
fn a_replaced_socket_is_not_removed_by_the_old_server() {
    let dir = TempDir::new();
    let path = dir.0.join("c.sock");
    let old = ControlServer::bind(ServerOptions::new(path.clone(), 0o600)).unwrap();
    std::fs::remove_file(&path).unwrap();
    let new = ControlServer::bind(ServerOptions::new(path.clone(), 0o600)).unwrap();
    drop(old);
    assert!(path.exists());
    drop(new);
    assert!(!path.exists());
}

#[test]
fn private_dir_is_created_0700_and_checked() {
    let dir = TempDir::new();
    let uid = nix::unistd::geteuid().as_raw();
    let p = dir.0.join("priv");
    ensure_private_dir(&p, uid).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
    ensure_private_dir(&p, uid).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        ensure_private_dir(&p, uid),
        Err(ControlError::UnsafeDir { .. })
    ));
    assert!(matches!(
        ensure_private_dir(&p, uid + 1),
        Err(ControlError::UnsafeDir { .. })
    ));
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    assert!(matches!(
        ensure_private_dir(&link, uid),
        Err(ControlError::UnsafeDir { .. })
    ));
}

#[test]
fn every_command_reaches_the_master() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    let r = rig.ask(&mut s, r#"{"id":1,"cmd":"status"}"#);
    assert!(r.ok && r.id == json!(1) && r.version == 1, "{r:?}");
    let st: StatusData = serde_json::from_value(r.data.unwrap()).unwrap();
    assert_eq!(st.workers[0].pid, 2);
    let r = rig.ask(&mut s, r#"{"id":2,"cmd":"health"}"#);
    assert!(r.ok);
    let r = rig.ask(&mut s, r#"{"id":3,"cmd":"scale","args":{"workers":8}}"#);
    assert_eq!(r.data, Some(json!({"previous":2,"target":8})));
    let r = rig.ask(&mut s, r#"{"id":4,"cmd":"scale","args":{"delta":-20}}"#);
    assert_eq!(r.data, Some(json!({"previous":8,"target":1})));
    let r = rig.ask(&mut s, r#"{"id":5,"cmd":"reopen-logs"}"#);
    assert!(r.ok);
    let r = rig.ask(&mut s, r#"{"id":6,"cmd":"worker-kill","args":{"pid":2}}"#);
    assert!(r.ok);
    let r = rig.ask(&mut s, r#"{"id":7,"cmd":"worker-kill","args":{"pid":3}}"#);
    assert_eq!(err_code(&r), ErrorCode::NoSuchWorker);
    let r = rig.ask(&mut s, r#"{"id":8,"cmd":"reload","args":{"wait":false}}"#);
    assert_eq!(r.data.unwrap()["status"], json!("in_progress"));
    let r = rig.ask(&mut s, r#"{"id":9,"cmd":"stop","args":{"quick":true}}"#);
    assert!(r.ok);
    assert_eq!(
        rig.master.calls,
        [
            "status",
            "health",
            "scale Absolute(8)",
            "scale Relative(-20)",
            "reopen-logs",
            "kill 2",
            "kill 3",
            "reload",
            "stop true"
        ]
    );
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    assert_eq!(err_code(&rig.ask(&mut s, "{not json")), ErrorCode::BadJson);
    assert_eq!(err_code(&rig.ask(&mut s, "\u{0}\u{1}")), ErrorCode::BadJson);
    let r = rig.ask(&mut s, r#"{"id":"x","cmd":"launch"}"#);
    assert_eq!(
        (err_code(&r), r.id.clone()),
        (ErrorCode::UnknownCommand, json!("x"))
    );
    assert_eq!(
        err_code(&rig.ask(&mut s, r#"{"cmd":"scale","args":{"workers":"many"}}"#)),
        ErrorCode::BadArgs
    );
    // Still usable; nothing reached the master.
    assert!(rig.ask(&mut s, r#"{"cmd":"health"}"#).ok);
    assert_eq!(rig.master.calls, ["health"]);
}

#[test]
fn pipelined_split_crlf_and_blank_lines() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    s.write_all(b"\n{\"id\":1,\"cmd\":\"health\"}\r\n{\"id\":2,\"cm")
        .unwrap();
    rig.turns(3);
    assert_eq!(read_response(&s).id, json!(1));
    s.write_all(b"d\":\"health\"}\n").unwrap();
    rig.turns(3);
    assert_eq!(read_response(&s).id, json!(2));
}

#[test]
fn half_closed_client_still_gets_its_answer() {
    // What `socat` and `nc -N` do: send, shut the writing side, read.
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    s.write_all(br#"{"id":1,"cmd":"status"}"#).unwrap(); // no newline
    s.shutdown(std::net::Shutdown::Write).unwrap();
    rig.turns(4);
    let out = read_to_end(&mut s);
    assert!(out.contains(r#""ok":true"#), "{out}");
    assert_eq!(rig.server.client_count(), 0);
}

#[test]
fn a_line_over_1_mib_is_refused_and_closed() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    for _ in 0..200 {
        rig.turn();
        if rig.server.client_count() == 0 {
            break;
        }
    }
    assert_eq!(rig.server.client_count(), 0);
    let out = read_to_end(&mut s);
    assert!(out.contains("line_too_long"), "{out}");
    drop(s);
    writer.join().unwrap();
}

#[test]
fn a_line_of_exactly_1_mib_is_read() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    // A valid request padded with spaces to MAX_LINE bytes.
    let mut line = br#"{"id":1,"cmd":"health"}"#.to_vec();
    line.resize(MAX_LINE, b' ');
    line.push(b'\n');
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&line).unwrap());
    for _ in 0..100 {
        rig.turn();
        if !rig.master.calls.is_empty() {
            break;
        }
    }
    writer.join().unwrap();
    rig.turns(2);
    assert!(read_response(&s).ok);
    let _ = s.flush();
}

#[test]
fn silent_clients_are_closed_at_the_deadline() {
    let mut rig = Rig::new(|o| o.idle_timeout = Duration::from_millis(50));
    let mut s = rig.connect();
    assert!(rig.server.next_deadline().is_some());
    std::thread::sleep(Duration::from_millis(80));
    rig.turn();
    assert_eq!(rig.server.client_count(), 0);
    assert!(read_to_end(&mut s).contains("idle_timeout"));
}

#[test]
fn too_many_clients_are_turned_away() {
    let mut rig = Rig::new(|o| o.max_clients = 2);
    let _a = rig.connect();
    let _b = rig.connect();
    let mut c = rig.connect();
    assert_eq!(rig.server.client_count(), 2);
    assert!(read_to_end(&mut c).contains("too_many_clients"));
}

#[test]
fn places_freed_in_the_same_turn_are_given_to_new_clients() {
    let mut rig = Rig::new(|o| o.max_clients = 2);
    let a = rig.connect();
    let b = rig.connect();
    assert_eq!(rig.server.client_count(), 2);
    // Both leave and a third arrives before the loop's next turn: the
    // hang-ups are handled first, so the newcomer is served.
    drop(a);
    drop(b);
    let mut c = UnixStream::connect(&rig.path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = rig.ask(&mut c, "{\"id\":1,\"cmd\":\"health\"}");
    assert!(r.ok, "{r:?}");
}

#[test]
fn reload_waits_for_its_generation() {
    let mut rig = Rig::new(|o| o.idle_timeout = Duration::from_millis(50));
    let mut s = rig.connect();
    s.write_all(b"{\"id\":7,\"cmd\":\"reload\"}\n{\"id\":8,\"cmd\":\"health\"}\n")
        .unwrap();
    rig.turns(3);
    // Waiting: exempt from the idle deadline, later requests held back.
    std::thread::sleep(Duration::from_millis(80));
    rig.turns(2);
    assert_eq!(rig.server.client_count(), 1);
    assert_eq!(rig.master.calls, ["reload"]);
    let mut outcome = ReloadOutcome {
        generation: 2,
        status: ReloadStatus::Superseded,
        duration_s: Some(1.0),
        error: None,
    };
    rig.server.complete_reload(&outcome);
    outcome.status = ReloadStatus::Failed;
    outcome.error = Some("App failed to load.".into());
    rig.server.complete_reload(&outcome);
    let r = read_response(&s);
    assert_eq!(
        (err_code(&r), r.id.clone()),
        (ErrorCode::ReloadFailed, json!(7))
    );
    let e = r.error.unwrap();
    assert!(e.message.contains("App failed to load."), "{}", e.message);
    assert_eq!(e.data.unwrap()["generation"], json!(2));
    rig.turns(3);
    assert_eq!(read_response(&s).id, json!(8));
}

#[test]
fn reload_that_fails_at_once_is_answered_at_once() {
    let mut rig = Rig::new(|_| {});
    rig.master.reload_fails_at_once = true;
    let mut s = rig.connect();
    let r = rig.ask(&mut s, r#"{"id":1,"cmd":"reload"}"#);
    assert_eq!(err_code(&r), ErrorCode::ReloadFailed);
}

#[test]
fn shutdown_answers_reload_waiters() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    s.write_all(b"{\"id\":1,\"cmd\":\"reload\"}\n").unwrap();
    rig.turns(3);
    drop(rig.server);
    assert!(read_to_end(&mut s).contains(r#""code":"stopping""#));
}

#[test]
fn read_only_and_denied_callers() {
    let mut rig = Rig::new(|_| {});
    let mut ro = rig.connect();
    for c in rig.server.clients.values_mut() {
        c.access = Some(Access::ReadOnly);
    }
    assert!(rig.ask(&mut ro, r#"{"cmd":"status"}"#).ok);
    assert!(rig.ask(&mut ro, r#"{"cmd":"health"}"#).ok);
    let m = rig.ask(&mut ro, r#"{"cmd":"metrics"}"#);
    assert!(m.ok);
    assert_eq!(m.data.unwrap_or_default()["requests_total"], json!(7));
    let r = rig.ask(&mut ro, r#"{"cmd":"stop"}"#);
    assert_eq!(err_code(&r), ErrorCode::PermissionDenied);
    assert_eq!(rig.master.calls, ["status", "health", "metrics"]);

    let mut no = rig.connect();
    for c in rig.server.clients.values_mut() {
        c.access = None;
    }
    let r = rig.ask(&mut no, r#"{"id":4,"cmd":"health"}"#);
    assert_eq!(
        (err_code(&r), r.id),
        (ErrorCode::PermissionDenied, json!(4))
    );
    assert!(r.error.unwrap().message.contains("permission denied"));
    assert_eq!(rig.master.calls, ["status", "health", "metrics"]);
    rig.turns(2);
    assert_eq!(read_to_end(&mut no), "");
}

#[test]
fn access_rules() {
    let mut o = ServerOptions::new("/x".into(), 0o600);
    o.allow_uid = vec![33];
    o.allow_gid = vec![50];
    o.readonly_gid = vec![60];
    let me = 1000;
    assert_eq!(access_of(0, &[0], me, &o), Some(Access::Write));
    assert_eq!(access_of(1000, &[1000], me, &o), Some(Access::Write));
    assert_eq!(access_of(33, &[33], me, &o), Some(Access::Write));
    assert_eq!(access_of(7, &[7, 50], me, &o), Some(Access::Write));
    assert_eq!(access_of(7, &[60], me, &o), Some(Access::ReadOnly));
    assert_eq!(access_of(7, &[7, 60, 50], me, &o), Some(Access::Write));
    assert_eq!(access_of(65534, &[65534], me, &o), None);
}

#[test]
fn peer_credentials_are_the_callers() {
    let (a, _b) = UnixStream::pair().unwrap();
    let (pid, uid, gids) = peer_credentials(&a).unwrap();
    assert_eq!(pid, std::process::id() as i32);
    assert_eq!(uid, nix::unistd::geteuid().as_raw());
    assert_eq!(gids[0], nix::unistd::getegid().as_raw());
}

#[test]
fn a_hung_up_client_is_dropped_without_spinning() {
    let mut rig = Rig::new(|_| {});
    let mut s = rig.connect();
    s.write_all(b"{\"id\":1,\"cmd\":\"reload\"}\n").unwrap();
    drop(s);
    rig.turns(3);
    assert_eq!(rig.master.calls, ["reload"]);
    assert_eq!(rig.server.client_count(), 0);
}
