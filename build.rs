//! Build script: link the Python interpreter rgunicorn was built against,
//! with an rpath so the binary finds that exact libpython at run time
//! (without it the loader silently picks Debian's system libpython).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let cfg = pyo3_build_config::get();
    if let Some(exe) = cfg.executable() {
        println!("cargo:rustc-env=RGUNICORN_BUILD_PYTHON={exe}");
    } else {
        println!("cargo:rustc-env=RGUNICORN_BUILD_PYTHON=");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
