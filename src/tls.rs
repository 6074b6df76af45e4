//! HTTPS: Gunicorn's SSL settings (`certfile`, `keyfile`, `ca_certs`,
//! `cert_reqs`, `ciphers`, `suppress_ragged_eofs`) on rustls with its
//! *ring* provider, and the worker-side terminator.
//!
//! Provider: *ring*, not aws-lc-rs. Both offer the same TLS 1.2/1.3 AEAD
//! suites; *ring* builds with the C compiler alone (aws-lc-sys needs a
//! much larger C build, and cmake or its own build scripts, which this
//! machine lacks), and adds seconds, not minutes, to a release build.
//!
//! The master loads and checks the certificate, key, CA file and cipher
//! list once ([`install`]) before it binds, so a bad file stops the start
//! naming the file; on a reload (HUP) it loads them again, and the new
//! generation of workers (forked after) serves the renewed certificate
//! while the old one finishes its open connections with the old. A reload
//! whose TLS files are bad keeps the previous configuration.
//!
//! The tornado class is the exception (Tornado's server does its own
//! socket I/O): it gets an `ssl.SSLContext` built from the same settings,
//! as under Gunicorn (`worker/tornado.rs`).
//!
//! In a worker ([`Terminator`]): the connection loop accepts as for plain
//! HTTP (only while a slot is free), then hands the socket to a thread
//! named `tls` with its own tokio runtime, which does the handshake under
//! `tls_handshake_timeout` (no Python slot is held meanwhile, and the
//! accept loop does not wait for it), then pairs the connection with a
//! Unix socketpair: a task pumps bytes both ways between the TLS stream and
//! one end, and the other end goes down the plain path as if it were the
//! accepted connection. Every worker class therefore keeps doing its
//! socket I/O on a plain descriptor, from whatever thread or loop it runs
//! the app on, and the sync class, which blocks the connection loop while
//! the app runs, cannot block the pump. The cost is one more copy of each
//! byte and a few more syscalls per read and write (see bench/).
//!
//! HTTP/2: with `h2` in `http_protocols`, the configuration offers ALPN
//! in that order, and a connection that chose `h2` is served on this same
//! thread by `crate::http2` (each stream a socketpair down the plain path)
//! instead of the pump. The thread also starts without TLS when
//! `http2_cleartext` allows prior-knowledge h2c: the connection loop then
//! hands it plain connections that opened with the HTTP/2 preface.
//!
//! The pump: client to app until the client's close_notify (or, with
//! `suppress_ragged_eofs`, a TCP close without one), then a half-close
//! towards the app; app to client until the app's end closes, then
//! close_notify and FIN, and the connection is done. Writes to the client
//! are bounded by the worker's I/O timeout; reads are not (the connection
//! loop's keep-alive and header timeouts close the app's end, which ends
//! the pump).

use anyhow::{anyhow, bail, Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, SupportedCipherSuite};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Settings;

/// The configuration workers forked from now on serve with.
static CURRENT: Mutex<Option<Arc<ServerConfig>>> = Mutex::new(None);

/// Whether the settings ask for HTTPS (Gunicorn's `is_ssl`).
pub fn enabled(s: &Settings) -> bool {
    s.certfile.is_some() || s.keyfile.is_some()
}

/// Load and check the TLS files the settings name and make them the ones
/// new workers serve with. `Err` names the file at fault; the previous
/// configuration then stays.
pub fn install(s: &Settings) -> Result<()> {
    let cfg = load(s)?;
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = cfg;
    Ok(())
}

/// What [`install`] last set (a worker reads it after the fork).
pub fn current() -> Option<Arc<ServerConfig>> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A listener's address as Gunicorn logs it: `https://` when serving TLS.
pub fn scheme(described: String) -> String {
    match described.strip_prefix("http://") {
        Some(rest) if current().is_some() => format!("https://{rest}"),
        _ => described,
    }
}

