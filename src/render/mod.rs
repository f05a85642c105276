//! Template rendering identical to LaunchDarkly's integration framework (`npm run preview`,
//! handlebars.js 4.7.7, strict mode).
//!
//! Templates are parsed by the `handlebars` crate (grammar, whitespace control, standalone
//! lines, error positions) and evaluated by [`eval`] with handlebars.js semantics: values
//! print, test and iterate as they do in JavaScript (see `conformance/README.md` of the
//! shared corpus). Helpers: `if unless each with lookup`, `equal equalWithElse pathEncode
//! queryEncode basicAuthHeaderValue formatWithOffset`.

pub mod context;
pub mod eval;
pub mod js;

use std::collections::HashMap;
use std::path::Path as FsPath;

use handlebars::Template;
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest template source accepted.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Largest rendered output.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of blocks (`{{#if}}`, `{{#each}}`, ...) a template may have.
pub const MAX_BLOCK_DEPTH: usize = 64;
/// Deepest nesting of subexpressions (`(helper (helper ...))`) a template may have.
pub const MAX_SUBEXPR_DEPTH: usize = 32;

pub use eval::Budget;

/// Checks how deep blocks and subexpressions nest before the parser (which recurses once a
/// level) sees the template, so that no input can exhaust a thread's stack. Comments are
/// skipped; anything else that looks like an opening counts, which can only overcount.
fn check_nesting(source: &str) -> Result<(), RenderFailure> {
    let b = source.as_bytes();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let mut blocks = 0usize;
    let advance = |i: &mut usize, line: &mut usize, col: &mut usize, to: usize| {
        let to = to.min(b.len());
        for &c in &b[*i..to] {
            if c == b'\n' {
                *line += 1;
                *col = 1;
            } else {
                *col += 1;
            }
        }
        *i = to;
    };
    let too_deep = |what: &str, limit: usize, line: usize, col: usize| RenderFailure {
        stage: "parse",
        message: format!("{what} nest more than {limit} deep (the limit)"),
        line: Some(line),
        column: Some(col),
    };
    while i < b.len() {
        if !b[i..].starts_with(b"{{") {
            let to = i + 1;
            advance(&mut i, &mut line, &mut col, to);
            continue;
        }
        let (open_line, open_col) = (line, col);
        // `{{{{raw}}}}` opens a raw block, closed by `{{{{/raw}}}}`.
        let raw_open = b[i..].starts_with(b"{{{{") && b.get(i + 4) != Some(&b'/');
        let mut j = i + 2;
        while j < b.len() && matches!(b[j], b'{' | b'~' | b' ' | b'\t' | b'\n' | b'\r') {
            j += 1;
        }
        // Comments may hold anything.
        if b[j..].starts_with(b"!--") {
            let end = source[j..].find("--}}").map_or(b.len(), |e| j + e + 4);
            advance(&mut i, &mut line, &mut col, end);
            continue;
        }
        if b[j..].starts_with(b"!") {
            let end = source[j..].find("}}").map_or(b.len(), |e| j + e + 2);
            advance(&mut i, &mut line, &mut col, end);
            continue;
        }
        match b.get(j) {
            _ if raw_open => {
                blocks += 1;
                if blocks > MAX_BLOCK_DEPTH {
                    return Err(too_deep("blocks", MAX_BLOCK_DEPTH, open_line, open_col));
                }
            }
            Some(b'#') => {
                blocks += 1;
                if blocks > MAX_BLOCK_DEPTH {
                    return Err(too_deep("blocks", MAX_BLOCK_DEPTH, open_line, open_col));
                }
            }
            Some(b'/') => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        // Subexpressions within this mustache.
        let end = source[j..].find("}}").map_or(b.len(), |e| j + e);
        let mut parens = 0usize;
        for &c in &b[j..end] {
            match c {
                b'(' => {
                    parens += 1;
                    if parens > MAX_SUBEXPR_DEPTH {
                        return Err(too_deep(
                            "subexpressions",
                            MAX_SUBEXPR_DEPTH,
                            open_line,
                            open_col,
                        ));
                    }
                }
                b')' => parens = parens.saturating_sub(1),
                _ => {}
            }
        }
        let to = end.max(i + 2);
        advance(&mut i, &mut line, &mut col, to);
    }
    Ok(())
}

/// Why a template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct RenderFailure {
    /// `parse` (the template is malformed) or `render` (it failed on this data).
    pub stage: &'static str,
    pub message: String,
    /// 1-based line and column in the template, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl RenderFailure {
    fn parse(e: &handlebars::TemplateError) -> Self {
        let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
        Self {
            stage: "parse",
            message: e.reason().to_string(),
            line,
            column,
        }
    }

    fn eval(stage: &'static str, e: eval::EvalError) -> Self {
        let (line, column) = e.pos.map_or((None, None), |(l, c)| (Some(l), Some(c)));
        Self {
            stage,
            message: e.message,
            line,
            column,
        }
    }

    fn other(stage: &'static str, message: impl Into<String>) -> Self {
        Self {
            stage,
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// A compiled template.
pub struct Compiled {
    nodes: Vec<eval::Node>,
    /// Whether string values are JSON-escaped first (the file is `.json`/`.json.hbs`).
    pub json_escape: bool,
}

/// audithook's own templates (`templates/`), used when `AUDITHOOK_TEMPLATES` is absent.
pub const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    (
        "default.json.hbs",
        include_str!("../../templates/default.json.hbs"),
    ),
    (
        "environment.json.hbs",
        include_str!("../../templates/environment.json.hbs"),
    ),
    (
        "flag.json.hbs",
        include_str!("../../templates/flag.json.hbs"),
    ),
    (
        "member.json.hbs",
        include_str!("../../templates/member.json.hbs"),
    ),
    (
        "project.json.hbs",
        include_str!("../../templates/project.json.hbs"),
    ),
    (
        "validation.json.hbs",
        include_str!("../../templates/validation.json.hbs"),
    ),
];

/// The template name for an event kind, as LaunchDarkly chooses: the kind's own template
/// when there is one, else `default`.
pub fn template_for_kind<'a>(renderer: &Renderer, kind: &'a str) -> &'a str {
    if matches!(kind, "flag" | "project" | "environment" | "member") && renderer.has(kind) {
        kind
    } else {
        "default"
    }
}

