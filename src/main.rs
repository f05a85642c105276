//! The `audithook` command line: thin; the work is in the library.

use clap::{Parser, Subcommand};

use audithook::config::Config;
use audithook::metrics::Metrics;
use audithook::store::Store;

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
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    audithook::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => migrate(cli.config).await,
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

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url, std::sync::Arc::new(Metrics::new())).await?;
    store.close().await;
    tracing::info!(database = %audithook::config::redact_url(&config.database_url), "migrations applied");
    Ok(())
}
