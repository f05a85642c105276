//! Tests that cannot run here say so where a person sees it, and under CI nothing skips.
//!
//! [`skip`] records why a test did not run: under `CI=true` (or with
//! `AUDITHOOK_REQUIRE_POSTGRES` for a Postgres skip) it fails the test instead. Otherwise it
//! writes the reason straight to the terminal (past the test harness's output capture) and,
//! when the test binary exits, one closing line counts the skipped tests by reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, Once};

static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Whether this is a CI run, where every test must run.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

extern "C" fn summary() {
    let skipped = SKIPPED.lock().map(|s| s.clone()).unwrap_or_default();
    if skipped.is_empty() {
        return;
    }
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, why) in &skipped {
        *by_reason.entry(why.as_str()).or_default() += 1;
    }
    let reasons: Vec<String> = by_reason
        .iter()
        .map(|(why, n)| format!("{n} because {why}"))
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED {} tests (they passed without running): {}",
        skipped.len(),
        reasons.join("; ")
    );
}

/// Records that the current test does not run, and why; fails it under CI.
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    assert!(
        !under_ci(),
        "{test} cannot run: {why}; under CI=true every test must run"
    );
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(summary);
    });
    // Written to the stream itself, not through `eprintln!`, which the harness captures.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    if let Ok(mut s) = SKIPPED.lock() {
        s.push((test, why.to_owned()));
    }
}

/// `../shared/DIR` beside the project, or `None` (recorded as a skip) when it is absent.
pub fn shared_dir(sub: &str, marker: &str) -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(sub);
    if dir.join(marker).exists() {
        Some(dir)
    } else {
        skip(&format!("../shared/{sub}/{marker} is absent"));
        None
    }
}
