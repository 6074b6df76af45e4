//! The `gevent` worker class: the WSGI app runs in greenlets on a real
//! gevent hub, which owns the worker's main thread ([`Class::MAIN_LOOP`]);
//! HTTP stays in Rust, on the `io` thread's tokio loop.
//!
//! - Requests cross to the hub through a [`handoff`] queue: the I/O thread
//!   pushes each parsed request, and the hub's watcher on the hand-off's
//!   descriptor takes the whole batch per wake-up and switches into a new
//!   greenlet per request (`gevent_serve` in `bootstrap.py`: a raw
//!   greenlet whose parent is the hub, so a request never sees another's
//!   greenlet-locals, as under Gunicorn). Its Python frame stack comes
//!   from [`frame_stacks`], not from an mmap per request. Outcomes go
//!   back through tokio oneshots, those of a hub turn together.
//! - A greenlet's body reads and response writes use the connection's
//!   descriptor directly, as the other classes do, but wait with
//!   `gevent.socket.wait_read`/`wait_write` (`wsgi::fdio::set_cooperative`),
//!   so they block only their own greenlet and the hub never waits on Rust.
//!   The I/O thread never takes the GIL.
//! - Up to `worker_connections` requests run at once; `--threads` is
//!   ignored, as in Gunicorn.
//! - `--timeout` watches the hub, not a request (a greenlet may wait for
//!   minutes without harm): every heartbeat pings the hub through the
//!   hand-off, and a hub that has not drained a ping publishes that ping's
//!   time as `busy_since_ms`. A greenlet that blocks the hub (a CPU loop)
//!   therefore trips the master's abort, whose stack dump shows it (it runs
//!   on the main thread).
//! - `gevent.monkey.patch_all()` runs in the worker before the app is
//!   imported (`boot.rs`); with `--preload` the app was imported in the
//!   master, and the worker patches after the fork, as Gunicorn does.
//! - `gunicorn.socket` is in the environ: a socket for the connection,
//!   created (from a duplicate descriptor) when the app first uses it. An
//!   app that used it and never called start_response owns the connection
//!   (WebSockets); see `wsgi::handle`.

use super::boot::Booted;
use super::handoff;
use super::msg::WORKER_BOOT_ERROR;
use super::{Call, Class, Job};
use crate::http;
use crate::scoreboard::Slot;
use crate::wsgi::{self, Bridge, Outcome};
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub(super) struct Gevent {
    bridge: Arc<Bridge>,
    slots: usize,
    tx: handoff::Sender<Job>,
    rx: Arc<handoff::Receiver<Job>>,
    slot: &'static Slot,
}

impl Gevent {
    pub fn new(b: &Booted<'_>) -> Result<Gevent, i32> {
        let (tx, rx) = handoff::channel().map_err(|e| {
            tracing::error!("cannot set up the gevent hand-off: {e}");
            WORKER_BOOT_ERROR
        })?;
        let mut bridge = b.wsgi_bridge(false)?;
        Python::attach(|py| -> PyResult<()> {
            let boot = crate::python::bootstrap(py)?;
            wsgi::fdio::set_cooperative(boot.call_method0("gevent_wait")?.unbind());
            bridge.conn_socket = Some(boot.getattr("gevent_socket")?.unbind());
            Ok(())
        })
        .map_err(|e| {
            tracing::error!("Exception in worker process: cannot set up gevent: {e}");
            WORKER_BOOT_ERROR
        })?;
        Ok(Gevent {
            bridge: Arc::new(bridge),
            slots: b.settings.worker_connections.max(1),
            tx,
            rx: Arc::new(rx),
            slot: b.slot,
        })
    }
}

impl Class for Gevent {
    const INLINE: bool = false;
    const MAIN_LOOP: bool = true;
    const BALANCE: bool = true;

    fn slots(&self) -> usize {
        self.slots
    }

    async fn dispatch<'a>(&'a self, call: Call<'a>) -> Option<(http::Request, Outcome)> {
        let (job, rx) = call.into_job();
        REPLIES.start_courier();
        self.slot.active.fetch_add(1, Ordering::Relaxed);
        let r = match self.tx.push(job) {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        self.slot.active.fetch_sub(1, Ordering::Relaxed);
        r
    }

    fn heartbeat(&self, slot: &Slot) {
        // Whether the hub took the last ping (sent a tick ago), then the
        // next ping: a hub keeping up reports 0 (idle, for `status` too).
        slot.busy_since_ms
            .store(self.tx.stalled_since(), Ordering::Relaxed);
        self.tx.wake();
    }

    fn stopped(&self) {
        self.tx.close();
    }

    fn main_loop(&self) -> Result<(), i32> {
        Python::attach(|py| {
            frame_stacks::install(py, self.slots);
            let hub = Hub {
                rx: self.rx.clone(),
                bridge: self.bridge.clone(),
                batch: Mutex::new(VecDeque::new()),
                scratch: Mutex::new(Vec::new()),
            };
            let r = Py::new(py, hub)
                .and_then(|hub| crate::python::bootstrap(py)?.call_method1("gevent_serve", (hub,)));
            r.map(|_| ()).map_err(|e| {
                tracing::error!(
                    "The gevent hub failed:\n{}",
                    crate::python::format_exception(py, &e).trim_end()
                );
                WORKER_BOOT_ERROR
            })
        })
    }
}

/// The hub's side of the hand-off, for `gevent_serve` in `bootstrap.py`.
#[pyclass(module = "rgunicorn")]
struct Hub {
    rx: Arc<handoff::Receiver<Job>>,
    bridge: Arc<Bridge>,
    /// Requests taken from the hand-off, each waiting for its greenlet.
    batch: Mutex<VecDeque<Job>>,
    scratch: Mutex<Vec<Job>>,
}

