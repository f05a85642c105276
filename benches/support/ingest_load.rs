//! What the ingest and forwarding benchmarks share: the load generator (keep-alive HTTP/1.1
//! connections posting distinct ~1.2 KB default-payload events), and process helpers.

#![allow(dead_code)]

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

pub const TOKEN: &str = "bench-hook-token";

/// `audithook serve` on `127.0.0.1:port` over the store at `url`, with the bench's tokens,
/// quiet, and none of the caller's LaunchDarkly or destination settings (not started).
pub fn serve_command(url: &str, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audithook"));
    cmd.arg("serve")
        .env("AUDITHOOK_LISTEN", format!("127.0.0.1:{port}"))
        .env("AUDITHOOK_DATABASE_URL", url)
        .env("AUDITHOOK_HOOK_TOKEN", TOKEN)
        .env("AUDITHOOK_API_TOKEN", "bench-read-token")
        .env("RUST_LOG", "warn")
        .env_remove("LD_API_TOKEN")
        .env_remove("AUDITHOOK_DESTINATIONS")
        .stdout(std::process::Stdio::null());
    cmd
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on port {port} did not start");
}

pub fn peak_rss_kib(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// A distinct event shaped like LaunchDarkly's default payload (~1.2 KB).
pub fn event(n: u64) -> String {
    let ms = 1_700_000_000_000u64 + n;
    format!(
        r#"{{"_links":{{"canonical":{{"href":"/api/v2/flags/default/flag-{n}","type":"application/json"}},"parent":{{"href":"/api/v2/auditlog","type":"application/json"}},"self":{{"href":"/api/v2/auditlog/{n:024x}","type":"application/json"}},"site":{{"href":"/default/production/features/flag-{n}","type":"text/html"}}}},"_id":"{n:024x}","_accountId":"5c7d1d9e0e1f2a3b4c5d6e7f","timestamp":{{"milliseconds":{ms},"seconds":{s},"rfc3339":"2023-11-14T22:13:20Z","simple":"2023-11-14 22:13:20"}},"kind":"flag","name":"Flag number {n}","description":"- Turned on the flag","shortDescription":"","comment":"rollout step {n}","member":{{"_links":{{"parent":{{"href":"/api/v2/members","type":"application/json"}},"self":{{"href":"/api/v2/members/569f514183f2164430000002","type":"application/json"}}}},"_id":"569f514183f2164430000002","email":"sandy@example.com","firstName":"Sandy","lastName":"Smith"}},"titleVerb":"turned on the flag","markdownTitle":"[Sandy Smith](mailto:sandy@example.com) turned on the flag [Flag number {n}](https://app.launchdarkly.com/default/production/features/flag-{n}) in `Production`","title":"Sandy Smith turned on the flag Flag number {n} in 'Production'","target":{{"_links":null,"name":"Flag number {n}","resources":["proj/default:env/production:flag/flag-{n}"]}},"accesses":[{{"action":"updateOn","resource":"proj/default:env/production:flag/flag-{n}"}}]}}"#,
        s = ms / 1000
    )
}

pub struct LoadResult {
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
    pub errors: u64,
    pub acked: Vec<String>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len() - 1);
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// `connections` keep-alive HTTP/1.1 connections spread over `ports`, each posting distinct
/// events back to back.
pub async fn load(
    ports: &[u16],
    connections: usize,
    duration: Duration,
    first_event: u64,
) -> LoadResult {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(first_event));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let counter = counter.clone();
        let port = ports[c % ports.len()];
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).ok();
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let (mut lat, mut errors, mut acked) = (Vec::new(), 0u64, Vec::new());
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = event(n);
                let req = hyper::Request::post("/hooks/launchdarkly")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Full::new(Bytes::from(body)))
                    .expect("request");
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        lat.push(t.elapsed().as_micros() as u32);
                        if ok {
                            acked.push(format!("{n:024x}"));
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors, acked)
        }));
    }
    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        errors: 0,
        acked: Vec::new(),
    };
    for t in tasks {
        let (lat, errors, acked) = t.await.expect("load task");
        result.latencies_us.extend(lat);
        result.errors += errors;
        result.acked.extend(acked);
    }
    result.elapsed = start.elapsed();
    result.latencies_us.sort_unstable();
    result
}

/// Serves `app` on `listener` until SIGTERM.
pub async fn serve_until_term(listener: tokio::net::TcpListener, app: axum::Router) {
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("signal");
            s.recv().await;
        })
        .await
        .expect("serve");
}
