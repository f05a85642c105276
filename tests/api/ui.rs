//! The web UI over HTTP: sign-in and the cookie's flags, pages and what they show, escaping
//! of hostile event content, CSRF, bad filters, no external URLs.

use serde_json::{json, Value};

use crate::helpers::*;

/// An event whose every text field is hostile, with a version diff.
pub fn hostile_event(id: &str, ms: i64) -> Value {
    json!({
        "_id": id,
        "date": ms,
        "kind": "flag",
        "name": "<script>alert('name')</script>",
        "title": "<img src=x onerror=alert('title')> turned on \"flag\" & more",
        "comment": "</pre><script>alert('comment')</script>",
        "accesses": [{"action": "updateRules", "resource": "proj/web:env/production:flag/<svg onload=alert(1)>"}],
        "member": {"_id": "m1", "email": "ada<script>@example.com", "firstName": "Ada", "lastName": "L"},
        "previousVersion": {"on": false, "rules": [{"description": "<b>old</b>"}]},
        "currentVersion": {"on": true, "rules": [{"description": "<script>alert('diff')</script>"}]},
        "target": {"name": "checkout", "resources": ["proj/web:env/production:flag/checkout"]}
    })
}

/// Signs in with the read token; returns the session cookie (`name=value`).
pub async fn sign_in(app: &TestApp) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/ui/login", app.base))
        .form(&[("token", API_TOKEN), ("next", "/ui/events")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/events");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Max-Age=43200"), "{cookie}");
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
    cookie.split(';').next().unwrap().to_owned()
}

