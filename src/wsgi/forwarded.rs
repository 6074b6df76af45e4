//! Headers a trusted front-end proxy may set, read as Gunicorn reads them
//! (`HeaderPolicy._apply_header_policy` and `wsgi.create`):
//!
//! - `secure_scheme_headers` (`X-Forwarded-Proto: https` ...) decide
//!   `wsgi.url_scheme`; two of them that disagree are a 400;
//! - `forwarder_headers`: header names with `_` (dropped from everyone
//!   else) that a trusted proxy may send; a `SCRIPT_NAME` header becomes the
//!   environ's `SCRIPT_NAME` and is cut off `PATH_INFO`;
//! - PROXY protocol data becomes `REMOTE_ADDR`/`REMOTE_PORT` and the
//!   `PROXY_*` keys.
//!
//! Who is trusted is decided once per connection (`Peer::trusted`, from
//! `forwarded_allow_ips`, parsed once per worker into [`ProxyPolicy`]).
//! Per request, an untrusted peer costs one branch; a trusted one a scan of
//! its header names against the (by default three) scheme headers.

use super::Peer;
use crate::config::Settings;
use crate::http::proxy::{AllowList, Mode, ProxyInfo};
use crate::http::{ParseError, Request};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::net::IpAddr;

/// The proxy-related settings, parsed once per worker.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    /// `forwarded_allow_ips`.
    pub forwarded: AllowList,
    /// `secure_scheme_headers`: (name, value that means https).
    secure: Vec<(Vec<u8>, Vec<u8>)>,
    /// `forwarder_headers`, upper case.
    forwarder: Vec<Vec<u8>>,
    forwarder_any: bool,
    /// `proxy_protocol`.
    pub proxy_mode: Mode,
    /// `proxy_allow_ips`.
    pub proxy_allow: AllowList,
    /// `header_map`.
    header_map: HeaderMap,
}

/// `header_map`: what becomes of a header whose name has an underscore
/// (`X_Api_Key` would map to the same environ key as `X-Api-Key`), unless
/// a trusted proxy may send it (`forwarder_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMap {
    /// Left out of the environ (Gunicorn's default).
    #[default]
    Drop,
    /// The request is answered 400.
    Refuse,
    /// Mapped as if it had dashes.
    Dangerous,
}

impl HeaderMap {
    fn parse(s: &str) -> HeaderMap {
        match s.trim().to_ascii_lowercase().as_str() {
            "refuse" => HeaderMap::Refuse,
            "dangerous" => HeaderMap::Dangerous,
            // "drop" (the value was checked when the settings were read).
            _ => HeaderMap::Drop,
        }
    }
}

impl Default for ProxyPolicy {
    /// Gunicorn's defaults.
    fn default() -> Self {
        ProxyPolicy {
            forwarded: AllowList::parse(&["127.0.0.1", "::1"]).unwrap_or_default(),
            secure: [
                ("X-FORWARDED-PROTOCOL", "ssl"),
                ("X-FORWARDED-PROTO", "https"),
                ("X-FORWARDED-SSL", "on"),
            ]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
            forwarder: vec![b"SCRIPT_NAME".to_vec(), b"PATH_INFO".to_vec()],
            forwarder_any: false,
            proxy_mode: Mode::Off,
            proxy_allow: AllowList::parse(&["127.0.0.1", "::1"]).unwrap_or_default(),
            header_map: HeaderMap::Drop,
        }
    }
}

impl ProxyPolicy {
    /// From the resolved settings (already validated by the config).
    pub fn from_settings(s: &Settings) -> Result<ProxyPolicy, String> {
        Ok(ProxyPolicy {
            forwarded: AllowList::parse(&s.forwarded_allow_ips)?,
            secure: s
                .secure_scheme_headers
                .iter()
                .map(|(k, v)| (k.to_ascii_uppercase().into_bytes(), v.as_bytes().to_vec()))
                .collect(),
            forwarder: s
                .forwarder_headers
                .iter()
                .map(|h| h.to_ascii_uppercase().into_bytes())
                .collect(),
            forwarder_any: s.forwarder_headers.iter().any(|h| h == "*"),
            proxy_mode: Mode::parse(&s.proxy_protocol),
            proxy_allow: AllowList::parse(&s.proxy_allow_ips)?,
            header_map: HeaderMap::parse(&s.header_map),
        })
    }

    /// Whether a socket peer may set forwarded headers (`None`: a Unix
    /// socket, always trusted as in Gunicorn).
    pub fn trusts(&self, ip: Option<IpAddr>) -> bool {
        ip.is_none() || self.forwarded.contains(ip)
    }
}

