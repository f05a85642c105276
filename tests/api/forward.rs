//! Forwarding: every kind end to end over real HTTP (fake receivers faithful to the real
//! ones' traps) and a real rsyslog; faults (503, 429 with Retry-After, a receiver that is
//! down, refusals to dead letters and their replay); the LaunchDarkly-integration kind
//! byte-identical to `/preview`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_receivers::{envelope_ids, FakeEs, FakeHec, HttpReceiver, Scripted};
use crate::helpers::*;

/// Starts the app with `destinations` (TOML) as its destinations file.
pub async fn spawn_forwarding(destinations: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("destinations.toml");
    std::fs::write(&file, destinations).unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.destinations = Some(file);
    spawn_with(cfg, std::sync::Arc::new(dir)).await
}

/// Waits (up to `secs`) until `check` holds.
pub async fn wait_until<F: FnMut() -> bool>(secs: u64, what: &str, mut check: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts hook events `prefix-0..n` one after another; returns their ids in arrival order.
pub async fn post_events(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let base = 1_700_000_000_000i64;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:04}");
        let r = app
            .post_event(hook_payload(&id, base + i as i64).to_string())
            .await;
        assert_eq!(r.status(), 202, "{id}");
        ids.push(id);
    }
    ids
}

/// `POST /api/destinations/{name}/replay` with `body`.
async fn replay(app: &TestApp, name: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/api/destinations/{name}/replay", app.base))
        .header("authorization", API_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap()
}

pub async fn destination(app: &TestApp, name: &str) -> Value {
    let r = app.read(&format!("/api/destinations/{name}")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `GET /api/destinations/{name}` once `done` holds for it (or after 10 s, for the
/// caller's assertions to report).
pub async fn destination_when(app: &TestApp, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut state = destination(app, name).await;
    for _ in 0..200 {
        if done(&state) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = destination(app, name).await;
    }
    state
}

#[tokio::test]
async fn http_delivers_every_event_in_order_through_503s_and_a_429() {
    let rx = HttpReceiver::start().await;
    rx.script([
        Scripted {
            status: 503,
            retry_after: None,
            body: "busy".into(),
        },
        Scripted {
            status: 503,
            retry_after: None,
            body: "busy".into(),
        },
        Scripted {
            status: 429,
            retry_after: Some(1),
            body: "slow down".into(),
        },
    ]);
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "logstash"
kind = "http"
url = "{}/ingest"
headers = {{ "X-Pipeline" = "audit" }}
max_backoff = "300ms"
"#,
        rx.base
    ))
    .await;
    let started = std::time::Instant::now();
    let ids = post_events(&app, "h", 12).await;
    wait_until(30, "12 accepted requests", || rx.accepted().len() >= 12).await;
    // The 429 asked for a second: the retry after it waited that long.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let accepted = rx.accepted();
    // Every event once, in arrival order, one JSON envelope per request.
    assert_eq!(rx.envelope_ids(), ids);
    for r in &accepted {
        assert_eq!(r.target, "/ingest");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-pipeline"), Some("audit"));
    }
    let all = rx.all();
    assert_eq!(all.len(), 15, "12 accepted + 3 scripted failures");
    assert_eq!(
        all.iter().take(3).map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503, 429]
    );
    // The first event was sent four times, the same bytes each time.
    assert!(all.iter().take(4).all(|r| r.body == all[0].body));
    let envelope: Value = serde_json::from_slice(&accepted[0].body).unwrap();
    assert_eq!(envelope["source"], "launchdarkly");
    assert_eq!(envelope["id"], "h-0000");
    assert_eq!(envelope["actor"], "sandy@example.com");
    assert_eq!(envelope["raw"]["_id"], "h-0000");
    let state = destination_when(&app, "logstash", |s| s["delivered"] == 12).await;
    assert_eq!(state["delivered"], 12);
    assert_eq!(state["lag"]["events"], 0);
    assert_eq!(state["dead_letters_count"], 0);
    assert_eq!(state["last_error"]["status"], 429);
    assert_eq!(state["last_error"]["class"], "http_429");
    assert_eq!(state["last_error"]["body"], "slow down");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(
            r#"audithook_destination_failures_total{destination="logstash",class="http_5xx"} 2"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"audithook_destination_failures_total{destination="logstash",class="http_429"} 1"#
    ));
    assert!(metrics.contains(r#"audithook_destination_delivered_total{destination="logstash"} 12"#));
    assert!(metrics.contains(r#"audithook_destination_attempts_total{destination="logstash"} 15"#));
    app.stop().await;
}

#[tokio::test]
async fn refused_events_become_dead_letters_and_replay_delivers_them() {
    let rx = HttpReceiver::start().await;
    rx.reject_containing(Some("bad-"));
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "hook"
kind = "http"
url = "{}/"
batch = 1
"#,
        rx.base
    ))
    .await;
    let good = post_events(&app, "ok", 3).await;
    let bad = post_events(&app, "bad", 2).await;
    let more = post_events(&app, "ok2", 2).await;
    wait_until(20, "7 requests", || rx.all().len() >= 7).await;
    let state = destination_when(&app, "hook", |s| {
        s["delivered"] == 5 && s["dead_letters_count"] == 2
    })
    .await;
    assert_eq!(state["delivered"], 5);
    assert_eq!(state["dead_letters_count"], 2);
    // Delivery went on past the refusals, in order.
    let delivered = rx.envelope_ids();
    assert_eq!(delivered, [good.clone(), more.clone()].concat());
    let letters = state["dead_letters"]["items"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    // Newest first, with status and the receiver's body.
    assert_eq!(letters[0]["event_id"], bad[1]);
    assert_eq!(letters[1]["event_id"], bad[0]);
    assert_eq!(letters[0]["status"], 400);
    assert_eq!(letters[0]["body"], r#"{"error":"rejected"}"#);
    assert_eq!(letters[0]["source"], "launchdarkly");
    // A page of one links to the next.
    let page = app.read("/api/destinations/hook?limit=1").await;
    let page: Value = page.json().await.unwrap();
    assert_eq!(page["dead_letters"]["items"].as_array().unwrap().len(), 1);
    let next = page["dead_letters"]["_links"]["next"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    let page2: Value = app.read(&next).await.json().await.unwrap();
    assert_eq!(page2["dead_letters"]["items"][0]["event_id"], bad[0]);
    assert!(page2["dead_letters"]["_links"].get("next").is_none());
    // Bad requests change nothing.
    for (body, code) in [
        (json!({"dead_letters": false}), 400),
        (json!({"after": "yesterday"}), 400),
        (json!({"after": 1, "dead_letters": true}), 400),
        (json!({"from": 1}), 400),
    ] {
        let r = replay(&app, "hook", &body).await;
        assert_eq!(r.status(), code, "{body}");
    }
    let r = replay(&app, "nope", &json!({"dead_letters": true})).await;
    assert_eq!(r.status(), 404);
    // The receiver is fixed; the dead letters are replayed.
    rx.reject_containing(None);
    let r = replay(&app, "hook", &json!({"dead_letters": true})).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["dead_letters"], 2);
    wait_until(20, "the replayed events", || rx.accepted().len() >= 7).await;
    let delivered = rx.envelope_ids();
    assert_eq!(&delivered[5..], &bad[..]);
    let state = destination_when(&app, "hook", |s| s["dead_letters_count"] == 0).await;
    assert_eq!(state["dead_letters_count"], 0);
    assert_eq!(state["delivered"], 7);
    // Replay from a time: everything again, in arrival order.
    let r = replay(&app, "hook", &json!({"after": 0})).await;
    assert_eq!(r.status(), 202);
    wait_until(20, "the replay from a time", || rx.accepted().len() >= 14).await;
    let delivered = rx.envelope_ids();
    assert_eq!(&delivered[7..], &[good, bad, more].concat()[..]);
    app.stop().await;
}

#[tokio::test]
async fn a_destination_starts_at_now_or_at_its_from_time() {
    let rx_now = HttpReceiver::start().await;
    let rx_from = HttpReceiver::start().await;
    // Events stored before the destinations exist.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for_backend(dir.path()).await;
    let url = cfg.database_url.clone();
    let dir = std::sync::Arc::new(dir);
    let app = spawn_with(cfg, dir.clone()).await;
    let base = 1_700_000_000_000i64;
    for (id, ms) in [
        ("old-1", base),
        ("new-1", base + 10_000),
        ("new-2", base + 20_000),
    ] {
        assert_eq!(
            app.post_event(hook_payload(id, ms).to_string())
                .await
                .status(),
            202
        );
    }
    app.stop().await;
    let file = dir.path().join("d.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[destinations]]
name = "now"
kind = "http"
url = "{}/"
batch = 10

[[destinations]]
name = "from"
kind = "http"
url = "{}/"
batch = 10
from = {}
"#,
            rx_now.base,
            rx_from.base,
            base + 10_000
        ),
    )
    .unwrap();
    let mut cfg = config_for(&url);
    cfg.destinations = Some(file);
    let app = spawn_with(cfg, dir).await;
    // An old-dated event arriving now is delivered to both: it arrived after they started.
    assert_eq!(
        app.post_event(hook_payload("late-old", base - 5).to_string())
            .await
            .status(),
        202
    );
    wait_until(20, "deliveries", || {
        rx_now.envelope_ids().len() >= 1 && rx_from.envelope_ids().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rx_now.envelope_ids(), vec!["late-old"]);
    assert_eq!(rx_from.envelope_ids(), vec!["new-1", "new-2", "late-old"]);
    app.stop().await;
}

#[tokio::test]
async fn elasticsearch_bulk_reads_each_item() {
    let es = FakeEs::start().await;
    // Already indexed (a redelivery after a crash): 409 counts as delivered.
    es.state.docs.lock().unwrap().insert(
        "audit/launchdarkly:es-0001".into(),
        json!({"already": true}),
    );
    *es.state.mapping_error.lock().unwrap() = Some("\"es-0003\"".into());
    es.state
        .reject_once
        .lock()
        .unwrap()
        .push("launchdarkly:es-0004".into());
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "elastic"
kind = "elasticsearch"
url = "{}"
index = "audit"
batch = 100
max_backoff = "200ms"
"#,
        es.base
    ))
    .await;
    let ids = post_events(&app, "es", 6).await;
    let state = destination_when(&app, "elastic", |s| {
        s["delivered"] == 5 && s["dead_letters_count"] == 1
    })
    .await;
    assert_eq!(state["delivered"], 5, "{state}");
    assert_eq!(state["dead_letters_count"], 1);
    let letter = &state["dead_letters"]["items"][0];
    assert_eq!(letter["event_id"], "es-0003");
    assert_eq!(letter["status"], 400);
    assert!(letter["body"]
        .as_str()
        .unwrap()
        .contains("mapper_parsing_exception"));
    let docs = es.state.docs.lock().unwrap().clone();
    let keys: Vec<&String> = docs.keys().collect();
    assert_eq!(
        keys,
        ["0000", "0001", "0002", "0004", "0005"]
            .iter()
            .map(|n| format!("audit/launchdarkly:es-{n}"))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    // The pre-existing document was not overwritten.
    assert_eq!(docs["audit/launchdarkly:es-0001"], json!({"already": true}));
    assert_eq!(docs["audit/launchdarkly:es-0000"]["raw"]["_id"], ids[0]);
    // Only the 429 item was sent again, alone.
    let bulks = es.state.bulks.lock().unwrap().clone();
    let flat: Vec<String> = bulks.iter().flatten().cloned().collect();
    assert_eq!(flat.iter().filter(|i| i.ends_with("es-0004")).count(), 2);
    assert!(
        bulks
            .iter()
            .any(|b| b == &vec!["launchdarkly:es-0004".to_owned()]),
        "{bulks:?}"
    );
    assert_eq!(flat.len(), 7, "{bulks:?}");
    app.stop().await;
}

#[tokio::test]
async fn splunk_hec_waits_out_token_errors_and_dead_letters_only_the_invalid_event() {
    let hec = FakeHec::start("hec-token").await;
    hec.state
        .disabled
        .store(true, std::sync::atomic::Ordering::SeqCst);
    *hec.state.invalid.lock().unwrap() = Some("\"hec-0002\"".into());
    std::env::set_var("AUDITHOOK_TEST_HEC_TOKEN", "hec-token");
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "splunk"
kind = "splunk_hec"
url = "{}"
token = "${{AUDITHOOK_TEST_HEC_TOKEN}}"
index = "audit"
batch = 50
max_backoff = "200ms"
"#,
        hec.base
    ))
    .await;
    let ids = post_events(&app, "hec", 5).await;
    // A disabled token: nothing is dead-lettered, the destination keeps trying.
    wait_until(20, "three refusals", || {
        hec.state.answers.lock().unwrap().len() >= 3
    })
    .await;
    // The fake records its answer before audithook has read it: wait for the state.
    let state = destination_when(&app, "splunk", |s| s["last_error"]["class"] == "auth").await;
    assert_eq!(state["dead_letters_count"], 0);
    assert_eq!(state["delivered"], 0);
    assert_eq!(state["last_error"]["class"], "auth");
    assert_eq!(state["last_error"]["status"], 403);
    assert!(state["retrying"].as_u64().unwrap() >= 1);
    // The operator enables the token.
    hec.state
        .disabled
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let state = destination_when(&app, "splunk", |s| {
        s["delivered"] == 4 && s["dead_letters_count"] == 1
    })
    .await;
    assert_eq!(state["delivered"], 4, "{state}");
    assert_eq!(state["dead_letters"]["items"][0]["event_id"], "hec-0002");
    assert_eq!(state["dead_letters"]["items"][0]["status"], 400);
    let events = hec.state.events.lock().unwrap().clone();
    let mut got: Vec<String> = events
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    // HEC indexed the two before the invalid one; they may be sent again (at least once).
    got.dedup();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique,
        vec![
            ids[0].clone(),
            ids[1].clone(),
            ids[3].clone(),
            ids[4].clone()
        ]
    );
    let first = &events[0];
    assert_eq!(first["index"], "audit");
    assert_eq!(first["sourcetype"], "audithook:launchdarkly");
    assert_eq!(first["time"].as_f64().unwrap(), 1_700_000_000.0);
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_holds_its_cursor_and_never_slows_ingest() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let rx = HttpReceiver::start().await;
    let app = spawn_forwarding(&format!(
        r#"
[[destinations]]
name = "down"
kind = "http"
url = "http://{dead_addr}/"
batch = 10
max_backoff = "200ms"
timeout = "1s"

[[destinations]]
name = "up"
kind = "http"
url = "{}/"
batch = 10
"#,
        rx.base
    ))
    .await;
    let ids = post_events(&app, "d", 30).await;
    wait_until(20, "the healthy destination", || {
        rx.envelope_ids().len() >= 30
    })
    .await;
    assert_eq!(rx.envelope_ids(), ids);
    // Each destination runs on its own task: the healthy one may finish before the other
    // has made its first attempt, so wait (bounded) for that attempt to be recorded.
    let down = destination_when(&app, "down", |d| !d["last_error"].is_null()).await;
    assert_eq!(down["delivered"], 0);
    assert_eq!(down["lag"]["events"], 30);
    assert_eq!(down["last_error"]["class"], "connect");
    assert_eq!(down["dead_letters_count"], 0);
    let list: Value = app.read("/api/destinations").await.json().await.unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["down", "up"]);
    // The receiver comes up on that address: the backlog drains, in order.
    let listener = tokio::net::TcpListener::bind(dead_addr).await.unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = got.clone();
    let app_rx = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(body.to_vec());
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app_rx).await.unwrap() });
    wait_until(30, "the backlog", || {
        envelope_ids(&got.lock().unwrap()).len() >= 30
    })
    .await;
    assert_eq!(envelope_ids(&got.lock().unwrap()), ids);
    app.stop().await;
}

