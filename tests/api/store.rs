//! The store suite: every store operation, written once, run against SQLite always and
//! against Postgres whenever `AUDITHOOK_TEST_POSTGRES_URL` names a server (CI starts one).
//! Each case gets a fresh database; expected values are exact, so both backends must agree.

use std::collections::HashSet;
use std::time::Duration;

use audithook::event::{normalise, Channel, NewEvent, Source};
use audithook::store::{AckOutcome, BackfillWindow, Cursor, Filter, Inserted, Store};
use serde_json::{json, Value};

use crate::helpers::{exec_batch, TestDb};
use crate::search_diff;

/// Declares each case once per backend: `sqlite::NAME` and `postgres::NAME`.
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = crate::helpers::TestDb::sqlite();
                    super::$case(&db).await;
                    db.remove().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = crate::helpers::TestDb::postgres().await else { return };
                    super::$case(&db).await;
                    db.remove().await;
                }
            )*
        }
    };
}

store_suite!(
    insert_dedupes_within_and_across_groups,
    concurrent_inserts_of_one_event_store_it_once,
    get_returns_the_body_byte_for_byte,
    text_with_nul_is_stored_and_found,
    paging_is_exact_through_bursts_in_one_millisecond,
    every_filter_selects_exactly,
    export_streams_oldest_first_with_filters,
    queue_delivers_each_event_once_per_consumer,
    settings_keep_the_first_value,
    backfill_jobs_resume_and_finish,
    leases_exclude_other_holders_until_released_or_expired,
    newest_date_tracks_the_newest_event,
    every_filter_matches_a_brute_force_scan,
    explicit_acks_redeliver_what_was_not_acknowledged,
    migration_carries_launchdarkly_events_over_to_source_identity,
    one_id_in_two_sources_is_two_events,
    source_runs_resume_and_keep_their_last_ten,
);

async fn source_runs_resume_and_keep_their_last_ten(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.source_position(Source::Tfc).await.unwrap(), None);
    assert_eq!(store.source_run_open(Source::Tfc).await.unwrap(), None);
    for i in 0..15i64 {
        let run = store
            .source_run_create(Source::Tfc, i * 100, i * 100 + 50, "{}")
            .await
            .unwrap();
        // Unfinished, it is what a rerun resumes, with its saved progress.
        store
            .source_run_save(run, "{\"covered\":7}", false)
            .await
            .unwrap();
        let open = store.source_run_open(Source::Tfc).await.unwrap().unwrap();
        assert_eq!(
            (open.id, open.after, open.before),
            (run, i * 100, i * 100 + 50)
        );
        assert_eq!(open.progress, "{\"covered\":7}");
        assert_eq!(
            store.source_position(Source::Tfc).await.unwrap(),
            (i > 0).then(|| i * 100 - 50)
        );
        store.source_run_save(run, "{}", true).await.unwrap();
    }
    assert_eq!(store.source_run_open(Source::Tfc).await.unwrap(), None);
    assert_eq!(
        store.source_position(Source::Tfc).await.unwrap(),
        Some(1450)
    );
    assert_eq!(store.source_position(Source::Cbc).await.unwrap(), None);
    let kept = crate::helpers::query_strings(
        &db.url,
        "SELECT CAST(count(*) AS TEXT) FROM source_runs WHERE source = 'tfc'",
    );
    assert_eq!(kept, ["10"]);
    store.close().await;
}

/// The migrations before the multi-source one, as an archive written by the previous
/// release has them applied.
fn old_migrations(backend: &str) -> Vec<(i64, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let version: i64 = name.split('_').next()?.parse().ok()?;
            (version < 20261130000000).then(|| (version, std::fs::read_to_string(&p).unwrap()))
        })
        .collect()
}

fn sql_text(s: Option<&str>) -> String {
    match s {
        Some(s) => format!("'{}'", s.replace('\'', "''")),
        None => "NULL".into(),
    }
}

