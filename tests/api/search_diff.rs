//! Differential test of every reader filter: random events (tagged and untagged resource
//! specifiers, a small vocabulary so queries hit) and random queries, each answered by the
//! store (listing paged to the end, `count`, export) and by a brute-force evaluation of the
//! documented semantics written here, compared as id sets. The search index is driven by
//! hand (the background indexer is off) and checked empty, partial and complete; the first
//! pass over the newest candidates is made tiny so that the index path answers most queries.

use std::collections::BTreeSet;

use audithook::event::{normalise, Channel};
use audithook::store::{Cursor, Filter, Store, StoreOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::TestDb;

const PROJECTS: &[&str] = &["default", "mobile", "web-app"];
const ENVS: &[&str] = &["qa", "production", "staging"];
const FLAGS: &[&str] = &["x", "xy", "flag-1", "new-ui", "checkout"];
const TAGS: &[&str] = &["web", "mobile", "ops"];
const WORDS: &[&str] = &[
    "Checkout", "rollout", "Beta", "new UI", "qa", "Flag", "ÉTÉ", "50%", "a_b",
];
const MEMBERS: &[(&str, &str, &str)] = &[
    ("m1", "alice@example.com", "Alice"),
    ("m2", "bob@example.com", "Bob"),
    ("m3", "carol@example.com", "Carol"),
];
const TOKENS: &[(&str, &str)] = &[("t1", "ci token"), ("t2", "deploy")];
const ACTIONS: &[&str] = &["updateOn", "createFlag", "updateTags", "deleteFlag"];
const KINDS: &[&str] = &["flag", "project", "environment", "member"];

fn tagged(rng: &mut StdRng, part: String) -> String {
    if rng.gen_bool(0.3) {
        let n = rng.gen_range(1..=2);
        let tags: Vec<&str> = TAGS.choose_multiple(rng, n).copied().collect();
        format!("{part};{}", tags.join(","))
    } else {
        part
    }
}

fn resource(rng: &mut StdRng) -> String {
    let p = format!("proj/{}", PROJECTS.choose(rng).unwrap());
    let p = tagged(rng, p);
    match rng.gen_range(0..5) {
        0 => p,
        1 => format!("member/{}", MEMBERS.choose(rng).unwrap().0),
        _ => {
            let e = format!("env/{}", ENVS.choose(rng).unwrap());
            let e = tagged(rng, e);
            let f = format!("flag/{}", FLAGS.choose(rng).unwrap());
            let f = tagged(rng, f);
            format!("{p}:{e}:{f}")
        }
    }
}

fn words(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| *WORDS.choose(rng).unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

fn random_event(rng: &mut StdRng, i: usize) -> Value {
    let accesses: Vec<Value> = (0..rng.gen_range(0..=2))
        .map(|_| json!({"action": ACTIONS.choose(rng).unwrap(), "resource": resource(rng)}))
        .collect();
    let mut e = json!({
        "_id": format!("ev{i:04}"),
        "date": 1_700_000_000_000i64 + rng.gen_range(0..60) * 1000,
        "kind": KINDS.choose(rng).unwrap(),
        "name": words(rng, 2),
        "title": words(rng, 1),
        "accesses": accesses,
    });
    if rng.gen_bool(0.4) {
        e["description"] = json!(words(rng, 2));
    }
    if rng.gen_bool(0.2) {
        e["comment"] = json!(words(rng, 1));
    }
    if rng.gen_bool(0.7) {
        let (id, email, first) = MEMBERS.choose(rng).unwrap();
        e["member"] = json!({"_id": id, "email": email, "firstName": first, "lastName": "Smith"});
    } else if rng.gen_bool(0.7) {
        let (id, name) = TOKENS.choose(rng).unwrap();
        e["token"] = json!({"_id": id, "name": name});
    }
    if rng.gen_bool(0.3) {
        e["target"] = json!({"name": "t", "resources": [resource(rng)]});
    }
    e
}

fn random_filter(rng: &mut StdRng) -> Filter {
    let mut f = Filter::default();
    let base = 1_700_000_000_000i64;
    if rng.gen_bool(0.2) {
        f.before = Some(base + rng.gen_range(0..60) * 1000);
    }
    if rng.gen_bool(0.2) {
        f.after = Some(base + rng.gen_range(0..60) * 1000);
    }
    if rng.gen_bool(0.5) {
        let word = *WORDS.choose(rng).unwrap();
        let q: String = match rng.gen_range(0..6) {
            0 => word.to_uppercase(),
            1 => word.chars().take(2).collect(),
            2 => word.chars().skip(1).take(4).collect(),
            3 => format!("flag/{}", FLAGS.choose(rng).unwrap()),
            4 => format!("env/{}", ENVS.choose(rng).unwrap()),
            _ => word.to_owned(),
        };
        f.q = (!q.is_empty()).then_some(q);
    }
    if rng.gen_bool(0.6) {
        let p = PROJECTS.choose(rng).unwrap();
        let e = ENVS.choose(rng).unwrap();
        let fl = FLAGS.choose(rng).unwrap();
        let t = TAGS.choose(rng).unwrap();
        f.spec = Some(match rng.gen_range(0..9) {
            0 => format!("proj/{p}"),
            1 => format!("proj/{p}:env/{e}"),
            2 => format!("proj/*:env/{e}"),
            3 => format!("proj/{p}:env/{e}:flag/{fl}"),
            4 => format!("proj/{p};{t}:env/{e}"),
            5 => format!("proj/*:env/*:flag/{fl}"),
            6 => format!("*flag/{fl}*"),
            7 => format!("member/{}", MEMBERS.choose(rng).unwrap().0),
            _ => format!("proj/{p}:env/{e};{t}:flag/*"),
        });
    }
    if rng.gen_bool(0.15) {
        let m = MEMBERS.choose(rng).unwrap();
        f.members
            .push(if rng.gen_bool(0.5) { m.0 } else { m.1 }.to_owned());
    }
    if rng.gen_bool(0.1) {
        f.tokens.push(TOKENS.choose(rng).unwrap().0.to_owned());
    }
    if rng.gen_bool(0.15) {
        f.kinds.push(KINDS.choose(rng).unwrap().to_string());
    }
    if rng.gen_bool(0.15) {
        f.actions.push(ACTIONS.choose(rng).unwrap().to_string());
    }
    f
}

// The documented semantics, written out independently of the store.

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

fn resources_of(e: &Value) -> Vec<String> {
    let mut out: Vec<String> = e["accesses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["resource"].as_str().unwrap().to_owned())
        .collect();
    for r in e["target"]["resources"].as_array().into_iter().flatten() {
        out.push(r.as_str().unwrap().to_owned());
    }
    out
}

/// Without tags: `proj/a;x,y:env/b` is `proj/a:env/b`.
fn untagged(s: &str) -> String {
    s.split(':')
        .map(|part| part.split(';').next().unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

/// `*` is any run of characters, everything else itself (recursive, unlike the store's).
fn glob_match(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_match(&p[1..], &t[i..])),
        Some(c) => t.first() == Some(c) && glob_match(&p[1..], &t[1..]),
    }
}

/// A specifier matches a resource, or any part of it that ends before a `:`.
fn spec_hit(spec: &str, resource: &str) -> bool {
    let p: Vec<char> = untagged(spec).chars().collect();
    let r = untagged(resource);
    let mut prefixes = vec![r.clone()];
    for (i, c) in r.char_indices() {
        if c == ':' {
            prefixes.push(r[..i].to_owned());
        }
    }
    prefixes
        .iter()
        .any(|x| glob_match(&p, &x.chars().collect::<Vec<_>>()))
}

fn brute_force(e: &Value, f: &Filter) -> bool {
    let date = e["date"].as_i64().unwrap();
    if f.before.is_some_and(|b| date >= b) || f.after.is_some_and(|a| date <= a) {
        return false;
    }
    if let Some(q) = &f.q {
        let member_name = if e["member"].is_object() {
            format!(
                "{} {}",
                str_at(e, &["member", "firstName"]),
                str_at(e, &["member", "lastName"])
            )
        } else {
            String::new()
        };
        let fields = [
            str_at(e, &["name"]).to_owned(),
            str_at(e, &["title"]).to_owned(),
            str_at(e, &["kind"]).to_owned(),
            str_at(e, &["description"]).to_owned(),
            str_at(e, &["comment"]).to_owned(),
            str_at(e, &["member", "email"]).to_owned(),
            member_name,
            str_at(e, &["token", "name"]).to_owned(),
            resources_of(e).join("\n"),
        ];
        if !fields.join("\n").to_lowercase().contains(&q.to_lowercase()) {
            return false;
        }
    }
    if let Some(spec) = &f.spec {
        if !resources_of(e).iter().any(|r| spec_hit(spec, r)) {
            return false;
        }
    }
    if !f.members.is_empty()
        && !f
            .members
            .iter()
            .any(|m| m == str_at(e, &["member", "_id"]) || m == str_at(e, &["member", "email"]))
    {
        return false;
    }
    if !f.tokens.is_empty() && !f.tokens.iter().any(|t| t == str_at(e, &["token", "_id"])) {
        return false;
    }
    if !f.kinds.is_empty() && !f.kinds.iter().any(|k| k == str_at(e, &["kind"])) {
        return false;
    }
    if !f.actions.is_empty()
        && !e["accesses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| f.actions.iter().any(|x| x == str_at(a, &["action"])))
    {
        return false;
    }
    true
}

/// The store's answers to `f`: the listing paged to its end, `count`, and the export.
async fn store_answers(
    store: &Store,
    f: &Filter,
    page: usize,
) -> (BTreeSet<String>, u64, BTreeSet<String>) {
    let mut listed = BTreeSet::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let rows = store.list_newest(f, cursor.as_ref(), page).await.unwrap();
        for w in rows.windows(2) {
            assert!(
                (w[0].date, &w[0].id) > (w[1].date, &w[1].id),
                "newest first"
            );
        }
        for r in &rows {
            assert!(
                listed.insert(r.id.clone()),
                "{} listed twice for {f:?}",
                r.id
            );
        }
        match rows.last() {
            Some(last) if rows.len() == page => cursor = Some(Cursor::of(last)),
            _ => break,
        }
    }
    let count = store.count(f).await.unwrap();
    let mut rx = store.export(f.clone(), false);
    let mut exported = BTreeSet::new();
    while let Some(batch) = rx.recv().await {
        exported.extend(batch.unwrap().into_iter().map(|r| r.id));
    }
    (listed, count, exported)
}

pub(crate) async fn every_filter_matches_a_brute_force_scan(db: &TestDb) {
    let options = StoreOptions {
        background_indexer: false,
        newest_candidates: 5,
        ..StoreOptions::default()
    };
    let store = db.open_with(&options).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_0010);
    let events: Vec<Value> = (0..400).map(|i| random_event(&mut rng, i)).collect();
    let new: Vec<_> = events
        .iter()
        .map(|e| normalise(e.to_string().as_bytes(), Channel::Rest).unwrap())
        .collect();
    store.insert_many(new).await.unwrap();
    let filters: Vec<Filter> = (0..150).map(|_| random_filter(&mut rng)).collect();
    let mut hits = 0usize;
    for (phase, step) in [
        ("index empty", 0),
        ("index partial", 170),
        ("index complete", 1000),
    ] {
        if step > 0 {
            store.index_step(step).await.unwrap();
        }
        let lag = store.search_lag().await.unwrap();
        match phase {
            "index empty" => assert_eq!(lag, 400),
            "index partial" => assert_eq!(lag, 230),
            _ => assert_eq!(lag, 0),
        }
        for (i, f) in filters.iter().enumerate() {
            let expected: BTreeSet<String> = events
                .iter()
                .filter(|e| brute_force(e, f))
                .map(|e| e["_id"].as_str().unwrap().to_owned())
                .collect();
            hits += expected.len();
            let page = 1 + i % 9;
            let (listed, count, exported) = store_answers(&store, f, page).await;
            assert_eq!(listed, expected, "{phase}: listing for {f:?}");
            assert_eq!(count, expected.len() as u64, "{phase}: count for {f:?}");
            assert_eq!(exported, expected, "{phase}: export for {f:?}");
        }
    }
    // The vocabulary is small so that queries hit: most filters select something.
    assert!(
        hits > 150 * 3 * 5,
        "queries hit too rarely ({hits}) to test anything"
    );
    store.close().await;
}
