//! `POST /hooks/launchdarkly`: credentials, status codes, dedupe, durability.

use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn stores_default_payload_then_answers_200_for_the_retry() {
    let app = spawn_app().await;
    let body = hook_payload("5defebd006121dd9f7ea90d0", 1580778134028).to_string();
    let r = app.post_event(body.clone()).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"_id": "5defebd006121dd9f7ea90d0", "status": "stored"})
    );
    let r = app.post_event(body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    assert_eq!(app.stored_ids(), vec!["5defebd006121dd9f7ea90d0"]);
    // Kept byte for byte.
    assert_eq!(app.stored_raw("5defebd006121dd9f7ea90d0").unwrap(), body);
}

#[tokio::test]
async fn one_event_posted_100_times_concurrently_is_stored_once() {
    let app = spawn_app().await;
    let body = hook_payload("concurrent-1", 1_700_000_000_000).to_string();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let req = app.hook().bearer_auth(HOOK_TOKEN).body(body.clone());
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        99,
        "{statuses:?}"
    );
    assert_eq!(app.stored_ids(), vec!["concurrent-1"]);
}

#[tokio::test]
async fn hook_payload_and_rest_entry_of_one_id_are_stored_once() {
    let app = spawn_app().await;
    let id = "61a0f0e0e0e0e0e0e0e0e0e0";
    assert_eq!(
        app.post_event(hook_payload(id, 1_600_000_000_000).to_string())
            .await
            .status(),
        202
    );
    let rest = rest_entry(
        id,
        1_600_000_000_000,
        "Example test",
        "proj/p:env/e:flag/f",
        "m1",
    );
    assert_eq!(app.post_event(rest.to_string()).await.status(), 200);
    assert_eq!(app.stored_ids(), vec![id]);
}

#[tokio::test]
async fn rest_entry_is_accepted_and_read_back_unchanged() {
    let app = spawn_app().await;
    let rest = rest_entry(
        "r1",
        1_600_000_000_123,
        "Flag one",
        "proj/p:env/e:flag/f",
        "m1",
    );
    assert_eq!(app.post_event(rest.to_string()).await.status(), 202);
    let got: Value = app.read("/api/v2/auditlog/r1").await.json().await.unwrap();
    assert_eq!(got, rest);
}

#[tokio::test]
async fn an_event_survives_a_restart() {
    let app = spawn_app().await;
    let url = app.url.clone();
    assert_eq!(
        app.post_event(hook_payload("keep-me", 1_650_000_000_000).to_string())
            .await
            .status(),
        202
    );
    let dir = app.stop().await;
    let app = spawn_with(config_for(&url), dir).await;
    let r = app.read("/api/v2/auditlog/keep-me").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["date"],
        1_650_000_000_000i64
    );
    // The retry after a restart is still recognised.
    assert_eq!(
        app.post_event(hook_payload("keep-me", 1_650_000_000_000).to_string())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn credentials_are_checked() {
    let app = spawn_app().await;
    let body = hook_payload("auth-1", 1_600_000_000_000).to_string();
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("none", app.hook().body(body.clone())),
        (
            "wrong bearer",
            app.hook().bearer_auth("nope").body(body.clone()),
        ),
        (
            "read token",
            app.hook().bearer_auth(API_TOKEN).body(body.clone()),
        ),
        (
            "bare token",
            app.hook()
                .header("authorization", HOOK_TOKEN)
                .body(body.clone()),
        ),
        (
            "wrong basic",
            app.hook()
                .basic_auth("ld", Some("wrong"))
                .body(body.clone()),
        ),
        (
            "wrong signature",
            app.hook()
                .header("x-ld-signature", sign(b"other"))
                .body(body.clone()),
        ),
        (
            "signature not hex",
            app.hook().header("x-ld-signature", "zz").body(body.clone()),
        ),
        (
            "valid signature, wrong bearer",
            app.hook()
                .bearer_auth("nope")
                .header("x-ld-signature", sign(body.as_bytes()))
                .body(body.clone()),
        ),
    ];
    for (name, req) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        let err: Value = r.json().await.unwrap();
        assert!(
            err["code"].as_str().is_some() && err["message"].as_str().is_some(),
            "{name}: {err}"
        );
    }
    assert!(app.stored_ids().is_empty());

    let r = app
        .hook()
        .basic_auth("ld", Some("basic-pass"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn hmac_is_checked_on_the_raw_bytes() {
    let app = spawn_app().await;
    // Unusual whitespace and key order: the signature covers exactly these bytes.
    let body = "{\n\t\"_id\" :  \"sig-1\",\r\n  \"date\":1600000000000 ,\"kind\":\"flag\"   }\n\n";
    let sig = sign(body.as_bytes());
    let r = app
        .hook()
        .header("x-ld-signature", &sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.stored_raw("sig-1").unwrap(), body);

    // The same signature over a re-serialised body (same JSON value, other bytes) fails.
    let reserialised =
        serde_json::to_string(&serde_json::from_str::<Value>(body).unwrap()).unwrap();
    let body2 = reserialised.replace("sig-1", "sig-2");
    let resig = sign(
        serde_json::to_string(&serde_json::from_str::<Value>(&body2).unwrap())
            .unwrap()
            .as_bytes(),
    );
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body2).unwrap()).unwrap();
    let r = app
        .hook()
        .header("x-ld-signature", &resig)
        .body(pretty)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "invalid_signature"
    );
    // Upper-case hex is the same signature.
    let body3 = r#"{"_id":"sig-3","date":5}"#;
    let r = app
        .hook()
        .header("x-ld-signature", sign(body3.as_bytes()).to_uppercase())
        .body(body3)
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 202);
    assert_eq!(app.stored_ids(), vec!["sig-1", "sig-3"]);
}

