//! The `audithook` command line: thin; the work is in the library.

use clap::{Parser, Subcommand};

use audithook::config::Config;
use audithook::metrics::Metrics;
use audithook::store::Store;

/// mimalloc instead of glibc's malloc: ingest allocates and frees small buffers on every
/// request across worker threads, and glibc's arenas were about a sixth of the serve
/// process's CPU under load (README, "Where Postgres ingest goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "audithook",
    version,
    about = "Keeps a complete, searchable, exportable copy of your audit log"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: hook endpoint, read API, health and metrics.
    Serve,
    /// Apply migrations and exit.
    Migrate,
    /// Render a template to stdout, like the framework's `npm run preview`.
    Preview(PreviewArgs),
    /// Pull a source's history into the store (resumable): LaunchDarkly (default),
    /// Terraform Cloud or Carbon Black Cloud.
    Backfill(BackfillArgs),
    /// Write the archive as CSV or NDJSON, oldest first, streaming.
    Export(ExportArgs),
    /// Work with the destinations file (AUDITHOOK_DESTINATIONS).
    #[command(subcommand)]
    Destinations(DestinationsCommand),
}

#[derive(Subcommand)]
enum DestinationsCommand {
    /// Validate the destinations file without sending anything; render one sample request
    /// per LaunchDarkly-integration destination.
    Check,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Ndjson,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: ExportFormat,
    /// CSV columns, comma-separated (see the README for the list).
    #[arg(long)]
    columns: Option<String>,
    /// CSV preset: `ld-audit` (the LaunchDarkly audit CSV script's layout).
    #[arg(long)]
    preset: Option<String>,
    /// Only entries after T (epoch ms or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    after: Option<i64>,
    /// Only entries before T (epoch ms or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    before: Option<i64>,
    /// Text search.
    #[arg(long)]
    q: Option<String>,
    /// Source: `launchdarkly`, `tfc` or `cbc` (repeatable; default every source).
    #[arg(long, value_enum)]
    source: Vec<SourceArg>,
    /// Actor, as the envelope's `actor` (repeatable).
    #[arg(long)]
    actor: Vec<String>,
    /// Resource specifier (`*` globs).
    #[arg(long)]
    spec: Option<String>,
    /// Event kind (repeatable).
    #[arg(long)]
    kind: Vec<String>,
    /// Access action (repeatable).
    #[arg(long)]
    action: Vec<String>,
    /// Member id or email (repeatable).
    #[arg(long)]
    member: Vec<String>,
    /// Write here instead of stdout (with a progress bar on a terminal).
    #[arg(short = 'o', long)]
    output: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SourceArg {
    Launchdarkly,
    Tfc,
    Cbc,
}

#[derive(clap::Args)]
struct BackfillArgs {
    /// Which source: `launchdarkly` (LD_API_TOKEN), `tfc` (TFC_API_TOKEN) or `cbc`
    /// (CBC_API_ID, CBC_API_SECRET, CBC_ORG_KEY, CBC_BASE_URL).
    #[arg(long, value_enum, default_value = "launchdarkly")]
    source: SourceArg,
    /// Only entries after T (epoch ms or RFC 3339). Default: everything LaunchDarkly has;
    /// Terraform Cloud's 14 days; Carbon Black Cloud's last 30 days.
    #[arg(long, value_parser = parse_time)]
    after: Option<i64>,
    /// Only entries before T (epoch ms or RFC 3339); default: now.
    #[arg(long, value_parser = parse_time)]
    before: Option<i64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// JSON array of LaunchDarkly policy statements: keep only entries they allow.
    #[arg(long)]
    policy: Option<std::path::PathBuf>,
}

fn parse_time(s: &str) -> Result<i64, String> {
    audithook::sources::launchdarkly::parse_time(s)
}

#[derive(clap::Args)]
struct PreviewArgs {
    /// Template file (its name decides JSON escaping: `.json`/`.json.hbs`), or the name of
    /// a template in AUDITHOOK_TEMPLATES (`flag`, `default`, ...).
    template: String,
    /// JSON file with the template context (used as is).
    #[arg(long, conflicts_with = "event", required_unless_present = "event")]
    context: Option<std::path::PathBuf>,
    /// `_id` of a stored event: renders its derived template context.
    #[arg(long)]
    event: Option<String>,
    /// JSON file with the form variables (`formVariables` in the template).
    #[arg(long)]
    form_variables: Option<std::path::PathBuf>,
    /// Time zone of `formatWithOffset ... "simple"` (default AUDITHOOK_TIMEZONE).
    #[arg(long)]
    tz: Option<String>,
    /// Render a URL or header template: form variables at top level, `oauth`, `context`.
    #[arg(long)]
    endpoint: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    audithook::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => migrate(cli.config).await,
        Command::Preview(args) => preview(cli.config, args).await,
        Command::Backfill(args) => backfill(cli.config, args).await,
        Command::Export(args) => export(cli.config, args).await,
        Command::Destinations(DestinationsCommand::Check) => destinations_check(&cli.config),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audithook: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = audithook::Application::build(config).await?;
    app.run_until_stopped().await
}

/// Validates AUDITHOOK_DESTINATIONS and prints what each destination would do.
fn destinations_check(config: &Config) -> anyhow::Result<()> {
    let Some(path) = &config.destinations else {
        anyhow::bail!(
            "AUDITHOOK_DESTINATIONS is not set: give the destinations file (--destinations FILE)"
        );
    };
    let dests = config.load_destinations().map_err(anyhow::Error::msg)?;
    let mut failed = false;
    println!("{}: {} destination(s)", path.display(), dests.len());
    for d in &dests {
        let sources = if d.sources.is_empty() {
            "every source".to_owned()
        } else {
            d.sources
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let start = match d.start {
            audithook::forward::Start::Now => "from now".to_owned(),
            audithook::forward::Start::At(t) => {
                format!("from {}", audithook::event::rfc3339_ms(t))
            }
        };
        println!(
            "ok  {}  {} -> {}  (batch {}, {sources}, {start}{})",
            d.name,
            d.kind.name(),
            d.kind.target(),
            d.batch,
            if d.policy.is_some() { ", policy" } else { "" }
        );
        if let Some(sample) = audithook::forward::sample(d, &config.ld_base_url) {
            match sample {
                Ok(text) => {
                    println!("    sample request (secrets hidden):");
                    for line in text.lines() {
                        println!("    | {line}");
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!(
                        "destination {:?}: rendering a sample event failed: {e}",
                        d.name
                    );
                }
            }
        }
    }
    if failed {
        anyhow::bail!("{}: a template failed on the sample event", path.display());
    }
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = Store::open_with(
        &config.database_url,
        config.database_max_connections,
        std::sync::Arc::new(Metrics::new()),
    )
    .await?;
    store.close().await;
    tracing::info!(database = %audithook::config::redact_url(&config.database_url), "migrations applied");
    Ok(())
}

fn read_json_file(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))
}

async fn preview(mut config: Config, args: PreviewArgs) -> anyhow::Result<()> {
    use audithook::render;
    use std::io::Write;
    if let Some(tz) = &args.tz {
        config.timezone = tz.clone();
    }
    let renderer = audithook::load_templates(&config)?;
    let path = std::path::Path::new(&args.template);
    let inline;
    let compiled = if path.is_file() {
        let source = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut c = renderer
            .compile(&source)
            .map_err(|e| located(&args.template, e))?;
        c.json_escape = render::json_escape_wanted(&args.template);
        inline = c;
        &inline
    } else {
        renderer.get(&args.template).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no such file, nor a template of that name ({})",
                args.template,
                renderer.names().join(", ")
            )
        })?
    };
    let payload = match (&args.context, &args.event) {
        (Some(file), _) => read_json_file(file)?,
        (None, Some(id)) => {
            let store = Store::open_with(
                &config.database_url,
                config.database_max_connections,
                std::sync::Arc::new(Metrics::new()),
            )
            .await?;
            let row = store
                .get(audithook::event::Source::LaunchDarkly, id)
                .await?;
            store.close().await;
            let row = row.ok_or_else(|| anyhow::anyhow!("no stored event with _id {id:?}"))?;
            let entry = audithook::event::stored_entry(&row.raw, &row.id, row.date);
            render::context::template_context(&entry, &config.ld_base_url)
        }
        (None, None) => anyhow::bail!("give --context FILE or --event ID"),
    };
    let form_variables = match &args.form_variables {
        Some(f) => read_json_file(f)?,
        None => serde_json::json!({}),
    };
    let data = if args.endpoint {
        render::endpoint_data(&form_variables, &serde_json::Value::Null, &payload)
    } else {
        render::body_data(&payload, &form_variables, compiled.json_escape)
    };
    let text = renderer
        .render(compiled, &data)
        .map_err(|e| located(&args.template, e))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn located(template: &str, e: audithook::render::RenderFailure) -> anyhow::Error {
    match (e.line, e.column) {
        (Some(l), Some(c)) => anyhow::anyhow!("{template}:{l}:{c}: {}", e.message),
        _ => anyhow::anyhow!("{template}: {}", e.message),
    }
}

