//! The `launchdarkly_integration` kind for every manifest of the framework that declares
//! `auditLogEventsHook` (`../shared/conformance/manifests/`): the request each destination
//! sends carries the URL, headers and body `/preview` renders for the same event, template
//! and form variables, byte for byte. Manifests whose endpoint URL is a form variable are
//! delivered end to end to a fake receiver; the others (a fixed host, or a host chosen from
//! a list) are compared on the request audithook builds for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::fake_receivers::HttpReceiver;
use crate::forward::{spawn_forwarding, wait_until};
use crate::helpers::*;
use crate::skips::shared_dir;

/// A manifest laid out as in the framework's repository: `<dir>/<name>/manifest.json` with
/// its `templates/` beside it.
fn lay_out(conformance: &Path, name: &str, into: &Path) -> PathBuf {
    let dir = into.join(name);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::copy(
        conformance.join("manifests").join(format!("{name}.json")),
        dir.join("manifest.json"),
    )
    .unwrap();
    if let Ok(files) = std::fs::read_dir(conformance.join("templates").join(name)) {
        for f in files.flatten() {
            std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).unwrap();
        }
    }
    dir.join("manifest.json")
}

/// The form variable an endpoint URL starts with (`{{hostURL}}/api` -> `hostURL`).
fn url_variable(url: &str) -> Option<String> {
    let rest = url.strip_prefix("{{")?;
    let rest = rest.strip_prefix('{').unwrap_or(rest);
    let end = rest.find('}')?;
    let name = rest[..end].trim();
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| name.to_owned())
}

/// Form variables for a manifest: every declared variable a plausible value; the URL's
/// variable the receiver's base when it is free text.
fn form_for(manifest: &Value, receiver: &str) -> (Map<String, Value>, bool) {
    let hook = &manifest["capabilities"]["auditLogEventsHook"];
    let url = hook["endpoint"]["url"].as_str().unwrap_or("");
    if url.starts_with("{{oauth.baseURI}}") {
        // OAuth integrations: the destination gives `oauth` (see the caller).
        return (form_plain(manifest, None, receiver), true);
    }
    let url_var = url_variable(url);
    let routed = url_var.is_some_and(|v| {
        manifest["formVariables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["key"] == v.as_str() && f["type"] != "enum")
    });
    (
        form_plain(manifest, url_variable(url).filter(|_| routed), receiver),
        routed,
    )
}

fn form_plain(manifest: &Value, url_var: Option<String>, receiver: &str) -> Map<String, Value> {
    let mut form = Map::new();
    for v in manifest["formVariables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let key = v["key"].as_str().unwrap().to_owned();
        let value = match v["type"].as_str().unwrap_or("string") {
            "boolean" => v.get("defaultValue").cloned().unwrap_or(json!(false)),
            "enum" => v
                .get("defaultValue")
                .cloned()
                .unwrap_or_else(|| v["allowedValues"][0].clone()),
            _ if url_var.as_deref() == Some(key.as_str()) => json!(receiver),
            "uri" => json!(format!("https://{key}.example.com")),
            _ => json!(format!("test-{key}")),
        };
        form.insert(key, value);
    }
    form
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap(),
        other => other.to_string(),
    }
}

