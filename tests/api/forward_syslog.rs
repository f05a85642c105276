//! The syslog kind against a real rsyslog (Debian's package; `.ci/run` installs it) over
//! TCP with octet-counted framing, and over TLS against a rustls listener.

use std::time::Duration;

use serde_json::Value;

use crate::forward::{post_events, spawn_forwarding, wait_until};
use crate::skips::skip;

/// A real rsyslogd on a free loopback port writing what it receives to files: `raw.log`
/// (the message as received) and `parsed.log` (the fields rsyslog parsed).
struct Rsyslog {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rsyslogd() -> Option<&'static str> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

impl Rsyslog {
    fn start() -> Option<Rsyslog> {
        let Some(bin) = rsyslogd() else {
            skip("rsyslogd is not installed (apt-get install rsyslog; .ci/run installs it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = dir.path().display();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="256k")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\n")
template(name="parsed" type="string" string="%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
action(type="omfile" file="{d}/raw.log" template="raw")
action(type="omfile" file="{d}/parsed.log" template="parsed")
"#
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).unwrap();
        let child = std::process::Command::new(bin)
            .args(["-n", "-f"])
            .arg(dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Ready when it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Rsyslog { child, port, dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rsyslogd did not start listening on {port}");
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn syslog_reaches_a_real_rsyslog_in_order_and_survives_its_restart() {
    let Some(mut rsyslog) = Rsyslog::start() else {
        return;
    };
    let port = rsyslog.port;
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "rsyslog"
kind = "syslog"
address = "127.0.0.1:{port}"
facility = "authpriv"
hostname = "audit-host"
max_backoff = "200ms"
"#
    ))
    .await;
    let ids = post_events(&app, "sys", 25).await;
    wait_until(30, "25 messages in rsyslog", || {
        rsyslog.lines("parsed.log").len() >= 25
    })
    .await;
    let parsed = rsyslog.lines("parsed.log");
    assert_eq!(parsed.len(), 25, "{parsed:?}");
    let mut got = Vec::new();
    for (i, line) in parsed.iter().enumerate() {
        let fields: Vec<&str> = line.splitn(8, '|').collect();
        // authpriv (10) * 8 + info (6)
        assert_eq!(fields[0], "86", "{line}");
        assert_eq!(
            fields[1],
            format!("2023-11-14T22:13:20.{:03}Z", i),
            "{line}"
        );
        assert_eq!(fields[2], "audit-host");
        assert_eq!(fields[3], "audithook");
        assert_eq!(fields[4], "-");
        assert_eq!(fields[5], "launchdarkly");
        assert_eq!(fields[6], "-");
        let envelope: Value = serde_json::from_str(fields[7].trim_start()).unwrap();
        assert_eq!(envelope["raw"]["_id"], envelope["id"]);
        got.push(envelope["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ids);
    // The raw message is RFC 5424 as sent (rsyslog removed the octet count).
    let raw = rsyslog.lines("raw.log");
    assert!(raw[0].starts_with("<86>1 2023-11-14T22:13:20.000Z audit-host audithook - launchdarkly - {\"source\":\"launchdarkly\",\"id\":\"sys-0000\""), "{}", raw[0]);

    // rsyslog restarts: the connection audithook holds is dead; the next events still
    // arrive, on a new connection.
    let dir = rsyslog.dir.path().to_owned();
    let _ = rsyslog.child.kill();
    let _ = rsyslog.child.wait();
    let more = post_events(&app, "sys2", 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bin = rsyslogd().unwrap();
    rsyslog.child = std::process::Command::new(bin)
        .args(["-n", "-f"])
        .arg(dir.join("rsyslog.conf"))
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(30, "the events after the restart", || {
        let ids: Vec<String> = rsyslog
            .lines("parsed.log")
            .iter()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l.splitn(8, '|').nth(7).unwrap().trim_start()).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect();
        more.iter().all(|m| ids.contains(m))
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn syslog_over_tls_checks_the_collector_certificate() {
    use tokio::io::AsyncReadExt;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "tls"
kind = "syslog"
address = "localhost:{port}"
tls = true
ca = "{}"
"#,
        ca.display()
    ))
    .await;
    let ids = post_events(&app, "tls", 3).await;
    wait_until(20, "three TLS frames", || {
        String::from_utf8_lossy(&received.lock().unwrap())
            .matches("<134>1 ")
            .count()
            >= 3
    })
    .await;
    // Octet-counted frames: "LEN <134>1 ...".
    let data = received.lock().unwrap().clone();
    let mut rest = &data[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let sp = rest.iter().position(|b| *b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
        let msg = std::str::from_utf8(&rest[sp + 1..sp + 1 + len]).unwrap();
        let json = &msg[msg.find('{').unwrap()..];
        let v: Value = serde_json::from_str(json).unwrap();
        got.push(v["id"].as_str().unwrap().to_owned());
        rest = &rest[sp + 1 + len..];
    }
    assert_eq!(got, ids);
    app.stop().await;
    // Without the CA the certificate is not trusted: nothing is delivered.
    let app = spawn_forwarding(&format!(
        "[[destinations]]\nname = \"tls\"\nkind = \"syslog\"\naddress = \"localhost:{port}\"\ntls = true\nmax_backoff = \"200ms\"\n"
    ))
    .await;
    post_events(&app, "untrusted", 1).await;
    let state = crate::forward::destination_when(&app, "tls", |s| !s["last_error"].is_null()).await;
    assert_eq!(state["last_error"]["class"], "tls", "{state}");
    assert_eq!(state["delivered"], 0);
    app.stop().await;
}