async fn migration_carries_launchdarkly_events_over_to_source_identity(db: &TestDb) {
    let backend = if db.url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let mut script = String::from(
        "CREATE TABLE IF NOT EXISTS _migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);\n",
    );
    for (version, sql) in old_migrations(backend) {
        script.push_str(&sql);
        script.push_str(&format!(
            "\nINSERT INTO _migrations (version, applied_at) VALUES ({version}, 0);\n"
        ));
    }
    // Events as the previous release stored them: member with email; token only; neither;
    // no accesses; a hook delivery.
    let bodies = [
        (
            json!({"_id": "m1", "date": 100, "kind": "flag", "title": "Sandy turned on x",
                "member": {"_id": "mem1", "email": "sandy@example.com", "firstName": "Sandy"},
                "accesses": [{"action": "updateOn", "resource": "proj/p:env/e:flag/x"},
                             {"action": "updateRules", "resource": "proj/p:env/e:flag/x"}]}),
            Channel::Hook,
        ),
        (
            json!({"_id": "t1", "date": 100, "kind": "flag", "title": "Token did it",
                "token": {"_id": "tok1", "name": "ci token"},
                "accesses": [{"action": "createFlag", "resource": "proj/p:env/*:flag/y"}]}),
            Channel::Rest,
        ),
        (
            json!({"_id": "n1", "date": 50, "kind": "project", "title": "someone",
                "member": {"_id": "mem2"}}),
            Channel::Rest,
        ),
        (
            json!({"_id": "e1", "date": 200, "title": ""}),
            Channel::Rest,
        ),
    ];
    for (seq, (body, channel)) in bodies.iter().enumerate() {
        let e = normalise(body.to_string().as_bytes(), *channel).unwrap();
        script.push_str(&format!(
            "INSERT INTO events (seq, id, date, kind, name, title, member_id, member_email, token_id, \
             accesses, resources, search, source, received_at, raw) VALUES \
             ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 0, {});\n",
            seq + 1,
            sql_text(Some(&e.id)),
            e.date,
            sql_text(Some(&e.kind)),
            sql_text(Some(&e.name)),
            sql_text(Some(&e.title)),
            sql_text(e.member_id.as_deref()),
            sql_text(e.member_email.as_deref()),
            sql_text(e.token_id.as_deref()),
            sql_text(Some(&e.accesses)),
            sql_text(Some(&e.resources)),
            sql_text(Some(&e.search)),
            sql_text(Some(channel.as_str())),
            sql_text(Some(&e.raw)),
        ));
    }
    if backend == "postgres" {
        script.push_str("SELECT setval(pg_get_serial_sequence('events', 'seq'), 4);\n");
    }
    exec_batch(&db.url, &script);
    let store = db.open().await;
    // Every event is LaunchDarkly's now, with the envelope the normaliser gives it.
    for (seq, (body, channel)) in bodies.iter().enumerate() {
        let e = normalise(body.to_string().as_bytes(), *channel).unwrap();
        let got = store
            .get(Source::LaunchDarkly, &e.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.seq, seq as i64 + 1);
        assert_eq!(got.raw, e.raw);
        assert_eq!(got.source, "launchdarkly");
        assert_eq!(
            (
                got.actor.as_str(),
                got.action.as_str(),
                got.resource.as_str(),
                got.summary.as_str()
            ),
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.resource.as_str(),
                e.summary.as_str()
            ),
            "{}",
            e.id
        );
    }
    assert_eq!(
        crate::helpers::query_strings(&db.url, "SELECT actor FROM events ORDER BY seq"),
        ["sandy@example.com", "ci token", "mem2", ""]
    );
    assert_eq!(
        crate::helpers::query_strings(&db.url, "SELECT channel FROM events ORDER BY seq"),
        ["hook", "rest", "rest", "rest"]
    );
    // Identity is (source, id): the same `_id` again is a duplicate; new events follow.
    let again = normalise(bodies[0].0.to_string().as_bytes(), Channel::Rest).unwrap();
    assert_eq!(store.insert(again).await.unwrap(), Inserted::Duplicate);
    assert_eq!(
        store.insert(event(&entry("z9", 300))).await.unwrap(),
        Inserted::Stored
    );
    // (Postgres may skip sequence numbers a duplicate drew: arrival order, not a count.)
    assert!(
        store
            .get(Source::LaunchDarkly, "z9")
            .await
            .unwrap()
            .unwrap()
            .seq
            > 4
    );
    store.close().await;
}

