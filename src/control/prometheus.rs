//! `metrics` as Prometheus text exposition (format 0.0.4), as
//! `rgunicornctl metrics` prints it: every family has `# HELP` and `# TYPE`
//! lines, every name starts with `rgunicorn_`, and per-worker figures carry
//! `pid`, `slot` and `generation` labels.
//!
//! Pure formatting: no I/O, no Python (`rgunicornctl` uses it). The names are
//! listed in `docs/control-protocol.md`; keep the two in step.

use super::protocol::{MasterState, MetricsData, WorkerMetrics};
use std::fmt::Write;

/// Escape a label value (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers as integers, floats in Rust's shortest form;
/// the non-finite ones as Prometheus spells them.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP rgunicorn_{name} {help}");
        let _ = writeln!(self.0, "# TYPE rgunicorn_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: String) {
        self.0.push_str("rgunicorn_");
        self.0.push_str(name);
        if !labels.is_empty() {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: String) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn per_worker(
        &mut self,
        m: &MetricsData,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&WorkerMetrics) -> Option<String>,
    ) {
        self.family(name, kind, help);
        for w in &m.workers {
            if let Some(v) = value(w) {
                let labels = [
                    ("pid", w.pid.to_string()),
                    ("slot", w.slot.to_string()),
                    ("generation", w.generation.to_string()),
                ];
                self.sample(name, &labels, v);
            }
        }
    }
}

