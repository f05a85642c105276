//! Exports (CSV, the ld-audit preset, NDJSON, the CLI) and per-consumer queues.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::*;

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.read(path).await
}

fn tricky(id: &str, ms: i64, name: &str, email: &str) -> Value {
    let mut e = rest_entry(id, ms, name, "proj/p:env/e:flag/f", "m");
    e["member"]["email"] = json!(email);
    e
}

#[tokio::test]
async fn csv_quotes_and_neutralises_tricky_values_exactly() {
    let app = spawn_app().await;
    let events = [
        tricky("e1", 1_000, "plain", "a@example.com"),
        tricky("e2", 2_000, "comma, and \"quotes\"", "b@example.com"),
        tricky("e3", 3_000, "line\nbreak\r\nand CRLF", "c@example.com"),
        tricky("e4", 4_000, "ünïcödé ✓ 日本", "d@example.com"),
        tricky("e5", 5_000, "=HYPERLINK(\"http://x\")", "+1@example.com"),
        tricky("e6", 6_000, "-2+3", "@evil"),
        tricky("e7", 7_000, "\tindent", "e@example.com"),
    ];
    // Posted out of order: exports are ordered by date.
    for e in events.iter().rev() {
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    let r = get(
        &app,
        "/export.csv?columns=id,date,rfc3339,name,member_email",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        "id,date,rfc3339,name,member_email\n\
         e1,1000,1970-01-01T00:00:01.000Z,plain,a@example.com\n\
         e2,2000,1970-01-01T00:00:02.000Z,\"comma, and \"\"quotes\"\"\",b@example.com\n\
         e3,3000,1970-01-01T00:00:03.000Z,\"line\nbreak\r\nand CRLF\",c@example.com\n\
         e4,4000,1970-01-01T00:00:04.000Z,ünïcödé ✓ 日本,d@example.com\n\
         e5,5000,1970-01-01T00:00:05.000Z,\"'=HYPERLINK(\"\"http://x\"\")\",'+1@example.com\n\
         e6,6000,1970-01-01T00:00:06.000Z,'-2+3,'@evil\n\
         e7,7000,1970-01-01T00:00:07.000Z,'\tindent,e@example.com\n"
    );
}

#[tokio::test]
async fn ld_audit_preset_writes_one_row_per_access() {
    let app = spawn_app().await;
    let mut two = rest_entry(
        "aa1",
        1_580_777_319_650,
        "Checkout",
        "proj/p:env/production:flag/checkout",
        "m1",
    );
    two["accesses"] = json!([
        {"action": "updateOn", "resource": "proj/p:env/production:flag/checkout"},
        {"action": "updateFallthrough", "resource": "proj/p:env/production:flag/checkout"}
    ]);
    two["description"] = json!("- Turned on, \"carefully\"");
    let mut token = rest_entry(
        "aa2",
        1_580_777_320_000,
        "Banner",
        "proj/p:env/test:flag/banner",
        "x",
    );
    token.as_object_mut().unwrap().remove("member");
    token["token"] = json!({"_id": "t1", "name": "ci"});
    app.post_event(two.to_string()).await;
    app.post_event(token.to_string()).await;
    let body = get(&app, "/export.csv?preset=ld-audit")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        body,
        "user_email,user_first_name,user_last_name,date,formatted_date,kind,name,action,resource,description,id\n\
         m1@example.com,M,m1,1580777319650,2020-02-04 00:48:39,flag,Checkout,updateOn,proj/p:env/production:flag/checkout,\"'- Turned on, \"\"carefully\"\"\",aa1\n\
         m1@example.com,M,m1,1580777319650,2020-02-04 00:48:39,flag,Checkout,updateFallthrough,proj/p:env/production:flag/checkout,\"'- Turned on, \"\"carefully\"\"\",aa1\n\
         n/a,n/a,n/a,1580777320000,2020-02-04 00:48:40,flag,Banner,updateOn,proj/p:env/test:flag/banner,changed Banner,aa2\n"
    );
}

