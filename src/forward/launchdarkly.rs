//! The `launchdarkly_integration` kind: any manifest of LaunchDarkly's integration framework
//! with its form variables. URL and headers come from the manifest's `auditLogEventsHook`
//! endpoint, the body from the template for the event's kind (or `default`), rendered with
//! the renderer, template context and JSON escaping `/preview` uses, so the receiver gets
//! what LaunchDarkly itself would send.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::render::{self, context::template_context, Compiled, Renderer};
use crate::sources::launchdarkly::policy::Policy;
use crate::store::StoredEvent;

/// A loaded, checked manifest with its compiled templates and form variables.
pub struct Integration {
    pub manifest_path: PathBuf,
    /// The manifest's `id` (`datadog`, `splunk`, ...).
    pub id: String,
    pub method: reqwest::Method,
    url: Compiled,
    headers: Vec<(reqwest::header::HeaderName, Compiled)>,
    /// Template slot (`default`, `flag`, ...) to its compiled file.
    templates: HashMap<String, Compiled>,
    /// Form variables with the manifest's defaults filled in.
    pub form_variables: Value,
    /// Keys of the form variables the manifest marks secret.
    secrets: Vec<String>,
    pub default_policy: Option<Policy>,
    /// `oauth` in URL and header templates (manifests with `requiresOAuth`).
    oauth: Value,
    renderer: Renderer,
}

impl std::fmt::Debug for Integration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integration")
            .field("manifest_path", &self.manifest_path)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One request as LaunchDarkly would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(reqwest::header::HeaderName, String)>,
    pub body: String,
    /// The template slot used (`None`: the standard payload).
    pub template: Option<String>,
}