/// The renderer: named templates compiled once, and the time zone of `simple` dates.
pub struct Renderer {
    tz: chrono_tz::Tz,
    templates: HashMap<String, Compiled>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("tz", &self.tz)
            .field("templates", &self.names())
            .finish()
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new(chrono_tz::UTC)
    }
}

impl Renderer {
    /// A renderer whose `formatWithOffset ... "simple"` uses `tz`.
    pub fn new(tz: chrono_tz::Tz) -> Self {
        Self {
            tz,
            templates: HashMap::new(),
        }
    }

    /// A renderer holding audithook's built-in templates.
    pub fn with_builtin(tz: chrono_tz::Tz) -> Self {
        let mut r = Self::new(tz);
        for (file, source) in BUILTIN_TEMPLATES {
            // The built-in templates are tested; a failure here is a build defect.
            r.register(file, source)
                .unwrap_or_else(|e| panic!("built-in template {file}: {e}"));
        }
        r
    }

    /// Parses and lowers `source`.
    pub fn compile(&self, source: &str) -> Result<Compiled, RenderFailure> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(RenderFailure::other(
                "parse",
                format!(
                    "template is {} bytes; the limit is {MAX_TEMPLATE_BYTES}",
                    source.len()
                ),
            ));
        }
        check_nesting(source)?;
        let template = Template::compile(source).map_err(|e| RenderFailure::parse(&e))?;
        let nodes = eval::compile(&template).map_err(|e| RenderFailure::eval("parse", e))?;
        Ok(Compiled {
            nodes,
            json_escape: false,
        })
    }

    /// Compiles and keeps a template named by its file name up to the first `.`
    /// (`flag.json.hbs` is `flag`); the file name decides JSON escaping.
    pub fn register(&mut self, file_name: &str, source: &str) -> Result<String, RenderFailure> {
        let name = file_name.split('.').next().unwrap_or(file_name).to_owned();
        let mut compiled = self.compile(source)?;
        compiled.json_escape = json_escape_wanted(file_name);
        self.templates.insert(name.clone(), compiled);
        Ok(name)
    }

    /// Whether a named template is kept.
    pub fn has(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// A kept template.
    pub fn get(&self, name: &str) -> Option<&Compiled> {
        self.templates.get(name)
    }

    /// Names of the kept templates.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.templates.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Renders a compiled template over prepared data (see [`body_data`], [`endpoint_data`]).
    pub fn render(&self, compiled: &Compiled, data: &Value) -> Result<String, RenderFailure> {
        eval::render(&compiled.nodes, data, self.tz, MAX_OUTPUT_BYTES)
            .map_err(|e| RenderFailure::eval("render", e))
    }

    /// [`Renderer::render`] within a time budget and a stop flag.
    pub fn render_within(
        &self,
        compiled: &Compiled,
        data: &Value,
        budget: &Budget,
    ) -> Result<String, RenderFailure> {
        eval::render_within(&compiled.nodes, data, self.tz, MAX_OUTPUT_BYTES, budget)
            .map_err(|e| RenderFailure::eval("render", e))
    }

    /// Renders a stored entry with the template for its kind (the event's template
    /// context, JSON-escaped for `.json` templates). Returns the template name and output.
    pub fn render_entry(
        &self,
        entry: &Value,
        base_url: &str,
    ) -> Result<(String, String), RenderFailure> {
        let kind = entry.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = template_for_kind(self, kind).to_owned();
        let compiled = self
            .templates
            .get(&name)
            .ok_or_else(|| RenderFailure::other("render", format!("no template named {name:?}")))?;
        let ctx = context::template_context(entry, base_url);
        let data = body_data(&ctx, &Value::Object(Map::new()), compiled.json_escape);
        Ok((name, self.render(compiled, &data)?))
    }

    /// Loads every `*.hbs` file of `dir` (see [`Renderer::register`]), replacing built-in
    /// templates of the same name. A file that does not parse is an error naming the file,
    /// line and column.
    pub fn load_dir(&mut self, dir: &FsPath) -> anyhow::Result<Vec<String>> {
        let mut loaded = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            anyhow::anyhow!("cannot read templates directory {}: {e}", dir.display())
        })?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if !file.ends_with(".hbs") {
                continue;
            }
            let source = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read template {}: {e}", path.display()))?;
            let name = self
                .register(file, &source)
                .map_err(|e| match (e.line, e.column) {
                    (Some(l), Some(c)) => {
                        anyhow::anyhow!("template {}:{l}:{c}: {}", path.display(), e.message)
                    }
                    _ => anyhow::anyhow!("template {}: {}", path.display(), e.message),
                })?;
            loaded.push(name);
        }
        Ok(loaded)
    }
}

