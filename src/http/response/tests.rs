//! The response side tested by data: every case in `testdata/responses/`
//! (see `testdata/README.md`) plays an app's status, headers and body
//! through a [`Response`] the way the WSGI bridge does, and compares the
//! bytes with the case's `.wire` file; error cases compare [`error_dated`].

use super::*;
use crate::http::tests::{expectations, unescape};
use std::path::{Path, PathBuf};

/// The `Date` every case is written with.
const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/testdata/responses")
}

/// Escaped text (as in `.http` files) that the app gave as a Python str.
fn text(v: &str) -> String {
    String::from_utf8(unescape(v)).expect("case text is UTF-8")
}

fn flag(v: &str) -> bool {
    match v {
        "true" => true,
        "false" => false,
        _ => panic!("not a bool: {v}"),
    }
}

fn exchange(v: &str) -> Exchange {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [method, version, conn] = parts[..] else {
        panic!("request: METHOD VERSION keep-alive|close, not {v:?}");
    };
    Exchange {
        version: match version {
            "HTTP/1.0" => Version::Http10,
            "HTTP/1.1" => Version::Http11,
            _ => panic!("bad version {version}"),
        },
        head: method == "HEAD",
        keep_alive: match conn {
            "keep-alive" => true,
            "close" => false,
            _ => panic!("bad connection wish {conn}"),
        },
    }
}

fn framing(v: &str) -> Framing {
    let parts: Vec<&str> = v.split_whitespace().collect();
    match parts[..] {
        ["length", n] => Framing::Length(n.parse().unwrap()),
        ["chunked"] => Framing::Chunked,
        ["close"] => Framing::CloseDelimited,
        ["none"] => Framing::NoBody(None),
        ["none", n] => Framing::NoBody(Some(n.parse().unwrap())),
        _ => panic!("bad framing {v:?}"),
    }
}

/// What one case makes of the app's output: the bytes, the framing, and
/// whether the connection is kept; or why the head was refused.
struct Played {
    wire: Vec<u8>,
    framing: Framing,
    keep_alive: bool,
    sent: u64,
}

