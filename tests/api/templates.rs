//! Templates: `/preview`, `audithook preview`, built-in templates, the template context of
//! stored events, the integration manifest.

use std::process::Command;

use crate::conformance::corpus_dir;
use crate::helpers::*;
use serde_json::{json, Value};

fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn preview(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}/preview", app.base))
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preview_renders_a_source_over_a_context_byte_for_byte() {
    let Some(dir) = corpus_dir() else { return };
    let app = spawn_app().await;
    let source = std::fs::read_to_string(dir.join("templates/datadog/default.json.hbs")).unwrap();
    let context: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("contexts/fw-flag-toggle.json")).unwrap(),
    )
    .unwrap();
    let form: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("formVariables/datadog.preview.json")).unwrap(),
    )
    .unwrap();
    let expected =
        std::fs::read(dir.join("expected/datadog__default.json.hbs__fw-flag-toggle.out")).unwrap();
    let r = preview(
        &app,
        json!({"template": source, "context": context, "formVariables": form, "filename": "default.json.hbs"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.bytes().await.unwrap().as_ref(), expected.as_slice());
}

#[tokio::test]
async fn preview_escapes_like_handlebars_js() {
    let app = spawn_app().await;
    let ctx = json!({"v": "a&b<c>\"d\"'e'`f`=g", "n": null, "list": ["x", "y"], "obj": {"k": 1}, "zero": 0});
    let r = preview(
        &app,
        json!({"template": "{{v}}|{{{v}}}|{{n}}|{{list}}|{{obj}}|{{zero}}", "context": ctx}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "a&amp;b&lt;c&gt;&quot;d&quot;&#x27;e&#x27;&#x60;f&#x60;&#x3D;g|a&b<c>\"d\"'e'`f`=g||x,y|[object Object]|0"
    );
    // JSON escaping follows the file name.
    let r = preview(
        &app,
        json!({"template": "{{{v}}}", "context": {"v": "a\"b\n"}, "filename": "x.json.hbs"}),
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "a\\\"b\\n");
}

#[tokio::test]
async fn preview_a_named_template_over_a_stored_event() {
    let app = spawn_app().await;
    let mut entry = rest_entry(
        "ev-1",
        1_580_777_319_650,
        "Demo \"quoted\"\nflag",
        "proj/default:env/production:flag/demo",
        "m1",
    );
    entry["comment"] = json!("ship it");
    app.post_event(entry.to_string()).await;
    let r = preview(&app, json!({"name": "flag", "event": "ev-1"})).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let out: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        out,
        json!({
            "id": "ev-1",
            "time": "2020-02-04T00:48:39Z",
            "date": 1_580_777_319_650i64,
            "kind": "flag",
            "action": "updateOn",
            "flag": {"key": "demo", "name": "Demo \"quoted\"\nflag", "tags": []},
            "project": "default",
            "environment": "production",
            "title": "M m1 turned on the flag Demo \"quoted\"\nflag",
            "changes": "changed Demo \"quoted\"\nflag",
            "actor": {"type": "member", "id": "m1", "email": "m1@example.com", "name": "M m1"},
            "comment": "ship it",
            "url": "https://app.launchdarkly.com/default/production/features/demo"
        })
    );
}

#[tokio::test]
async fn preview_errors() {
    let app = spawn_app().await;
    let ctx = json!({"name": "x", "title": "plain string"});
    let cases = [
        (
            json!({"template": "line one\n{{#if name}}\n{{/each}}", "context": ctx}),
            422,
            Some(3),
        ),
        (
            json!({"template": "Hello {{shout name}}", "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "{{missing.field}}", "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "{{title.plainText}}", "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "{{#if a.b}}x{{/if}}", "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "{{formatWithOffset name 0 \"rfc3339\"}}", "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "{{#equal name}}x{{/equal}}", "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "x".repeat(300 * 1024), "context": ctx}),
            422,
            None,
        ),
        (
            json!({"template": "x", "name": "flag", "context": ctx}),
            400,
            None,
        ),
        (json!({"context": ctx}), 400, None),
        (json!({"template": "x"}), 400, None),
        (json!({"template": "x", "context": [1]}), 400, None),
        (
            json!({"template": "x", "context": ctx, "bogus": 1}),
            400,
            None,
        ),
        (json!({"name": "nope", "context": ctx}), 400, None),
        (json!({"name": "flag", "event": "unknown"}), 404, None),
    ];
    for (body, status, line) in cases {
        let r = preview(&app, body.clone()).await;
        assert_eq!(
            r.status(),
            status,
            "{}",
            &body.to_string()[..body.to_string().len().min(120)]
        );
        let err: Value = r.json().await.unwrap();
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
        if status == 422 {
            assert_eq!(err["code"], "template_error");
        }
        if let Some(line) = line {
            assert_eq!(err["line"], line, "{err}");
            assert!(err["column"].as_u64().is_some(), "{err}");
        }
    }
    let r = app
        .client
        .post(format!("{}/preview", app.base))
        .bearer_auth(API_TOKEN)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(format!("{}/preview", app.base))
        .json(&json!({"template": "x", "context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(format!("{}/preview", app.base))
        .bearer_auth(HOOK_TOKEN)
        .json(&json!({"template": "x", "context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

fn audithook() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_audithook"));
    c.env("RUST_LOG", "warn").env_remove("AUDITHOOK_TEMPLATES");
    c
}

#[test]
fn cli_preview_prints_exactly_the_rendered_bytes() {
    let Some(dir) = corpus_dir() else { return };
    for (template, context, form, tz, expected) in [
        (
            "datadog/default.json.hbs",
            "fw-flag-toggle.json",
            "datadog.preview.json",
            "UTC",
            "datadog__default.json.hbs__fw-flag-toggle.out",
        ),
        (
            "_synthetic/helpers-format.txt.hbs",
            "ld-flag-epoch-zero.json",
            "_empty.json",
            "Asia/Kolkata",
            "_synthetic__helpers-format.txt.hbs__ld-flag-epoch-zero__tz-Asia_Kolkata.out",
        ),
    ] {
        let out = audithook()
            .arg("preview")
            .arg(dir.join("templates").join(template))
            .arg("--context")
            .arg(dir.join("contexts").join(context))
            .arg("--form-variables")
            .arg(dir.join("formVariables").join(form))
            .arg("--tz")
            .arg(tz)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout,
            std::fs::read(dir.join("expected").join(expected)).unwrap(),
            "{template}"
        );
    }
    // Endpoint mode: form variables at top level, `context`.
    let out = audithook()
        .args(["preview"])
        .arg(dir.join("templates/_endpoint/sample-integration.url.hbs"))
        .arg("--endpoint")
        .arg("--context")
        .arg(dir.join("contexts/fw-preview-frozen-targeting-rule-update.json"))
        .arg("--form-variables")
        .arg(dir.join("formVariables/sample-integration.preview.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = dir.join("expected/_endpoint__sample-integration.url.hbs__fw-preview-frozen-targeting-rule-update.out");
    assert_eq!(out.stdout, std::fs::read(expected).unwrap());
}

#[test]
fn cli_preview_fails_with_exit_1_and_a_located_message() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("bad.txt.hbs");
    std::fs::write(&template, "ok\n{{#if name}}\n{{/each}}\n").unwrap();
    let context = tmp.path().join("ctx.json");
    std::fs::write(&context, r#"{"name": "x"}"#).unwrap();
    let out = audithook()
        .arg("preview")
        .arg(&template)
        .arg("--context")
        .arg(&context)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.txt.hbs:3:"), "{stderr}");
    std::fs::write(&template, "{{missing}}").unwrap();
    let out = audithook()
        .arg("preview")
        .arg(&template)
        .arg("--context")
        .arg(&context)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&context, "not json").unwrap();
    let out = audithook()
        .arg("preview")
        .arg(&template)
        .arg("--context")
        .arg(&context)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

#[tokio::test]
async fn cli_preview_of_a_stored_event() {
    let app = spawn_app().await;
    app.post_event(hook_payload("stored-1", 1_580_778_134_028).to_string())
        .await;
    let url = app.url.clone();
    let _dir = app.stop().await;
    let out = audithook()
        .args(["preview", "default", "--event", "stored-1"])
        .env("AUDITHOOK_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "stored-1");
    assert_eq!(v["time"], "2020-02-04T01:02:14Z");
    assert_eq!(v["actor"]["email"], "sandy@example.com");
}

#[tokio::test]
async fn builtin_templates_render_valid_json_for_every_kind_and_shape() {
    let renderer = audithook::render::Renderer::with_builtin(chrono_tz::UTC);
    let mut token_only = rest_entry("t1", 5, "Checkout \\ \"v2\"", "proj/p:env/e:flag/f", "x");
    token_only.as_object_mut().unwrap().remove("member");
    token_only["token"] = json!({"_id": "tok", "name": "CI token"});
    let mut nobody = rest_entry("n1", 5, "n", "proj/p", "x");
    nobody.as_object_mut().unwrap().remove("member");
    let mut entries = vec![hook_payload("h1", 1), token_only, nobody];
    for kind in [
        "flag",
        "project",
        "environment",
        "member",
        "segment",
        "webhook",
    ] {
        let mut e = rest_entry(
            &format!("k-{kind}"),
            7,
            "Name\twith\ttabs",
            "proj/p:env/e:flag/f",
            "m",
        );
        e["kind"] = json!(kind);
        entries.push(e);
    }
    for entry in entries {
        let (name, out) = renderer
            .render_entry(&entry, "https://app.launchdarkly.com")
            .expect("renders");
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
        assert_eq!(v["id"], entry["_id"], "{name}");
    }
}

#[tokio::test]
async fn framework_templates_render_stored_events() {
    let Some(dir) = corpus_dir() else { return };
    let app = spawn_app().await;
    let mut flag = rest_entry(
        "fw-1",
        1_700_000_000_000,
        "Checkout",
        "proj/default:env/production:flag/checkout",
        "m1",
    );
    flag["comment"] = json!("going live");
    app.post_event(flag.to_string()).await;
    app.post_event(hook_payload("fw-2", 1_700_000_000_001).to_string())
        .await;
    let renderer = audithook::render::Renderer::with_builtin(chrono_tz::UTC);
    let mut rendered = 0;
    for stored in ["fw-1", "fw-2"] {
        let item: Value = app
            .read(&format!("/api/v2/auditlog/{stored}"))
            .await
            .json()
            .await
            .unwrap();
        let raw: Value = serde_json::from_str(&app.stored_raw(stored).unwrap()).unwrap();
        assert_eq!(item["_id"], raw["_id"]);
        let ctx =
            audithook::render::context::template_context(&raw, "https://app.launchdarkly.com");
        for integration in std::fs::read_dir(dir.join("templates")).unwrap() {
            let integration = integration.unwrap();
            let name = integration.file_name().into_string().unwrap();
            if name.starts_with('_') {
                continue;
            }
            let form_file = dir.join(format!("formVariables/{name}.preview.json"));
            let form: Value = std::fs::read_to_string(&form_file)
                .map(|t| serde_json::from_str(&t).unwrap())
                .unwrap_or(json!({}));
            for file in std::fs::read_dir(integration.path()).unwrap() {
                let file = file.unwrap();
                let file_name = file.file_name().into_string().unwrap();
                let source = std::fs::read_to_string(file.path()).unwrap();
                let compiled = renderer.compile(&source).unwrap();
                let escape = audithook::render::json_escape_wanted(&file_name);
                let data = audithook::render::body_data(&ctx, &form, escape);
                let out = renderer.render(&compiled, &data);
                assert!(
                    out.is_ok(),
                    "{name}/{file_name} over {stored}: {:?}",
                    out.err()
                );
                rendered += 1;
            }
        }
    }
    assert_eq!(rendered, 2 * 38);
}

#[tokio::test]
async fn a_broken_template_stops_start_up_naming_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let templates = tmp.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("flag.json.hbs"),
        "{\n  \"a\": \"{{#if x}}\"\n}\n",
    )
    .unwrap();
    let mut cfg = config_for_backend(tmp.path()).await;
    cfg.templates = templates;
    let err = audithook::build_state(cfg)
        .await
        .err()
        .expect("start-up fails")
        .to_string();
    assert!(err.contains("flag.json.hbs:"), "{err}");
}

fn check_manifest_rules(manifest: &Value, root: &std::path::Path) -> Vec<String> {
    let mut problems = Vec::new();
    for icon in ["square", "horizontal"] {
        let path = manifest["icons"][icon].as_str().unwrap_or("");
        if !root.join(path).is_file() {
            problems.push(format!("icon {icon} {path:?} does not exist"));
        }
    }
    if !manifest["overview"].as_str().unwrap_or("").ends_with('.') {
        problems.push("overview must end in a period".into());
    }
    let vars = manifest["formVariables"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut endpoint_ctx = serde_json::Map::new();
    for v in &vars {
        let key = v["key"].as_str().unwrap_or("").to_owned();
        let ty = v["type"].as_str().unwrap_or("");
        let value = match ty {
            "boolean" => json!(true),
            "uri" => json!(format!("https://{key}.com")),
            _ => json!(key.clone()),
        };
        endpoint_ctx.insert(key.clone(), value);
        if v.get("defaultValue").is_some() && v["isOptional"] != json!(true) {
            problems.push(format!("{key}: defaultValue needs isOptional"));
        }
        if v["isSecret"] == json!(true) && ty != "string" {
            problems.push(format!("{key}: only string variables may be secret"));
        }
        if (ty == "dynamicEnum") != v.get("dynamicOptions").is_some() {
            problems.push(format!("{key}: dynamicOptions goes with dynamicEnum"));
        }
    }
    let hook = &manifest["capabilities"]["auditLogEventsHook"];
    let renderer = audithook::render::Renderer::default();
    let data = audithook::render::endpoint_data(
        &Value::Object(endpoint_ctx),
        &Value::Null,
        &json!({"kind": "flag"}),
    );
    let mut endpoint_templates = vec![hook["endpoint"]["url"].as_str().unwrap_or("").to_owned()];
    for h in hook["endpoint"]["headers"].as_array().into_iter().flatten() {
        endpoint_templates.push(h["value"].as_str().unwrap_or("").to_owned());
    }
    for t in endpoint_templates {
        let out = renderer
            .compile(&t)
            .and_then(|c| renderer.render(&c, &data));
        if let Err(e) = out {
            problems.push(format!("endpoint template {t:?} fails: {e}"));
        }
    }
    if let Some(key) = hook["endpoint"]["hmacSignature"]["hmacSecretFormVariableKey"].as_str() {
        if !vars.iter().any(|v| v["key"] == key) {
            problems.push(format!(
                "hmacSecretFormVariableKey {key:?} is not a form variable"
            ));
        }
    }
    problems
}

#[test]
fn integration_manifest_validates_against_the_schema_and_the_framework_rules() {
    let Some(dir) = corpus_dir() else { return };
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::draft7::new(&schema).expect("schema compiles");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(manifest_dir().join("integration-manifest.json")).unwrap(),
    )
    .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&manifest)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        check_manifest_rules(&manifest, &manifest_dir()),
        Vec::<String>::new()
    );
    let hook = &manifest["capabilities"]["auditLogEventsHook"];
    assert_eq!(
        hook["endpoint"]["url"],
        "{{endpointUrl}}/hooks/launchdarkly"
    );
    assert_eq!(hook["useStandardWebhookPayload"], true);
    assert_eq!(hook["templates"], json!({}));
    assert!(hook["endpoint"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["value"] == "Bearer {{apiToken}}"));

    // The validator agrees with the framework's (ajv) verdicts on the corpus cases.
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest-cases/index.json")).unwrap(),
    )
    .unwrap();
    for case in cases.as_array().unwrap() {
        let m: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(case["manifest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        assert_eq!(
            validator.is_valid(&m),
            case["valid"].as_bool().unwrap(),
            "{}",
            case["name"]
        );
    }
}

/// `{{#name a}}` nested `depth` deep.
fn nested_blocks(name: &str, depth: usize) -> String {
    format!(
        "{}x{}",
        format!("{{{{#{name} a}}}}").repeat(depth),
        format!("{{{{/{name}}}}}").repeat(depth)
    )
}

async fn renders_running(app: &TestApp) -> i64 {
    app.metric_value("audithook_preview_renders_running").await as i64
}

#[tokio::test]
async fn deep_nesting_gets_422_and_never_kills_the_process() {
    let app = spawn_app().await;
    let ctx = json!({"a": {"a": 1}});
    for name in ["if", "each", "with", "unless"] {
        // The fuzzer's input: ~1,750 deep (28 KB) overflowed a worker's stack.
        for depth in [1750, 65] {
            let r = preview(
                &app,
                json!({"template": nested_blocks(name, depth), "context": ctx}),
            )
            .await;
            assert_eq!(r.status(), 422, "{name} x{depth}");
            let body: Value = r.json().await.unwrap();
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("nest more than 64"),
                "{body}"
            );
            assert_eq!(body["line"], 1);
        }
        let r = preview(
            &app,
            json!({"template": nested_blocks(name, 64), "context": ctx}),
        )
        .await;
        assert_eq!(r.status(), 200, "{name} x64");
    }
    // Subexpressions: ~890 deep overflowed before.
    let sub = |depth: usize| {
        format!(
            "{{{{lookup {}this{} \"a\"}}}}",
            "(lookup ".repeat(depth),
            " \"a\")".repeat(depth)
        )
    };
    for depth in [890, 33] {
        let r = preview(&app, json!({"template": sub(depth), "context": ctx})).await;
        assert_eq!(r.status(), 422, "subexpression x{depth}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("subexpressions nest more than 32"),
            "{body}"
        );
    }
    let r = preview(&app, json!({"template": sub(32), "context": ctx})).await;
    assert_eq!(r.status(), 200);
    // A comment may hold anything; a raw block counts as a level.
    let r = preview(
        &app,
        json!({"template": format!("{{{{!-- {} --}}}}ok", "{{#if a}}".repeat(5000)), "context": ctx}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // Still serving.
    assert_eq!(app.read("/healthz").await.status(), 200);
}

/// The fuzzer's runaway render: 100,000 x 100,000 iterations.
fn runaway() -> Value {
    let items: Vec<u32> = (0..100_000).collect();
    json!({"template": "{{#each a}}{{#each ../a}}{{/each}}{{/each}}", "context": {"a": items}})
}

#[tokio::test]
async fn a_render_past_its_time_budget_gets_422() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.render_timeout = std::time::Duration::from_millis(800);
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    let started = std::time::Instant::now();
    let r = preview(&app, runaway()).await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("AUDITHOOK_RENDER_TIMEOUT"),
        "{body}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(renders_running(&app).await, 0);
}

#[tokio::test]
async fn a_render_stops_when_its_client_goes_away_and_never_holds_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.render_timeout = std::time::Duration::from_secs(600);
    let app = spawn_with(cfg, std::sync::Arc::new(dir)).await;
    // The client gives up after 1 s.
    let gave_up = app
        .client
        .post(format!("{}/preview", app.base))
        .header("authorization", API_TOKEN)
        .timeout(std::time::Duration::from_secs(1))
        .json(&runaway())
        .send()
        .await;
    assert!(gave_up.is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while renders_running(&app).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the render kept running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A render in flight when the service is told to stop ends, and so does the service.
    let client = app.client.clone();
    let url = format!("{}/preview", app.base);
    let pending = tokio::spawn(async move {
        client
            .post(url)
            .header("authorization", API_TOKEN)
            .json(&runaway())
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    while renders_running(&app).await == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown finished while a render was running");
    assert!(stopping.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(pending.await.unwrap().unwrap(), 503);
}