async fn get(app: &TestApp, cookie: &str, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{}", app.base, path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn sign_in_with_the_read_token_only() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Not signed in: pages send to the sign-in form, which keeps where to go next.
    let r = client
        .get(format!("{}/ui/events?q=x", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/?next=%2Fui%2Fevents%3Fq%3Dx");
    let r = client.get(format!("{}/", app.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("<label for=\"token\">Read token</label>"));
    // The hook token (the one LaunchDarkly holds) cannot sign in; nor can a wrong one.
    for token in [HOOK_TOKEN, "nope", ""] {
        let r = client
            .post(format!("{}/ui/login", app.base))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{token}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains("not the read token"));
    }
    // An open redirect is not followed.
    let r = client
        .post(format!("{}/ui/login", app.base))
        .form(&[("token", API_TOKEN), ("next", "//evil.example/ui/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/ui/events");
    let cookie = sign_in(&app).await;
    let (status, page, headers) = get(&app, &cookie, "/ui/events").await;
    assert_eq!(status, 200);
    assert!(page.contains("<h1>Archive</h1>"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    // A forged or tampered cookie is no session.
    let forged = format!("{}0", cookie);
    assert_eq!(get(&app, &forged, "/ui/events").await.0, 303);
    // Logging out needs the CSRF token, then clears the cookie.
    let r = client
        .post(format!("{}/ui/logout", app.base))
        .header("cookie", &cookie)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(format!("{}/ui/logout", app.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    app.stop().await;
}

#[tokio::test]
async fn pages_escape_every_value_from_an_event_and_show_the_diff() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_event(hostile_event("evil-1", 1_700_000_000_000).to_string())
            .await
            .status(),
        202
    );
    let cookie = sign_in(&app).await;
    let (status, list, _) = get(&app, &cookie, "/ui/events").await;
    assert_eq!(status, 200);
    let (status, event, _) = get(&app, &cookie, "/ui/events/launchdarkly/evil-1").await;
    assert_eq!(status, 200);
    for page in [&list, &event] {
        // The only script element is the embedded asset.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(page.contains("<script src=\"/ui/assets/app.js\" defer></script>"));
        assert!(!page.contains("<img src=x"));
        assert!(!page.contains("<svg onload"));
        // No URL of another host.
        for scheme in ["http://", "https://", "//cdn"] {
            let outside = page
                .match_indices(scheme)
                .filter(|(i, _)| {
                    let before = &page[i.saturating_sub(6)..*i];
                    before.contains("href=\"") || before.contains("src=\"")
                })
                .count();
            assert_eq!(outside, 0, "{scheme} in {page}");
        }
    }
    assert!(list.contains("&#60;img src=x onerror=alert(&#39;title&#39;)&#62; turned on &#34;flag&#34; &#38; more"), "{list}");
    // The diff, escaped, with its changed lines marked.
    assert!(
        event.contains("<span class=\"del\">-   &#34;on&#34;: false,</span>"),
        "{event}"
    );
    assert!(event.contains("<span class=\"ins\">+   &#34;on&#34;: true,</span>"));
    assert!(event.contains("&#60;script&#62;alert(&#39;diff&#39;)&#60;/script&#62;"));
    // Who, the resources with links to their history, the renderings.
    assert!(event.contains("<a href=\"/ui/events?actor=ada%3Cscript%3E%40example.com\">ada&#60;script&#62;@example.com</a>"), "{event}");
    assert!(event.contains("<a href=\"/ui/events?spec=proj%2Fweb%3Aenv%2Fproduction%3Aflag%2Fcheckout\">proj/web:env/production:flag/checkout</a>"));
    assert!(event.contains("<summary>flag</summary>"));
    assert_eq!(
        get(&app, &cookie, "/ui/events/launchdarkly/nope").await.0,
        404
    );
    assert_eq!(get(&app, &cookie, "/ui/events/svn/nope").await.0, 404);
    // Unknown UI pages answer HTML, not the API's JSON.
    let (status, missing, headers) = get(&app, &cookie, "/ui/nothing/here").await;
    assert_eq!(status, 404);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(missing.contains("There is no such page."));
    app.stop().await;
}

#[tokio::test]
async fn the_archive_filters_pages_and_exports_like_the_api() {
    let app = spawn_app().await;
    let base = 1_700_000_000_000i64;
    for i in 0..120 {
        let who = if i % 3 == 0 { "m3" } else { "m1" };
        let e = rest_entry(
            &format!("e{i:03}"),
            base + i * 1000,
            &format!("Flag {i}"),
            &format!("proj/web:env/production:flag/f{i}"),
            who,
        );
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    let cookie = sign_in(&app).await;
    let ids_on = |page: &str| -> Vec<String> {
        page.match_indices("href=\"/ui/events/launchdarkly/")
            .map(|(i, _)| {
                let rest = &page[i + 30..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    };
    let (_, page1, _) = get(&app, &cookie, "/ui/events").await;
    assert!(page1.contains("<span id=\"count\">120</span> matching events"));
    let first = ids_on(&page1);
    assert_eq!(first.len(), 50);
    assert_eq!(first[0], "e119");
    // A new event arrives; the next page still follows on exactly.
    assert_eq!(
        app.post_event(
            rest_entry(
                "late",
                base + 500_000,
                "Late",
                "proj/web:env/production:flag/late",
                "m1"
            )
            .to_string()
        )
        .await
        .status(),
        202
    );
    let older = {
        let at = page1.find("id=\"older\"").unwrap();
        let start = page1[..at].rfind("href=\"").unwrap() + 6;
        page1[start..page1[start..].find('"').unwrap() + start].replace("&#38;", "&")
    };
    let (_, page2, _) = get(&app, &cookie, &older).await;
    let second = ids_on(&page2);
    assert_eq!(second[0], "e069");
    assert_eq!(second.len(), 50);
    // Filters are the API's parameters; times as typed.
    let (status, filtered, _) = get(
        &app,
        &cookie,
        "/ui/events?actor=m3%40example.com&after=2023-11-14T22%3A14%3A00Z&before=1700000100000",
    )
    .await;
    assert_eq!(status, 200);
    let ids = ids_on(&filtered);
    // m3's events dated after 22:14:00 (exclusive: i > 40) and before +100 s (i < 100), i % 3 == 0.
    let want: Vec<String> = (41..100)
        .rev()
        .filter(|i| i % 3 == 0)
        .map(|i| format!("e{i:03}"))
        .collect();
    assert_eq!(ids, want);
    assert!(filtered.contains("value=\"2023-11-14T22:14:00Z\""));
    // The same view as CSV, with the session cookie.
    let csv_link = {
        let at = filtered.find(">CSV</a>").unwrap();
        let start = filtered[..at].rfind("href=\"").unwrap() + 6;
        filtered[start..at - 1].replace("&#38;", "&")
    };
    assert!(
        csv_link.starts_with(
            "/export.csv?actor=m3%40example.com&after=1700000040000&before=1700000100000"
        ),
        "{csv_link}"
    );
    let (status, csv, _) = get(&app, &cookie, &csv_link).await;
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), want.len() + 1, "{csv}");
    // Without the cookie the export wants the token.
    assert_eq!(get(&app, "x=y", &csv_link).await.0, 401);
    // Bad values show the API's message on the page.
    let (status, bad, _) = get(&app, &cookie, "/ui/events?after=yesterday").await;
    assert_eq!(status, 400);
    assert!(bad.contains("is not a time"));
    let (status, bad, _) = get(&app, &cookie, "/ui/events?source=svn").await;
    assert_eq!(status, 400);
    assert!(bad.contains("parameter `source` must be one of"), "{bad}");
    let (status, bad, _) = get(&app, &cookie, "/ui/events?cursor=zzz").await;
    assert_eq!(status, 400);
    assert!(bad.contains("follow `_links.next` as given"));
    app.stop().await;
}

#[tokio::test]
async fn forms_that_change_state_need_the_csrf_token() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_event(
            rest_entry(
                "p1",
                1_700_000_000_000,
                "A",
                "proj/web:env/production:flag/a",
                "m1"
            )
            .to_string()
        )
        .await
        .status(),
        202
    );
    let cookie = sign_in(&app).await;
    let client = reqwest::Client::new();
    let (_, form, _) = get(&app, &cookie, "/ui/preview").await;
    let csrf = csrf_of(&form);
    let post = |fields: Vec<(&'static str, String)>| {
        let client = client.clone();
        let cookie = cookie.clone();
        let base = app.base.clone();
        async move {
            let r = client
                .post(format!("{base}/ui/preview"))
                .header("cookie", cookie)
                .form(&fields)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, _) = post(vec![("name", "flag".into()), ("event", "p1".into())]).await;
    assert_eq!(status, 403);
    let (status, page) = post(vec![
        ("csrf", csrf.clone()),
        ("name", String::new()),
        ("template", "{{name}} <b>!</b>".into()),
        ("event", "p1".into()),
    ])
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<pre id=\"preview-output\">A &#60;b&#62;!&#60;/b&#62;</pre>"),
        "{page}"
    );
    let (status, page) = post(vec![
        ("csrf", csrf.clone()),
        ("name", String::new()),
        ("template", "line one\n{{#if name}}".into()),
        ("event", "p1".into()),
    ])
    .await;
    assert_eq!(status, 422);
    assert!(page.contains("error at line 2, column"), "{page}");
    let (status, page) = post(vec![
        ("csrf", csrf),
        ("name", "flag".into()),
        ("event", "missing".into()),
    ])
    .await;
    assert_eq!(status, 404);
    assert!(page.contains("no stored event with _id"));
    app.stop().await;
}

#[tokio::test]
async fn assets_are_served_from_the_binary() {
    let app = spawn_app().await;
    for (path, ct) in [
        ("/ui/assets/style.css", "text/css"),
        ("/ui/assets/app.js", "text/javascript"),
        ("/ui/assets/favicon.svg", "image/svg+xml"),
    ] {
        let r = reqwest::get(format!("{}{}", app.base, path)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ct));
        let body = r.text().await.unwrap();
        // No URL of another host (the SVG namespace is a name, not a fetch).
        let body = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn destinations_page_shows_dead_letters_and_replays_behind_csrf() {
    let rx = crate::fake_receivers::HttpReceiver::start().await;
    rx.reject_containing(Some("bad-"));
    let app = crate::forward::spawn_forwarding(&format!(
        "[[destinations]]\nname = \"hook\"\nkind = \"http\"\nurl = \"{}/\"\n",
        rx.base
    ))
    .await;
    crate::forward::post_events(&app, "bad", 1).await;
    crate::forward::destination_when(&app, "hook", |s| s["dead_letters_count"] == 1).await;
    let cookie = sign_in(&app).await;
    let (status, page, _) = get(&app, &cookie, "/ui/destinations").await;
    assert_eq!(status, 200);
    assert!(page.contains("<h2>hook <small>http → "), "{page}");
    assert!(page.contains("<a href=\"/ui/events/launchdarkly/bad-0000\">launchdarkly/bad-0000</a></td><td>400</td>"), "{page}");
    assert!(page.contains("{&#34;error&#34;:&#34;rejected&#34;}"));
    let client = reqwest::Client::new();
    let replay = |csrf: String| {
        let client = client.clone();
        let cookie = cookie.clone();
        let url = format!("{}/ui/destinations/hook/replay", app.base);
        async move {
            client
                .post(url)
                .header("cookie", cookie)
                .form(&[("csrf", csrf.as_str()), ("what", "dead_letters")])
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(replay("0".repeat(64)).await.status(), 403);
    rx.reject_containing(None);
    let r = replay(csrf_of(&page)).await;
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("hook: 1 dead letters will be retried."));
    crate::forward::destination_when(&app, "hook", |s| s["dead_letters_count"] == 0).await;
    assert_eq!(rx.accepted().len(), 1);
    app.stop().await;
}
