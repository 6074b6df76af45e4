//! The extension module `rgunicorn._rgunicorn`, built by maturin into the
//! wheel: the console script `rgunicorn` and `python -m rgunicorn` call its
//! [`main`], so the server runs inside the Python of the virtualenv it is
//! installed in (no libpython linked, no path into a build tree).
//!
//! Importing this module blocks the master's signals on the importing
//! (main) thread: the master reads them from a signalfd, which works only
//! if every thread blocks them, and a thread inherits the mask of the one
//! that starts it. Blocking later (when the arbiter starts) would miss
//! threads started meanwhile, by a config file, a server hook or a
//! preloaded app. Only the console script's `main` imports this module.

use pyo3::prelude::*;

#[pymodule]
fn _rgunicorn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let mut mask = nix::sys::signal::SigSet::empty();
    for s in crate::arbiter::SIGNALS {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot block signals: {e}")))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    Ok(())
}

/// Run the server with `argv` (`argv[0]` the program, then its arguments);
/// `reexec` is the command that starts this same server again (the
/// interpreter and the script or `-m rgunicorn`, see `cli::Host`). Returns
/// the exit code. The GIL is released while the server runs.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>, reexec: Vec<String>) -> i32 {
    py.detach(|| crate::cli::main(argv, crate::cli::Host::Python { reexec }))
}