/// The text a Prometheus server (or node_exporter's textfile collector)
/// reads. Ends with a newline.
pub fn render(m: &MetricsData) -> String {
    let mut o = Out(String::new());
    o.family("info", "gauge", "Always 1; the labels describe the master.");
    o.sample(
        "info",
        &[
            ("version", m.server_version.clone()),
            ("master_pid", m.master_pid.to_string()),
        ],
        "1".into(),
    );
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since the master started.",
        float(m.uptime_s),
    );
    o.one(
        "generation",
        "gauge",
        "The current worker generation (1 at start, +1 per reload).",
        m.generation.to_string(),
    );
    o.family(
        "state",
        "gauge",
        "1 for the master's current state, 0 for the others.",
    );
    for s in [
        MasterState::Booting,
        MasterState::Running,
        MasterState::Reloading,
        MasterState::Draining,
    ] {
        let v = u8::from(s == m.state);
        o.sample("state", &[("state", s.as_str().into())], v.to_string());
    }
    o.one(
        "requests_total",
        "counter",
        "Requests served since the master started, retired workers included.",
        m.requests_total.to_string(),
    );
    o.one(
        "requests_active",
        "gauge",
        "Requests in flight now.",
        m.requests_active.to_string(),
    );
    o.one(
        "connections_queued",
        "gauge",
        "Connections waiting in the TCP listeners' accept queues.",
        m.connections_queued.to_string(),
    );
    for (name, help, v) in [
        (
            "workers_target",
            "Workers the master keeps (changed by scale).",
            m.workers_target,
        ),
        (
            "workers_alive",
            "Worker processes alive, every generation and state.",
            m.workers_alive,
        ),
        (
            "workers_ready",
            "Ready workers of the current generation.",
            m.workers_ready,
        ),
        (
            "workers_busy",
            "Ready workers serving a request now.",
            m.workers_busy,
        ),
        (
            "workers_booting",
            "Workers still importing the app.",
            m.workers_booting,
        ),
        (
            "workers_retiring",
            "Workers told to stop, finishing in-flight requests.",
            m.workers_retiring,
        ),
    ] {
        o.one(name, "gauge", help, v.to_string());
    }
    o.one(
        "worker_spawns_total",
        "counter",
        "Worker processes started.",
        m.worker_spawns_total.to_string(),
    );
    o.one(
        "worker_restarts_total",
        "counter",
        "Workers that died unexpectedly and were replaced.",
        m.worker_restarts_total.to_string(),
    );
    o.one(
        "worker_timeouts_total",
        "counter",
        "Workers aborted by --timeout.",
        m.worker_timeouts_total.to_string(),
    );
    o.family("reloads_total", "counter", "Reloads, by outcome.");
    o.sample(
        "reloads_total",
        &[("outcome", "succeeded".into())],
        m.reloads_succeeded_total.to_string(),
    );
    o.sample(
        "reloads_total",
        &[("outcome", "failed".into())],
        m.reloads_failed_total.to_string(),
    );
    o.per_worker(
        m,
        "worker_requests_total",
        "counter",
        "Requests served by this worker since it started.",
        |w| Some(w.requests.to_string()),
    );
    o.per_worker(
        m,
        "worker_requests_active",
        "gauge",
        "Requests this worker has in flight.",
        |w| Some(w.active.to_string()),
    );
    o.per_worker(
        m,
        "worker_age_seconds",
        "gauge",
        "Seconds since this worker was started.",
        |w| Some(float(w.age_s)),
    );
    o.per_worker(
        m,
        "worker_rss_bytes",
        "gauge",
        "Resident memory of this worker.",
        |w| w.rss_bytes.map(|b| b.to_string()),
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::WorkerState;

    fn sample() -> MetricsData {
        MetricsData {
            master_pid: 10,
            server_version: "1.0 \"x\"\\".into(),
            uptime_s: 2.5,
            state: MasterState::Running,
            generation: 3,
            requests_total: 42,
            requests_active: 1,
            connections_queued: 3,
            workers_target: 2,
            workers_alive: 2,
            workers_ready: 2,
            workers_busy: 1,
            workers_booting: 0,
            workers_retiring: 0,
            worker_spawns_total: 5,
            worker_restarts_total: 1,
            worker_timeouts_total: 0,
            reloads_succeeded_total: 2,
            reloads_failed_total: 1,
            workers: vec![
                WorkerMetrics {
                    pid: 11,
                    slot: 0,
                    generation: 3,
                    state: WorkerState::Busy,
                    requests: 30,
                    active: 1,
                    age_s: 1.0,
                    rss_bytes: Some(4096),
                },
                WorkerMetrics {
                    pid: 12,
                    slot: 1,
                    generation: 3,
                    state: WorkerState::Idle,
                    requests: 2,
                    active: 0,
                    age_s: 0.5,
                    rss_bytes: None,
                },
            ],
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_samples_parse() {
        let text = render(&sample());
        assert!(text.ends_with('\n'));
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap_or_default();
                assert!(matches!(it.next(), Some("gauge" | "counter")), "{line}");
                families.push(name.to_string());
                continue;
            }
            if line.starts_with("# HELP rgunicorn_") {
                continue;
            }
            assert!(line.starts_with("rgunicorn_"), "{line}");
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap_or_default();
            assert_eq!(families.last().map(String::as_str), Some(name), "{line}");
        }
        assert!(text.contains("rgunicorn_requests_total 42\n"), "{text}");
        assert!(text.contains(
            "rgunicorn_worker_requests_total{pid=\"11\",slot=\"0\",generation=\"3\"} 30\n"
        ));
        assert!(text.contains("rgunicorn_state{state=\"running\"} 1\n"));
        assert!(text.contains("rgunicorn_state{state=\"draining\"} 0\n"));
        assert!(text.contains("rgunicorn_reloads_total{outcome=\"failed\"} 1\n"));
        assert!(text.contains("rgunicorn_uptime_seconds 2.5\n"));
        // Escaped label values; an unreadable RSS is left out, not faked.
        assert!(text.contains(r#"version="1.0 \"x\"\\""#), "{text}");
        assert!(!text.contains("rgunicorn_worker_rss_bytes{pid=\"12\""));
        // Each family once.
        let mut sorted = families.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), families.len());
    }

    #[test]
    fn no_workers_still_valid() {
        let mut m = sample();
        m.workers.clear();
        let text = render(&m);
        assert!(text.contains("# TYPE rgunicorn_worker_requests_total counter\n"));
        assert!(!text.contains("rgunicorn_worker_requests_total{"));
    }
}