#[tokio::test]
async fn ndjson_is_one_listing_entry_per_line_oldest_first() {
    let app = spawn_app().await;
    let a = rest_entry("n1", 10, "a", "proj/p", "m");
    app.post_event(hook_payload("n2", 20).to_string()).await;
    app.post_event(a.to_string()).await;
    let r = get(&app, "/export.ndjson").await;
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = r.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], a);
    assert_eq!(lines[1]["_id"], "n2");
    assert_eq!(lines[1]["date"], 20);
    assert!(body.ends_with('\n'));
}

#[tokio::test]
async fn export_filters() {
    let app = spawn_app().await;
    let mut created = rest_entry(
        "f1",
        100,
        "Alpha",
        "proj/web:env/production:flag/alpha",
        "m1",
    );
    created["accesses"][0]["action"] = json!("createFlag");
    let mut seg = rest_entry("f2", 200, "Beta", "proj/web:env/test:segment/beta", "m2");
    seg["kind"] = json!("segment");
    let events = vec![
        created,
        seg,
        rest_entry(
            "f3",
            300,
            "Gamma",
            "proj/api:env/production:flag/gamma",
            "m1",
        ),
    ];
    for e in &events {
        app.post_event(e.to_string()).await;
    }
    for (query, want) in [
        ("kind=segment", vec!["f2"]),
        ("kind=flag", vec!["f1", "f3"]),
        ("action=createFlag", vec!["f1"]),
        ("action=updateOn&action=createFlag", vec!["f1", "f2", "f3"]),
        ("member=m1", vec!["f1", "f3"]),
        ("member=m2@example.com", vec!["f2"]),
        ("after=100&before=300", vec!["f2"]),
        ("q=gamma", vec!["f3"]),
        ("spec=proj/web", vec!["f1", "f2"]),
        ("spec=proj/*:env/production:*&kind=flag", vec!["f1", "f3"]),
    ] {
        let body = get(&app, &format!("/export.csv?columns=id&{query}"))
            .await
            .text()
            .await
            .unwrap();
        let ids: Vec<&str> = body.lines().skip(1).collect();
        assert_eq!(ids, want, "{query}");
    }
}

#[tokio::test]
async fn bad_export_and_queue_parameters_get_400_naming_the_parameter() {
    let app = spawn_app().await;
    for (path, param) in [
        ("/export.csv?columns=id,nope", "columns"),
        ("/export.csv?preset=excel", "preset"),
        ("/export.csv?before=yesterday", "before"),
        ("/export.csv?after=1.5", "after"),
        ("/export.ndjson?columns=id", "columns"),
        ("/queue/c1?limit=0", "limit"),
        ("/queue/c1?limit=5000", "limit"),
        ("/queue/c1?ack=maybe", "ack"),
        ("/queue/c1?ack=explicit&visibility=0", "visibility"),
        ("/queue/c1?ack=explicit&visibility=3601", "visibility"),
        ("/queue/c1?visibility=10", "visibility"),
    ] {
        let r = get(&app, path).await;
        assert_eq!(r.status(), 400, "{path}");
        let err: Value = r.json().await.unwrap();
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{path}: {err}"
        );
    }
    let r = get(&app, "/queue/bad%20name").await;
    assert_eq!(r.status(), 400);
    for path in ["/export.csv", "/export.ndjson", "/queue/c1"] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
}

async fn take(app: &TestApp, consumer: &str, limit: usize) -> Vec<String> {
    take_queue(&app.client, &app.base, consumer, limit).await
}

#[tokio::test]
async fn queues_deliver_each_event_once_per_consumer_in_arrival_order() {
    let app = spawn_app().await;
    for i in 0..10 {
        app.post_event(rest_entry(&format!("q{i}"), 1_000_000 + i, "n", "proj/p", "m").to_string())
            .await;
    }
    assert_eq!(take(&app, "siem", 4).await, vec!["q0", "q1", "q2", "q3"]);
    assert_eq!(take(&app, "siem", 4).await, vec!["q4", "q5", "q6", "q7"]);
    // Another consumer is independent.
    assert_eq!(take(&app, "archive", 100).await.len(), 10);
    // A backfilled event older than everything still reaches both, after what they have.
    app.post_event(rest_entry("old", 5, "n", "proj/p", "m").to_string())
        .await;
    assert_eq!(take(&app, "siem", 100).await, vec!["q8", "q9", "old"]);
    assert_eq!(take(&app, "archive", 100).await, vec!["old"]);
    assert!(take(&app, "siem", 100).await.is_empty());
    // Positions survive a restart.
    let url = app.url.clone();
    let dir = app.stop().await;
    let app = spawn_with(config_for(&url), dir).await;
    app.post_event(rest_entry("late", 7, "n", "proj/p", "m").to_string())
        .await;
    assert_eq!(take(&app, "siem", 100).await, vec!["late"]);
    assert_eq!(take(&app, "newcomer", 3).await, vec!["q0", "q1", "q2"]);
}