/// Outcomes held until the end of the hub's turn (`Hub::flush`); one hub
/// per worker process.
static REPLIES: handoff::Outbox<(http::Request, Outcome)> = handoff::Outbox::new();

#[pymethods]
impl Hub {
    /// The descriptor to watch.
    fn fd(&self) -> RawFd {
        self.rx.fd()
    }

    /// Take the whole batch: the number of requests to spawn a greenlet
    /// for each, or -1 once the worker has stopped.
    fn drain(&self) -> isize {
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.rx.drain(&mut scratch);
        let n = scratch.len();
        self.batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(scratch.drain(..));
        if open {
            isize::try_from(n).unwrap_or(isize::MAX)
        } else {
            -1
        }
    }

    /// Serve the next request taken, in the calling greenlet (one made for
    /// it): 0 when none is left, 1 when one was served, 2 when one was
    /// served and its outcome is the first held back: schedule `flush` at
    /// the end of the hub's turn.
    fn run_one(&self, py: Python<'_>) -> u8 {
        let job = self
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let Some(job) = job else { return 0 };
        let out = wsgi::handle(
            py,
            &self.bridge,
            job.listener,
            &job.req,
            job.prebuffered,
            job.spill,
            job.fd,
            &job.peer,
        );
        // The response is written; the I/O thread needs the outcome only to
        // read the connection's next request: it gets this turn's outcomes
        // together, one wake-up for them all.
        if hold(job.reply, job.req, out) {
            2
        } else {
            1
        }
    }

    /// Send the outcomes held back (see `run_one`).
    fn flush(&self) {
        REPLIES.flush();
    }
}

/// `REPLIES.push`, out of line: the (request, outcome) pair is built in
/// this frame, not in `run_one`'s, which is on the request greenlet's stack
/// under the app (copied on every switch).
#[inline(never)]
fn hold(
    reply: tokio::sync::oneshot::Sender<(http::Request, Outcome)>,
    req: http::Request,
    out: Outcome,
) -> bool {
    REPLIES.push(reply, (req, out))
}

/// Python's frame stacks, recycled from one greenlet to the next.
///
/// Since Python 3.11 every greenlet, like every thread, has a frame stack
/// of its own: a 16 KiB chunk taken from the object arena allocator on
/// the greenlet's first call (an `mmap`, and a page fault when first
/// touched) and given back when it ends (a `munmap`). With a greenlet per
/// request that would be two system calls and a page fault per request;
/// this cache keeps up to `worker_connections` freed chunks (as many as
/// there can be greenlets running requests) and hands them out again.
/// Every chunk still comes from Python's own allocator and goes back to
/// it, so the memory the cache never holds (obmalloc's arenas, bigger
/// chunks) is untouched, and the cache may start after Python allocated
/// chunks of its own.
mod frame_stacks {
    use pyo3::ffi;
    use std::ffi::c_void;
    use std::sync::{Mutex, MutexGuard};

    /// Python's `_PY_DATA_STACK_CHUNK_SIZE` (3.11 to 3.14).
    const CHUNK: usize = 16 * 1024;

    type Alloc = extern "C" fn(*mut c_void, usize) -> *mut c_void;
    type Free = extern "C" fn(*mut c_void, *mut c_void, usize);

    struct Cache {
        /// Python's allocator (its context as an address).
        ctx: usize,
        alloc: Alloc,
        free: Free,
        /// Chunks given back, as addresses; never more than its capacity.
        idle: Vec<usize>,
    }

    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

    fn cache() -> MutexGuard<'static, Option<Cache>> {
        CACHE.lock().unwrap_or_else(|p| p.into_inner())
    }

    extern "C" fn alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
        let mut c = cache();
        let Some(c) = c.as_mut() else {
            return std::ptr::null_mut();
        };
        if size == CHUNK {
            if let Some(p) = c.idle.pop() {
                return p as *mut c_void;
            }
        }
        (c.alloc)(c.ctx as *mut c_void, size)
    }

    extern "C" fn free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
        let mut c = cache();
        let Some(c) = c.as_mut() else { return };
        if size == CHUNK && c.idle.len() < c.idle.capacity() {
            c.idle.push(ptr as usize);
            return;
        }
        (c.free)(c.ctx as *mut c_void, ptr, size);
    }

    /// Put the cache in front of Python's arena allocator, keeping up to
    /// `max` idle chunks. Call with the GIL held (Python allocates from
    /// arenas only with it), once.
    pub(super) fn install(_py: pyo3::Python<'_>, max: usize) {
        let mut c = cache();
        if c.is_some() {
            return;
        }
        let mut orig = ffi::PyObjectArenaAllocator {
            ctx: std::ptr::null_mut(),
            alloc: None,
            free: None,
        };
        // SAFETY: fills in the struct; the GIL is held.
        unsafe { ffi::PyObject_GetArenaAllocator(&mut orig) };
        let (Some(a), Some(f)) = (orig.alloc, orig.free) else {
            return;
        };
        *c = Some(Cache {
            ctx: orig.ctx as usize,
            alloc: a,
            free: f,
            idle: Vec::with_capacity(max),
        });
        drop(c);
        let mut ours = ffi::PyObjectArenaAllocator {
            ctx: std::ptr::null_mut(),
            alloc: Some(alloc),
            free: Some(free),
        };
        // SAFETY: Python copies the struct; the GIL is held, so no arena
        // allocation runs meanwhile. Ours hands every chunk it did not
        // allocate itself to `orig`, which allocated it.
        unsafe { ffi::PyObject_SetArenaAllocator(&mut ours) };
    }
}
