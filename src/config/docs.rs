//! Generates `docs/settings.md` from the settings table: every Gunicorn
//! setting with its flags, default and status in rgunicorn.
//!
//! The file is checked in; a unit test fails when it is stale and
//! `RGUNICORN_BLESS=1 cargo test --lib config` rewrites it.

use super::table::{DefaultValue, SettingDef, Status, TABLE};
use super::value;

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn code(text: &str) -> String {
    if text.contains('`') {
        format!("``{text}``")
    } else {
        format!("`{text}`")
    }
}

fn flags(def: &SettingDef) -> String {
    if def.cli.is_empty() {
        return "(config file only)".into();
    }
    def.cli
        .iter()
        .map(|f| code(f))
        .collect::<Vec<_>>()
        .join(", ")
}

fn default(def: &SettingDef) -> String {
    match def.default {
        DefaultValue::Dynamic(doc) => doc.to_string(),
        DefaultValue::Hook => "no-op".into(),
        DefaultValue::Str(s) => code(&value::py_str_repr(s)),
        other => code(&value::render(&other.to_value(), def.name)),
    }
}

fn status(def: &SettingDef) -> String {
    match def.status {
        Status::Same => "same".into(),
        Status::Different(how) => format!("different: {how}"),
        Status::NotSupported(why) => format!("**not supported**: {why}"),
        Status::Rgunicorn => "rgunicorn only".into(),
    }
}

/// Counts of settings by status: (same, different, not supported, rgunicorn).
pub(crate) fn counts() -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for def in TABLE {
        match def.status {
            Status::Same => c.0 += 1,
            Status::Different(_) => c.1 += 1,
            Status::NotSupported(_) => c.2 += 1,
            Status::Rgunicorn => c.3 += 1,
        }
    }
    c
}

/// The content of `docs/settings.md`.
pub fn settings_markdown() -> String {
    let (same, different, unsupported, own) = counts();
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from src/config/table.rs; do not edit. \
         Regenerate with: RGUNICORN_BLESS=1 cargo test --lib config -->\n\n",
    );
    out.push_str("# Settings\n\n");
    out.push_str(
        "Every Gunicorn setting (Gunicorn 23 to 26), with its command-line flags, its default, \
         and what rgunicorn does with it. Settings are given as in Gunicorn: in a Python config \
         file (`-c gunicorn.conf.py`, `-c python:pkg.module`; `./gunicorn.conf.py` is read when \
         it exists), in `GUNICORN_CMD_ARGS` (or `RGUNICORN_CMD_ARGS`, which wins over it), and \
         on the command line, which wins over both.\n\n",
    );
    out.push_str(
        "- **same**: behaves as in Gunicorn.\n\
         - **different**: accepted; the difference is described.\n\
         - **not supported**: setting it to anything but its default is an error \
         (\"rgunicorn does not support `X` (why)\"); nothing is silently ignored.\n\
         - **rgunicorn only**: not a Gunicorn setting.\n\n",
    );
    out.push_str(&format!(
        "{} settings: {same} same, {different} different, {unsupported} not supported, \
         {own} rgunicorn only.\n",
        TABLE.len()
    ));
    let mut sections: Vec<&str> = Vec::new();
    for def in TABLE {
        if !sections.contains(&def.section) {
            sections.push(def.section);
        }
    }
    for section in sections {
        out.push_str(&format!("\n## {section}\n\n"));
        out.push_str("| Setting | Command line | Type | Default | Status |\n");
        out.push_str("|---|---|---|---|---|\n");
        for def in TABLE.iter().filter(|d| d.section == section) {
            out.push_str(&format!(
                "| {}<br>{} | {} | {} | {} | {} |\n",
                code(def.name),
                cell(def.help),
                cell(&flags(def)),
                def.ty.doc_name(),
                cell(&default(def)),
                cell(&status(def)),
            ));
        }
    }
    out.push_str(WORKER_CLASSES);
    out
}

/// What `worker_class` takes, beyond its table row.
const WORKER_CLASSES: &str = "
## Worker classes