impl Integration {
    /// Reads the manifest at `path` (templates relative to its directory, as in the
    /// framework's repository) and checks `form` against its `formVariables`.
    pub fn load(
        path: &Path,
        form: &Value,
        oauth: Option<Value>,
    ) -> Result<Integration, Vec<String>> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("manifest: cannot read {shown}: {e}")])?;
        let manifest: Value = serde_json::from_str(&text)
            .map_err(|e| vec![format!("manifest: {shown} is not JSON: {e}")])?;
        let mut problems = Vec::new();
        let id = manifest
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(hook) = manifest.pointer("/capabilities/auditLogEventsHook") else {
            return Err(vec![format!(
                "manifest: {shown} has no capabilities.auditLogEventsHook (not an audit-log integration)"
            )]);
        };
        let renderer = Renderer::new(chrono_tz::UTC);
        let compile =
            |what: &str, source: &str, problems: &mut Vec<String>| match renderer.compile(source) {
                Ok(c) => Some(c),
                Err(e) => {
                    let at = match (e.line, e.column) {
                        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                        _ => String::new(),
                    };
                    problems.push(format!(
                        "manifest: {what} does not compile{at}: {}",
                        e.message
                    ));
                    None
                }
            };
        let endpoint = hook.get("endpoint");
        let url = match endpoint.and_then(|e| e.get("url")).and_then(Value::as_str) {
            Some(u) => compile("endpoint.url", u, &mut problems),
            None => {
                problems.push(format!(
                    "manifest: {shown} has no auditLogEventsHook.endpoint.url"
                ));
                None
            }
        };
        let method = match endpoint
            .and_then(|e| e.get("method"))
            .and_then(Value::as_str)
            .unwrap_or("POST")
        {
            m @ ("POST" | "PUT" | "PATCH") => reqwest::Method::from_bytes(m.as_bytes()).ok(),
            other => {
                problems.push(format!(
                    "manifest: endpoint.method {other:?} is not POST, PUT or PATCH"
                ));
                None
            }
        };
        let mut headers = Vec::new();
        for (i, h) in endpoint
            .and_then(|e| e.get("headers"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let (Some(name), Some(value)) = (
                h.get("name").and_then(Value::as_str),
                h.get("value").and_then(Value::as_str),
            ) else {
                problems.push(format!(
                    "manifest: endpoint.headers[{i}] needs string `name` and `value`"
                ));
                continue;
            };
            let Ok(header) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
                problems.push(format!(
                    "manifest: endpoint.headers[{i}]: {name:?} is not a header name"
                ));
                continue;
            };
            if let Some(c) = compile(&format!("header {name}"), value, &mut problems) {
                headers.push((header, c));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut templates = HashMap::new();
        if let Some(slots) = hook.get("templates").and_then(Value::as_object) {
            for (slot, file) in slots {
                let Some(file) = file.as_str() else {
                    problems.push(format!("manifest: templates.{slot} is not a path"));
                    continue;
                };
                let full = dir.join(file);
                match std::fs::read_to_string(&full) {
                    Ok(source) => {
                        if let Some(mut c) = compile(
                            &format!("template {}", full.display()),
                            &source,
                            &mut problems,
                        ) {
                            c.json_escape = render::json_escape_wanted(file);
                            templates.insert(slot.clone(), c);
                        }
                    }
                    Err(e) => problems.push(format!(
                        "manifest: templates.{slot}: cannot read {}: {e}",
                        full.display()
                    )),
                }
            }
        }
        let default_policy = match hook.get("defaultPolicy") {
            None => None,
            Some(p) => match Policy::parse(&p.to_string()) {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.push(format!("manifest: defaultPolicy: {e}"));
                    None
                }
            },
        };
        let (form_variables, secrets) = check_form(&manifest, form, &mut problems);
        let uses_oauth = manifest.get("requiresOAuth").and_then(Value::as_bool) == Some(true)
            || endpoint.is_some_and(|e| e.to_string().contains("oauth."));
        let oauth = match (uses_oauth, oauth) {
            (true, None) => {
                problems.push(format!(
                    "oauth: the manifest {shown} uses OAuth (`oauth.*` in its endpoint); LaunchDarkly completes that flow itself, so give the values it would (for example oauth = {{ baseURI = \"...\", accessToken = \"${{TOKEN}}\" }})"
                ));
                Value::Null
            }
            (_, Some(o)) => o,
            (false, None) => Value::Null,
        };
        match (url, method) {
            (Some(url), Some(method)) if problems.is_empty() => Ok(Integration {
                manifest_path: path.to_owned(),
                id,
                method,
                url,
                headers,
                templates,
                form_variables,
                secrets,
                default_policy,
                oauth,
                renderer,
            }),
            _ => Err(problems),
        }
    }

    /// Renders the request for one stored LaunchDarkly event (`base_url` as in
    /// `LD_BASE_URL`, for the template context's links).
    pub fn render(&self, row: &StoredEvent, base_url: &str) -> Result<Rendered, String> {
        let entry = crate::event::stored_entry(&row.raw, &row.id, row.date);
        let ctx = template_context(&entry, base_url);
        let endpoint = render::endpoint_data(&self.form_variables, &self.oauth, &ctx);
        let url = self
            .renderer
            .render(&self.url, &endpoint)
            .map_err(|e| format!("endpoint URL template: {e}"))?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, c) in &self.headers {
            let value = self
                .renderer
                .render(c, &endpoint)
                .map_err(|e| format!("header {name} template: {e}"))?;
            headers.push((name.clone(), value));
        }
        let kind = entry.get("kind").and_then(Value::as_str).unwrap_or("");
        let slot = if matches!(kind, "flag" | "project" | "environment" | "member")
            && self.templates.contains_key(kind)
        {
            Some(kind)
        } else if self.templates.contains_key("default") {
            Some("default")
        } else {
            None
        };
        let body = match slot {
            Some(slot) => {
                let c = &self.templates[slot];
                let data = render::body_data(&ctx, &self.form_variables, c.json_escape);
                self.renderer
                    .render(c, &data)
                    .map_err(|e| format!("template {slot}: {e}"))?
            }
            // No template: LaunchDarkly's standard webhook payload, the event as stored.
            None => row.raw.clone(),
        };
        Ok(Rendered {
            method: self.method.clone(),
            url,
            headers,
            body,
            template: slot.map(str::to_owned),
        })
    }

    /// `text` with the values of the manifest's secret form variables replaced by
    /// `<secret>` (for output people read).
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for k in &self.secrets {
            if let Some(v) = self.form_variables.get(k).and_then(Value::as_str) {
                if !v.is_empty() {
                    out = out.replace(v, "<secret>");
                }
            }
        }
        out
    }
}