/// Play one app response as `wsgi::response::Writer` does: the head goes
/// out with the first piece (a `whole` body gives its length first), an
/// app that returns nothing sends a body of length 0.
fn play(exp: &[(String, String)]) -> Result<Played, InvalidResponse> {
    let get = |k: &str| {
        exp.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let ex = exchange(get("request").expect("no request"));
    let mut head = Head::new(text(get("status").expect("no status")))?;
    for (k, v) in exp {
        if k == "header" {
            let (n, v) = v.split_once(':').expect("header: Name: value");
            head.push_header(&text(n), &text(v.trim_start()))?;
        }
    }
    let mut resp = Response::new(ex);
    resp.set_head(head);
    let mut wire = Vec::new();
    if let Some(whole) = get("whole") {
        let data = unescape(whole);
        resp.send_head_dated(Some(data.len() as u64), DATE, &mut wire)
            .unwrap();
        resp.push_body(&data, &mut wire);
    }
    for (k, v) in exp {
        if k == "body" {
            if !resp.head_sent() {
                resp.send_head_dated(None, DATE, &mut wire).unwrap();
            }
            resp.push_body(&unescape(v), &mut wire);
        }
    }
    if !resp.head_sent() {
        resp.send_head_dated(Some(0), DATE, &mut wire).unwrap();
    }
    let framing = resp.body_mut().map(|b| b.framing()).unwrap();
    let keep_alive = resp.finish(&mut wire);
    Ok(Played {
        wire,
        framing,
        keep_alive,
        sent: resp.sent(),
    })
}

/// Show bytes with the escapes of the case files, for a readable diff.
fn show(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n\n"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

#[test]
fn responses_by_data() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "cases missing from {}", dir().display());
    for name in names {
        let exp = expectations(&dir().join(format!("{name}.case")));
        let get = |k: &str| {
            exp.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let wire_file = dir().join(format!("{name}.wire"));
        let want_wire = || unescape(&std::fs::read_to_string(&wire_file).unwrap());

        if let Some(err) = get("error") {
            let (code, reason) = err.split_once(' ').unwrap();
            let message = text(get("message").unwrap_or(""));
            let got = error_dated(code.parse().unwrap(), reason, &message, DATE);
            assert_eq!(show(&got), show(&want_wire()), "{name}");
            continue;
        }
        match (play(&exp), get("refused")) {
            (Err(e), Some(kind)) => {
                let variant = format!("{e:?}");
                let variant = variant.split([' ', '(', '{']).next().unwrap_or_default();
                assert_eq!(variant, kind, "{name}: {e}");
                assert!(!e.to_string().is_empty());
            }
            (Err(e), None) => panic!("{name}: refused: {e}"),
            (Ok(_), Some(kind)) => panic!("{name}: accepted, expected {kind}"),
            (Ok(p), None) => {
                assert_eq!(show(&p.wire), show(&want_wire()), "{name}");
                for (k, v) in &exp {
                    match k.as_str() {
                        "framing" => assert_eq!(p.framing, framing(v), "{name}: framing"),
                        "keep_alive" => assert_eq!(p.keep_alive, flag(v), "{name}: keep_alive"),
                        "sent" => assert_eq!(p.sent, v.parse::<u64>().unwrap(), "{name}: sent"),
                        "request" | "status" | "header" | "body" | "whole" => {}
                        other => panic!("{name}: unknown key {other}"),
                    }
                }
            }
        }
    }
}

/// The decision table itself, for every combination the cases do not spell
/// out: what no body means, and that keep-alive never survives a body
/// delimited by the close.
#[test]
fn decide_covers_every_status_and_version() {
    for version in [Version::Http10, Version::Http11] {
        for head in [false, true] {
            for keep_alive in [false, true] {
                let ex = Exchange {
                    version,
                    head,
                    keep_alive,
                };
                for code in [100, 101, 199, 200, 204, 206, 304, 404, 500] {
                    for app_length in [None, Some(0), Some(7)] {
                        for body_len in [None, Some(0), Some(5)] {
                            for close in [false, true] {
                                let app = AppFraming {
                                    content_length: app_length,
                                    close,
                                };
                                let (f, ka) = decide(ex, code, app, body_len);
                                let bodyless = code < 200 || code == 204 || code == 304;
                                if bodyless {
                                    assert_eq!(f, Framing::NoBody(None));
                                } else if head {
                                    assert!(matches!(f, Framing::NoBody(_)));
                                }
                                if f == Framing::Chunked {
                                    assert_eq!(version, Version::Http11);
                                }
                                if ka {
                                    assert!(keep_alive && !close);
                                    assert_ne!(f, Framing::CloseDelimited);
                                }
                                if let (Framing::Length(n), Some(cl)) = (f, app_length) {
                                    assert_eq!(n, cl, "the app's length wins");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn version_strings() {
    assert_eq!(Version::Http10.as_str(), "HTTP/1.0");
    assert_eq!(Version::Http11.as_str(), "HTTP/1.1");
    assert!(CONTINUE.starts_with(b"HTTP/1.1 100 "));
}

/// Every parse error becomes a whole response: its status line, an HTML
/// page, and a Content-Length that matches the page.
#[test]
fn parse_errors_are_whole_responses() {
    for e in [
        ParseError::InvalidRequestLine,
        ParseError::TooManyHeaders { limit: 3 },
        ParseError::UnsupportedTransferCoding,
        ParseError::ForbiddenProxyRequest,
    ] {
        let out = parse_error(&e);
        let text = String::from_utf8(out.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {} {}\r\n", e.status(), e.reason())));
        assert!(head.contains("\r\nConnection: close\r\n"));
        assert!(head.contains("\r\nContent-Type: text/html\r\n"));
        assert!(head.ends_with(&format!("\r\nContent-Length: {}", body.len())));
        assert!(body.contains(&format!("<title>{}</title>", e.reason())));
        let mut escaped = Vec::new();
        html_escape(&mut escaped, &e.message());
        assert!(body.as_bytes().windows(escaped.len()).any(|w| w == escaped));
    }
}