/// `destinations check` exits non-zero naming the destination and field of each problem,
/// and prints a sample request for LaunchDarkly integrations.
#[test]
fn destinations_check_names_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[destinations]]
name = "es"
kind = "elasticsearch"
url = "http://127.0.0.1:9200"

[[destinations]]
name = "dd"
kind = "launchdarkly_integration"
manifest = "missing/manifest.json"

[[destinations]]
name = "x"
kind = "http"
url = "not a url"
colour = "blue"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["destinations", "check"])
        .env("AUDITHOOK_DESTINATIONS", &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let path = bad.display();
    assert!(
        err.contains(&format!("{path}: destination \"es\": index: missing")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}: destination \"dd\": manifest: cannot read"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}: destination \"x\": unknown field `colour`"
        )),
        "{err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[destinations]]\nname = \"l\"\nkind = \"http\"\nurl = \"http://127.0.0.1:1/\"\nbatch = 100\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["destinations", "check"])
        .env("AUDITHOOK_DESTINATIONS", &good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok  l  http -> http://127.0.0.1:1/  (batch 100, every source, from now)"),
        "{text}"
    );
}

#[tokio::test]
async fn serve_refuses_a_bad_destinations_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.toml");
    std::fs::write(
        &file,
        "[[destinations]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"nohost\"\n",
    )
    .unwrap();
    let mut cfg = test_config(&dir.path().join("a.db"));
    cfg.destinations = Some(file);
    let err = match audithook::Application::build(cfg).await {
        Ok(_) => panic!("a bad destinations file must stop start-up"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("destination \"s\": address: \"nohost\" is not host:port"),
        "{err}"
    );
}