/// What the trusted headers of one request said.
#[derive(Debug, Default)]
pub(super) struct Forwarded<'a> {
    pub https: bool,
    pub script_name: Option<&'a str>,
    policy: Option<&'a ProxyPolicy>,
    /// `header_map = "dangerous"`.
    dangerous: bool,
}

impl Forwarded<'_> {
    /// May this trusted proxy send this header name with `_`?
    pub fn forwarder_allowed(&self, name: &[u8]) -> bool {
        let Some(p) = self.policy else { return false };
        p.forwarder_any || p.forwarder.iter().any(|f| f.eq_ignore_ascii_case(name))
    }

    /// Does this header name with `_` go into the environ?
    pub fn maps_underscored(&self, name: &[u8]) -> bool {
        self.dangerous || self.forwarder_allowed(name)
    }
}

/// Read the scheme and forwarder headers of a request from a trusted peer.
pub(super) fn inspect<'a>(
    policy: &'a ProxyPolicy,
    req: &'a Request,
    peer: &Peer,
) -> Result<Forwarded<'a>, ParseError> {
    let dangerous = policy.header_map == HeaderMap::Dangerous;
    if !peer.trusted {
        refuse_underscored(policy, req, |_| false)?;
        return Ok(Forwarded {
            https: peer.tls,
            dangerous,
            ..Forwarded::default()
        });
    }
    let mut out = Forwarded {
        policy: Some(policy),
        https: peer.tls,
        dangerous,
        ..Forwarded::default()
    };
    refuse_underscored(policy, req, |name| out.forwarder_allowed(name))?;
    let mut scheme_seen = false;
    for h in &req.headers {
        for (name, value) in &policy.secure {
            if h.name.eq_ignore_ascii_case(name) {
                let https = h.value == *value;
                if scheme_seen && https != out.https {
                    return Err(ParseError::InvalidSchemeHeaders);
                }
                scheme_seen = true;
                out.https = https;
            }
        }
        if h.name.eq_ignore_ascii_case(b"SCRIPT_NAME") && out.forwarder_allowed(b"SCRIPT_NAME") {
            // Header bytes are latin-1; a non-UTF-8 value cannot be a prefix
            // of the (latin-1 decoded) path in a way we could cut safely.
            out.script_name = std::str::from_utf8(&h.value).ok();
        }
    }
    if let Some(sn) = out.script_name {
        if sn.is_empty() {
            out.script_name = None;
        } else if !req.path.starts_with(sn) {
            tracing::error!(
                "Request path {:?} does not start with SCRIPT_NAME {sn:?}",
                req.path
            );
            return Err(ParseError::ScriptNameMismatch);
        }
    }
    Ok(out)
}

/// `header_map = "refuse"`: a header name with `_` that no trusted proxy
/// may send is a 400 (Gunicorn's `InvalidHeaderName`).
fn refuse_underscored(
    policy: &ProxyPolicy,
    req: &Request,
    allowed: impl Fn(&[u8]) -> bool,
) -> Result<(), ParseError> {
    if policy.header_map != HeaderMap::Refuse {
        return Ok(());
    }
    match req
        .headers
        .iter()
        .find(|h| h.name.contains(&b'_') && !allowed(&h.name))
    {
        Some(h) => {
            tracing::debug!(
                "Refused header {:?} (header_map = refuse)",
                String::from_utf8_lossy(&h.name)
            );
            Err(ParseError::UnderscoreHeaderName)
        }
        None => Ok(()),
    }
}

/// `HTTP_SCRIPT_NAME` for a forwarder header (rare: not cached).
pub(super) fn underscore_key(py: Python<'_>, name: &[u8]) -> Py<PyString> {
    let mut s = String::with_capacity(name.len() + 5);
    s.push_str("HTTP_");
    s.extend(name.iter().map(|&b| match b {
        b'-' => '_',
        b => b.to_ascii_uppercase() as char,
    }));
    PyString::new(py, &s).unbind()
}

/// Gunicorn's `proxy_environ`: the PROXY header's addresses.
pub(super) fn proxy_environ(
    py: Python<'_>,
    env: &Bound<'_, PyDict>,
    info: &ProxyInfo,
) -> PyResult<()> {
    env.set_item(pyo3::intern!(py, "PROXY_PROTOCOL"), info.protocol)?;
    if let Some((ip, port)) = info.proxy {
        env.set_item(pyo3::intern!(py, "PROXY_ADDR"), ip.to_string())?;
        env.set_item(pyo3::intern!(py, "PROXY_PORT"), port.to_string())?;
    }
    Ok(())
}