/// Build the rustls server configuration; `None` without `certfile`.
pub fn load(s: &Settings) -> Result<Option<Arc<ServerConfig>>> {
    let Some(certfile) = s.certfile.as_deref() else {
        if let Some(k) = &s.keyfile {
            bail!("keyfile {k} is set but certfile is not");
        }
        return Ok(None);
    };
    let certs = read_certs(certfile, "certfile")?;
    let key_path = s.keyfile.as_deref().unwrap_or(certfile);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        anyhow!(
            "keyfile {key_path}: {}",
            pem_error(e, "a private key (-----BEGIN PRIVATE KEY-----)")
        )
    })?;
    let provider = Arc::new(provider(s.ciphers.as_deref())?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match s.cert_reqs {
        0 => builder.with_no_client_auth(),
        n @ (1 | 2) => {
            let Some(ca) = s.ca_certs.as_deref() else {
                bail!("cert_reqs {n} checks client certificates and needs ca_certs (the CAs they must chain to)");
            };
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "ca_certs")? {
                roots
                    .add(c)
                    .map_err(|e| anyhow!("ca_certs {ca}: not a usable CA certificate: {e}"))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if n == 1 { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| anyhow!("ca_certs {ca}: cannot verify clients with it: {e}"))?,
            )
        }
        n => bail!("cert_reqs {n}: must be 0 (none), 1 (optional) or 2 (required)"),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow!("certfile {certfile} and keyfile {key_path} do not make a usable pair: {e}")
    })?;
    // Python's server-side default context prefers the server's order.
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = alpn(s);
    Ok(Some(Arc::new(cfg)))
}

/// What ALPN offers, in `http_protocols`' order: nothing unless h2 is
/// listed (HTTP/1.1 alone needs no negotiation, as in Gunicorn).
fn alpn(s: &Settings) -> Vec<Vec<u8>> {
    let protos = crate::http2::protocols(s);
    if !protos.iter().any(|p| p == "h2") {
        return Vec::new();
    }
    protos
        .iter()
        .filter_map(|p| match p.as_str() {
            "h2" => Some(b"h2".to_vec()),
            "h1" => Some(b"http/1.1".to_vec()),
            _ => None,
        })
        .collect()
}

fn read_certs(path: &str, setting: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "{setting} {path}: {}",
                pem_error(e, "certificates (-----BEGIN CERTIFICATE-----)")
            )
        })?;
    if certs.is_empty() {
        bail!("{setting} {path}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)");
    }
    Ok(certs)
}

fn pem_error(e: rustls::pki_types::pem::Error, want: &str) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(e) => format!("cannot read it: {e}"),
        E::NoItemsFound => format!("no PEM {want} in it"),
        e => format!("not valid PEM ({e:?}); expected {want}"),
    }
}

/// The *ring* provider, its TLS 1.2 suites cut down to `ciphers`.
fn provider(ciphers: Option<&str>) -> Result<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(spec) = ciphers {
        let tls12 = select_ciphers(spec, &p.cipher_suites)?;
        p.cipher_suites
            .retain(|s| matches!(s, SupportedCipherSuite::Tls13(_)));
        p.cipher_suites.extend(tls12);
    }
    Ok(p)
}

/// A TLS 1.2 suite rustls offers, as OpenSSL names and classifies it.
struct Named {
    suite: SupportedCipherSuite,
    openssl: &'static str,
    ecdsa: bool,
    bulk: &'static str,
    sha384: bool,
}

fn named(all: &[SupportedCipherSuite]) -> Vec<Named> {
    use rustls::CipherSuite as C;
    let table: [(C, &str, bool, &str, bool); 6] = [
        (
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            true,
            "AES256GCM",
            true,
        ),
        (
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            true,
            "AES128GCM",
            false,
        ),
        (
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            true,
            "CHACHA20",
            false,
        ),
        (
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            "ECDHE-RSA-AES256-GCM-SHA384",
            false,
            "AES256GCM",
            true,
        ),
        (
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            "ECDHE-RSA-AES128-GCM-SHA256",
            false,
            "AES128GCM",
            false,
        ),
        (
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            "ECDHE-RSA-CHACHA20-POLY1305",
            false,
            "CHACHA20",
            false,
        ),
    ];
    table
        .into_iter()
        .filter_map(|(id, openssl, ecdsa, bulk, sha384)| {
            let suite = *all.iter().find(|s| s.suite() == id)?;
            Some(Named {
                suite,
                openssl,
                ecdsa,
                bulk,
                sha384,
            })
        })
        .collect()
}