async fn one_id_in_two_sources_is_two_events(db: &TestDb) {
    let store = db.open().await;
    let ld = event(&entry("same", 100));
    let tfc = audithook::sources::tfc::normalise(
        r#"{"id":"same","version":"0","type":"Resource","timestamp":"1970-01-01T00:00:00.100Z",
            "auth":{"description":"pat"},"resource":{"id":"ws-1","type":"workspace","action":"update"}}"#,
    )
    .unwrap();
    assert_eq!(
        store
            .insert_many(vec![ld.clone(), tfc.clone()])
            .await
            .unwrap(),
        vec![Inserted::Stored, Inserted::Stored]
    );
    assert_eq!(
        store.insert_many(vec![tfc, ld]).await.unwrap(),
        vec![Inserted::Duplicate, Inserted::Duplicate]
    );
    // Same date and id: the source breaks the tie, newest first (tfc > launchdarkly).
    let all = store
        .list_newest(&Filter::default(), None, 10)
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.source.as_str(), e.id.as_str()))
        .collect();
    assert_eq!(got, [("tfc", "same"), ("launchdarkly", "same")]);
    let page2 = store
        .list_newest(&Filter::default(), Some(&Cursor::of(&all[0])), 10)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].source, "launchdarkly");
    let tfc_only = Filter {
        sources: vec!["tfc".into()],
        ..Filter::default()
    };
    assert_eq!(store.count(&tfc_only).await.unwrap(), 1);
    let got = store.get(Source::Tfc, "same").await.unwrap().unwrap();
    assert_eq!(
        (
            got.actor.as_str(),
            got.action.as_str(),
            got.resource.as_str()
        ),
        ("pat", "update", "workspace/ws-1")
    );
    store.close().await;
}

async fn every_filter_matches_a_brute_force_scan(db: &TestDb) {
    search_diff::every_filter_matches_a_brute_force_scan(db).await;
}

fn event(body: &Value) -> NewEvent {
    normalise(body.to_string().as_bytes(), Channel::Rest).expect("valid event")
}

fn entry(id: &str, date: i64) -> Value {
    json!({"_id": id, "date": date, "kind": "flag", "name": format!("flag {id}"), "title": "t"})
}

fn ids(events: &[audithook::store::StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

async fn insert_dedupes_within_and_across_groups(db: &TestDb) {
    let store = db.open().await;
    let out = store
        .insert_many(vec![
            event(&entry("x1", 10)),
            event(&entry("x1", 10)),
            event(&entry("x2", 11)),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        [Inserted::Stored, Inserted::Duplicate, Inserted::Stored]
    );
    assert_eq!(
        store.insert(event(&entry("x2", 11))).await.unwrap(),
        Inserted::Duplicate
    );
    assert_eq!(
        store.insert(event(&entry("x3", 12))).await.unwrap(),
        Inserted::Stored
    );
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 3);
    store.close().await;
}

async fn concurrent_inserts_of_one_event_store_it_once(db: &TestDb) {
    let store = db.open().await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Every fourth request also carries a second, distinct event.
                let mut batch = vec![event(&entry("same", 5))];
                if i % 4 == 0 {
                    batch.push(event(&entry(&format!("other{i}"), 6)));
                }
                store.insert_many(batch).await.unwrap()
            })
        })
        .collect();
    let mut stored_same = 0;
    for t in tasks {
        let out = t.await.unwrap();
        stored_same += usize::from(out[0] == Inserted::Stored);
        if out.len() == 2 {
            assert_eq!(out[1], Inserted::Stored);
        }
    }
    assert_eq!(stored_same, 1);
    assert_eq!(store.count(&Filter::default()).await.unwrap(), 11);
    store.close().await;
}

