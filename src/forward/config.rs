//! The destinations file (`AUDITHOOK_DESTINATIONS`, TOML): a list of `[[destinations]]`
//! tables, validated whole before anything is sent. Every problem names the destination and
//! the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::launchdarkly::Integration;
use crate::event::Source;
use crate::sources::launchdarkly::policy::Policy;

/// Where a new destination starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After the newest stored event: only what arrives from now on.
    Now,
    /// Every stored event dated at or after this time (epoch ms), then what arrives.
    At(i64),
}

/// One destination, validated.
#[derive(Debug)]
pub struct Destination {
    pub name: String,
    pub kind: Kind,
    /// Events per request, where the kind batches.
    pub batch: usize,
    /// Sources forwarded (none = every source).
    pub sources: Vec<Source>,
    /// For LaunchDarkly events: only those the policy allows.
    pub policy: Option<Policy>,
    pub start: Start,
    /// Time limit of one request (connect, send, answer).
    pub timeout: Duration,
    /// Longest wait between attempts: a destination failing for long probes this often.
    pub max_backoff: Duration,
}

/// What a destination sends, and where.
#[derive(Debug)]
pub enum Kind {
    Http {
        url: reqwest::Url,
        headers: HeaderMap,
    },
    Elasticsearch {
        url: reqwest::Url,
        index: String,
        headers: HeaderMap,
    },
    SplunkHec {
        url: reqwest::Url,
        token: String,
        index: Option<String>,
        headers: HeaderMap,
    },
    Syslog {
        address: String,
        tls: Option<super::syslog::TlsSettings>,
        facility: u8,
        hostname: String,
    },
    LaunchDarkly(Arc<Integration>),
}

impl Kind {
    /// The kind's name as the file spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Http { .. } => "http",
            Kind::Elasticsearch { .. } => "elasticsearch",
            Kind::SplunkHec { .. } => "splunk_hec",
            Kind::Syslog { .. } => "syslog",
            Kind::LaunchDarkly(_) => "launchdarkly_integration",
        }
    }

    /// Where it sends, for people (no credentials: URLs are shown without user info).
    pub fn target(&self) -> String {
        match self {
            Kind::Http { url, .. }
            | Kind::Elasticsearch { url, .. }
            | Kind::SplunkHec { url, .. } => crate::config::redact_url(url.as_str()),
            Kind::Syslog { address, tls, .. } => {
                format!("{}://{address}", if tls.is_some() { "tls" } else { "tcp" })
            }
            Kind::LaunchDarkly(i) => format!("manifest {}", i.manifest_path.display()),
        }
    }
}

/// Default events per request for the kinds that batch.
pub const DEFAULT_BATCH: usize = 500;
/// Largest `batch`.
pub const MAX_BATCH: usize = 10_000;
/// Default request time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest wait between attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The fields a `[[destinations]]` table may have.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    kind: Option<String>,
    url: Option<String>,
    address: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    batch: Option<i64>,
    sources: Option<Vec<String>>,
    policy: Option<toml::Value>,
    from: Option<toml::Value>,
    manifest: Option<String>,
    form_variables: Option<toml::Table>,
    oauth: Option<toml::Table>,
    index: Option<String>,
    token: Option<String>,
    tls: Option<bool>,
    ca: Option<String>,
    facility: Option<String>,
    hostname: Option<String>,
    timeout: Option<String>,
    max_backoff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    destinations: Vec<toml::Table>,
}

/// Problems found in a destinations file, each naming the destination and the field.
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Reads and validates the destinations file at `path`, expanding `${NAME}` from `env`.
pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Destination>, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems(vec![format!(
            "destinations file {}: cannot read it: {e}",
            path.display()
        )])
    })?;
    parse(&text, path.parent().unwrap_or(Path::new(".")), env).map_err(|Problems(p)| {
        Problems(
            p.into_iter()
                .map(|m| format!("{}: {m}", path.display()))
                .collect(),
        )
    })
}

