//! `GET /api/v2/auditlog`: LaunchDarkly-compatible listing, filters, paging, auth.

use std::collections::HashSet;

use crate::helpers::*;
use serde_json::Value;

/// Posts events concurrently (16 at a time) and asserts each is stored.
async fn post_all(app: &TestApp, events: Vec<Value>) {
    let mut set = tokio::task::JoinSet::new();
    let mut pending = events.into_iter();
    loop {
        while set.len() < 16 {
            let Some(ev) = pending.next() else { break };
            let req = app.hook().bearer_auth(HOOK_TOKEN).body(ev.to_string());
            set.spawn(async move { req.send().await.unwrap().status().as_u16() });
        }
        match set.join_next().await {
            Some(s) => assert_eq!(s.unwrap(), 202),
            None => break,
        }
    }
}

/// Follows `_links.next` from `first` and returns every item id in order, and the page count.
async fn page_all(app: &TestApp, first: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(href) = next {
        let r = app.read(&href).await;
        assert_eq!(r.status(), 200, "{href}");
        let page: Value = r.json().await.unwrap();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            ids.push(item["_id"].as_str().unwrap().to_owned());
        }
        next = page["_links"]["next"]["href"].as_str().map(str::to_owned);
        assert!(pages < 10_000, "paging does not end");
    }
    (ids, pages)
}

#[tokio::test]
async fn paging_1000_entries_with_50_in_one_millisecond_returns_each_once_in_order() {
    let app = spawn_app().await;
    let mut events = Vec::new();
    let mut expected: Vec<(i64, String)> = Vec::new();
    for i in 0..1000i64 {
        // 50 entries share t=1_700_000_500_000; the rest are 1 s apart around them.
        let ms = if (400..450).contains(&i) {
            1_700_000_500_000
        } else {
            1_700_000_000_000 + i * 1000
        };
        let id = format!("{:024x}", i * 7919 % 1000 + 1000 * (i % 3));
        events.push(rest_entry(
            &id,
            ms,
            &format!("flag {i}"),
            "proj/p:env/e:flag/f",
            "m1",
        ));
        expected.push((ms, id));
    }
    post_all(&app, events).await;
    expected.sort_by(|a, b| b.cmp(a));
    let in_range: Vec<String> = expected
        .iter()
        .filter(|(ms, _)| *ms > 1_700_000_400_000 && *ms < 1_700_000_600_000)
        .map(|(_, id)| id.clone())
        .collect();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let (ids, pages) = page_all(&app, "/api/v2/auditlog?limit=7").await;
    assert_eq!(ids.len(), 1000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
    assert_eq!(ids, expected);
    assert_eq!(pages, 143);

    // Paging within a time range keeps the range.
    let (ids, _) = page_all(
        &app,
        "/api/v2/auditlog?limit=20&after=1700000400000&before=1700000600000",
    )
    .await;
    // 150 entries 1 s apart plus the burst of 50.
    assert_eq!(ids.len(), 200);
    assert_eq!(ids, in_range);
}

#[tokio::test]
async fn listing_shape_and_default_limit() {
    let app = spawn_app().await;
    let events = (0..12)
        .map(|i| {
            rest_entry(
                &format!("e{i:02}"),
                1000 + i,
                "n",
                "proj/p:env/e:flag/f",
                "m",
            )
        })
        .collect();
    post_all(&app, events).await;
    let page: Value = app.read("/api/v2/auditlog").await.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    assert_eq!(items[0]["_id"], "e11");
    assert_eq!(items[9]["_id"], "e02");
    assert_eq!(page["_links"]["self"]["href"], "/api/v2/auditlog");
    assert_eq!(page["_links"]["self"]["type"], "application/json");
    let next = page["_links"]["next"]["href"].as_str().unwrap();
    assert!(next.starts_with("/api/v2/auditlog?cursor="), "{next}");
    let page2: Value = app.read(next).await.json().await.unwrap();
    let ids: Vec<&str> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["e01", "e00"]);
    assert!(page2["_links"].get("next").is_none());
    // Hook payloads are listed with the fields AuditLogEntryListingRep requires.
    app.post_event(hook_payload("h1", 5000).to_string()).await;
    let item: Value = app.read("/api/v2/auditlog/h1").await.json().await.unwrap();
    for key in [
        "_links",
        "_id",
        "_accountId",
        "date",
        "accesses",
        "kind",
        "name",
        "description",
        "shortDescription",
    ] {
        assert!(item.get(key).is_some(), "missing {key}");
    }
    assert_eq!(item["date"], 5000);
}