/// OpenSSL aliases (and TLS 1.3 or weak names) that select nothing rustls
/// offers in TLS 1.2: accepted, as OpenSSL accepts an alias that matches
/// nothing, but they add no suite.
const NOTHING_HERE: &[&str] = &[
    "RSA",
    "kRSA",
    "DHE",
    "EDH",
    "kDHE",
    "kEDH",
    "DH",
    "kDH",
    "ADH",
    "AECDH",
    "aNULL",
    "eNULL",
    "NULL",
    "COMPLEMENTOFALL",
    "COMPLEMENTOFDEFAULT",
    "MEDIUM",
    "LOW",
    "EXPORT",
    "EXP",
    "RC4",
    "DES",
    "3DES",
    "MD5",
    "SHA1",
    "SHA",
    "CAMELLIA",
    "ARIA",
    "SEED",
    "IDEA",
    "PSK",
    "kPSK",
    "ECDHEPSK",
    "DHEPSK",
    "RSAPSK",
    "SRP",
    "kSRP",
    "DSS",
    "aDSS",
    "DSA",
    "CBC",
    "CCM",
    "CCM8",
    "AESCCM",
    "AESCCM8",
    "kECDH",
    "aECDH",
    "kECDHr",
    "kECDHe",
    "GOST",
    "SSLv3",
    "TLSv1",
    "TLSv1.0",
    "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
];

/// Does one OpenSSL cipher-list word (no `+`) select suite `n`? `None`: a
/// word we do not know.
fn word_matches(word: &str, n: &Named, all: &[Named]) -> Option<bool> {
    let iana = |n: &Named| format!("{:?}", n.suite.suite());
    Some(match word {
        "ALL" | "DEFAULT" | "HIGH" | "ECDHE" | "EECDH" | "kECDHE" | "kEECDH" | "ECDH" | "AEAD"
        | "TLSv1.2" | "SUITEB128" | "SUITEB192" | "SUITEB128ONLY" => {
            !word.starts_with("SUITEB") || n.ecdsa
        }
        "AESGCM" | "AES" => n.bulk != "CHACHA20",
        "AES128" => n.bulk == "AES128GCM",
        "AES256" => n.bulk == "AES256GCM",
        "CHACHA20" => n.bulk == "CHACHA20",
        "ECDSA" | "aECDSA" => n.ecdsa,
        "aRSA" => !n.ecdsa,
        "SHA256" => !n.sha384,
        "SHA384" => n.sha384,
        w if all.iter().any(|o| w == o.openssl || w == iana(o)) => w == n.openssl || w == iana(n),
        w if NOTHING_HERE.contains(&w) => false,
        w if w.starts_with("@SECLEVEL=") || w == "@STRENGTH" => false,
        _ => return None,
    })
}

/// Apply an OpenSSL cipher list (`A:B`, `A+B` = both, `!A` = never, `-A`
/// = remove, `+A` = move to the end, `@STRENGTH`/`@SECLEVEL=n` accepted)
/// to the TLS 1.2 suites rustls offers. A word that names a cipher rustls
/// cannot offer (`AES256-SHA`, `DHE-RSA-AES128-GCM-SHA256`) or that is
/// not an OpenSSL word at all is refused, as is a list that selects none.
pub fn select_ciphers(
    spec: &str,
    all: &[SupportedCipherSuite],
) -> Result<Vec<SupportedCipherSuite>> {
    let named = named(all);
    let offered = || {
        named
            .iter()
            .map(|n| n.openssl)
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut list: Vec<usize> = Vec::new();
    let mut banned: Vec<usize> = Vec::new();
    let words = spec
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty());
    for token in words {
        let (op, body) = match token.as_bytes()[0] {
            b'!' | b'-' | b'+' => (token.as_bytes()[0], &token[1..]),
            _ => (b' ', token),
        };
        let mut selected = Vec::new();
        for (i, n) in named.iter().enumerate() {
            let mut all_match = true;
            for w in body.split('+') {
                match word_matches(w, n, &named) {
                    Some(m) => all_match &= m,
                    None => bail!(
                        "ciphers: `{w}` is not a cipher rustls can offer (it offers, for TLS 1.2: {}; \
                         TLS 1.3 suites are always on)",
                        offered()
                    ),
                }
            }
            if all_match {
                selected.push(i);
            }
        }
        match op {
            b'!' => {
                banned.extend(&selected);
                list.retain(|i| !selected.contains(i));
            }
            b'-' => list.retain(|i| !selected.contains(i)),
            b'+' => {
                let (moved, kept): (Vec<usize>, Vec<usize>) =
                    list.iter().partition(|i| selected.contains(i));
                list = kept;
                list.extend(moved);
            }
            _ => {
                for i in selected {
                    if !list.contains(&i) && !banned.contains(&i) {
                        list.push(i);
                    }
                }
            }
        }
    }
    if list.is_empty() {
        bail!(
            "ciphers `{spec}` selects no TLS 1.2 suite rustls offers (it offers: {})",
            offered()
        );
    }
    Ok(list.into_iter().map(|i| named[i].suite).collect())
}

