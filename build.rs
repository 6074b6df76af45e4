//! Build script.
//!
//! - The embedding binary (`cargo build`): link the Python interpreter
//!   rgunicorn was built against, with an rpath so the binary finds that
//!   exact libpython at run time (without it the loader silently picks
//!   Debian's system libpython).
//! - The extension module (`maturin build`, feature `extension-module`): no
//!   libpython and no rpath (the hosting interpreter provides Python), and
//!   `rgunicornctl` is built by a nested cargo into its own target directory
//!   and copied to `wheel-data/scripts/`, in the wheel's data directory
//!   (pyproject.toml), from where pip installs it into the venv's `bin/`.
//!   maturin will not put a `[[bin]]` into a pyo3 wheel; this way
//!   `maturin build`, `pip install .` and a build from the sdist all get it,
//!   with no wrapper around maturin.
//! - Both: what `rgunicorn --version` says about the build.
#[cfg(feature = "server")]
use std::path::{Path, PathBuf};
#[cfg(feature = "server")]
use std::process::Command;

/// Set in the nested cargo that builds rgunicornctl, so it does not recurse.
#[cfg(feature = "server")]
const NESTED: &str = "RGUNICORN_BUILDING_CTL";

fn main() {
    // Without the feature `server` (rgunicornctl alone, build_ctl's build)
    // there is no Python and nothing to configure.
    #[cfg(feature = "server")]
    server();
}

#[cfg(feature = "server")]
fn server() {
    pyo3_build_config::use_pyo3_cfgs();
    let extension = std::env::var_os("CARGO_FEATURE_EXTENSION_MODULE").is_some()
        || std::env::var_os("PYO3_BUILD_EXTENSION_MODULE").is_some();
    if !extension {
        pyo3_build_config::add_libpython_rpath_link_args();
    }
    let cfg = pyo3_build_config::get();
    if let Some(exe) = cfg.executable() {
        println!("cargo:rustc-env=RGUNICORN_BUILD_PYTHON={exe}");
    } else {
        println!("cargo:rustc-env=RGUNICORN_BUILD_PYTHON=");
    }
    // The stable-ABI getter's replacement is a builder-only type in 0.30.
    #[allow(deprecated)]
    let abi3 = cfg.abi3();
    let abi = if abi3 {
        format!("abi3, Python >= {}", cfg.version())
    } else {
        format!("built for Python {}", cfg.version())
    };
    println!("cargo:rustc-env=RGUNICORN_BUILD_ABI={abi}");
    println!(
        "cargo:rustc-env=RGUNICORN_BUILD_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=RGUNICORN_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!("cargo:rustc-env=RGUNICORN_BUILD_COMMIT={}", git_commit());
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=PYO3_BUILD_EXTENSION_MODULE");

    if extension && std::env::var_os(NESTED).is_none() {
        build_ctl();
    }
}

/// The commit this is built from (`abc123def456`, `-dirty` when the tree
/// has changes), or `unknown` (an sdist has no git).
#[cfg(feature = "server")]
fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // Only a checkout of this very crate counts (not a repository the
    // unpacked sdist happens to sit in).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let top = git(&["-C", &manifest, "rev-parse", "--show-toplevel"]);
    if top.as_deref().map(Path::new) != Some(Path::new(&manifest)) {
        return "unknown".into();
    }
    if let Some(dir) = git(&["-C", &manifest, "rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    let Some(commit) = git(&["-C", &manifest, "rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&[
        "-C",
        &manifest,
        "status",
        "--porcelain",
        "--untracked-files=no",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

/// Build rgunicornctl (release, no Python linked) and put it where the
/// wheel's data directory expects it.
///
/// It is built without the feature `server` (`--no-default-features`): the
/// library is then empty and rgunicornctl compiles from its own source and
/// the three control files it shares with the server, with a handful of
/// dependencies (clap, serde, serde_json, anyhow), none of which depends
/// on the interpreter or on what maturin sets per interpreter. So the nested
/// build is the same for every wheel: one compile of about 80 CPU-s
/// serves `maturin build -i 3.9 -i 3.10 ...`, `pip install .` and the
/// sdist's build in the same target directory.
#[cfg(feature = "server")]
fn build_ctl() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let target_dir = ctl_target_dir(&manifest);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for f in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", manifest.join(f).display());
    }
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&manifest)
        .args([
            "build",
            "--release",
            "--no-default-features",
            "--bin",
            "rgunicornctl",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env(NESTED, "1")
        // A small file: it is copied into every virtualenv.
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    // What differs from one interpreter's build to the next (maturin sets
    // them per interpreter; pip's isolated build changes PATH's first entry).
    // Nothing in this build reads them; removed so that cargo's fingerprints
    // of the build scripts cannot see them either.
    for var in [
        "PYO3_PYTHON",
        "PYO3_ENVIRONMENT_SIGNATURE",
        "PYTHON_SYS_EXECUTABLE",
        "PYO3_NO_PYTHON",
        "PYO3_BUILD_EXTENSION_MODULE",
        "PYO3_CONFIG_FILE",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "_PYTHON_SYSCONFIGDATA_NAME",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("building rgunicornctl failed ({s})"),
        Err(e) => panic!("cannot run cargo to build rgunicornctl: {e}"),
    }
    let built = target_dir.join("release").join("rgunicornctl");
    let scripts = manifest.join("wheel-data").join("scripts");
    if let Err(e) = std::fs::create_dir_all(&scripts)
        .and_then(|()| std::fs::copy(&built, scripts.join("rgunicornctl")).map(|_| ()))
    {
        panic!(
            "cannot copy {} into {}: {e}",
            built.display(),
            scripts.display()
        );
    }
}

/// Where the nested build of rgunicornctl goes: `rgunicornctl-build` in the
/// outer build's target directory (found from OUT_DIR,
/// `<target>/<profile>/build/<crate>-<hash>/out`), so that every build
/// sharing a target directory shares it too (a build from the sdist
/// included); `target/rgunicornctl-build` beside Cargo.toml if OUT_DIR is
/// not laid out that way.
#[cfg(feature = "server")]
fn ctl_target_dir(manifest: &Path) -> PathBuf {
    std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .and_then(|out| out.ancestors().nth(4).map(Path::to_path_buf))
        .filter(|t| t.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| manifest.join("target"))
        .join("rgunicornctl-build")
}