#[tokio::test]
async fn filters() {
    let app = spawn_app().await;
    let events = vec![
        rest_entry(
            "a",
            100,
            "Checkout Banner",
            "proj/web:env/production:flag/banner",
            "m1",
        ),
        rest_entry("b", 200, "dark mode", "proj/web:env/test:flag/dark", "m2"),
        rest_entry(
            "c",
            300,
            "Search v2",
            "proj/api:env/production:flag/search",
            "m3",
        ),
        rest_entry(
            "d",
            400,
            "checkout flow",
            "proj/api:env/production:segment/s1",
            "m1",
        ),
    ];
    post_all(&app, events).await;
    let ids = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let cases = [
        ("before=300", vec!["b", "a"]),
        ("after=200", vec!["d", "c"]),
        ("after=100&before=400", vec!["c", "b"]),
        ("q=checkout", vec!["d", "a"]),
        ("q=CHECKOUT%20BANNER", vec!["a"]),
        ("q=m3%40example.com", vec!["c"]),
        ("spec=proj/*:env/production:flag/*", vec!["c", "a"]),
        ("spec=proj/api", vec!["d", "c"]),
        ("spec=proj/web:env/test:flag/dark", vec!["b"]),
        ("member=m1", vec!["d", "a"]),
        ("member=m1&member=m2", vec!["d", "b", "a"]),
        ("member=nobody", vec![]),
        ("q=checkout&spec=proj/web:*", vec!["a"]),
        ("limit=1000", vec!["d", "c", "b", "a"]),
        ("unknown=ignored", vec!["d", "c", "b", "a"]),
    ];
    for (query, want) in cases {
        let r = app.read(&format!("/api/v2/auditlog?{query}")).await;
        assert_eq!(r.status(), 200, "{query}");
        assert_eq!(ids(r.json().await.unwrap()), want, "{query}");
    }
}