async fn preview(app: &TestApp, body: Value) -> String {
    let r = app
        .client
        .post(format!("{}/preview", app.base))
        .header("authorization", API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{body}");
    r.text().await.unwrap()
}

#[tokio::test]
async fn every_manifest_sends_what_preview_renders() {
    let Some(conformance) = shared_dir("conformance", "manifests") else {
        return;
    };
    let rx = HttpReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(conformance.join("manifests"))
        .unwrap()
        .flatten()
        .map(|f| {
            f.file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 27);
    let mut toml = String::new();
    let mut refused = BTreeMap::new();
    let mut routed = Vec::new();
    let mut built = Vec::new();
    for name in &names {
        let manifest_path = lay_out(&conformance, name, tmp.path());
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
        // Each manifest on its own path of the receiver.
        let (form, to_receiver) = form_for(&manifest, &format!("{}/{name}", rx.base));
        let oauth = if manifest["requiresOAuth"] == true {
            format!(
                "oauth = {{ baseURI = \"{}/{name}\", accessToken = \"oauth-token\" }}\n",
                rx.base
            )
        } else {
            String::new()
        };
        let entry = format!(
            "[[destinations]]\nname = \"{name}\"\nkind = \"launchdarkly_integration\"\nmanifest = \"{}\"\n{oauth}form_variables = {{ {} }}\npolicy = [{{ effect = \"allow\", actions = [\"*\"], resources = [\"*\"] }}]\nmax_backoff = \"200ms\"\n\n",
            manifest_path.display(),
            form.iter()
                .map(|(k, v)| format!("\"{k}\" = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Each alone first: a manifest audithook cannot send is refused with its reason.
        match audithook::forward::config::parse(&entry, tmp.path(), &|_| None) {
            Ok(mut d) => {
                let d = d.remove(0);
                if to_receiver {
                    routed.push(name.clone());
                    toml.push_str(&entry);
                }
                built.push((
                    name.clone(),
                    d,
                    Value::Object(form),
                    manifest["requiresOAuth"] == true,
                ));
            }
            Err(e) => {
                refused.insert(name.clone(), e.to_string());
            }
        }
    }
    // CloudTrail delivers through AWS (`deliveryMethod`), not an HTTP endpoint.
    assert_eq!(
        refused.keys().collect::<Vec<_>>(),
        vec!["cloudtrail"],
        "{refused:?}"
    );
    assert!(refused["cloudtrail"].contains("has no auditLogEventsHook.endpoint.url"));
    // Delivered end to end: those whose URL is a free-text form variable (or OAuth's
    // base URI). The other ten (a fixed host, or a host picked from a list) are compared on
    // the request audithook builds.
    assert_eq!(
        routed,
        [
            "appdynamics",
            "chronosphere",
            "compass",
            "datadog-private",
            "dynatrace",
            "dynatrace-v2",
            "elastic",
            "grafana",
            "kosli",
            "last9",
            "ld-to-git",
            "msteams",
            "msteams-app",
            "splunk",
            "terraform-cloud",
            "zapier"
        ]
    );

    let app = spawn_forwarding(&toml).await;
    // Three LaunchDarkly events of different kinds; REST entries carry `accesses`, which
    // policies read.
    let mut events = vec![
        rest_entry(
            "ld-flag",
            1_700_000_000_001,
            "Checkout",
            "proj/web:env/production:flag/checkout",
            "m1",
        ),
        rest_entry(
            "ld-env",
            1_700_000_000_002,
            "Staging",
            "proj/web:env/staging",
            "m2",
        ),
        rest_entry("ld-member", 1_700_000_000_003, "Ada", "member/m3", "m3"),
    ];
    events[1]["kind"] = json!("environment");
    events[2]["kind"] = json!("member");
    events[0]["comment"] = json!("a \"quoted\" <comment> & more\nline");
    for e in &events {
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    let expected = routed.len() * events.len();
    wait_until(60, "every routed manifest's requests", || {
        rx.accepted().len() >= expected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = rx.accepted();
    assert_eq!(received.len(), expected);

    let mut compared = 0;
    for (name, dest, form, oauth) in &built {
        let oauth_data = if *oauth {
            json!({"baseURI": format!("{}/{name}", rx.base), "accessToken": "oauth-token"})
        } else {
            Value::Null
        };
        let audithook::forward::Kind::LaunchDarkly(integration) = &dest.kind else {
            unreachable!()
        };
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(&integration.manifest_path).unwrap())
                .unwrap();
        let hook = &manifest["capabilities"]["auditLogEventsHook"];
        let templates = hook["templates"].as_object().cloned().unwrap_or_default();
        let dir = integration.manifest_path.parent().unwrap();
        let filled = integration.form_variables.clone();
        assert!(filled.as_object().unwrap().len() >= form.as_object().unwrap().len());
        for e in &events {
            let id = e["_id"].as_str().unwrap();
            let kind = e["kind"].as_str().unwrap();
            // The URL and headers as /preview renders them (endpoint mode).
            let url = preview(
                &app,
                json!({"template": hook["endpoint"]["url"], "event": id, "formVariables": filled, "endpoint": true, "oauth": oauth_data}),
            )
            .await;
            let mut headers = Vec::new();
            for h in hook["endpoint"]["headers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let v = preview(
                    &app,
                    json!({"template": h["value"], "event": id, "formVariables": filled, "endpoint": true, "oauth": oauth_data}),
                )
                .await;
                headers.push((h["name"].as_str().unwrap().to_ascii_lowercase(), v));
            }
            // The body: the kind's template, else `default`, else the event as stored.
            let slot = if ["flag", "project", "environment", "member"].contains(&kind)
                && templates.contains_key(kind)
            {
                Some(kind)
            } else if templates.contains_key("default") {
                Some("default")
            } else {
                None
            };
            let body = match slot {
                Some(slot) => {
                    let file = templates[slot].as_str().unwrap();
                    preview(
                        &app,
                        json!({
                            "template": std::fs::read_to_string(dir.join(file)).unwrap(),
                            "filename": file,
                            "event": id,
                            "formVariables": filled,
                        }),
                    )
                    .await
                }
                None => crate::helpers::TestApp::stored_raw(&app, id).unwrap(),
            };
            // What audithook builds for this destination.
            let row = stored_row(&app, id).await;
            let built = integration
                .render(&row, "https://app.launchdarkly.com")
                .unwrap();
            assert_eq!(built.url, url, "{name} {id}: URL");
            assert_eq!(built.body, body, "{name} {id}: body");
            assert_eq!(
                built
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect::<Vec<_>>(),
                headers,
                "{name} {id}: headers"
            );
            if routed.contains(name) {
                // What the receiver got.
                let target = url
                    .strip_prefix(&rx.base)
                    .unwrap_or_else(|| panic!("{name}: {url}"));
                let got: Vec<_> = received
                    .iter()
                    .filter(|r| r.target == target && r.body == body.as_bytes())
                    .collect();
                assert_eq!(
                    got.len(),
                    1,
                    "{name} {id}: one request with the URL and body /preview renders"
                );
                assert_eq!(
                    got[0].method,
                    hook["endpoint"]["method"].as_str().unwrap_or("POST")
                );
                for (k, v) in &headers {
                    assert_eq!(
                        got[0].header(k),
                        Some(v.as_str()),
                        "{name} {id}: header {k}"
                    );
                }
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 26 * 3);
    app.stop().await;
}

/// The stored row of a LaunchDarkly event, through the store the app uses.
async fn stored_row(app: &TestApp, id: &str) -> audithook::store::StoredEvent {
    let store = audithook::store::Store::open(
        &app.url,
        std::sync::Arc::new(audithook::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let row = store
        .get(audithook::event::Source::LaunchDarkly, id)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    row
}

#[tokio::test]
async fn the_manifest_default_policy_applies_unless_the_destination_sets_one() {
    let Some(conformance) = shared_dir("conformance", "manifests") else {
        return;
    };
    let rx = HttpReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // Zapier's manifest allows production flags only.
    let manifest = lay_out(&conformance, "zapier", tmp.path());
    let toml = format!(
        r#"
[[destinations]]
name = "default-policy"
kind = "launchdarkly_integration"
manifest = "{m}"
form_variables = {{ url = "{base}/default" }}

[[destinations]]
name = "own-policy"
kind = "launchdarkly_integration"
manifest = "{m}"
form_variables = {{ url = "{base}/own" }}
policy = [{{ effect = "allow", actions = ["*"], resources = ["proj/*:env/*:flag/*"] }}]
"#,
        m = manifest.display(),
        base = rx.base
    );
    let app = spawn_forwarding(&toml).await;
    for e in [
        rest_entry(
            "prod",
            1_700_000_000_001,
            "A",
            "proj/web:env/production:flag/a",
            "m1",
        ),
        rest_entry(
            "stage",
            1_700_000_000_002,
            "B",
            "proj/web:env/staging:flag/b",
            "m1",
        ),
        rest_entry(
            "prod2",
            1_700_000_000_003,
            "C",
            "proj/api:env/production:flag/c",
            "m1",
        ),
    ] {
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    wait_until(20, "five requests", || rx.accepted().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let bodies = |path: &str| -> Vec<String> {
        rx.accepted()
            .iter()
            .filter(|r| r.target == path)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    };
    let default = bodies("/default");
    assert_eq!(default.len(), 2, "production flags only");
    assert!(
        default.iter().all(|b| !b.contains("staging")),
        "{default:?}"
    );
    let own = bodies("/own");
    assert_eq!(own.len(), 3, "every flag");
    assert!(own[1].contains("staging"), "{own:?}");
    // Both destinations passed the staging event: nothing is waiting.
    for name in ["default-policy", "own-policy"] {
        // The receiver has the bodies; the cursor moves once audithook has read the answer.
        let d = crate::forward::destination_when(&app, name, |d| d["lag"]["events"] == 0).await;
        assert_eq!(d["lag"]["events"], 0, "{name}");
        assert_eq!(d["dead_letters_count"], 0, "{name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_header_that_renders_invalid_is_a_dead_letter_and_nothing_is_sent() {
    let Some(conformance) = shared_dir("conformance", "manifests") else {
        return;
    };
    let rx = HttpReceiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // Splunk's manifest sends `Authorization: Splunk {{token}}`; a control character in the
    // token cannot go in a header.
    let manifest = lay_out(&conformance, "splunk", tmp.path());
    let toml = format!(
        "[[destinations]]\nname = \"splunk\"\nkind = \"launchdarkly_integration\"\nmanifest = \"{}\"\nform_variables = {{ \"base-url\" = \"{}\", token = \"bad\\u0001token\", \"skip-ca-verification\" = false }}\npolicy = [{{ effect = \"allow\", actions = [\"*\"], resources = [\"*\"] }}]\n",
        manifest.display(),
        rx.base
    );
    let app = spawn_forwarding(&toml).await;
    for id in ["h1", "h2"] {
        let e = rest_entry(
            id,
            1_700_000_000_001,
            "A",
            "proj/web:env/production:flag/a",
            "m1",
        );
        assert_eq!(app.post_event(e.to_string()).await.status(), 202);
    }
    let state =
        crate::forward::destination_when(&app, "splunk", |s| s["dead_letters_count"] == 2).await;
    assert_eq!(state["dead_letters_count"], 2, "{state}");
    assert_eq!(state["delivered"], 0);
    assert_eq!(
        state["dead_letters"]["items"][0]["error"],
        "header authorization rendered to an invalid value"
    );
    assert!(
        rx.all().is_empty(),
        "nothing may be sent without its header"
    );
    app.stop().await;
}