async fn get_returns_the_body_byte_for_byte(db: &TestDb) {
    let store = db.open().await;
    let body = "{ \"_id\" : \"raw1\",\n\t\"date\":1700000000123, \"name\":\"caf\\u00e9 \u{1F680}\", \"extra\": [1, 2.50, null] }";
    let e = normalise(body.as_bytes(), Channel::Hook).unwrap();
    store.insert(e).await.unwrap();
    let got = store
        .get(Source::LaunchDarkly, "raw1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.raw, body);
    assert_eq!(got.date, 1700000000123);
    assert!(store
        .get(Source::LaunchDarkly, "raw2")
        .await
        .unwrap()
        .is_none());
    store.close().await;
}

async fn text_with_nul_is_stored_and_found(db: &TestDb) {
    let store = db.open().await;
    let body = r#"{"_id":"nul1","date":1,"name":"before\u0000after","title":"x","accesses":[{"action":"up\u0000","resource":"proj/\u0000x"}]}"#;
    let e = normalise(body.as_bytes(), Channel::Hook).unwrap();
    assert_eq!(store.insert(e).await.unwrap(), Inserted::Stored);
    assert_eq!(
        store
            .get(Source::LaunchDarkly, "nul1")
            .await
            .unwrap()
            .unwrap()
            .raw,
        body
    );
    let found = store
        .list_newest(
            &Filter {
                q: Some("BEFORE".into()),
                ..Filter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(ids(&found), ["nul1"]);
    // NUL and regular-expression characters in every text filter: answers, not errors.
    let odd = |q: Option<&str>, spec: Option<&str>, members: &[&str]| Filter {
        q: q.map(str::to_owned),
        spec: spec.map(str::to_owned),
        members: members.iter().map(|m| m.to_string()).collect(),
        tokens: members.iter().map(|m| m.to_string()).collect(),
        ..Filter::default()
    };
    let cases: Vec<(Filter, Vec<&str>)> = vec![
        (odd(Some("\0"), None, &[]), vec!["nul1"]),
        (odd(Some("e\0a"), None, &[]), vec!["nul1"]),
        (odd(None, Some("proj/\0(*[^"), &[]), vec![]),
        (odd(Some("%\\_(["), Some("*\\*"), &[]), vec![]),
        (odd(None, None, &["\0"]), vec![]),
        (
            Filter {
                actions: vec!["up\0".into()],
                ..Filter::default()
            },
            vec!["nul1"],
        ),
    ];
    for phase in ["unindexed", "indexed"] {
        if phase == "indexed" {
            wait_indexed(&store).await;
        }
        for (filter, expected) in &cases {
            let got = store.list_newest(filter, None, 10).await.unwrap();
            assert_eq!(ids(&got), *expected, "{phase}: {filter:?}");
            assert_eq!(store.count(filter).await.unwrap(), expected.len() as u64);
        }
    }
    store.close().await;
}

async fn paging_is_exact_through_bursts_in_one_millisecond(db: &TestDb) {
    let store = db.open().await;
    // Mixed-case and punctuated ids: their order is bytewise on both backends.
    let mut all: Vec<(i64, String)> = Vec::new();
    for i in 0..35 {
        let prefix = ["A", "b", "_", "Z", "a", "0"][i % 6];
        all.push((1_000, format!("{prefix}{i:02}")));
    }
    for i in 0..25 {
        all.push((900 + i as i64 * 7, format!("n{i:02}")));
    }
    let events: Vec<NewEvent> = all.iter().map(|(d, id)| event(&entry(id, *d))).collect();
    store.insert_many(events).await.unwrap();
    all.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| b.1.as_bytes().cmp(a.1.as_bytes()))
    });
    let expected: Vec<String> = all.into_iter().map(|(_, id)| id).collect();

    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = store
            .list_newest(&Filter::default(), cursor.as_ref(), 7)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        let last = page.last().unwrap();
        cursor = Some(Cursor::of(last));
        seen.extend(ids(&page));
    }
    assert_eq!(seen, expected);
    store.close().await;
}