/// Whether a template file's strings are JSON-escaped first: its name ends in `.json` or
/// `.json.hbs` (case-insensitive), as in the framework.
pub fn json_escape_wanted(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    lower.ends_with(".json") || lower.ends_with(".json.hbs")
}

/// Replaces every string value (not keys) with its JSON encoding minus the quotes.
pub fn json_escape_strings(v: &mut Value) {
    match v {
        Value::String(s) => {
            let encoded = serde_json::to_string(s.as_str()).unwrap_or_default();
            *s = encoded[1..encoded.len() - 1].to_owned();
        }
        Value::Array(items) => items.iter_mut().for_each(json_escape_strings),
        Value::Object(map) => map.values_mut().for_each(json_escape_strings),
        _ => {}
    }
}

/// Render data for a body template: the payload (JSON-escaped when `json_escape`) with
/// `formVariables` set at the top level, unescaped.
pub fn body_data(payload: &Value, form_variables: &Value, json_escape: bool) -> Value {
    let mut data = payload.clone();
    if json_escape {
        json_escape_strings(&mut data);
    }
    if let Value::Object(map) = &mut data {
        map.insert("formVariables".into(), form_variables.clone());
    }
    data
}

/// Render data for an endpoint URL or header template: the form variables at the top
/// level, `oauth`, and `context` (the raw payload).
pub fn endpoint_data(form_variables: &Value, oauth: &Value, payload: &Value) -> Value {
    let mut map = match form_variables {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    map.insert("oauth".into(), oauth.clone());
    map.insert("context".into(), payload.clone());
    Value::Object(map)
}

/// Parses a time-zone name such as `UTC` or `Europe/Paris`.
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("unknown time zone {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_json_templates_escape() {
        let r = Renderer::with_builtin(chrono_tz::UTC);
        assert!(r.get("flag").unwrap().json_escape);
        let data = body_data(
            &serde_json::json!({"name": "a\"b"}),
            &serde_json::json!({}),
            true,
        );
        assert_eq!(data["name"], "a\\\"b");
        let c = r.compile("{{{name}}}").unwrap();
        assert_eq!(r.render(&c, &data).unwrap(), "a\\\"b");
    }
}