// ---- the worker side

/// An accepted connection, as the terminator takes it over.
pub enum Raw {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// How the terminator treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// `tls_handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `suppress_ragged_eofs`.
    pub ragged_ok: bool,
    /// Longest wait for the client to take bytes the app wrote.
    pub write_timeout: Duration,
    /// `h2` is in `http_protocols`: how its connections are set up.
    pub h2: Option<crate::http2::Limits>,
    /// `h1` is in `http_protocols` (a TLS client that did not choose h2 by
    /// ALPN is served HTTP/1.1 only then).
    pub h1: bool,
}

impl Opts {
    pub fn from_settings(s: &Settings, write_timeout: Duration) -> Opts {
        Opts {
            handshake_timeout: Duration::from_secs(s.tls_handshake_timeout.max(1)),
            ragged_ok: s.suppress_ragged_eofs,
            write_timeout,
            h2: crate::http2::enabled(s).then(|| crate::http2::Limits::from_settings(s)),
            h1: crate::http2::protocols(s).iter().any(|p| p == "h1"),
        }
    }
}

/// What to do with a plain end: the connection's once its handshake is
/// done (`false`), or each of its HTTP/2 streams' (`true`).
pub type Done = crate::http2::Hand;

/// How a connection reaches the front thread.
pub enum Kind {
    /// A TLS client: handshake, then HTTP/1.1 or, by ALPN, HTTP/2.
    Tls,
    /// A plain connection that opened with the HTTP/2 preface (h2c prior
    /// knowledge); these bytes were already read from it.
    H2c(Vec<u8>),
}

struct Job {
    raw: Raw,
    kind: Kind,
    /// Held (the connection counts as open) until the pump ends.
    guard: Box<dyn Send>,
    done: Done,
}

/// The worker's `tls` thread: handshakes and pumps (see the module
/// comment), and HTTP/2 connections (`crate::http2`). Cloning shares the
/// thread.
#[derive(Clone)]
pub struct Terminator {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl Terminator {
    /// Start the thread. Call it while TERM and USR1 are blocked on the
    /// calling thread: the new thread keeps them blocked.
    /// `config` is `None` when the thread serves only h2c; `shutdown`
    /// turns true when the worker drains (HTTP/2 connections send GOAWAY).
    pub fn start(
        config: Option<Arc<ServerConfig>>,
        opts: Opts,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Terminator> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tls".into())
            .spawn(move || {
                rt.block_on(async move {
                    let acceptor = config.map(tokio_rustls::TlsAcceptor::from);
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(terminate(acceptor.clone(), opts, shutdown.clone(), job));
                    }
                    // The accept loops are gone (the worker drains): the
                    // pumps still running finish their connections.
                    std::future::pending::<()>().await
                })
            })?;
        Ok(Terminator { tx })
    }

    /// Take over an accepted connection; `guard` is dropped when it ends,
    /// `done` gets the plain end once the handshake succeeded.
    pub fn submit(&self, raw: Raw, kind: Kind, guard: Box<dyn Send>, done: Done) {
        let _ = self.tx.send(Job {
            raw,
            kind,
            guard,
            done,
        });
    }
}

