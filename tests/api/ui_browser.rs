//! The web UI in a real browser: headless Chromium driven through WebDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them). Signs in, filters, pages,
//! opens an event and its diff, exports the filtered view with the session, checks that a
//! hostile event renders as text (no dialog), that the browser logged no errors, that every
//! field has a label and that a phone-sized window needs no sideways scrolling.
//!
//! `AUDITHOOK_SCREENSHOTS=DIR` also saves the archive and an event page as PNGs there (the
//! README's screenshots come from `docs/screenshots/`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::skips::skip;

struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, or a recorded skip.
fn chromedriver() -> Option<Driver> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; .ci/run installs them)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Driver {
                child,
                port,
                _profile: tempfile::tempdir().unwrap(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromedriver did not start on {port}");
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", d._profile.path().display()),
            ]
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// chromedriver's browser log (severe entries are errors in the console).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

async fn console_errors(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.unwrap_or(Value::Null);
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The text of the first element `css` finds.
async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn no_dialog(c: &Client) {
    if let Ok(text) = c.get_alert_text().await {
        panic!("a dialog opened: {text:?}");
    }
}

async fn wait_for(c: &Client, what: &str, script: &str) {
    for _ in 0..200 {
        if c.execute(script, vec![]).await.unwrap() == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = c
        .execute(
            "return location.href + ' | ' + (document.getElementById('results') || document.body).innerText.slice(0, 400)",
            vec![],
        )
        .await
        .unwrap_or_default();
    panic!("timed out waiting for {what}; the page: {state}");
}

async fn shot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("AUDITHOOK_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_filters_pages_reads_an_event_and_exports() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let app = spawn_app().await;
    let base = 1_700_000_000_000i64;
    for i in 0..70 {
        let who = if i % 2 == 0 { "m2" } else { "m1" };
        let mut e = rest_entry(
            &format!("b{i:03}"),
            base + i * 60_000,
            &format!("Checkout flag {i}"),
            &format!("proj/web:env/production:flag/checkout-{i}"),
            who,
        );
        e["title"] = json!(format!(
            "M {who} turned on the flag Checkout flag {i} in Production"
        ));
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    let evil = crate::ui::hostile_event("evil-1", base + 100 * 60_000);
    assert_eq!(app.post_event(evil.to_string()).await.status(), 202);
    let c = browser(&driver).await;

    // Sign in.
    c.goto(&format!("{}/", app.base)).await.unwrap();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(API_TOKEN)
        .await
        .unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the archive",
        "return location.pathname === '/ui/events'",
    )
    .await;
    no_dialog(&c).await;
    // The hostile title is shown as text.
    let first = text_of(&c, "a.event-link").await;
    assert_eq!(first, evil["title"].as_str().unwrap());
    assert_eq!(text_of(&c, "#count").await, "71");
    // Every field has a label.
    let unlabelled = c
        .execute(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]),select,textarea')).filter(e => !e.labels || e.labels.length === 0).map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]));
    // The date picker fills the typed field.
    c.execute(
        "const p = document.querySelector('#after + label.picker input'); p.value = '2023-11-14T22:40'; p.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        c.find(Locator::Id("after"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap(),
        Some("2023-11-14T22:40:00Z".to_owned())
    );
    c.execute("document.getElementById('after').value = ''", vec![])
        .await
        .unwrap();
    shot(&c, "archive.png").await;

    // Filter by actor: the results change in place and the URL holds the filter.
    let actor = c.find(Locator::Id("actor")).await.unwrap();
    actor.send_keys("m2@example.com").await.unwrap();
    c.find(Locator::Css("#filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the filtered results",
        "return location.search.includes('actor=m2%40example.com') && document.getElementById('count') && document.getElementById('count').textContent === '35'",
    )
    .await;
    let rows = c
        .find_all(Locator::Css("table.events tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 35);

    // Page back through everything unfiltered: 71 events in two pages, each once.
    c.goto(&format!("{}/ui/events", app.base)).await.unwrap();
    let mut seen = Vec::new();
    loop {
        for a in c.find_all(Locator::Css("a.event-link")).await.unwrap() {
            seen.push(a.attr("href").await.unwrap().unwrap());
        }
        let Ok(older) = c.find(Locator::Id("older")).await else {
            break;
        };
        let first = seen.last().cloned().unwrap_or_default();
        older.click().await.unwrap();
        // The rows are replaced in place and the URL carries the cursor.
        wait_for(
            &c,
            "the older page",
            &format!(
                "return location.search.includes('cursor=') && !Array.from(document.querySelectorAll('a.event-link')).some(a => a.getAttribute('href') === {})",
                serde_json::to_string(&first).unwrap()
            ),
        )
        .await;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 71);
    assert_eq!(unique.len(), 71);

    // Open the hostile event: its diff, no dialog.
    c.goto(&format!("{}/ui/events/launchdarkly/evil-1", app.base))
        .await
        .unwrap();
    no_dialog(&c).await;
    let h1 = text_of(&c, "h1").await;
    assert_eq!(h1, evil["title"].as_str().unwrap());
    let ins = c.find_all(Locator::Css(".diff .ins")).await.unwrap();
    let del = c.find_all(Locator::Css(".diff .del")).await.unwrap();
    assert!(!ins.is_empty() && !del.is_empty());
    let diff = text_of(&c, ".diff").await;
    assert!(
        diff.contains("+     \"on\": true") || diff.contains("\"on\": true"),
        "{diff}"
    );
    assert!(
        diff.contains("<script>alert('diff')</script>"),
        "shown as text: {diff}"
    );
    // The local time is filled in by the script.
    let local = text_of(&c, ".local").await;
    assert!(local.contains("in your time zone"), "{local}");
    shot(&c, "event.png").await;

    // Export the filtered view with the browser's session.
    c.goto(&format!("{}/ui/events?actor=m2%40example.com", app.base))
        .await
        .unwrap();
    let csv = c
        .find(Locator::LinkText("CSV"))
        .await
        .unwrap()
        .prop("href")
        .await
        .unwrap()
        .unwrap();
    let session = c.get_named_cookie("audithook_session").await.unwrap();
    assert!(session.http_only().unwrap_or(false));
    let body = reqwest::Client::new()
        .get(&csv)
        .header("cookie", format!("audithook_session={}", session.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.text().await.unwrap().lines().count(), 36);

    // A phone-sized window: nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    for path in [
        "/ui/events",
        "/ui/events/launchdarkly/evil-1",
        "/ui/preview",
    ] {
        c.goto(&format!("{}{}", app.base, path)).await.unwrap();
        let fits = c
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            fits,
            Value::Bool(true),
            "{path} scrolls sideways on a phone"
        );
    }

    let errors = console_errors(&c).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.close().await.unwrap();
    app.stop().await;
}