/// Validates the text of a destinations file; relative paths (manifests, CA files) are
/// relative to `dir`.
pub fn parse(
    text: &str,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Destination>, Problems> {
    let file: File = toml::from_str(text).map_err(|e| Problems(vec![toml_error(text, &e)]))?;
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, table) in file.destinations.into_iter().enumerate() {
        let label = match table.get("name").and_then(toml::Value::as_str) {
            Some(n) => format!("destination {n:?}"),
            None => format!("destinations[{i}]"),
        };
        let mut mine = Vec::new();
        match one(table, dir, env, &mut mine) {
            Some(d) if mine.is_empty() => {
                if !names.insert(d.name.clone()) {
                    problems.push(format!("{label}: name: used by another destination"));
                } else {
                    out.push(d);
                }
            }
            _ => {}
        }
        problems.extend(mine.into_iter().map(|m| format!("{label}: {m}")));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

/// Expands `${NAME}` in `s`; nothing else is special.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("`${` without a closing `}`".into());
        };
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("`${{{name}}}` is not a variable name"));
        }
        let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands every string in a TOML value; `field` names it in errors.
fn expand_value(
    v: &mut toml::Value,
    field: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) {
    match v {
        toml::Value::String(s) => match expand(s, env) {
            Ok(x) => *s = x,
            Err(e) => problems.push(format!("{field}: {e}")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{field}[{i}]"), env, problems);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                expand_value(item, &format!("{field}.{k}"), env, problems);
            }
        }
        _ => {}
    }
}