async fn terminate(
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    opts: Opts,
    shutdown: tokio::sync::watch::Receiver<bool>,
    job: Job,
) {
    let Job {
        raw,
        kind,
        guard,
        done,
    } = job;
    let _guard = guard;
    let r = match raw {
        Raw::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
            Ok(s) => front(acceptor, opts, shutdown, s, kind, done).await,
            Err(e) => Err(e),
        },
        Raw::Unix(s) => match tokio::net::UnixStream::from_std(s) {
            Ok(s) => front(acceptor, opts, shutdown, s, kind, done).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        tracing::debug!("TLS connection: {e}");
    }
}

async fn front<S>(
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    opts: Opts,
    shutdown: tokio::sync::watch::Receiver<bool>,
    s: S,
    kind: Kind,
    done: Done,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = match (kind, acceptor, opts.h2) {
        (Kind::H2c(prefix), _, Some(limits)) => {
            let io = crate::http2::Prefixed::new(prefix, s);
            if let Err(e) =
                crate::http2::serve(io, limits, opts.write_timeout, shutdown, done).await
            {
                tracing::debug!("HTTP/2 connection: {e}");
            }
            return Ok(());
        }
        (Kind::Tls, Some(a), _) => a,
        _ => return Ok(()),
    };
    let tls = match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(s)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            return Ok(());
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return Ok(());
        }
    };
    match (tls.get_ref().1.alpn_protocol(), opts.h2) {
        (Some(b"h2"), Some(limits)) => {
            if let Err(e) =
                crate::http2::serve(tls, limits, opts.write_timeout, shutdown, done).await
            {
                tracing::debug!("HTTP/2 connection: {e}");
            }
            return Ok(());
        }
        // h2 only, and the client did not choose it.
        _ if !opts.h1 => return Ok(()),
        _ => {}
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    theirs.set_nonblocking(true)?;
    let ours = tokio::net::UnixStream::from_std(ours)?;
    done(theirs, false);
    pump(tls, ours, opts).await
}

/// Bytes both ways between the client's TLS stream and the app's end.
async fn pump<T>(tls: T, plain: tokio::net::UnixStream, opts: Opts) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tr, mut tw) = tokio::io::split(tls);
    let (mut pr, mut pw) = plain.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => pw.write_all(&buf[..n]).await?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && opts.ragged_ok => break,
                Err(e) => return Err(e),
            }
        }
        // The client is done sending: the app reads the end of input.
        pw.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = pr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let w = async {
                tw.write_all(&buf[..n]).await?;
                tw.flush().await
            };
            tokio::time::timeout(opts.write_timeout, w)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        }
        // close_notify, then FIN.
        let _ = tokio::time::timeout(opts.write_timeout, tw.shutdown()).await;
        Ok::<(), std::io::Error>(())
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => r,
        r = &mut up => {
            r?;
            down.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<SupportedCipherSuite> {
        rustls::crypto::ring::default_provider().cipher_suites
    }

    fn names(spec: &str) -> Result<Vec<String>> {
        Ok(select_ciphers(spec, &all())?
            .into_iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect())
    }

    #[test]
    fn openssl_names_and_aliases_select_rustls_suites() {
        assert_eq!(
            names("ECDHE-RSA-AES128-GCM-SHA256").expect("ok"),
            ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        );
        assert_eq!(names("HIGH:!aNULL:!MD5").expect("ok").len(), 6);
        assert_eq!(
            names("ECDHE+AESGCM:!ECDSA").expect("ok"),
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(
            names("CHACHA20:AES128:-aECDSA").expect("ok"),
            [
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(
            names("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:@STRENGTH").expect("ok"),
            ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]
        );
    }

    #[test]
    fn ciphers_rustls_cannot_offer_are_refused() {
        let e = names("AES256-SHA")
            .expect_err("static RSA, CBC")
            .to_string();
        assert!(
            e.contains("`AES256-SHA` is not a cipher rustls can offer"),
            "{e}"
        );
        assert!(e.contains("ECDHE-RSA-AES128-GCM-SHA256"), "{e}");
        let e = names("DHE-RSA-AES128-GCM-SHA256")
            .expect_err("DHE")
            .to_string();
        assert!(e.contains("DHE-RSA-AES128-GCM-SHA256"), "{e}");
        let e = names("RC4:MD5").expect_err("selects nothing").to_string();
        assert!(e.contains("selects no TLS 1.2 suite"), "{e}");
    }
}