/// Five entries that tell each filter apart (see each assertion).
fn filter_fixture() -> Vec<Value> {
    let e = |id: &str, date: i64, kind: &str, name: &str, resource: &str, action: &str| {
        json!({"_id": id, "date": date, "kind": kind, "name": name, "title": "",
               "accesses": [{"action": action, "resource": resource}]})
    };
    let mut a1 = e(
        "a1",
        1000,
        "flag",
        "Checkout 50% rollout",
        "proj/default:env/production:flag/checkout",
        "updateOn",
    );
    a1["member"] = json!({"_id": "m1", "email": "alice@example.com"});
    let mut b2 = e(
        "B2",
        1000,
        "flag",
        "checkout 500 users",
        "proj/default:env/test:flag/checkout",
        "updateFallthrough",
    );
    b2["member"] = json!({"_id": "m2", "email": "bob@example.com"});
    b2["token"] = json!({"_id": "t1", "name": "ci token"});
    let mut c3 = e(
        "_c3",
        1000,
        "segment",
        "Beta_testers",
        "proj/mobile;ops,web:env/production:segment/beta",
        "createSegment",
    );
    c3["token"] = json!({"_id": "t2", "name": "deploy"});
    let mut d4 = e(
        "d4",
        2000,
        "project",
        "Mobile",
        "proj/mobile",
        "createProject",
    );
    d4["member"] = json!({"_id": "m1", "email": "alice@example.com"});
    let mut e5 = e(
        "e5",
        500,
        "member",
        "New member",
        "member/m9",
        "updateMemberRole",
    );
    e5["description"] = json!("betaXtesters");
    vec![a1, b2, c3, d4, e5]
}

async fn every_filter_selects_exactly(db: &TestDb) {
    let store = db.open().await;
    let events = filter_fixture().iter().map(event).collect();
    store.insert_many(events).await.unwrap();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, Filter, Vec<&str>)> = vec![
        (
            "none",
            Filter::default(),
            vec!["d4", "a1", "_c3", "B2", "e5"],
        ),
        (
            "q with % is literal",
            Filter {
                q: Some("50%".into()),
                ..Default::default()
            },
            vec!["a1"],
        ),
        (
            "q with _ is literal",
            Filter {
                q: Some("beta_t".into()),
                ..Default::default()
            },
            vec!["_c3"],
        ),
        (
            "q ignores case",
            Filter {
                q: Some("CHECKOUT".into()),
                ..Default::default()
            },
            vec!["a1", "B2"],
        ),
        (
            "q searches member emails and token names",
            Filter {
                q: Some("ci tok".into()),
                ..Default::default()
            },
            vec!["B2"],
        ),
        (
            "spec glob",
            Filter {
                spec: Some("proj/default:env/production:*".into()),
                ..Default::default()
            },
            vec!["a1"],
        ),
        (
            "spec prefix ends at a colon",
            Filter {
                spec: Some("proj/mobile".into()),
                ..Default::default()
            },
            vec!["d4", "_c3"],
        ),
        (
            "spec partial segment",
            Filter {
                spec: Some("proj/mob".into()),
                ..Default::default()
            },
            vec![],
        ),
        (
            "spec with tags",
            Filter {
                spec: Some("proj/*;ops:env/production".into()),
                ..Default::default()
            },
            vec!["a1", "_c3"],
        ),
        (
            "spec regex characters are literal",
            Filter {
                spec: Some("proj/default:env/prod.ction".into()),
                ..Default::default()
            },
            vec![],
        ),
        (
            "spec star",
            Filter {
                spec: Some("*".into()),
                ..Default::default()
            },
            vec!["d4", "a1", "_c3", "B2", "e5"],
        ),
        (
            "member by id",
            Filter {
                members: s(&["m1"]),
                ..Default::default()
            },
            vec!["d4", "a1"],
        ),
        (
            "member by email",
            Filter {
                members: s(&["bob@example.com"]),
                ..Default::default()
            },
            vec!["B2"],
        ),
        (
            "token",
            Filter {
                tokens: s(&["t2"]),
                ..Default::default()
            },
            vec!["_c3"],
        ),
        (
            "kinds",
            Filter {
                kinds: s(&["segment", "member"]),
                ..Default::default()
            },
            vec!["_c3", "e5"],
        ),
        (
            "actions",
            Filter {
                actions: s(&["updateOn", "createProject"]),
                ..Default::default()
            },
            vec!["d4", "a1"],
        ),
        (
            "time range",
            Filter {
                before: Some(2000),
                after: Some(500),
                ..Default::default()
            },
            vec!["a1", "_c3", "B2"],
        ),
        (
            "combined",
            Filter {
                q: Some("checkout".into()),
                kinds: s(&["flag"]),
                before: Some(1001),
                members: s(&["m2", "m1"]),
                ..Default::default()
            },
            vec!["a1", "B2"],
        ),
    ];
    // First from the unindexed tail (nothing indexed yet: the indexer waits for the writer
    // to be idle), then through the search index once the indexer has caught up.
    check_filters(&store, &cases, "unindexed").await;
    wait_indexed(&store).await;
    check_filters(&store, &cases, "indexed").await;
    // One page of 1 takes the newest-candidates pass; the rest go through the index.
    let first = store
        .list_newest(
            &Filter {
                q: Some("checkout".into()),
                ..Default::default()
            },
            None,
            1,
        )
        .await
        .unwrap();
    assert_eq!(ids(&first), ["a1"]);
    store.close().await;
}

