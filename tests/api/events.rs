//! `/api/events` over every source: exact cursor paging across sources with arrivals
//! between pages, filters, bad parameters; the source filter and columns of exports and
//! queues.

use std::collections::HashSet;

use audithook::event::{normalise, Channel, NewEvent};
use audithook::sources::{cbc, tfc};
use serde_json::{json, Value};

use crate::helpers::*;

const T: i64 = 1_700_000_000_000;

fn ld(id: &str, date: i64) -> NewEvent {
    normalise(
        json!({"_id": id, "date": date, "kind": "flag", "title": format!("ld {id}"),
               "member": {"_id": "m", "email": "sandy@example.com"},
               "accesses": [{"action": "updateOn", "resource": "proj/p:env/e:flag/f"}]})
        .to_string()
        .as_bytes(),
        Channel::Rest,
    )
    .unwrap()
}

fn tfc_event(id: &str, date: i64) -> NewEvent {
    tfc::normalise(
        &json!({"id": id, "version": "0", "type": "Resource",
                "timestamp": crate::fake_tfc::rfc3339(date),
                "auth": {"accessor_id": "user-1", "description": "pat", "type": "Client"},
                "request": {"id": "r"},
                "resource": {"id": "ws-1", "type": "workspace", "action": "update", "meta": null}})
        .to_string(),
    )
    .unwrap()
}

fn cbc_event(n: u64, date: i64) -> NewEvent {
    cbc::normalise(&crate::fake_cbc::record(n, date).to_string()).unwrap()
}