fn source_of(s: SourceArg) -> audithook::event::Source {
    use audithook::event::Source;
    match s {
        SourceArg::Launchdarkly => Source::LaunchDarkly,
        SourceArg::Tfc => Source::Tfc,
        SourceArg::Cbc => Source::Cbc,
    }
}

/// A progress bar on a terminal; otherwise a hidden one whose position a log line reports
/// every 10 seconds (`steps` names what it counts).
fn progress_bar(steps: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(steps);
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        return bar;
    }
    let bar = indicatif::ProgressBar::hidden();
    let watched = bar.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            if watched.is_finished() {
                return;
            }
            tracing::info!(
                done = watched.position(),
                of = watched.length().unwrap_or(0),
                "backfill progress: {} of {} {steps}",
                watched.position(),
                watched.length().unwrap_or(0)
            );
        }
    });
    bar
}

/// `backfill --source tfc|cbc`.
async fn backfill_source(config: Config, args: BackfillArgs) -> anyhow::Result<()> {
    use audithook::sources::{cbc, tfc};
    let now = chrono::Utc::now().timestamp_millis();
    if let (Some(a), Some(b)) = (args.after, args.before) {
        anyhow::ensure!(a < b, "--after must be earlier than --before");
    }
    anyhow::ensure!(
        args.policy.is_none(),
        "--policy applies to LaunchDarkly's entries only"
    );
    let concurrency = usize::from(args.concurrency);
    anyhow::ensure!(
        args.source != SourceArg::Tfc || args.before.is_none(),
        "Terraform Cloud's API reads only forward from a time: --before does not apply to --source tfc"
    );
    let store = || async {
        Store::open_with(
            &config.database_url,
            config.database_max_connections,
            std::sync::Arc::new(Metrics::new()),
        )
        .await
    };
    let bar = progress_bar(if args.source == SourceArg::Tfc {
        "pages"
    } else {
        "time chunks"
    });
    let (store, result) = match args.source {
        SourceArg::Tfc => {
            let client = config.tfc_client().map_err(anyhow::Error::msg)?.ok_or_else(|| {
                anyhow::anyhow!("TFC_API_TOKEN is not set: create an organization token (or the audit-trail token) in Terraform Cloud's organization settings and export TFC_API_TOKEN")
            })?;
            let store = store().await?;
            let after = args.after.unwrap_or_else(|| tfc::oldest_since(now));
            let result = tfc::run(&store, &client, after, concurrency, Some(&bar))
                .await
                .map(|s| (s.resumed, s.to_string()));
            (store, result)
        }
        _ => {
            let client = config.cbc_client().map_err(anyhow::Error::msg)?.ok_or_else(|| {
                anyhow::anyhow!("Carbon Black Cloud is not configured: set CBC_API_ID, CBC_API_SECRET, CBC_ORG_KEY and CBC_BASE_URL (an API key with READ on org.audits)")
            })?;
            let store = store().await?;
            let after = args.after.unwrap_or(now - 30 * 24 * 3600 * 1000);
            let before = args.before.unwrap_or(now);
            let result = cbc::run(&store, &client, after, before, concurrency, Some(&bar))
                .await
                .map(|s| (s.resumed, s.to_string()));
            (store, result)
        }
    };
    bar.finish_and_clear();
    store.close().await;
    let (resumed, summary) = result?;
    let verb = if resumed {
        "resumed and finished"
    } else {
        "finished"
    };
    eprintln!("backfill {verb}: {summary}");
    Ok(())
}