async fn check_filters(store: &Store, cases: &[(&str, Filter, Vec<&str>)], phase: &str) {
    for (name, filter, expected) in cases {
        let got = store.list_newest(filter, None, 100).await.unwrap();
        assert_eq!(ids(&got), *expected, "{phase}: {name}");
        assert_eq!(
            store.count(filter).await.unwrap(),
            expected.len() as u64,
            "{phase}: {name}: count"
        );
        let mut rx = store.export(filter.clone(), false);
        let mut exported = Vec::new();
        while let Some(batch) = rx.recv().await {
            exported.extend(batch.unwrap().into_iter().map(|r| r.id));
        }
        let mut oldest_first: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        oldest_first.reverse();
        assert_eq!(exported, oldest_first, "{phase}: {name}: export");
    }
}

/// Waits until the background indexer has indexed every stored event.
async fn wait_indexed(store: &Store) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.search_lag().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "indexer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn export_streams_oldest_first_with_filters(db: &TestDb) {
    let store = db.open().await;
    let events = filter_fixture().iter().map(event).collect();
    store.insert_many(events).await.unwrap();
    // Enough rows to cross several batches.
    let bulk: Vec<NewEvent> = (0..1500)
        .map(|i| event(&entry(&format!("bulk{i:05}"), 3000 + i / 3)))
        .collect();
    store.insert_many(bulk).await.unwrap();

    let collect = |filter: Filter, with_raw: bool| {
        let mut rx = store.export(filter, with_raw);
        async move {
            let mut rows = Vec::new();
            while let Some(batch) = rx.recv().await {
                rows.extend(batch.unwrap());
            }
            rows
        }
    };
    let flags = collect(
        Filter {
            kinds: vec!["flag".into()],
            before: Some(3000),
            ..Default::default()
        },
        true,
    )
    .await;
    let got: Vec<&str> = flags.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ["B2", "a1"]);
    assert_eq!(flags[0].member_email.as_deref(), Some("bob@example.com"));
    assert_eq!(flags[0].token_id.as_deref(), Some("t1"));
    assert_eq!(
        flags[0].accesses,
        r#"[{"action":"updateFallthrough","resource":"proj/default:env/test:flag/checkout"}]"#
    );
    assert_eq!(
        flags[1].raw.as_deref(),
        Some(filter_fixture()[0].to_string().as_str())
    );

    let all = collect(Filter::default(), false).await;
    assert_eq!(all.len(), 1505);
    assert!(all.iter().all(|r| r.raw.is_none()));
    assert!(all
        .windows(2)
        .all(|w| (w[0].date, w[0].id.as_bytes()) < (w[1].date, w[1].id.as_bytes())));
    store.close().await;
}

