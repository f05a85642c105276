//! Render benchmark (issue 3): in-process renders per second of the framework's
//! `datadog/default.json.hbs` over `contexts/fw-flag-toggle.json` (JSON-escaped, with the
//! datadog preview form variables), template compiled once.
//!
//! Run: `cargo bench --bench render`. With `HANDLEBARS_JS=DIR` (a directory holding
//! `node_modules/handlebars`, e.g. after `npm install --prefix DIR handlebars@4.7.7`) it
//! also runs handlebars.js on the same template and data with node, in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use audithook::render::{self, Renderer};

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance");
    if !dir.join("index.json").exists() {
        eprintln!("SKIPPED: the conformance corpus ../shared/conformance is absent");
        return;
    }
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect("corpus file");
    let source = read("templates/datadog/default.json.hbs");
    let payload: serde_json::Value =
        serde_json::from_str(&read("contexts/fw-flag-toggle.json")).expect("json");
    let form: serde_json::Value =
        serde_json::from_str(&read("formVariables/datadog.preview.json")).expect("json");
    let expected = read("expected/datadog__default.json.hbs__fw-flag-toggle.out");

    let renderer = Renderer::default();
    let compiled = renderer.compile(&source).expect("compiles");
    let data = render::body_data(&payload, &form, true);
    assert_eq!(
        renderer.render(&compiled, &data).expect("renders"),
        expected
    );

    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // Warm up, then count renders for the measured period.
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
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("render benchmark: datadog/default.json.hbs over fw-flag-toggle.json, compiled once, {seconds} s");
    println!(
        "audithook (handlebars crate + LD semantics): {rate:>10.0} renders/s  ({:.2} us/render)",
        1e6 / rate
    );

    if let Ok(hbjs) = std::env::var("HANDLEBARS_JS") {
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
            src = dir
                .join("templates/datadog/default.json.hbs")
                .display()
                .to_string(),
            ctx = dir
                .join("contexts/fw-flag-toggle.json")
                .display()
                .to_string(),
            fv = dir
                .join("formVariables/datadog.preview.json")
                .display()
                .to_string(),
            exp = dir
                .join("expected/datadog__default.json.hbs__fw-flag-toggle.out")
                .display()
                .to_string(),
        );
        let out = std::process::Command::new("node")
            .arg("-e")
            .arg(script)
            .env("NODE_PATH", PathBuf::from(&hbjs).join("node_modules"))
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let js: f64 = String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
                println!("handlebars.js (node, strict):               {js:>10.0} renders/s  ({:.2} us/render)", 1e6 / js);
                println!("ratio audithook / handlebars.js: {:.2}", rate / js);
            }
            Ok(o) => eprintln!(
                "handlebars.js run failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run node: {e}"),
        }
    }
}