#[tokio::test]
async fn bad_bodies_get_400_and_store_nothing() {
    let app = spawn_app().await;
    let cases = [
        (
            "malformed",
            "{\"_id\": \"x\", \"date\": 1",
            "invalid_event",
            "not valid JSON",
        ),
        (
            "array",
            "[{\"_id\":\"x\",\"date\":1}]",
            "invalid_event",
            "not an array",
        ),
        ("scalar", "42", "invalid_event", "not a number"),
        ("string", "\"x\"", "invalid_event", "not a string"),
        ("no id", "{\"date\": 1}", "invalid_event", "no `_id`"),
        (
            "empty id",
            "{\"_id\": \"\", \"date\": 1}",
            "invalid_event",
            "`_id` must be",
        ),
        ("no time", "{\"_id\": \"x\"}", "invalid_event", "no time"),
        (
            "id not string",
            "{\"_id\": 7, \"date\": 1}",
            "invalid_event",
            "wrong type",
        ),
        ("empty", "", "invalid_event", "not valid JSON"),
    ];
    for (name, body, code, needle) in cases {
        let r = app.post_event(body).await;
        assert_eq!(r.status(), 400, "{name}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["code"], code, "{name}");
        let msg = err["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    assert!(app.stored_ids().is_empty());
}

#[tokio::test]
async fn wrong_content_type_gets_415() {
    let app = spawn_app().await;
    let body = hook_payload("ct-1", 1).to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = app
            .client
            .post(format!("{}/hooks/launchdarkly", app.base))
            .bearer_auth(HOOK_TOKEN)
            .body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{ct:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["code"],
            "unsupported_media_type"
        );
    }
    let r = app
        .client
        .post(format!("{}/hooks/launchdarkly", app.base))
        .bearer_auth(HOOK_TOKEN)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.stored_ids(), vec!["ct-1"]);
}

#[tokio::test]
async fn oversize_body_gets_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.max_body = 1000;
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    let mut ev = hook_payload("big-1", 1);
    ev["comment"] = Value::String("x".repeat(2000));
    let body = ev.to_string();
    let r = app.post_event(body.clone()).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );
    // Streamed without Content-Length, and signed: still 413.
    let stream = futures_stream(body.clone());
    let r = app
        .hook()
        .header("x-ld-signature", sign(body.as_bytes()))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(app.stored_ids().is_empty());
    // Exactly at the limit is fine.
    let small = format!(
        "{{\"_id\":\"ok\",\"date\":1,\"p\":\"{}\"}}",
        "y".repeat(1000 - 28)
    );
    assert_eq!(small.len(), 1000);
    assert_eq!(app.post_event(small).await.status(), 202);
}

fn futures_stream(
    body: String,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    futures_util::stream::iter(chunks)
}

#[tokio::test]
async fn health_and_metrics() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.post_event(hook_payload("m-1", 1).to_string()).await;
    app.post_event(hook_payload("m-1", 1).to_string()).await;
    app.post_event("[]").await;
    app.hook().body("{}").send().await.unwrap();
    let text = app.metrics_text().await;
    for line in [
        "audithook_events_received_total 3",
        "audithook_events_stored_total 1",
        "audithook_events_duplicate_total 1",
        "audithook_events_rejected_total{reason=\"invalid_event\"} 1",
        "audithook_events_rejected_total{reason=\"unauthorized\"} 1",
        "audithook_commit_group_size_count 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        text.contains("audithook_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("route=\"/hooks/launchdarkly\""), "{text}");
}