async fn queue_delivers_each_event_once_per_consumer(db: &TestDb) {
    let store = db.open().await;
    // Arrival order differs from event order and from `_id` order.
    let arrival: Vec<String> = (0..30).map(|n| format!("q{:02}", (n * 7) % 30)).collect();
    for chunk in arrival.chunks(10) {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| event(&entry(id, 10_000 - i as i64)))
            .collect();
        store.insert_many(batch).await.unwrap();
    }
    let first = store.queue_take("x", 10).await.unwrap();
    assert_eq!(ids(&first), arrival[..10]);

    // Eight concurrent readers of consumer y share the events between them, each once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = store.queue_take("y", 3).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    // Each batch is in arrival order.
                    assert!(batch.windows(2).all(|w| w[0].seq < w[1].seq));
                    got.extend(ids(&batch));
                }
            })
        })
        .collect();
    let mut delivered = Vec::new();
    for t in tasks {
        delivered.extend(t.await.unwrap());
    }
    assert_eq!(delivered.len(), 30);
    assert_eq!(delivered.iter().collect::<HashSet<_>>().len(), 30);

    // Positions survive a restart; x continues where it stopped.
    store.close().await;
    let store = db.open().await;
    let rest = store.queue_take("x", 100).await.unwrap();
    assert_eq!(ids(&rest), arrival[10..]);
    assert!(store.queue_take("x", 100).await.unwrap().is_empty());
    assert!(store.queue_take("y", 100).await.unwrap().is_empty());
    store.close().await;
}

async fn settings_keep_the_first_value(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.setting("k").await.unwrap(), None);
    assert_eq!(
        store.setting_insert_if_absent("k", "v1").await.unwrap(),
        "v1"
    );
    assert_eq!(
        store.setting_insert_if_absent("k", "v2").await.unwrap(),
        "v1"
    );
    assert_eq!(store.setting("k").await.unwrap().as_deref(), Some("v1"));
    store.close().await;
}