fn one(
    mut table: toml::Table,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<Destination> {
    for (k, v) in table.iter_mut() {
        expand_value(v, k, env, problems);
    }
    if !problems.is_empty() {
        return None;
    }
    let raw: Raw = match toml::Value::Table(table).try_into() {
        Ok(r) => r,
        Err(e) => {
            problems.push(e.message().to_owned());
            return None;
        }
    };
    let name = match raw.name.as_deref() {
        None => {
            problems.push("name: missing".into());
            String::new()
        }
        Some(n)
            if n.is_empty()
                || n.len() > 64
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            problems.push(format!(
                "name: {n:?} must be 1 to 64 letters, digits, `-`, `_` or `.` (it appears in URLs)"
            ));
            String::new()
        }
        Some(n) => n.to_owned(),
    };
    let headers = headers(&raw.headers, problems);
    let batch = match raw.batch {
        None => None,
        Some(b) if (1..=MAX_BATCH as i64).contains(&b) => Some(b as usize),
        Some(b) => {
            problems.push(format!("batch: {b} is not between 1 and {MAX_BATCH}"));
            None
        }
    };
    let sources = raw
        .sources
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| match Source::parse(s) {
            Some(s) => Some(s),
            None => {
                problems.push(format!(
                    "sources: unknown source {s:?}; known: launchdarkly, tfc, cbc"
                ));
                None
            }
        })
        .collect::<Vec<_>>();
    let policy = raw.policy.as_ref().and_then(|p| {
        let json = match serde_json::to_string(p) {
            Ok(j) => j,
            Err(e) => {
                problems.push(format!("policy: {e}"));
                return None;
            }
        };
        Policy::parse(&json)
            .map_err(|e| problems.push(format!("policy: {e}")))
            .ok()
    });
    let start = match &raw.from {
        None => Start::Now,
        Some(toml::Value::String(s)) if s == "now" => Start::Now,
        Some(toml::Value::String(s)) => match crate::sources::launchdarkly::parse_time(s) {
            Ok(t) => Start::At(t),
            Err(e) => {
                problems.push(format!("from: {e}; give \"now\" or a time"));
                Start::Now
            }
        },
        Some(toml::Value::Integer(ms)) => Start::At(*ms),
        Some(toml::Value::Datetime(d)) => {
            match crate::sources::launchdarkly::parse_time(&d.to_string()) {
                Ok(t) => Start::At(t),
                Err(e) => {
                    problems.push(format!("from: {e}"));
                    Start::Now
                }
            }
        }
        Some(other) => {
            problems.push(format!(
                "from: {} is not \"now\", epoch milliseconds or an RFC 3339 time",
                other.type_str()
            ));
            Start::Now
        }
    };
    let timeout = duration("timeout", raw.timeout.as_deref(), DEFAULT_TIMEOUT, problems);
    let max_backoff = duration(
        "max_backoff",
        raw.max_backoff.as_deref(),
        DEFAULT_MAX_BACKOFF,
        problems,
    );
    let Some(kind_name) = raw.kind.as_deref() else {
        problems.push("kind: missing; one of http, elasticsearch, splunk_hec, syslog, launchdarkly_integration".into());
        return None;
    };
    // Fields that only some kinds take.
    let allowed: &[&str] = match kind_name {
        "http" => &["url", "headers", "batch"],
        "elasticsearch" => &["url", "headers", "batch", "index"],
        "splunk_hec" => &["url", "headers", "batch", "index", "token"],
        "syslog" => &["address", "tls", "ca", "facility", "hostname"],
        "launchdarkly_integration" => &["manifest", "form_variables", "oauth", "policy"],
        other => {
            problems.push(format!(
                "kind: unknown kind {other:?}; one of http, elasticsearch, splunk_hec, syslog, launchdarkly_integration"
            ));
            return None;
        }
    };
    let given: [(&str, bool); 13] = [
        ("hostname", raw.hostname.is_some()),
        ("oauth", raw.oauth.is_some()),
        ("url", raw.url.is_some()),
        ("address", raw.address.is_some()),
        ("headers", !raw.headers.is_empty()),
        ("batch", raw.batch.is_some()),
        ("manifest", raw.manifest.is_some()),
        ("form_variables", raw.form_variables.is_some()),
        ("index", raw.index.is_some()),
        ("token", raw.token.is_some()),
        ("tls", raw.tls.is_some()),
        ("ca", raw.ca.is_some()),
        ("facility", raw.facility.is_some()),
    ];
    for (field, present) in given {
        if present && !allowed.contains(&field) {
            problems.push(format!("{field}: not a field of kind {kind_name}"));
        }
    }
    let kind = match kind_name {
        "http" => Kind::Http {
            url: url("url", raw.url.as_deref(), problems)?,
            headers,
        },
        "elasticsearch" => Kind::Elasticsearch {
            url: url("url", raw.url.as_deref(), problems)?,
            index: match raw.index {
                Some(i) if valid_es_index(&i) => i,
                Some(i) => {
                    problems.push(format!(
                        "index: {i:?} is not a valid Elasticsearch index name (lower case, no spaces or \\ / * ? \" < > | , #, not starting with - _ +)"
                    ));
                    return None;
                }
                None => {
                    problems.push("index: missing (the index events are created in)".into());
                    return None;
                }
            },
            headers,
        },
        "splunk_hec" => Kind::SplunkHec {
            url: url("url", raw.url.as_deref(), problems)?,
            token: match raw.token {
                Some(t)
                    if !t.is_empty() && HeaderValue::from_str(&format!("Splunk {t}")).is_ok() =>
                {
                    t
                }
                Some(_) => {
                    problems.push("token: empty or not a valid header value".into());
                    return None;
                }
                None => {
                    problems.push("token: missing (the HEC token; use \"${SPLUNK_HEC_TOKEN}\" to keep it out of the file)".into());
                    return None;
                }
            },
            index: raw.index,
            headers,
        },
        "syslog" => {
            let address = match raw.address {
                Some(a)
                    if a.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    }) =>
                {
                    a
                }
                Some(a) => {
                    problems.push(format!("address: {a:?} is not host:port"));
                    return None;
                }
                None => {
                    problems.push(
                        "address: missing (host:port of the syslog collector's TCP input)".into(),
                    );
                    return None;
                }
            };
            let tls = if raw.tls.unwrap_or(false) {
                let ca = raw.ca.as_deref().map(|c| resolve(dir, c));
                match super::syslog::TlsSettings::new(&address, ca.as_deref()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(e);
                        return None;
                    }
                }
            } else {
                if raw.ca.is_some() {
                    problems.push("ca: only with tls = true".into());
                }
                None
            };
            let facility = match raw.facility.as_deref().map(super::syslog::facility) {
                None => 16,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    problems.push(format!("facility: {e}"));
                    return None;
                }
            };
            let hostname = raw.hostname.unwrap_or_else(super::syslog::local_hostname);
            if hostname.is_empty()
                || hostname.len() > 255
                || !hostname.bytes().all(|b| (33..=126).contains(&b))
            {
                problems.push(format!(
                    "hostname: {hostname:?} must be 1 to 255 printable ASCII characters"
                ));
                return None;
            }
            Kind::Syslog {
                address,
                tls,
                facility,
                hostname,
            }
        }
        "launchdarkly_integration" => {
            let Some(manifest) = raw.manifest.as_deref() else {
                problems.push(
                    "manifest: missing (the path of an integration-framework manifest.json)".into(),
                );
                return None;
            };
            let path = resolve(dir, manifest);
            let form =
                serde_json::to_value(raw.form_variables.unwrap_or_default()).unwrap_or_default();
            let oauth = raw
                .oauth
                .map(|o| serde_json::to_value(o).unwrap_or_default());
            match Integration::load(&path, &form, oauth) {
                Ok(i) => Kind::LaunchDarkly(Arc::new(i)),
                Err(e) => {
                    problems.extend(e);
                    return None;
                }
            }
        }
        _ => return None,
    };
    if sources.iter().any(|s| *s != Source::LaunchDarkly) && matches!(kind, Kind::LaunchDarkly(_)) {
        problems.push(
            "sources: a launchdarkly_integration destination takes LaunchDarkly events only".into(),
        );
    }
    if !problems.is_empty() {
        return None;
    }
    let batch = match kind {
        Kind::Http { .. } => batch.unwrap_or(1),
        Kind::Syslog { .. } => batch.unwrap_or(DEFAULT_BATCH),
        Kind::LaunchDarkly(_) => 1,
        _ => batch.unwrap_or(DEFAULT_BATCH),
    };
    Some(Destination {
        name,
        kind,
        batch,
        sources,
        policy,
        start,
        timeout,
        max_backoff,
    })
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    }
}

