//! Derives LaunchDarkly's *template context* (the shape of the framework's
//! `sample-context/*.json`) from a stored entry, whether it arrived as a hook default payload
//! or a REST entry.
//!
//! | context field | from |
//! | --- | --- |
//! | `_links` | the entry's, relative `href`s made absolute with `baseURL` |
//! | `baseURL` | configuration (`https://app.launchdarkly.com` by default) |
//! | `timestamp.{milliseconds,seconds,rfc3339,simple}` | `date` or `timestamp.milliseconds` (UTC) |
//! | `title.{plainText,markdown,html}` | `title`, `markdownTitle` (else `title`), `""` |
//! | `details.{plainText,markdown,html}` | `description` with Markdown links and bullets removed, `description`, `""` |
//! | `project.{key,name,tags}`, `project.environment.{key,name,tags}` | the `proj/…:env/…` resource specifier of `target.resources` or `accesses` (names are the keys, or the entry's `name` for project and environment events); empty strings when there is none |
//! | `key` | the last key of that specifier (the flag, segment, environment or project key), else `_id` of `target` |
//! | `member.displayName`, `member.emailLocalPart` | `firstName lastName`, else `email`; the part of `email` before `@` |
//! | `verbKind` | `accesses[0].action` |
//! | `tags` | the tags of the specifier's last resource (`flag/key;tag1,tag2`), else `[]` |
//! | everything else (`kind`, `name`, `comment`, `target`, `token`, `app`, `parent`, …) | copied |
//!
//! An entry that is already a template context (its `title` is an object) is used as is.

use chrono::TimeZone;
use serde_json::{json, Map, Value};

/// The resource keys named by a LaunchDarkly resource specifier.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Specifier {
    pub project: Option<(String, Vec<String>)>,
    pub environment: Option<(String, Vec<String>)>,
    /// The last resource: (type, key, tags), e.g. `("flag", "my-flag", [])`.
    pub last: Option<(String, String, Vec<String>)>,
}

/// Parses `proj/default;tag:env/production:flag/my-flag`.
pub fn parse_specifier(spec: &str) -> Specifier {
    let mut out = Specifier::default();
    for part in spec.split(':') {
        let Some((kind, rest)) = part.split_once('/') else {
            out.last = Some((part.to_owned(), String::new(), Vec::new()));
            continue;
        };
        let (key, tags) = match rest.split_once(';') {
            Some((k, t)) => (
                k.to_owned(),
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => (rest.to_owned(), Vec::new()),
        };
        match kind {
            "proj" => out.project = Some((key.clone(), tags.clone())),
            "env" => out.environment = Some((key.clone(), tags.clone())),
            _ => {}
        }
        out.last = Some((kind.to_owned(), key, tags));
    }
    out
}

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

fn absolutize(v: &mut Value, base: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "href" {
                    if let Value::String(s) = x {
                        if s.starts_with('/') {
                            *s = format!("{}{s}", base.trim_end_matches('/'));
                        }
                    }
                } else {
                    absolutize(x, base);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| absolutize(x, base)),
        _ => {}
    }
}

/// Removes Markdown link syntax and list bullets: `* Turned [on](x)` -> `Turned on`.
fn markdown_to_plain(md: &str) -> String {
    let mut lines = Vec::new();
    for line in md.lines() {
        let line = line.trim_start();
        let line = line
            .strip_prefix("* ")
            .or_else(|| line.strip_prefix("- "))
            .unwrap_or(line);
        let mut out = String::new();
        let mut rest = line;
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find("](").map(|i| open + i) else {
                break;
            };
            let Some(end) = rest[close..].find(')').map(|i| close + i) else {
                break;
            };
            out.push_str(&rest[..open]);
            out.push_str(&rest[open + 1..close]);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        if !out.is_empty() {
            lines.push(out);
        }
    }
    lines.join("\n")
}