#[tokio::test]
async fn concurrent_readers_of_one_consumer_never_get_the_same_event() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..300 {
        let id = format!("c{i:03}");
        app.post_event(rest_entry(&id, i, "n", "proj/p", "m").to_string())
            .await;
        ids.push(id);
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, base) = (app.client.clone(), app.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = take_queue(&client, &base, "shared", 7).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 300, "an event was delivered twice or lost");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 300);
}

#[tokio::test]
async fn cli_export_writes_what_the_route_serves() {
    let app = spawn_app().await;
    for i in 0..50 {
        let r = app
            .post_event(tricky(&format!("x{i:02}"), i, "name, \"q\"", "=x@example.com").to_string())
            .await;
        assert_eq!(r.status(), 202);
    }
    let over_http = get(&app, "/export.csv?preset=ld-audit")
        .await
        .bytes()
        .await
        .unwrap();
    let ndjson_http = get(&app, "/export.ndjson?kind=flag")
        .await
        .bytes()
        .await
        .unwrap();
    // What both must hold: one row per access, oldest first, values quoted and neutralised.
    let mut reader = csv::Reader::from_reader(over_http.as_ref());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[0], "user_email");
    assert_eq!(header[10], "id");
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 50);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(&row[10], format!("x{i:02}"));
        assert_eq!(&row[0], "'=x@example.com");
        assert_eq!(&row[6], "name, \"q\"");
        assert_eq!(&row[3], i.to_string());
    }
    let lines: Vec<Value> = std::str::from_utf8(&ndjson_http)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    for (i, entry) in lines.iter().enumerate() {
        assert_eq!(entry["_id"], format!("x{i:02}"));
        assert_eq!(entry["name"], "name, \"q\"");
        assert_eq!(entry["member"]["email"], "=x@example.com");
    }
    let url = app.url.clone();
    let dir = app.stop().await;
    let out = dir.path().join("out.csv");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["export", "--preset", "ld-audit", "-o"])
        .arg(&out)
        .env("AUDITHOOK_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), over_http.as_ref());
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["export", "--format", "ndjson", "--kind", "flag"])
        .env("AUDITHOOK_DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(run.stdout, ndjson_http.as_ref());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["export", "--columns", "id,bogus"])
        .env("AUDITHOOK_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown column \"bogus\""));
}