fn valid_es_index(i: &str) -> bool {
    !i.is_empty()
        && i.len() <= 255
        && i != "."
        && i != ".."
        && !i.starts_with(['-', '_', '+'])
        && !i.chars().any(|c| {
            c.is_uppercase()
                || c.is_whitespace()
                || matches!(
                    c,
                    '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':'
                )
        })
}

fn url(field: &str, v: Option<&str>, problems: &mut Vec<String>) -> Option<reqwest::Url> {
    let Some(v) = v else {
        problems.push(format!("{field}: missing"));
        return None;
    };
    match reqwest::Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            problems.push(format!(
                "{field}: {} is not an http:// or https:// URL",
                crate::config::redact_url(v)
            ));
            None
        }
        Err(e) => {
            problems.push(format!(
                "{field}: {} is not a URL ({e})",
                crate::config::redact_url(v)
            ));
            None
        }
    }
}

fn headers(raw: &BTreeMap<String, String>, problems: &mut Vec<String>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in raw {
        let name = match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                problems.push(format!("headers.{k}: not a valid header name"));
                continue;
            }
        };
        match HeaderValue::from_str(v) {
            Ok(mut value) => {
                value.set_sensitive(true);
                out.insert(name, value);
            }
            Err(_) => problems.push(format!(
                "headers.{k}: not a valid header value (control characters?)"
            )),
        }
    }
    out
}

fn duration(
    field: &str,
    v: Option<&str>,
    default: Duration,
    problems: &mut Vec<String>,
) -> Duration {
    let Some(v) = v else {
        return default;
    };
    match crate::config::parse_duration(v) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            problems.push(format!(
                "{field}: {v:?} is not a duration such as \"500ms\", \"30s\" or \"5m\""
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn expands_only_named_variables() {
        assert_eq!(expand("a ${TOKEN} b", &env).unwrap(), "a s3cret b");
        assert_eq!(expand("$TOKEN {x}", &env).unwrap(), "$TOKEN {x}");
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(expand("${TOKEN", &env).is_err());
    }

    #[test]
    fn problems_name_destination_and_field() {
        let text = r#"
[[destinations]]
name = "siem"
kind = "elasticsearch"
url = "ftp://x"

[[destinations]]
name = "hec"
kind = "splunk_hec"
url = "http://127.0.0.1:8088"
token = "${MISSING}"

[[destinations]]
kind = "carrier_pigeon"
"#;
        let e = parse(text, Path::new("."), &env).unwrap_err().0;
        assert_eq!(
            e,
            vec![
                "destination \"siem\": url: ftp://x is not an http:// or https:// URL".to_owned(),
                "destination \"hec\": token: environment variable MISSING is not set".to_owned(),
                "destinations[2]: name: missing".to_owned(),
                "destinations[2]: kind: unknown kind \"carrier_pigeon\"; one of http, elasticsearch, splunk_hec, syslog, launchdarkly_integration".to_owned(),
            ]
        );
    }

    #[test]
    fn defaults() {
        let text = r#"
[[destinations]]
name = "logstash"
kind = "http"
url = "http://127.0.0.1:8080/"
headers = { Authorization = "Bearer ${TOKEN}" }
sources = ["tfc"]
from = "2026-11-01T00:00:00Z"
"#;
        let d = parse(text, Path::new("."), &env).unwrap();
        assert_eq!(d[0].batch, 1);
        assert_eq!(d[0].sources, vec![Source::Tfc]);
        assert_eq!(d[0].start, Start::At(1_793_491_200_000));
        match &d[0].kind {
            Kind::Http { headers, .. } => assert_eq!(headers["authorization"], "Bearer s3cret"),
            _ => unreachable!(),
        }
    }
}