async fn backfill(config: Config, args: BackfillArgs) -> anyhow::Result<()> {
    use audithook::sources::launchdarkly::{self, client::LdClient, policy::Policy, Options};
    if args.source != SourceArg::Launchdarkly {
        return backfill_source(config, args).await;
    }
    let token = config.ld_api_token.clone().ok_or_else(|| {
        anyhow::anyhow!("LD_API_TOKEN is not set: create a LaunchDarkly API access token with read access to the audit log and export LD_API_TOKEN")
    })?;
    let policy = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(Policy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    if let (Some(a), Some(b)) = (args.after, args.before) {
        anyhow::ensure!(a < b, "--after must be earlier than --before");
    }
    let client = LdClient::new(&config.ld_base_url, token)?;
    let opts = Options {
        after: args.after,
        before: args.before,
        concurrency: usize::from(args.concurrency),
        policy,
        persist: true,
        progress_bar: true,
    };
    // The first page is requested while the store opens and migrates; a store that cannot
    // open is reported at once, without waiting for LaunchDarkly.
    let first = launchdarkly::first_request(&client, &opts);
    let open = Store::open_with(
        &config.database_url,
        config.database_max_connections,
        std::sync::Arc::new(Metrics::new()),
    );
    let (store, opening) = {
        tokio::pin!(first, open);
        tokio::select! {
            store = &mut open => (store?, first.await),
            opening = &mut first => (open.await?, opening),
        }
    };
    let result = launchdarkly::run_opened(&store, &client, opts, Some(opening)).await;
    store.close().await;
    let summary = result?;
    let verb = if summary.resumed {
        "resumed and finished"
    } else {
        "finished"
    };
    eprintln!("backfill {verb}: {summary}");
    Ok(())
}

async fn export(config: Config, args: ExportArgs) -> anyhow::Result<()> {
    use audithook::export::{Encoder, Format};
    use std::io::{IsTerminal, Write};
    let format = match args.format {
        ExportFormat::Csv => Format::csv(args.columns.as_deref(), args.preset.as_deref())
            .map_err(anyhow::Error::msg)?,
        ExportFormat::Ndjson => {
            anyhow::ensure!(
                args.columns.is_none() && args.preset.is_none(),
                "--columns and --preset apply to CSV only"
            );
            Format::Ndjson
        }
    };
    let filter = audithook::store::Filter {
        after: args.after,
        before: args.before,
        q: args.q,
        spec: args.spec,
        members: args.member,
        sources: args
            .source
            .iter()
            .map(|s| source_of(*s).as_str().to_owned())
            .collect(),
        actors: args.actor,
        kinds: args.kind,
        actions: args.action,
        ..Default::default()
    };
    let store = Store::open_with(
        &config.database_url,
        config.database_max_connections,
        std::sync::Arc::new(Metrics::new()),
    )
    .await?;
    let bar = match &args.output {
        Some(_) if std::io::stderr().is_terminal() => {
            let total = store.count(&filter).await?;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} events ({per_sec}, ETA {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(bar)
        }
        _ => None,
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut rows = store.export(filter, format.needs_raw());
    let mut enc = Encoder::new(format);
    let mut events = 0u64;
    while let Some(batch) = rows.recv().await {
        for row in batch? {
            enc.push(&row).map_err(anyhow::Error::msg)?;
            events += 1;
        }
        if enc.pending() >= 64 * 1024 {
            out.write_all(&enc.take().map_err(anyhow::Error::msg)?)?;
            if let Some(bar) = &bar {
                bar.set_position(events);
            }
        }
    }
    out.write_all(&enc.take().map_err(anyhow::Error::msg)?)?;
    out.flush()?;
    drop(out);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    store.close().await;
    if let Some(path) = &args.output {
        eprintln!(
            "exported {events} events ({} rows) to {}",
            enc.rows,
            path.display()
        );
    }
    Ok(())
}