#[tokio::test]
async fn queue_explicit_ack_over_http() {
    let app = spawn_app().await;
    for i in 0..5 {
        let r = app
            .post_event(rest_entry(&format!("h{i}"), 1000 + i, "f", "proj/x", "m").to_string())
            .await;
        assert_eq!(r.status(), 202);
    }
    let page: Value = get(&app, "/queue/w?ack=explicit&visibility=1&limit=3")
        .await
        .json()
        .await
        .unwrap();
    let token = page["ack"].as_str().unwrap().to_owned();
    assert_eq!(page["visibility"], 1);
    assert_eq!(page["count"], 3);
    // A second reader gets the rest, not the leased three.
    let second: Value = get(&app, "/queue/w?ack=explicit&visibility=60")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h3", "h4"]);
    let ack = |token: String| {
        app.client
            .post(format!("{}/queue/w/ack", app.base))
            .header("authorization", API_TOKEN)
            .json(&json!({"ack": token}))
            .send()
    };
    // The first batch is not acknowledged in time: the ack is refused and it comes back.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = ack(token.clone()).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "lease_expired");
    let again: Value = get(&app, "/queue/w?ack=explicit")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = again["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h0", "h1", "h2"]);
    let r = ack(again["ack"].as_str().unwrap().to_owned())
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = ack(token).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .post(format!("{}/queue/w/ack", app.base))
        .header("authorization", API_TOKEN)
        .header("content-type", "application/json")
        .body("{\"token\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The default mode is unchanged: read once.
    let plain: Value = get(&app, "/queue/p").await.json().await.unwrap();
    assert_eq!(plain["count"], 5);
    assert!(plain.get("ack").is_none());
    assert_eq!(
        get(&app, "/queue/p").await.json::<Value>().await.unwrap()["count"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_bounded_in_number_and_a_stalled_one_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.max_exports = 1;
    cfg.export_stall_timeout = std::time::Duration::from_millis(1500);
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    // 24 MB of events: far more than socket buffers hold, so an unread export stalls.
    let filler = "y".repeat(200 * 1024);
    for i in 0..120 {
        let mut e = rest_entry(&format!("big{i:03}"), 1000 + i, "f", "proj/x", "m");
        e["comment"] = json!(filler);
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    // A client that asks and then reads nothing.
    let stalled = get(&app, "/export.ndjson").await;
    assert_eq!(stalled.status(), 200);
    let r = get(&app, "/export.csv").await;
    assert_eq!(r.status(), 429);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["code"], "too_many_exports");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("AUDITHOOK_MAX_EXPORTS"));
    // Past the stall limit the stalled export stops and its permit (and snapshot) go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let body = loop {
        let r = get(&app, "/export.csv?columns=id").await;
        if r.status() == 200 {
            break r.text().await.unwrap();
        }
        assert_eq!(r.status(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled export never let go"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(body.lines().count(), 121);
    // The stalled client's transfer ends broken, never as a short file that looks whole.
    assert!(stalled.bytes().await.is_err());
}

#[tokio::test]
async fn a_queue_batch_of_large_events_is_capped_in_bytes() {
    let app = spawn_app().await;
    let filler = "z".repeat(900 * 1024);
    for i in 0..40 {
        let mut e = rest_entry(&format!("q{i:02}"), 1000 + i, "f", "proj/x", "m");
        e["comment"] = json!(filler);
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    for mode in ["", "&ack=explicit"] {
        let consumer = if mode.is_empty() { "plain" } else { "acked" };
        loop {
            let page: Value = get(&app, &format!("/queue/{consumer}?limit=1000{mode}"))
                .await
                .json()
                .await
                .unwrap();
            let items = page["items"].as_array().unwrap();
            if items.is_empty() {
                break;
            }
            sizes.push(items.len());
            seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        }
    }
    // 8 MiB of ~900 KB events: 9 a batch.
    assert_eq!(sizes, [9, 9, 9, 9, 4, 9, 9, 9, 9, 4]);
    let want: Vec<String> = (0..40).map(|i| format!("q{i:02}")).collect();
    assert_eq!(seen[..40], want[..]);
    assert_eq!(seen[40..], want[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_connections_are_bounded() {
    if TestDb::postgres_backend() {
        // Postgres bounds its pool (AUDITHOOK_DATABASE_MAX_CONNECTIONS) by sqlx's own pool.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&dir.path().join("a.db"));
    cfg.database_max_connections = 2;
    cfg.request_timeout = std::time::Duration::from_millis(800);
    cfg.export_stall_timeout = std::time::Duration::from_secs(3);
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    let filler = "y".repeat(200 * 1024);
    for i in 0..120 {
        let mut e = rest_entry(&format!("r{i:03}"), 1000 + i, "f", "proj/x", "m");
        e["comment"] = json!(filler);
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    // Two exports whose clients read nothing hold both read connections...
    let held = [
        get(&app, "/export.ndjson").await,
        get(&app, "/export.ndjson").await,
    ];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // ...so a third reader waits for one instead of opening more, and times out.
    let r = get(&app, "/api/v2/auditlog/r001").await;
    assert_eq!(r.status(), 408);
    // Once the stalled exports stop, reads go on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = get(&app, "/api/v2/auditlog/r001").await;
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(held);
}
