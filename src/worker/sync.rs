//! The `sync` worker class: the app runs inline on the worker's I/O thread,
//! one request at a time, with no hand-off between threads. While it runs,
//! the worker accepts nothing (its one slot is taken), so other workers
//! take the new connections.

use super::boot::Booted;
use super::{Call, Class};
use crate::http;
use crate::scoreboard::{now_ms, Slot};
use crate::wsgi::{self, Bridge, Outcome};
use pyo3::prelude::*;
use std::future::{ready, Future};
use std::sync::atomic::Ordering;

pub(super) struct Sync {
    bridge: Bridge,
    slot: &'static Slot,
}

impl Sync {
    pub fn new(b: &Booted<'_>) -> Result<Sync, i32> {
        Ok(Sync {
            bridge: b.wsgi_bridge(false)?,
            slot: b.slot,
        })
    }
}

impl Class for Sync {
    const INLINE: bool = true;

    fn slots(&self) -> usize {
        1
    }

    fn dispatch<'a>(
        &'a self,
        call: Call<'a>,
    ) -> impl Future<Output = Option<(http::Request, Outcome)>> + Send + 'a {
        // The call happens here, before the (already finished) future is
        // awaited: nothing is allocated or handed off.
        self.slot.busy_since_ms.store(now_ms(), Ordering::Relaxed);
        self.slot.active.store(1, Ordering::Relaxed);
        let out = Python::attach(|py| {
            wsgi::handle(
                py,
                &self.bridge,
                call.listener,
                &call.req,
                call.prebuffered,
                call.spill,
                call.fd,
                call.peer,
            )
        });
        self.slot.active.store(0, Ordering::Relaxed);
        self.slot.busy_since_ms.store(0, Ordering::Relaxed);
        ready(Some((call.req, out)))
    }
}