/// The (source, id) of each item.
fn keys(page: &Value) -> Vec<(String, String)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["source"].as_str().unwrap().to_owned(),
                i["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The app, a second store on its database holding `events`, and the database's URL.
async fn app_with(events: Vec<NewEvent>) -> (TestApp, audithook::store::Store, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for_backend(dir.path()).await;
    let url = cfg.database_url.clone();
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    let store = audithook::store::Store::open(
        &url,
        std::sync::Arc::new(audithook::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    store.insert_many(events).await.unwrap();
    (app, store, url)
}

/// 90 events, 30 per source, on 6 distinct milliseconds (many ties), one id shared by
/// LaunchDarkly and Terraform Cloud.
fn mixed() -> Vec<NewEvent> {
    let mut out = Vec::new();
    for i in 0..30u64 {
        let date = T + (i % 6) as i64;
        out.push(ld(&format!("{:024x}", i), date));
        out.push(tfc_event(
            &format!("00000000-0000-4000-8000-{:012x}", i),
            date,
        ));
        out.push(cbc_event(i, date));
    }
    out.push(ld("shared-id", T + 3));
    out.push(tfc_event("shared-id", T + 3));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_exact_across_sources_with_arrivals_between_pages() {
    let events = mixed();
    let mut want: Vec<(i64, String, String)> = events
        .iter()
        .map(|e| (e.date, e.id.clone(), e.source.as_str().to_owned()))
        .collect();
    let (app, store, _) = app_with(events).await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut path = "/api/events?limit=7".to_owned();
    let mut round = 0u64;
    loop {
        let r = app.read(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        let page: Value = r.json().await.unwrap();
        assert!(page["items"].as_array().unwrap().len() <= 7);
        seen.extend(keys(&page));
        // Between pages: newer events (above the cursor, not in this listing) and older
        // ones (below it: listed when paging reaches them).
        round += 1;
        let newer = tfc_event(&format!("10000000-0000-4000-8000-{round:012x}"), T + 1000);
        let older = cbc_event(10_000 + round, T - 1000 - round as i64);
        want.push((older.date, older.id.clone(), "cbc".into()));
        store.insert_many(vec![newer, older]).await.unwrap();
        match page["_links"]["next"]["href"].as_str() {
            Some(next) => path = next.to_owned(),
            None => break,
        }
    }
    want.sort_by(|a, b| b.cmp(a));
    let want: Vec<(String, String)> = want.into_iter().map(|(_, id, s)| (s, id)).collect();
    // The last page's arrival came after the listing ended.
    let got: Vec<(String, String)> = seen;
    assert_eq!(got.len(), want.len() - 1, "{got:?}");
    assert_eq!(got[..], want[..want.len() - 1]);
    let set: HashSet<&(String, String)> = got.iter().collect();
    assert_eq!(set.len(), got.len());
    assert!(got.contains(&("tfc".into(), "shared-id".into())));
    assert!(got.contains(&("launchdarkly".into(), "shared-id".into())));
    store.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly_and_bad_parameters_are_named() {
    let (app, store, _) = app_with(mixed()).await;
    let count = |path: String| {
        let app = &app;
        async move {
            let page: Value = app.read(&path).await.json().await.unwrap();
            keys(&page)
        }
    };
    let tfc_cbc = count("/api/events?source=tfc&source=cbc&limit=1000".into()).await;
    assert_eq!(tfc_cbc.len(), 61);
    assert!(tfc_cbc.iter().all(|(s, _)| s != "launchdarkly"));
    let pat = count("/api/events?actor=pat&limit=1000".into()).await;
    assert_eq!(pat.len(), 31);
    assert!(pat.iter().all(|(s, _)| s == "tfc"));
    let sandy =
        count("/api/events?actor=sandy@example.com&action=updateOn&limit=1000".into()).await;
    assert_eq!(sandy.len(), 31);
    let window = count(format!(
        "/api/events?after={}&before={}&limit=1000",
        T + 1,
        T + 3
    ))
    .await;
    assert_eq!(window.len(), 15);
    let q = count("/api/events?q=logged%20in&source=cbc&limit=1000".into()).await;
    assert_eq!(q.len(), 15, "{q:?}");
    // One envelope, and unknowns.
    let r = app.read("/api/events/launchdarkly/shared-id").await;
    assert_eq!(r.status(), 200);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["actor"], "sandy@example.com");
    assert_eq!(env["action"], "updateOn");
    assert_eq!(env["resource"], "proj/p:env/e:flag/f");
    assert_eq!(env["summary"], "ld shared-id");
    assert_eq!(env["time"], "2023-11-14T22:13:20.003Z");
    assert_eq!(app.read("/api/events/tfc/unknown").await.status(), 404);
    assert_eq!(app.read("/api/events/github/x").await.status(), 404);
    for (path, param) in [
        ("/api/events?source=github", "`source`"),
        ("/api/events?limit=0", "`limit`"),
        ("/api/events?limit=1001", "`limit`"),
        ("/api/events?after=yesterday", "`after`"),
        ("/api/events?cursor=abc", "`cursor`"),
        ("/api/events?colour=blue", "`colour`"),
        ("/export.csv?source=github", "`source`"),
        ("/queue/c1?source=github", "`source`"),
    ] {
        let r = app.read(path).await;
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(param),
            "{path}: {body}"
        );
    }
    store.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_and_queues_filter_by_source_and_carry_envelopes() {
    let (app, store, url) = app_with(mixed()).await;
    let csv = app
        .read("/export.csv?source=tfc&columns=source,id,date,actor,summary&before=1700000000001")
        .await
        .text()
        .await
        .unwrap();
    let mut expected = String::from("source,id,date,actor,summary\n");
    for i in (0..30u64).filter(|i| i % 6 == 0) {
        expected.push_str(&format!(
            "tfc,00000000-0000-4000-8000-{i:012x},{T},pat,pat update workspace ws-1\n"
        ));
    }
    assert_eq!(csv, expected);
    let nd = app
        .read("/export.ndjson?source=cbc&before=1700000000001")
        .await
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(l["source"], "cbc");
        assert_eq!(l["raw"]["org_key"], "ABCD1234");
    }
    // LaunchDarkly's lines stay listing reps.
    let nd = app
        .read("/export.ndjson?source=launchdarkly&before=1700000000001")
        .await
        .text()
        .await
        .unwrap();
    let first: Value = serde_json::from_str(nd.lines().next().unwrap()).unwrap();
    assert!(
        first["_id"].is_string() && first.get("source").is_none(),
        "{first}"
    );
    // A queue of one source: envelopes, only that source, each once.
    let mut got = Vec::new();
    loop {
        let page: Value = app
            .read("/queue/tf?source=tfc&limit=8")
            .await
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        for i in &items {
            assert_eq!(i["source"], "tfc");
            assert!(i["raw"]["auth"].is_object());
        }
        got.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(got.len(), 31);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 31);
    // `audithook export` takes the same filters.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args([
            "export",
            "--source",
            "tfc",
            "--actor",
            "pat",
            "--before",
            "1700000000001",
            "--columns",
            "source,id,actor,summary",
        ])
        .env("AUDITHOOK_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert_eq!(
        text.lines().nth(1),
        Some("tfc,00000000-0000-4000-8000-000000000000,pat,pat update workspace ws-1")
    );
    store.close().await;
    app.stop().await;
}
