//! The `gthread` worker class: `--threads` Python threads, each attached to
//! the interpreter once and releasing the GIL while it waits for the next
//! request. The I/O thread hands each parsed request over a channel and
//! awaits the outcome, so slow clients (reading heads, draining responses,
//! idle keep-alive) never hold a Python thread.

use super::boot::Booted;
use super::{Call, Class, Job};
use crate::http;
use crate::scoreboard::Slot;
use crate::wsgi::{self, Bridge, Outcome};
use pyo3::prelude::*;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

pub(super) struct Gthread {
    bridge: Arc<Bridge>,
    threads: usize,
    /// Set by `start`.
    pool: Option<mpsc::Sender<Job>>,
    slot: &'static Slot,
}

impl Gthread {
    pub fn new(b: &Booted<'_>) -> Result<Gthread, i32> {
        let threads = b.settings.threads.max(1);
        Ok(Gthread {
            bridge: Arc::new(b.wsgi_bridge(true)?),
            threads,
            pool: None,
            slot: b.slot,
        })
    }
}

impl Class for Gthread {
    const INLINE: bool = false;

    fn slots(&self) -> usize {
        self.threads
    }

    fn start(&mut self) -> Result<(), i32> {
        self.pool = Some(start_pool(self.threads, self.bridge.clone()));
        Ok(())
    }

    async fn dispatch<'a>(&'a self, call: Call<'a>) -> Option<(http::Request, Outcome)> {
        let pool = self.pool.as_ref()?;
        let (job, rx) = call.into_job();
        self.slot.active.fetch_add(1, Ordering::Relaxed);
        if pool.send(job).is_err() {
            return None;
        }
        let r = rx.await;
        self.slot.active.fetch_sub(1, Ordering::Relaxed);
        r.ok()
    }

    /// --timeout applies per request: the start of the oldest one running
    /// (0 when every thread is idle), leaving out a connection the app took
    /// over through `gunicorn.socket` (a websocket lasts as long as it
    /// lasts, as under Gunicorn's gthread worker).
    fn heartbeat(&self, slot: &Slot) {
        slot.busy_since_ms
            .store(wsgi::flight::oldest_running(), Ordering::Relaxed);
    }
}

/// Start `n` Python threads that share the bridge and take jobs from one
/// channel until it closes.
fn start_pool(n: usize, bridge: Arc<Bridge>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        let bridge = bridge.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("python-{i}"))
            .spawn(move || {
                Python::attach(|py| loop {
                    let job = py.detach(|| rx.lock().unwrap_or_else(|p| p.into_inner()).recv());
                    let Ok(job) = job else { break };
                    let out = wsgi::handle(
                        py,
                        &bridge,
                        job.listener,
                        &job.req,
                        job.prebuffered,
                        job.spill,
                        job.fd,
                        &job.peer,
                    );
                    let _ = job.reply.send((job.req, out));
                })
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start Python thread {i}: {e}");
        }
    }
    tx
}
