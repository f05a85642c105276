//! The template conformance corpus (`../shared/conformance/index.json`): every `ok` entry
//! must render the exact expected bytes, every `error` entry must fail. Entries marked
//! `quirks` may instead be listed in `tests/conformance-divergences.txt` with a reason.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use audithook::render::{self, Renderer};
use serde_json::Value;

pub fn corpus_dir() -> Option<PathBuf> {
    crate::skips::shared_dir("conformance", "index.json")
}

/// The corpus's portable error class (`conformance/README.md`) of one of our messages.
fn error_class(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if m.contains("not defined (strict mode)") {
        Some("StrictMissingField")
    } else if m.contains("cannot read properties of") {
        Some("LookupOnNullOrUndefined")
    } else if m.contains("cannot use 'in' operator") {
        Some("LookupOnNonObject")
    } else if m.contains("invalid time value") || m.contains("invalid date") {
        Some("InvalidDate")
    } else {
        None
    }
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders one corpus entry the way the corpus README describes.
pub fn render_entry(
    dir: &std::path::Path,
    entry: &Value,
    renderers: &mut HashMap<String, Renderer>,
) -> Result<String, String> {
    let tz = entry["tz"].as_str().unwrap_or("UTC").to_owned();
    let renderer = renderers
        .entry(tz.clone())
        .or_insert_with(|| Renderer::new(render::parse_tz(&tz).unwrap()));
    let source = std::fs::read_to_string(dir.join(entry["template"].as_str().unwrap())).unwrap();
    let payload = read_json(dir.join(entry["context"].as_str().unwrap()));
    let form_variables = read_json(dir.join(entry["formVariables"].as_str().unwrap()));
    let data = match entry["mode"].as_str() {
        Some("endpoint") => render::endpoint_data(&form_variables, &entry["oauth"], &payload),
        _ => render::body_data(
            &payload,
            &form_variables,
            entry["jsonEscape"].as_bool().unwrap_or(false),
        ),
    };
    let compiled = renderer.compile(&source).map_err(|e| e.message)?;
    renderer.render(&compiled, &data).map_err(|e| e.message)
}

#[test]
fn conformance_corpus() {
    let Some(dir) = corpus_dir() else { return };
    let index = read_json(dir.join("index.json"));
    let divergences_file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance-divergences.txt");
    let listed: BTreeMap<String, String> = std::fs::read_to_string(&divergences_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('\t') {
            Some((id, why)) => (id.trim().to_owned(), why.trim().to_owned()),
            None => (l.trim().to_owned(), String::new()),
        })
        .collect();
    let mut renderers = HashMap::new();
    let (mut ok, mut quirk_ok, mut diverged, mut errors_ok) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for entry in index.as_array().unwrap() {
        let id = entry["id"].as_str().unwrap();
        let quirk = entry.get("quirks").is_some();
        let result = render_entry(&dir, entry, &mut renderers);
        let passed = match entry["kind"].as_str() {
            Some("ok") => {
                let expected =
                    std::fs::read(dir.join(entry["expected"].as_str().unwrap())).unwrap();
                match &result {
                    Ok(out) if out.as_bytes() == expected.as_slice() => true,
                    Ok(out) => {
                        if !quirk || !listed.contains_key(id) {
                            failures.push(format!(
                                "{id}: output differs\n--- expected\n{}\n--- got\n{out}",
                                String::from_utf8_lossy(&expected)
                            ));
                        }
                        false
                    }
                    Err(e) => {
                        if !quirk || !listed.contains_key(id) {
                            failures.push(format!("{id}: failed: {e}"));
                        }
                        false
                    }
                }
            }
            _ => match &result {
                Err(e) if error_class(e) == entry["error"]["class"].as_str() => {
                    errors_ok += 1;
                    true
                }
                Err(e) => {
                    if !quirk || !listed.contains_key(id) {
                        failures.push(format!(
                            "{id}: failed as {:?}, the corpus says {}: {e}",
                            error_class(e),
                            entry["error"]["class"]
                        ));
                    }
                    false
                }
                Ok(out) => {
                    if !quirk || !listed.contains_key(id) {
                        failures.push(format!(
                            "{id}: should fail ({}) but rendered:\n{out}",
                            entry["error"]["class"]
                        ));
                    }
                    false
                }
            },
        };
        match (passed, quirk) {
            (true, false) => ok += 1,
            (true, true) => {
                quirk_ok += 1;
                if listed.contains_key(id) {
                    failures.push(format!(
                        "{id}: listed as a divergence but now matches; remove it from the list"
                    ));
                }
            }
            (false, true) if listed.contains_key(id) => diverged += 1,
            _ => {}
        }
    }
    let total = index.as_array().unwrap().len();
    println!(
        "conformance: {total} entries: {} exact or failing as expected ({errors_ok} of them expected errors), \
         {quirk_ok} quirk entries matched, {diverged} known divergences, {} failures",
        ok + quirk_ok,
        failures.len()
    );
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(15).collect();
        panic!(
            "{} conformance failures; first ones:\n\n{}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}
