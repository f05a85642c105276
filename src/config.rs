//! Configuration: every flag also reads an environment variable (DESIGN.md, "Contract").

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;

/// Service configuration shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "AUDITHOOK_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// `sqlite://PATH` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "AUDITHOOK_DATABASE_URL",
        default_value = "sqlite://audithook.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Connections each instance keeps to Postgres at most (ignored for SQLite).
    #[arg(
        long,
        env = "AUDITHOOK_DATABASE_MAX_CONNECTIONS",
        default_value_t = crate::store::Store::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(2..=1000),
        global = true
    )]
    pub database_max_connections: u32,

    /// Bearer token the hook must present; generated and kept in the store when unset.
    #[arg(long, env = "AUDITHOOK_HOOK_TOKEN", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub hook_token: Option<SecretString>,

    /// `user:password` accepted as HTTP Basic on the hook.
    #[arg(long, env = "AUDITHOOK_HOOK_BASIC", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub hook_basic: Option<SecretString>,

    /// HMAC-SHA256 secret for `X-LD-Signature` on the hook.
    #[arg(long, env = "AUDITHOOK_HOOK_SECRET", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub hook_secret: Option<SecretString>,

    /// Token for every read route; generated and kept in the store when unset.
    #[arg(long, env = "AUDITHOOK_API_TOKEN", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub api_token: Option<SecretString>,

    /// Directory of `*.hbs` templates.
    #[arg(
        long,
        env = "AUDITHOOK_TEMPLATES",
        default_value = "templates",
        global = true
    )]
    pub templates: PathBuf,

    /// Time zone of `formatWithOffset ... "simple"` in templates (IANA name).
    #[arg(long, env = "AUDITHOOK_TIMEZONE", default_value = "UTC", global = true)]
    pub timezone: String,

    /// Largest hook body in bytes.
    #[arg(
        long,
        env = "AUDITHOOK_MAX_BODY",
        default_value_t = 1_048_576,
        global = true
    )]
    pub max_body: usize,

    /// How long a request may take before it is answered `408` (until the first byte of a
    /// streamed answer).
    #[arg(long, env = "AUDITHOOK_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub request_timeout: std::time::Duration,

    /// How long one `/preview` render may run before it is stopped with a `422`.
    #[arg(long, env = "AUDITHOOK_RENDER_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub render_timeout: std::time::Duration,

    /// LaunchDarkly API access token for backfill and catch-up.
    #[arg(long, env = "LD_API_TOKEN", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub ld_api_token: Option<SecretString>,

    /// How often `serve` pulls recent entries from LaunchDarkly's API (with LD_API_TOKEN).
    #[arg(long, env = "AUDITHOOK_CATCHUP_INTERVAL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub catchup_interval: std::time::Duration,

    /// How far before the newest stored entry catch-up starts.
    #[arg(long, env = "AUDITHOOK_CATCHUP_OVERLAP", default_value = "1h", value_parser = parse_duration, global = true)]
    pub catchup_overlap: std::time::Duration,

    /// LaunchDarkly API base URL.
    #[arg(
        long,
        env = "LD_BASE_URL",
        default_value = "https://app.launchdarkly.com",
        global = true
    )]
    pub ld_base_url: String,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::backfill::parse_duration(s)
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

impl Config {
    /// A configuration with every default and the given database URL (used by tests and tools).
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: database_url.into(),
            database_max_connections: crate::store::Store::DEFAULT_MAX_CONNECTIONS,
            hook_token: None,
            hook_basic: None,
            hook_secret: None,
            api_token: None,
            templates: PathBuf::from("templates"),
            timezone: "UTC".into(),
            max_body: 1_048_576,
            request_timeout: std::time::Duration::from_secs(30),
            render_timeout: std::time::Duration::from_secs(10),
            ld_api_token: None,
            catchup_interval: std::time::Duration::from_secs(600),
            catchup_overlap: std::time::Duration::from_secs(3600),
            ld_base_url: "https://app.launchdarkly.com".into(),
        }
    }
}

/// The database URL with any password (in the user part or a `password=` parameter)
/// replaced by `***`, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, tail) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let mut out = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => format!("{scheme}://{before_query}"),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/audit"),
            "postgres://app:***@db:5432/audit"
        );
        assert_eq!(
            redact_url("postgres://app@db/audit"),
            "postgres://app@db/audit"
        );
        assert_eq!(redact_url("sqlite://audithook.db"), "sqlite://audithook.db");
        assert_eq!(
            redact_url("postgres://db/audit?sslmode=require&password=p%40ss&user=app"),
            "postgres://db/audit?sslmode=require&password=***&user=app"
        );
    }
}