/// Checks `form` against the manifest's `formVariables` and fills in defaults. Returns the
/// form variables and the keys of the secret ones.
fn check_form(manifest: &Value, form: &Value, problems: &mut Vec<String>) -> (Value, Vec<String>) {
    let declared = manifest
        .get("formVariables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let given = form.as_object().cloned().unwrap_or_default();
    let mut out = Map::new();
    let mut secrets = Vec::new();
    let known: Vec<&str> = declared
        .iter()
        .filter_map(|v| v.get("key").and_then(Value::as_str))
        .collect();
    for key in given.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(format!(
                "form_variables.{key}: the manifest has no such form variable; it has {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    for var in &declared {
        let Some(key) = var.get("key").and_then(Value::as_str) else {
            continue;
        };
        let name = var.get("name").and_then(Value::as_str).unwrap_or(key);
        let ty = var.get("type").and_then(Value::as_str).unwrap_or("string");
        let optional = var
            .get("isOptional")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if var.get("isSecret").and_then(Value::as_bool) == Some(true) {
            secrets.push(key.to_owned());
        }
        let value = match given.get(key) {
            Some(v) => v.clone(),
            None => match var.get("defaultValue") {
                Some(d) => d.clone(),
                None if optional => continue,
                None => {
                    problems.push(format!(
                        "form_variables.{key}: required by the manifest ({name})"
                    ));
                    continue;
                }
            },
        };
        let ok = match ty {
            "boolean" => value.is_boolean(),
            "enum" => {
                let allowed = var
                    .get("allowedValues")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if value.is_string() && !allowed.contains(&value) {
                    problems.push(format!(
                        "form_variables.{key}: {value} is not one of {}",
                        Value::Array(allowed)
                    ));
                    out.insert(key.to_owned(), value);
                    continue;
                }
                value.is_string()
            }
            "uri" => value.as_str().is_some_and(|s| {
                reqwest::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            }),
            _ => value.is_string(),
        };
        if !ok {
            problems.push(format!(
                "form_variables.{key}: {value} is not a valid {ty} ({name})"
            ));
        }
        out.insert(key.to_owned(), value);
    }
    (Value::Object(out), secrets)
}

/// An example LaunchDarkly event (a flag turned on in production) that `destinations check`
/// renders for each LaunchDarkly-integration destination.
pub const SAMPLE_EVENT: &str = r#"{"_id":"6565f0a1b2c3d4e5f6a7b8c9","_links":{"canonical":{"href":"/api/v2/flags/default/example-flag","type":"application/json"},"parent":{"href":"/api/v2/auditlog","type":"application/json"},"self":{"href":"/api/v2/auditlog/6565f0a1b2c3d4e5f6a7b8c9","type":"application/json"},"site":{"href":"/default/production/features/example-flag","type":"text/html"}},"_accountId":"5f0000000000000000000000","date":1700000000123,"accesses":[{"action":"updateOn","resource":"proj/default:env/production:flag/example-flag"}],"kind":"flag","name":"Example flag","description":"- Turned on flag","shortDescription":"","comment":"","subject":{"_links":{"self":{"href":"/api/v2/members/5f0000000000000000000001","type":"application/json"}},"name":"Ada Lovelace","avatarUrl":""},"member":{"_links":{"self":{"href":"/api/v2/members/5f0000000000000000000001","type":"application/json"}},"_id":"5f0000000000000000000001","email":"ada@example.com","firstName":"Ada","lastName":"Lovelace"},"titleVerb":"turned on the flag","title":"Ada Lovelace turned on the flag [Example flag](https://app.launchdarkly.com/default/production/features/example-flag) in `Production`","target":{"_links":{"canonical":{"href":"/api/v2/flags/default/example-flag","type":"application/json"},"site":{"href":"/default/production/features/example-flag","type":"text/html"}},"name":"Example flag","resources":["proj/default:env/production:flag/example-flag"]}}"#;
