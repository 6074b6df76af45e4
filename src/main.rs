//! The cargo-built `rgunicorn` binary, for developers: linked to the
//! libpython it was built against (by rpath, see build.rs), it initialises
//! Python itself where needed. Everything else is in [`rgunicorn::cli`]; an
//! installed wheel reaches the same code through its console script
//! (`src/extension.rs`).

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(rgunicorn::cli::main(argv, rgunicorn::cli::Host::Embedded));
}
