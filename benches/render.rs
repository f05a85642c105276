//! Render benchmark: in-process renders per second of three framework templates over
//! `contexts/fw-flag-toggle.json` (JSON-escaped, with each integration's preview form
//! variables), each template compiled before timing: `datadog/default.json.hbs`,
//! `splunk/template.json.hbs` and `elastic/template.json.hbs`.
//!
//! Run: `cargo bench --bench render`. With `HANDLEBARS_JS=DIR` (a directory holding
//! `node_modules/handlebars`, e.g. after `npm install --prefix DIR handlebars@4.7.7`) it
//! also runs handlebars.js on the same templates and data with node, in the same run, and
//! prints each template's ratio. The two sides take turns for `BENCH_ROUNDS` rounds (default
//! 3) of `BENCH_SECONDS` each (default 2); the table gives each side's median and the
//! ratio of the medians, then each round's ratio.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audithook::render::{self, Renderer};

/// The allocator the `audithook` binary ships with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (template, form variables, expected output) under the corpus directory.
const CASES: &[(&str, &str, &str)] = &[
    (
        "templates/datadog/default.json.hbs",
        "formVariables/datadog.preview.json",
        "expected/datadog__default.json.hbs__fw-flag-toggle.out",
    ),
    (
        "templates/splunk/template.json.hbs",
        "formVariables/splunk.preview.json",
        "expected/splunk__template.json.hbs__fw-flag-toggle.out",
    ),
    (
        "templates/elastic/template.json.hbs",
        "formVariables/elastic.preview.json",
        "expected/elastic__template.json.hbs__fw-flag-toggle.out",
    ),
];
const CONTEXT: &str = "contexts/fw-flag-toggle.json";

fn audithook_rate(dir: &Path, case: &(&str, &str, &str), seconds: u64) -> f64 {
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect("corpus file");
    let payload: serde_json::Value = serde_json::from_str(&read(CONTEXT)).expect("json");
    let form: serde_json::Value = serde_json::from_str(&read(case.1)).expect("json");
    let renderer = Renderer::default();
    let compiled = renderer.compile(&read(case.0)).expect("compiles");
    let data = render::body_data(&payload, &form, true);
    assert_eq!(
        renderer.render(&compiled, &data).expect("renders"),
        read(case.2),
        "{}",
        case.0
    );
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        std::hint::black_box(renderer.render(&compiled, &data).expect("renders"));
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..100 {
            std::hint::black_box(renderer.render(&compiled, &data).expect("renders"));
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn handlebars_js_rate(
    hbjs: &str,
    dir: &Path,
    case: &(&str, &str, &str),
    seconds: u64,
) -> Option<f64> {
    let path = |p: &str| dir.join(p).display().to_string();
    let script = format!(
        r#"const H=require('handlebars');const fs=require('fs');
const esc=v=>typeof v==='string'?JSON.stringify(v).slice(1,-1):Array.isArray(v)?v.map(esc):(v&&typeof v==='object')?Object.fromEntries(Object.entries(v).map(([k,x])=>[k,esc(x)])):v;
H.registerHelper('equal',function(a,b,o){{return a===b?o.fn(this):o.inverse(this)}});
const t=H.compile(fs.readFileSync({src:?},'utf8'),{{strict:true}});
const ctx=esc(JSON.parse(fs.readFileSync({ctx:?},'utf8')));ctx.formVariables=JSON.parse(fs.readFileSync({fv:?},'utf8'));
if(t(ctx)!==fs.readFileSync({exp:?},'utf8'))throw new Error('output differs');
let s=Date.now();while(Date.now()-s<500)t(ctx);
let n=0;s=process.hrtime.bigint();const end=s+BigInt({seconds})*1000000000n;
while(process.hrtime.bigint()<end){{for(let i=0;i<100;i++)t(ctx);n+=100}}
console.log(n/Number(process.hrtime.bigint()-s)*1e9);"#,
        src = path(case.0),
        ctx = path(CONTEXT),
        fv = path(case.1),
        exp = path(case.2),
    );
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .env("NODE_PATH", PathBuf::from(hbjs).join("node_modules"))
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().parse().ok(),
        Ok(o) => {
            eprintln!(
                "handlebars.js run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("cannot run node: {e}");
            None
        }
    }
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance");
    if !dir.join("index.json").exists() {
        eprintln!("SKIPPED: the conformance corpus ../shared/conformance is absent");
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    // The two sides take turns, round after round, and each reports its median: a slow
    // spell of this shared machine then falls on both sides instead of on one.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let hbjs = std::env::var("HANDLEBARS_JS").ok();
    println!(
        "render benchmark over {CONTEXT}, each template compiled before timing, {rounds} rounds of {seconds} s each side, medians"
    );
    println!("| template | audithook renders/s | us/render | handlebars.js renders/s | ratio | ratio by round |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for case in CASES {
        let (mut ours, mut theirs, mut by_round) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let o = audithook_rate(&dir, case, seconds);
            ours.push(o);
            if let Some(js) = hbjs
                .as_deref()
                .and_then(|h| handlebars_js_rate(h, &dir, case, seconds))
            {
                theirs.push(js);
                by_round.push(format!("{:.2}", o / js));
            }
        }
        let ours = median(&mut ours);
        let name = case.0.trim_start_matches("templates/");
        if theirs.len() == rounds {
            let js = median(&mut theirs);
            println!(
                "| {name} | {ours:.0} | {:.2} | {js:.0} | **{:.2}** | {} |",
                1e6 / ours,
                ours / js,
                by_round.join(", ")
            );
        } else {
            println!("| {name} | {ours:.0} | {:.2} | (not run) | | |", 1e6 / ours);
        }
    }
}