#[tokio::test]
async fn generated_tokens_are_kept_and_reused_and_differ() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.hook_token = None;
    cfg.api_token = None;
    let cfg_url = cfg.database_url.clone();
    let first = audithook::build_state(cfg.clone()).await.unwrap();
    let (hook1, read1) = (first.hook_auth.token, first.read_auth.token);
    first.store.close().await;
    let second = audithook::build_state(cfg).await.unwrap();
    assert_eq!(second.hook_auth.token, hook1);
    assert_eq!(second.read_auth.token, read1);
    assert_ne!(hook1, read1);
    // Only digests are stored, never the token itself.
    let keys = query_strings(&cfg_url, "SELECT key FROM settings ORDER BY key");
    assert_eq!(keys, vec!["api_token_sha256", "hook_token_sha256"]);
    // What is kept is the SHA-256 of each token, not the token.
    let kept = query_strings(&cfg_url, "SELECT value FROM settings ORDER BY key");
    assert_eq!(kept, vec![hex::encode(read1), hex::encode(hook1)]);
}

/// A body nesting `depth` arrays in an unchecked field.
fn nested(id: &str, depth: usize) -> String {
    format!(
        r#"{{"_id":"{id}","date":1700000000000,"kind":"flag","deep":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[tokio::test]
async fn what_the_readers_cannot_parse_is_refused_at_ingest_and_the_rest_reads_back_whole() {
    let app = spawn_app().await;
    // The fuzzer's finds: deeper than the readers' JSON limit (128), a lone surrogate.
    let refused: Vec<(String, &str)> = vec![
        (nested("deep", 200), "recursion limit"),
        (nested("deep2", 120), "recursion limit"),
        (
            r#"{"_id":"sur","date":1700000000000,"comment":"\ud800"}"#.to_owned(),
            "escape",
        ),
        (
            r#"{"_id":"sur2","date":1700000000000,"x":{"y":"a\udfffb"}}"#.to_owned(),
            "escape",
        ),
    ];
    for (body, expect) in &refused {
        let r = app.post_event(body.clone()).await;
        assert_eq!(r.status(), 400, "{expect}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["code"], "invalid_event");
        assert!(err["message"].as_str().unwrap().contains(expect), "{err}");
    }
    // Just inside the limit: accepted, and every reader gets it back whole.
    let ok = nested("deep-ok", 119);
    assert_eq!(app.post_event(ok.clone()).await.status(), 202);
    assert_eq!(app.stored_ids(), ["deep-ok"]);
    let one: Value = app
        .read("/api/v2/auditlog/deep-ok")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["_id"], "deep-ok");
    assert_eq!(one["date"], 1_700_000_000_000i64);
    assert_eq!(one["kind"], "flag");
    let list: Value = app.read("/api/v2/auditlog").await.json().await.unwrap();
    assert_eq!(list["items"][0]["_id"], "deep-ok");
    let preview = app
        .client
        .post(format!("{}/preview", app.base))
        .header("authorization", API_TOKEN)
        .json(&serde_json::json!({"template": "{{_id}} {{timestamp.milliseconds}}", "event": "deep-ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), 200);
    assert_eq!(preview.text().await.unwrap(), "deep-ok 1700000000000");
    let ndjson = app.read("/export.ndjson").await.text().await.unwrap();
    assert_eq!(ndjson.lines().count(), 1);
    assert!(ndjson.contains("\"deep-ok\""));
}

#[tokio::test]
async fn times_out_of_range_and_bad_ids_get_400_naming_the_field() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (serde_json::json!({"_id": "a", "date": -1}), "`date`"),
        (serde_json::json!({"_id": "a", "date": i64::MAX}), "`date`"),
        (serde_json::json!({"_id": "a", "date": -i64::MAX}), "`date`"),
        (
            serde_json::json!({"_id": "a", "date": 253_402_300_800_000i64}),
            "`date`",
        ),
        (
            serde_json::json!({"_id": "a", "timestamp": {"milliseconds": -5}}),
            "`timestamp.milliseconds`",
        ),
        (
            serde_json::json!({"_id": "a", "timestamp": {"milliseconds": i64::MAX}}),
            "`timestamp.milliseconds`",
        ),
        (serde_json::json!({"_id": "   ", "date": 1}), "`_id`"),
        (serde_json::json!({"_id": "a\u{0}b", "date": 1}), "`_id`"),
        (serde_json::json!({"_id": "\t\n", "date": 1}), "`_id`"),
    ];
    for (body, field) in &cases {
        let r = app.post_event(body.to_string()).await;
        assert_eq!(r.status(), 400, "{body}");
        let err: Value = r.json().await.unwrap();
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{body}: {err}"
        );
    }
    assert!(app.stored_ids().is_empty());
    // The edges themselves are accepted.
    for (id, ms) in [("first", 0i64), ("last", 253_402_300_799_999)] {
        let r = app
            .post_event(serde_json::json!({"_id": id, "date": ms}).to_string())
            .await;
        assert_eq!(r.status(), 202, "{id}");
    }
    let csv = app
        .read("/export.csv?columns=id,rfc3339")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv,
        "id,rfc3339\nfirst,1970-01-01T00:00:00.000Z\nlast,9999-12-31T23:59:59.999Z\n"
    );
}