async fn backfill_jobs_resume_and_finish(db: &TestDb) {
    let store = db.open().await;
    assert!(store
        .backfill_open(Some(1), None, None)
        .await
        .unwrap()
        .is_none());
    let job = store.backfill_create(Some(1), None, None).await.unwrap();
    let other = store
        .backfill_create(Some(1), None, Some("proj/*"))
        .await
        .unwrap();
    assert_ne!(job, other);
    let w0 = BackfillWindow {
        idx: 0,
        after: 1,
        before: 50,
        next_href: None,
        done: false,
    };
    let w1 = BackfillWindow {
        idx: 1,
        after: 50,
        before: 100,
        next_href: None,
        done: true,
    };
    store
        .backfill_save_windows(job, vec![w0.clone(), w1.clone()])
        .await
        .unwrap();
    let w0b = BackfillWindow {
        next_href: Some("/api/v2/auditlog?after=1&before=30&limit=20".into()),
        ..w0
    };
    store
        .backfill_save_windows(job, vec![w0b.clone()])
        .await
        .unwrap();

    let open = store
        .backfill_open(Some(1), None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open.id, job);
    assert_eq!(open.windows, [w0b, w1]);
    let spec_job = store
        .backfill_open(Some(1), None, Some("proj/*"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((spec_job.id, spec_job.windows.len()), (other, 0));
    assert!(store
        .backfill_open(Some(2), None, None)
        .await
        .unwrap()
        .is_none());

    store.backfill_finish(job).await.unwrap();
    assert!(store
        .backfill_open(Some(1), None, None)
        .await
        .unwrap()
        .is_none());
    store.close().await;
}

async fn leases_exclude_other_holders_until_released_or_expired(db: &TestDb) {
    let store = db.open().await;
    let long = Duration::from_secs(60);
    assert!(store.lease_acquire("catchup", "A", long).await.unwrap());
    assert!(!store.lease_acquire("catchup", "B", long).await.unwrap());
    assert!(store.lease_acquire("catchup", "A", long).await.unwrap());
    // Another lease name is independent.
    assert!(store.lease_acquire("other", "B", long).await.unwrap());
    store.lease_release("catchup", "B").await.unwrap();
    assert!(!store.lease_acquire("catchup", "B", long).await.unwrap());
    store.lease_release("catchup", "A").await.unwrap();
    assert!(store
        .lease_acquire("catchup", "B", Duration::from_millis(1500))
        .await
        .unwrap());
    assert!(!store.lease_acquire("catchup", "A", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(store.lease_acquire("catchup", "A", long).await.unwrap());
    assert!(!store.lease_acquire("catchup", "B", long).await.unwrap());
    store.close().await;
}

async fn newest_date_tracks_the_newest_event(db: &TestDb) {
    let store: Store = db.open().await;
    assert_eq!(store.newest_date(Source::LaunchDarkly).await.unwrap(), None);
    store
        .insert_many(vec![event(&entry("n1", 2000)), event(&entry("n2", 1500))])
        .await
        .unwrap();
    assert_eq!(
        store.newest_date(Source::LaunchDarkly).await.unwrap(),
        Some(2000)
    );
    store.close().await;
}

async fn explicit_acks_redeliver_what_was_not_acknowledged(db: &TestDb) {
    let store = db.open().await;
    let batch: Vec<NewEvent> = (1..=10)
        .map(|i| event(&entry(&format!("q{i:02}"), 100 + i)))
        .collect();
    store.insert_many(batch).await.unwrap();
    let short = Some(Duration::from_millis(2500));
    let a = store.queue_take_leased("c", 4, short).await.unwrap();
    let b = store.queue_take_leased("c", 4, short).await.unwrap();
    assert_eq!(ids(&a.rows), ["q01", "q02", "q03", "q04"]);
    assert_eq!(ids(&b.rows), ["q05", "q06", "q07", "q08"]);
    let (ta, tb) = (a.ack.unwrap(), b.ack.unwrap());
    assert_ne!(ta, tb);
    // Another consumer is unaffected.
    assert_eq!(store.queue_take("other", 100).await.unwrap().len(), 10);
    assert_eq!(
        store.queue_ack("c", &ta).await.unwrap(),
        AckOutcome::Settled(4)
    );
    assert_eq!(
        store.queue_ack("c", &ta).await.unwrap(),
        AckOutcome::Unknown
    );
    assert_eq!(
        store.queue_ack("other", &tb).await.unwrap(),
        AckOutcome::Unknown
    );
    tokio::time::sleep(Duration::from_millis(2800)).await;
    // B's lease ran out: its ack is refused, and its events come back first.
    assert_eq!(
        store.queue_ack("c", &tb).await.unwrap(),
        AckOutcome::Expired
    );
    let c = store
        .queue_take_leased("c", 10, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(ids(&c.rows), ["q05", "q06", "q07", "q08", "q09", "q10"]);
    assert_eq!(
        store.queue_ack("c", &tb).await.unwrap(),
        AckOutcome::Unknown
    );
    // Nothing else to hand out while C is leased, in either mode, across a restart.
    assert!(store.queue_take("c", 10).await.unwrap().is_empty());
    store.close().await;
    let store = db.open().await;
    let empty = store
        .queue_take_leased("c", 10, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(empty.ack, None);
    assert_eq!(
        store
            .queue_ack("c", c.ack.as_deref().unwrap())
            .await
            .unwrap(),
        AckOutcome::Settled(6)
    );
    // A reader that crashes: its batch comes back after the lease, here to a read-once take.
    let more: Vec<NewEvent> = (11..=40)
        .map(|i| event(&entry(&format!("q{i:02}"), 100 + i)))
        .collect();
    store.insert_many(more).await.unwrap();
    let crashed = store.queue_take_leased("c", 2, short).await.unwrap();
    assert_eq!(ids(&crashed.rows), ["q11", "q12"]);
    tokio::time::sleep(Duration::from_millis(2800)).await;
    assert_eq!(
        ids(&store.queue_take("c", 3).await.unwrap()),
        ["q11", "q12", "q13"]
    );
    // Concurrent explicit readers never hold the same event.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let b = store
                        .queue_take_leased("c", 3, Some(Duration::from_secs(60)))
                        .await
                        .unwrap();
                    if b.rows.is_empty() {
                        return got;
                    }
                    got.extend(ids(&b.rows));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (14..=40).map(|i| format!("q{i:02}")).collect();
    assert_eq!(all, expected);
    store.close().await;
}
