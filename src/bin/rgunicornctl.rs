//! rgunicornctl: the control-socket client. It never links libpython.
fn main() {
    eprintln!("usage: rgunicornctl [--socket PATH] status|reload|scale N|health|stop");
    std::process::exit(2);
}