#[tokio::test]
async fn token_filter() {
    let app = spawn_app().await;
    let mut e = rest_entry("t1", 10, "n", "proj/p", "m");
    e["token"] = serde_json::json!({"_id": "tok-a", "name": "ci token", "ending": "abcd", "serviceToken": true});
    post_all(&app, vec![e, rest_entry("t2", 20, "n", "proj/p", "m")]).await;
    let page: Value = app
        .read("/api/v2/auditlog?token=tok-a")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["_id"], "t1");
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("before=abc", "before"),
        ("after=1.5", "after"),
        ("cursor=garbage", "cursor"),
    ] {
        let r = app.read(&format!("/api/v2/auditlog?{query}")).await;
        assert_eq!(r.status(), 400, "{query}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["code"], "invalid_request");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn read_routes_need_the_read_token() {
    let app = spawn_app().await;
    app.post_event(hook_payload("x1", 1).to_string()).await;
    for path in ["/api/v2/auditlog", "/api/v2/auditlog/x1"] {
        let url = format!("{}{}", app.base, path);
        assert_eq!(
            app.client.get(&url).send().await.unwrap().status(),
            401,
            "{path}"
        );
        // The token LaunchDarkly holds cannot read.
        let r = app
            .client
            .get(&url)
            .bearer_auth(HOOK_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = app
            .client
            .get(&url)
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(app.read(path).await.status(), 200, "{path}");
    }
    let r = app.read("/api/v2/auditlog/unknown").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
}

#[tokio::test]
async fn rare_terms_are_found_through_the_index_and_in_the_unindexed_tail() {
    use audithook::event::{normalise, Channel};
    use audithook::store::{Filter, StoreOptions};
    // The background indexer is off and the first pass over the newest events is skipped,
    // so each answer below comes from the index, the unindexed tail, or both.
    let db = TestDb::for_backend().await;
    let store = db
        .open_with(&StoreOptions {
            background_indexer: false,
            newest_candidates: 0,
            ..StoreOptions::default()
        })
        .await;
    let events: Vec<_> = (0..5000)
        .map(|i| {
            let e = rest_entry(
                &format!("s{i:05}"),
                i,
                &format!("Flag {i}"),
                &format!("proj/p;tag-{}:env/e:flag/f-{i}", i % 3),
                "m",
            );
            normalise(e.to_string().as_bytes(), Channel::Rest).unwrap()
        })
        .collect();
    store.insert_many(events).await.unwrap();
    let ids = |rows: Vec<audithook::store::StoredEvent>| {
        rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let filter = |q: Option<&str>, spec: Option<&str>| Filter {
        q: q.map(str::to_owned),
        spec: spec.map(str::to_owned),
        ..Filter::default()
    };
    let cases: Vec<(Filter, usize, Vec<&str>)> = vec![
        // "flag 421" matches Flag 421 and Flag 4210..4219: the newest five.
        (
            filter(Some("flag 421"), None),
            5,
            vec!["s04219", "s04218", "s04217", "s04216", "s04215"],
        ),
        // An old event: only the index (or a scan of everything) finds it.
        (
            filter(Some("flag 77"), None),
            20,
            vec![
                "s00779", "s00778", "s00777", "s00776", "s00775", "s00774", "s00773", "s00772",
                "s00771", "s00770", "s00077",
            ],
        ),
        // A specifier matches the resource or what lies beneath it, not `f-770`; tags in
        // the stored resource do not hide it.
        (
            filter(None, Some("proj/p:env/e:flag/f-77")),
            20,
            vec!["s00077"],
        ),
        (
            filter(None, Some("proj/p;tag-2:env/e:flag/f-77")),
            20,
            vec!["s00077"],
        ),
        (
            filter(None, Some("proj/p:env/e:flag/f-77*")),
            3,
            vec!["s00779", "s00778", "s00777"],
        ),
        (
            filter(Some("flag"), None),
            3,
            vec!["s04999", "s04998", "s04997"],
        ),
    ];
    for (phase, step, lag) in [
        ("empty", 0, 5000),
        ("partial", 2500, 2500),
        ("complete", 5000, 0),
    ] {
        if step > 0 {
            store.index_step(step).await.unwrap();
        }
        assert_eq!(store.search_lag().await.unwrap(), lag, "{phase}");
        for (f, limit, want) in &cases {
            assert_eq!(
                ids(store.list_newest(f, None, *limit).await.unwrap()),
                *want,
                "index {phase}: {f:?}"
            );
        }
    }
    // New events after indexing are found through the tail.
    let late = rest_entry(
        "late",
        9999,
        "Flag 4211 again",
        "proj/p:env/e:flag/f-late",
        "m",
    );
    store
        .insert(normalise(late.to_string().as_bytes(), Channel::Rest).unwrap())
        .await
        .unwrap();
    assert_eq!(store.search_lag().await.unwrap(), 1);
    assert_eq!(
        ids(store
            .list_newest(&filter(Some("flag 421"), None), None, 2)
            .await
            .unwrap()),
        vec!["late", "s04219"]
    );
    store.close().await;
    db.remove().await;
}

#[tokio::test]
async fn documented_default_hook_payload_reads_back_as_a_valid_listing_rep() {
    let Some(validator) = listing_rep_validator() else {
        crate::skips::skip("../shared/reference/ld-rest-api-get-audit-log-entries.md is absent");
        return;
    };
    let app = spawn_app().await;
    // LaunchDarkly's documented default payload carries `"target": {"_links": null, ...}`,
    // which its API clients reject where a `TargetResourceRep` is expected.
    let hook = hook_payload("5defe6d6a3a5a1082fbe3212", 1_700_000_000_000);
    assert!(hook["target"]["_links"].is_null());
    let mut odd = rest_entry("odd", 1_700_000_000_001, "odd", "proj/x", "m1");
    odd["member"]["_links"] = Value::Null;
    odd["token"] = serde_json::json!({"_id": "t1", "name": "t", "serviceToken": "yes"});
    odd["_links"] = serde_json::json!({"self": {"href": 1}, "site": null});
    odd["kind"] = Value::Null;
    odd["app"] = serde_json::json!("not an object");
    odd["parent"] = serde_json::json!({"_links": 5, "name": "p", "resource": ["x"]});
    odd["subject"] = Value::Null;
    for body in [&hook, &odd] {
        assert_eq!(app.post_event(body.to_string()).await.status(), 202);
    }
    let list = app.read("/api/v2/auditlog").await;
    assert_eq!(list.status(), 200);
    let page: Value = list.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    for item in page["items"].as_array().unwrap() {
        assert!(validator.is_valid(item), "{item}");
    }
    let one: Value = app
        .read("/api/v2/auditlog/5defe6d6a3a5a1082fbe3212")
        .await
        .json()
        .await
        .unwrap();
    assert!(validator.is_valid(&one));
    assert!(one["target"].get("_links").is_none());
    assert_eq!(one["target"]["name"], "");
    assert_eq!(one["title"], hook["title"]);
    let odd_read: Value = app.read("/api/v2/auditlog/odd").await.json().await.unwrap();
    assert_eq!(odd_read["kind"], "");
    assert!(odd_read.get("app").is_none());
    assert!(odd_read.get("subject").is_none());
    assert_eq!(odd_read["parent"], serde_json::json!({"name": "p"}));
    assert_eq!(
        odd_read["token"],
        serde_json::json!({"_id": "t1", "name": "t"})
    );
    assert_eq!(odd_read["_links"]["self"]["href"], "/api/v2/auditlog/odd");
    // The stored bytes are as received: only the read shape is adapted.
    assert_eq!(
        app.stored_raw("5defe6d6a3a5a1082fbe3212").unwrap(),
        hook.to_string()
    );
}

#[tokio::test]
async fn offset_pages_as_the_airbyte_connector_does() {
    let app = spawn_app().await;
    let mut events = Vec::new();
    for i in 0..130i64 {
        // Groups of five share a millisecond.
        let ms = 1_700_000_000_000 + (i / 5) * 1000;
        events.push(rest_entry(&format!("e{i:03}"), ms, "f", "proj/x", "m1"));
    }
    post_all(&app, events).await;
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let r = app
            .read(&format!("/api/v2/auditlog?limit=20&offset={offset}"))
            .await;
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        seen.extend(items.iter().map(|i| i["_id"].as_str().unwrap().to_owned()));
        if items.len() < 20 {
            break;
        }
        offset += 20;
        assert!(offset < 1000, "offset paging does not end");
    }
    let mut expected: Vec<String> = (0..130).map(|i| format!("e{i:03}")).collect();
    // Newest first: dates descending, then `_id` descending.
    expected.sort_by(|a, b| {
        let (ia, ib): (i64, i64) = (a[1..].parse().unwrap(), b[1..].parse().unwrap());
        (ib / 5, b).cmp(&(ia / 5, a))
    });
    assert_eq!(seen, expected);
    // Offset together with filters, and a next link that continues without the offset.
    let page: Value = app
        .read("/api/v2/auditlog?limit=3&offset=125&q=e00")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let ids = app
        .item_ids("/api/v2/auditlog?limit=3&offset=2&spec=proj/x&before=1700000001000")
        .await;
    assert_eq!(ids, ["e002", "e001", "e000"]);
    let page: Value = app
        .read("/api/v2/auditlog?limit=2&offset=1&before=1700000001000")
        .await
        .json()
        .await
        .unwrap();
    let next = page["_links"]["next"]["href"].as_str().unwrap();
    assert!(!next.contains("offset"), "{next}");
    let (rest, _) = page_all(&app, next).await;
    assert_eq!(rest, ["e001", "e000"]);
    for bad in ["-1", "x", "100000001"] {
        let r = app.read(&format!("/api/v2/auditlog?offset={bad}")).await;
        assert_eq!(r.status(), 400, "offset={bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("offset"));
    }
}

#[tokio::test]
async fn a_page_of_large_events_is_capped_in_bytes_and_continues() {
    let app = spawn_app().await;
    // 40 events of ~900 KB: 36 MB in all, more than four pages' byte budget.
    let filler = "x".repeat(900 * 1024);
    let mut events = Vec::new();
    for i in 0..40i64 {
        let mut e = rest_entry(
            &format!("big{i:02}"),
            1_700_000_000_000 + i,
            "f",
            "proj/x",
            "m1",
        );
        e["comment"] = Value::String(filler.clone());
        events.push(e);
    }
    post_all(&app, events).await;
    let first: Value = app
        .read("/api/v2/auditlog?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    let n = first["items"].as_array().unwrap().len();
    // 8 MiB of raw bodies: 9 events of ~900 KB.
    assert_eq!(n, 9);
    let (ids, pages) = page_all(&app, "/api/v2/auditlog?limit=1000").await;
    assert_eq!(pages, 5);
    let expected: Vec<String> = (0..40).rev().map(|i| format!("big{i:02}")).collect();
    assert_eq!(ids, expected);
}