`worker_class` (`-k`) takes the built-in classes by Gunicorn's names: `sync`, `gthread` and \
`tornado`, their class paths (`gunicorn.workers.sync.SyncWorker`, \
`gunicorn.workers.gthread.ThreadWorker`, `gunicorn.workers.gtornado.TornadoWorker`) and their \
`egg:gunicorn#...` forms. A config file may also give Gunicorn's own class object \
(`from gunicorn.workers.gtornado import TornadoWorker; worker_class = TornadoWorker`).

- `tornado` serves a `tornado.web.Application` with Tornado's own HTTP server and IOLoop on \
the worker's listeners; any other app is taken as a WSGI callable and wrapped in \
`tornado.wsgi.WSGIContainer`, as in Gunicorn. Tornado must be installed in the app's \
environment (`pip install tornado`); without it rgunicorn stops before binding. The master \
supervises these workers as any other: `--timeout` applies to the IOLoop (a periodic callback \
beats the heartbeat, so a handler that blocks the loop gets the worker killed and replaced, \
its stack logged), TERM stops accepting and lets in-flight requests finish within \
`--graceful-timeout` (requests arriving meanwhile are answered with `Connection: close`), \
`--max-requests` and reloads replace workers with no failed request. `keepalive` is \
Tornado's `idle_connection_timeout`, which also bounds the wait for a new connection's first \
request head (10 s when `keepalive` is 0, which turns keep-alive off). Tornado, not \
rgunicorn, parses HTTP and writes the responses, so rgunicorn's HTTP limits, access log, \
request hooks (`pre_request`, `post_request`) and `--forwarded-allow-ips` handling do not \
apply to this class.
- `gevent`: a request that ends by an exception is answered as in the other classes, which \
is not always what Gunicorn's gevent worker does (`tests/test_gevent.py` shows each case). \
A `GreenletExit` (the app raised `gevent.GreenletExit`, or `gevent.kill` threw it into the \
request's greenlet, from the request itself, another greenlet, or while it waited for its \
body) gets a `500` with `Connection: close` at once, or a closed connection once the \
response started, and one INFO log line (`Request greenlet killed (GreenletExit) handling \
...`, the traceback at debug level): a kill is deliberate, not an app error. Gunicorn logs \
nothing either, but answers nothing: before the response started it holds the connection \
until the keep-alive timeout (2 s) and closes it, an empty reply that a client counts as a \
failed request; after it started it leaves the chunked body cut short on a connection it \
keeps alive, so the next response follows the cut body. A `SystemExit` the app raises is a \
500 with its traceback logged, as any error of the app; Gunicorn's gevent worker swallows it \
as a `GreenletExit`. `KeyboardInterrupt` and `gevent.Timeout` are a 500 with the traceback \
logged, as in Gunicorn. A `gevent.Timeout` (or a kill) that fires while the app waits in \
`wsgi.input` reaches the app as itself, so `with gevent.Timeout(...)` around a read catches \
its own timeout, as under Gunicorn.
- `eventlet` is refused, by each of its names: Gunicorn 26 removed the eventlet worker \
(eventlet is no longer maintained). The error names `-k gevent`, its replacement.
- Custom worker classes (a Python path such as `myproject.workers.MyWorker`, or a class object \
in a config file, subclassing `gunicorn.workers.base.Worker`) are refused, with an error that \
names the setting and the built-in classes. Gunicorn's Worker API hands the class the \
listening sockets and leaves HTTP, the heartbeat file and the signals to it: running such a \
class would run Gunicorn's Python HTTP stack inside rgunicorn, bypassing its HTTP parser, its \
limits and its supervision of requests, and would tie rgunicorn to Gunicorn's internal \
classes (`Config`, `Logger`, `WorkerTmp`) being importable and compatible. A custom class \
usually exists to add behaviour around requests or the worker's life; the server hooks \
(`post_worker_init`, `pre_request`, `post_request`, `worker_exit`...) cover those cases.
";
