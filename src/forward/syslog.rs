//! The `syslog` kind: RFC 5424 messages over TCP or TLS with octet-counted framing
//! (RFC 6587 3.4.1 / RFC 5425), one message per event, the envelope as JSON in the message.
//!
//! TCP gives no receipt: a batch counts as accepted when it is written and flushed on a
//! connection that was open before it was written. A collector that dies after reading a
//! batch but before storing it loses that batch; audithook then resends only what it had
//! not written (see the README: RELP would close that gap).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::Outcome;
use crate::store::StoredEvent;

/// TLS to the collector: its name, and the roots its certificate must chain to (the web's
/// roots plus `ca`).
#[derive(Clone)]
pub struct TlsSettings {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// For `address` (host:port), trusting `ca` (a PEM file) besides the web's roots.
    pub fn new(address: &str, ca: Option<&Path>) -> Result<Self, String> {
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("address: {host:?} is not a TLS server name: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = ca {
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("ca: cannot read {}: {e}", ca.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("ca: {} is not PEM certificates: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("ca: {} holds no certificate", ca.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("ca: {}: {e}", ca.display()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// The facility number of a name (`local0`..`local7`, `auth`, `authpriv`, `user`, ...).
pub fn facility(name: &str) -> Result<u8, String> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .map(|p| p as u8)
        .ok_or_else(|| format!("{name:?} is not a syslog facility ({})", NAMES.join(", ")))
}

/// This machine's host name (`-` when unknown, as RFC 5424 writes a missing value).
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// Severity of every message: informational.
const SEVERITY_INFO: u8 = 6;

/// Appends one octet-counted RFC 5424 message for `row` to `out`.
pub fn frame(out: &mut Vec<u8>, row: &StoredEvent, facility: u8, hostname: &str) {
    let mut msg = Vec::with_capacity(row.raw.len() + 256);
    let pri = u16::from(facility) * 8 + u16::from(SEVERITY_INFO);
    // MSGID is the source (printable ASCII, at most 32 characters).
    msg.extend_from_slice(
        format!(
            "<{pri}>1 {} {hostname} audithook - {} - ",
            crate::event::rfc3339_ms(row.date),
            row.source
        )
        .as_bytes(),
    );
    crate::event::write_envelope(&mut msg, &row.envelope());
    out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
    out.extend_from_slice(&msg);
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A connection to the collector, opened when needed and dropped on any error.
pub struct Sender {
    address: String,
    tls: Option<TlsSettings>,
    facility: u8,
    hostname: String,
    timeout: Duration,
    stream: Option<Box<dyn Stream>>,
}

impl Sender {
    pub fn new(
        address: String,
        tls: Option<TlsSettings>,
        facility: u8,
        hostname: String,
        timeout: Duration,
    ) -> Self {
        Self {
            address,
            tls,
            facility,
            hostname,
            timeout,
            stream: None,
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, Outcome> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| {
                Outcome::retry(
                    "timeout",
                    None,
                    format!("connecting to {} timed out", self.address),
                )
            })?
            .map_err(|e| {
                Outcome::retry(
                    "connect",
                    None,
                    format!("cannot connect to {}: {e}", self.address),
                )
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let s = tokio::time::timeout(
                    self.timeout,
                    tls.connector.connect(tls.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| Outcome::retry("timeout", None, "TLS handshake timed out".into()))?
                .map_err(|e| {
                    Outcome::retry(
                        "tls",
                        None,
                        format!("TLS handshake with {} failed: {e}", self.address),
                    )
                })?;
                Ok(Box::new(s))
            }
        }
    }

    /// Whether the open connection is still open: a collector that closed it (or reset it)
    /// is noticed before a batch is written into it.
    async fn still_open(stream: &mut Box<dyn Stream>) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::ZERO, stream.read(&mut buf)).await {
                Err(_) => return true,
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                // A collector has nothing to say; drain whatever it said.
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Sends `events`, one message each; the outcome applies to all of them.
    pub async fn send(&mut self, events: &[&StoredEvent]) -> Outcome {
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.raw.len() + 300).sum());
        for e in events {
            frame(&mut buf, e, self.facility, &self.hostname);
        }
        let open = match self.stream.take() {
            Some(mut s) => Self::still_open(&mut s).await.then_some(s),
            None => None,
        };
        let mut stream = match open {
            Some(s) => s,
            None => match self.connect().await {
                Ok(s) => s,
                Err(o) => return o,
            },
        };
        let write = async {
            stream.write_all(&buf).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {
                self.stream = Some(stream);
                Outcome::Delivered
            }
            Ok(Err(e)) => Outcome::retry(
                "connect",
                None,
                format!("writing to {} failed: {e}", self.address),
            ),
            Err(_) => Outcome::retry(
                "timeout",
                None,
                format!("writing to {} timed out", self.address),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_octet_counted_rfc5424() {
        let row = StoredEvent {
            seq: 1,
            id: "abc".into(),
            date: 1_700_000_000_123,
            raw: r#"{"k":"v"}"#.into(),
            source: "tfc".into(),
            actor: "ada".into(),
            action: "create".into(),
            resource: "run/1".into(),
            summary: "s".into(),
        };
        let mut out = Vec::new();
        frame(&mut out, &row, 16, "host1");
        let text = String::from_utf8(out).unwrap();
        let msg = r#"<134>1 2023-11-14T22:13:20.123Z host1 audithook - tfc - {"source":"tfc","id":"abc","date":1700000000123,"time":"2023-11-14T22:13:20.123Z","actor":"ada","action":"create","resource":"run/1","summary":"s","raw":{"k":"v"}}"#;
        assert_eq!(text, format!("{} {msg}", msg.len()));
        assert_eq!(facility("authpriv"), Ok(10));
        assert!(facility("local9").is_err());
    }
}