/// The template context of a stored entry (see the module documentation).
pub fn template_context(entry: &Value, base_url: &str) -> Value {
    let Value::Object(src) = entry else {
        return entry.clone();
    };
    if src.get("title").is_some_and(Value::is_object) {
        let mut ctx = src.clone();
        ctx.entry("baseURL")
            .or_insert_with(|| Value::String(base_url.to_owned()));
        return Value::Object(ctx);
    }
    let mut ctx = Map::new();
    let mut links = src.get("_links").cloned().unwrap_or_else(|| json!({}));
    absolutize(&mut links, base_url);
    ctx.insert("_links".into(), links);
    ctx.insert("baseURL".into(), Value::String(base_url.to_owned()));
    for key in ["_id", "_accountId"] {
        ctx.insert(key.into(), Value::String(str_field(src, key).to_owned()));
    }
    let ms = src
        .get("date")
        .and_then(Value::as_i64)
        .or_else(|| {
            src.get("timestamp")
                .and_then(|t| t.get("milliseconds"))
                .and_then(Value::as_i64)
        })
        .unwrap_or(0);
    let dt = chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default();
    ctx.insert(
        "timestamp".into(),
        json!({
            "milliseconds": ms,
            "seconds": ms.div_euclid(1000),
            "rfc3339": dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "simple": dt.format("%Y-%m-%d %H:%M:%S").to_string(),
        }),
    );
    let kind = str_field(src, "kind");
    let name = str_field(src, "name");
    ctx.insert("kind".into(), Value::String(kind.to_owned()));
    ctx.insert("name".into(), Value::String(name.to_owned()));
    let description = str_field(src, "description");
    ctx.insert(
        "details".into(),
        json!({"plainText": markdown_to_plain(description), "markdown": description, "html": ""}),
    );
    if let Some(c) = src.get("comment") {
        ctx.insert("comment".into(), c.clone());
    }

    // Project, environment and key from the resource specifiers.
    let mut specs: Vec<&str> = Vec::new();
    if let Some(rs) = src
        .get("target")
        .and_then(|t| t.get("resources"))
        .and_then(Value::as_array)
    {
        specs.extend(rs.iter().filter_map(Value::as_str));
    }
    if let Some(acc) = src.get("accesses").and_then(Value::as_array) {
        specs.extend(
            acc.iter()
                .filter_map(|a| a.get("resource").and_then(Value::as_str)),
        );
    }
    let spec = specs
        .iter()
        .map(|s| parse_specifier(s))
        .max_by_key(|s| {
            (
                s.project.is_some(),
                s.environment.is_some(),
                s.last.is_some(),
            )
        })
        .unwrap_or_default();
    let (proj_key, proj_tags) = spec.project.clone().unwrap_or_default();
    let (env_key, env_tags) = spec.environment.clone().unwrap_or_default();
    let proj_name = if kind == "project" {
        name.to_owned()
    } else {
        proj_key.clone()
    };
    let env_name = if kind == "environment" {
        name.to_owned()
    } else {
        env_key.clone()
    };
    ctx.insert(
        "project".into(),
        json!({
            "name": proj_name, "key": proj_key, "tags": proj_tags,
            "environment": {"name": env_name, "key": env_key, "tags": env_tags},
        }),
    );
    let (key, tags) = match &spec.last {
        Some((_, k, t)) if !k.is_empty() => (k.clone(), t.clone()),
        _ => (
            src.get("target")
                .and_then(|t| t.get("_id"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            Vec::new(),
        ),
    };
    // The links the framework's context carries: the entry's page and its audit details.
    if let Value::Object(links) = ctx.get_mut("_links").unwrap_or(&mut Value::Null) {
        let base = base_url.trim_end_matches('/');
        let id = str_field(src, "_id");
        let scope = if proj_key.is_empty() || env_key.is_empty() {
            String::new()
        } else {
            format!("/{proj_key}/{env_key}")
        };
        links.entry("details").or_insert_with(
            || json!({"href": format!("{base}{scope}/audit/{id}/details"), "type": "text/html"}),
        );
        let site = match (kind, scope.is_empty()) {
            ("flag", false) => format!("{base}{scope}/features/{key}"),
            _ => format!("{base}{scope}"),
        };
        links
            .entry("site")
            .or_insert_with(|| json!({"href": site, "type": "text/html"}));
    }
    ctx.insert("key".into(), Value::String(key));
    ctx.insert("tags".into(), json!(tags));

    if let Some(Value::Object(member)) = src.get("member") {
        let mut m = member.clone();
        let base = base_url.trim_end_matches('/');
        let member_id = str_field(member, "_id").to_owned();
        let links = m.entry("_links").or_insert_with(|| json!({}));
        if !links.is_object() {
            *links = json!({});
        }
        if let Value::Object(l) = links {
            l.entry("parent").or_insert_with(
                || json!({"href": format!("{base}/api/v2/members"), "type": "application/json"}),
            );
            l.entry("self").or_insert_with(
                || json!({"href": format!("{base}/api/v2/members/{member_id}"), "type": "application/json"}),
            );
        }
        absolutize(links, base_url);
        let email = str_field(member, "email");
        let full = format!(
            "{} {}",
            str_field(member, "firstName"),
            str_field(member, "lastName")
        );
        let display = if full.trim().is_empty() {
            email.to_owned()
        } else {
            full.trim().to_owned()
        };
        m.insert(
            "emailLocalPart".into(),
            Value::String(email.split('@').next().unwrap_or("").to_owned()),
        );
        m.insert("displayName".into(), Value::String(display));
        ctx.insert("member".into(), Value::Object(m));
    }
    ctx.insert(
        "titleVerb".into(),
        Value::String(str_field(src, "titleVerb").to_owned()),
    );
    let verb = src
        .get("accesses")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| a.get("action"))
        .and_then(Value::as_str)
        .unwrap_or("");
    ctx.insert("verbKind".into(), Value::String(verb.to_owned()));
    let title = str_field(src, "title");
    let markdown = src
        .get("markdownTitle")
        .and_then(Value::as_str)
        .unwrap_or(title);
    ctx.insert(
        "title".into(),
        json!({"plainText": title, "markdown": markdown, "html": ""}),
    );
    let mut target = src
        .get("target")
        .cloned()
        .unwrap_or_else(|| json!({"name": ""}));
    if target.get("_links").is_some_and(Value::is_null) {
        if let Value::Object(t) = &mut target {
            t.insert("_links".into(), json!({}));
        }
    }
    absolutize(&mut target, base_url);
    // The framework's target carries an `_id` and the entry's site and canonical links.
    if let (Value::Object(t), Some(Value::String(k))) = (&mut target, ctx.get("key")) {
        t.entry("_id").or_insert_with(|| Value::String(k.clone()));
    }
    if let (Value::Object(t), Some(Value::Object(links))) = (&mut target, ctx.get("_links")) {
        let tl = t.entry("_links").or_insert_with(|| json!({}));
        if let Value::Object(tl) = tl {
            for rel in ["canonical", "site"] {
                if let Some(l) = links.get(rel) {
                    tl.entry(rel).or_insert_with(|| l.clone());
                }
            }
        }
    }
    ctx.insert("target".into(), target);
    // Everything else the entry carries (token, app, subject, parent, accesses, ...).
    for (k, v) in src {
        if !ctx.contains_key(k)
            && !matches!(
                k.as_str(),
                "date" | "markdownTitle" | "description" | "shortDescription"
            )
        {
            ctx.insert(k.clone(), v.clone());
        }
    }
    Value::Object(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifiers() {
        let s = parse_specifier("proj/default;web,ops:env/production:flag/demo;beta");
        assert_eq!(
            s.project,
            Some(("default".into(), vec!["web".into(), "ops".into()]))
        );
        assert_eq!(s.environment, Some(("production".into(), vec![])));
        assert_eq!(
            s.last,
            Some(("flag".into(), "demo".into(), vec!["beta".into()]))
        );
    }

    #[test]
    fn plain_text_of_markdown() {
        assert_eq!(
            markdown_to_plain("* Turned [on](https://x) the flag\n"),
            "Turned on the flag"
        );
    }

    #[test]
    fn rest_entry_context() {
        let entry = json!({
            "_links": {"site": {"href": "/default/production/features/demo", "type": "text/html"}},
            "_id": "e1", "_accountId": "a1", "date": 1580777319650i64,
            "accesses": [{"action": "updateOn", "resource": "proj/default:env/production:flag/demo"}],
            "kind": "flag", "name": "Demo", "description": "- Turned on", "shortDescription": "",
            "member": {"_id": "m", "email": "sandy@example.com", "firstName": "Sandy", "lastName": "Smith"},
            "titleVerb": "turned on the flag", "title": "Sandy Smith turned on the flag Demo",
            "target": {"name": "Demo", "resources": ["proj/default:env/production:flag/demo"]}
        });
        let ctx = template_context(&entry, "https://app.launchdarkly.com");
        assert_eq!(ctx["timestamp"]["rfc3339"], "2020-02-04T00:48:39Z");
        assert_eq!(ctx["timestamp"]["simple"], "2020-02-04 00:48:39");
        assert_eq!(ctx["timestamp"]["seconds"], 1580777319);
        assert_eq!(ctx["project"]["key"], "default");
        assert_eq!(ctx["project"]["environment"]["key"], "production");
        assert_eq!(ctx["key"], "demo");
        assert_eq!(ctx["verbKind"], "updateOn");
        assert_eq!(ctx["member"]["displayName"], "Sandy Smith");
        assert_eq!(ctx["member"]["emailLocalPart"], "sandy");
        assert_eq!(
            ctx["title"]["plainText"],
            "Sandy Smith turned on the flag Demo"
        );
        assert_eq!(ctx["details"]["plainText"], "Turned on");
        assert_eq!(
            ctx["_links"]["site"]["href"],
            "https://app.launchdarkly.com/default/production/features/demo"
        );
    }
}
