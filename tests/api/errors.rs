//! Every error answer is JSON `{"code","message"}`, and request metrics stay bounded.

use std::io::{Read, Write};

use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::Value;

async fn json_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    body
}

#[tokio::test]
async fn not_found_and_method_not_allowed_are_json() {
    let app = spawn_app().await;
    json_error(app.read("/nothing/here").await, 404, "not_found").await;
    let r = app
        .client
        .delete(format!("{}/api/v2/auditlog", app.base))
        .header("authorization", API_TOKEN)
        .send()
        .await
        .unwrap();
    let body = json_error(r, 405, "method_not_allowed").await;
    assert!(body["message"].as_str().unwrap().contains("DELETE"));
    let r = app
        .client
        .get(format!("{}/hooks/launchdarkly", app.base))
        .send()
        .await
        .unwrap();
    json_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn a_request_past_the_time_limit_gets_408_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.request_timeout = std::time::Duration::from_millis(500);
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    // A body that never finishes arriving.
    let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(b"{\"_id\":".to_vec())])
        .chain(futures_util::stream::pending());
    let r = app
        .hook()
        .bearer_auth(HOOK_TOKEN)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    json_error(r, 408, "request_timeout").await;
    assert!(app.stored_ids().is_empty());
}

#[tokio::test]
async fn health_answers_503_json_when_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for_backend(dir.path()).await;
    let state = audithook::build_state(cfg).await.unwrap();
    state.store.close().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, audithook::app(state)).await });
    let r = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    json_error(r, 503, "unavailable").await;
}

/// Sends one raw HTTP/1.1 request and returns the status line.
fn raw_request(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let app = spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let statuses = tokio::task::spawn_blocking(move || {
        (0..50)
            .map(|i| {
                raw_request(
                    &addr,
                    &format!(
                        "FUZZ{i} /api/v2/auditlog HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    ),
                )
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(statuses.iter().all(|s| s.contains(" 405 ")), "{statuses:?}");
    let text = app.metrics_text().await;
    assert!(!text.contains("FUZZ"), "a made-up method became a label");
    let series = text
        .lines()
        .filter(|l| l.starts_with("audithook_http_request_duration_seconds_count"))
        .filter(|l| l.contains("method=\"other\""))
        .count();
    assert_eq!(series, 1, "{text}");
}
