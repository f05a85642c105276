//! Configuration: every flag also reads an environment variable (DESIGN.md, "Contract").

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;

/// Service configuration shared by every subcommand. Its `Debug` shows no secret: the
/// database URL's password is masked and tokens print as `[REDACTED]`.
#[derive(Clone, clap::Args)]
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

    /// Connections each instance keeps to Postgres at most; with SQLite, read connections
    /// in use at once.
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

    /// PEM certificate chain: with `AUDITHOOK_TLS_KEY`, audithook serves HTTPS itself.
    #[arg(long, env = "AUDITHOOK_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `AUDITHOOK_TLS_CERT`.
    #[arg(long, env = "AUDITHOOK_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Exports (`/export.csv`, `/export.ndjson`) running at once, at most; more get `429`.
    #[arg(long, env = "AUDITHOOK_MAX_EXPORTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub max_exports: u32,

    /// How long an export waits for a client that reads nothing before it stops (and
    /// releases its read snapshot).
    #[arg(long, env = "AUDITHOOK_EXPORT_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub export_stall_timeout: std::time::Duration,

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

    /// Terraform Cloud organization token or audit-trail token; `serve` polls when set.
    #[arg(long, env = "TFC_API_TOKEN", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub tfc_api_token: Option<SecretString>,

    /// Terraform Cloud (or Terraform Enterprise) base URL.
    #[arg(
        long,
        env = "TFC_BASE_URL",
        default_value = "https://app.terraform.io",
        global = true
    )]
    pub tfc_base_url: String,

    /// Carbon Black Cloud API ID (of a key with READ on org.audits).
    #[arg(long, env = "CBC_API_ID", global = true)]
    pub cbc_api_id: Option<String>,

    /// Carbon Black Cloud API secret key.
    #[arg(long, env = "CBC_API_SECRET", value_parser = parse_secret, hide_env_values = true, global = true)]
    pub cbc_api_secret: Option<SecretString>,

    /// Carbon Black Cloud org key.
    #[arg(long, env = "CBC_ORG_KEY", global = true)]
    pub cbc_org_key: Option<String>,

    /// Carbon Black Cloud regional base URL (https://defense.conferdeploy.net and so on).
    #[arg(long, env = "CBC_BASE_URL", global = true)]
    pub cbc_base_url: Option<String>,

    /// How often `serve` polls Terraform Cloud and Carbon Black Cloud.
    #[arg(long, env = "AUDITHOOK_POLL_INTERVAL", default_value = "1m", value_parser = parse_duration, global = true)]
    pub poll_interval: std::time::Duration,

    /// The destinations file (TOML): where stored events are forwarded. Unset: no
    /// forwarding.
    #[arg(long, env = "AUDITHOOK_DESTINATIONS", global = true)]
    pub destinations: Option<PathBuf>,
}

impl Config {
    /// The destinations of `AUDITHOOK_DESTINATIONS` (none when unset), validated; the error
    /// names the file, the destination and the field of every problem.
    pub fn load_destinations(&self) -> Result<Vec<crate::forward::Destination>, String> {
        let Some(path) = &self.destinations else {
            return Ok(Vec::new());
        };
        crate::forward::config::load(path, &|name| std::env::var(name).ok())
            .map_err(|e| format!("AUDITHOOK_DESTINATIONS: {e}"))
    }

    /// The Terraform Cloud client, when TFC_API_TOKEN is set; an error naming the variable
    /// when a setting is malformed.
    pub fn tfc_client(&self) -> Result<Option<crate::sources::tfc::client::TfcClient>, String> {
        use crate::sources::tfc::client::{TfcClient, RATE};
        let Some(token) = &self.tfc_api_token else {
            return Ok(None);
        };
        if secrecy::ExposeSecret::expose_secret(token)
            .trim()
            .is_empty()
        {
            return Err("TFC_API_TOKEN is set but empty".into());
        }
        TfcClient::new(&self.tfc_base_url, token.clone(), RATE)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The Carbon Black Cloud client, when all four CBC_* variables are set; an error
    /// naming what is missing when only some are, or what is malformed.
    pub fn cbc_client(&self) -> Result<Option<crate::sources::cbc::client::CbcClient>, String> {
        use secrecy::ExposeSecret;
        let set = |v: Option<&str>| v.is_some_and(|s| !s.trim().is_empty());
        let vars = [
            ("CBC_API_ID", set(self.cbc_api_id.as_deref())),
            (
                "CBC_API_SECRET",
                set(self.cbc_api_secret.as_ref().map(|s| s.expose_secret())),
            ),
            ("CBC_ORG_KEY", set(self.cbc_org_key.as_deref())),
            ("CBC_BASE_URL", set(self.cbc_base_url.as_deref())),
        ];
        let missing: Vec<&str> = vars.iter().filter(|(_, s)| !s).map(|(n, _)| *n).collect();
        if missing.len() == vars.len() {
            return Ok(None);
        }
        if !missing.is_empty() {
            return Err(format!(
                "Carbon Black Cloud needs CBC_API_ID, CBC_API_SECRET, CBC_ORG_KEY and CBC_BASE_URL; {} not set",
                missing.join(", ")
            ));
        }
        let (Some(id), Some(secret), Some(org), Some(base)) = (
            &self.cbc_api_id,
            &self.cbc_api_secret,
            &self.cbc_org_key,
            &self.cbc_base_url,
        ) else {
            return Ok(None);
        };
        crate::sources::cbc::client::CbcClient::new(base.trim(), id.trim(), secret, org.trim())
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("hook_token", &secret(&self.hook_token))
            .field("hook_basic", &secret(&self.hook_basic))
            .field("hook_secret", &secret(&self.hook_secret))
            .field("api_token", &secret(&self.api_token))
            .field("templates", &self.templates)
            .field("timezone", &self.timezone)
            .field("max_body", &self.max_body)
            .field("request_timeout", &self.request_timeout)
            .field("render_timeout", &self.render_timeout)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("max_exports", &self.max_exports)
            .field("export_stall_timeout", &self.export_stall_timeout)
            .field("ld_api_token", &secret(&self.ld_api_token))
            .field("catchup_interval", &self.catchup_interval)
            .field("catchup_overlap", &self.catchup_overlap)
            .field("ld_base_url", &self.ld_base_url)
            .field("tfc_api_token", &secret(&self.tfc_api_token))
            .field("tfc_base_url", &self.tfc_base_url)
            .field("cbc_api_id", &self.cbc_api_id)
            .field("cbc_api_secret", &secret(&self.cbc_api_secret))
            .field("cbc_org_key", &self.cbc_org_key)
            .field("cbc_base_url", &self.cbc_base_url)
            .field("poll_interval", &self.poll_interval)
            .field("destinations", &self.destinations)
            .finish()
    }
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::sources::launchdarkly::parse_duration(s)
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
            tls_cert: None,
            tls_key: None,
            max_exports: 4,
            export_stall_timeout: std::time::Duration::from_secs(60),
            ld_api_token: None,
            catchup_interval: std::time::Duration::from_secs(600),
            catchup_overlap: std::time::Duration::from_secs(3600),
            ld_base_url: "https://app.launchdarkly.com".into(),
            tfc_api_token: None,
            tfc_base_url: "https://app.terraform.io".into(),
            cbc_api_id: None,
            cbc_api_secret: None,
            cbc_org_key: None,
            cbc_base_url: None,
            poll_interval: std::time::Duration::from_secs(60),
            destinations: None,
        }
    }
}

/// A URL split the way a person reading it would: the user part is everything between
/// `://` and the *last* `@`, so a password holding `/`, `?`, `#` or `@`, escaped or not,
/// stays inside it.
struct UrlParts<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    /// Host, path and query.
    rest: &'a str,
}

fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, after) = url.split_once("://")?;
    let (userinfo, rest) = match after.rfind('@') {
        Some(i) => (Some(&after[..i]), &after[i + 1..]),
        None => (None, after),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pw)) => (Some(user), Some(pw)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    Some(UrlParts {
        scheme,
        user,
        password,
        rest,
    })
}

/// Whether a query parameter's name is one that carries a secret.
fn is_secret_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("passfile")
}

/// The database URL with any password (in the user part or a `password=` parameter)
/// replaced by `***`, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(parts) = split_url(url) else {
        return url.to_owned();
    };
    let mut out = format!("{}://", parts.scheme);
    if let Some(user) = parts.user {
        out.push_str(user);
        if parts.password.is_some() {
            out.push_str(":***");
        }
        out.push('@');
    }
    match parts.rest.split_once('?') {
        Some((head, query)) => {
            out.push_str(head);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(parts.rest),
    }
    out
}

/// Every form in which `url`'s secrets could appear in a message (as written and
/// percent-decoded), longest first, for replacing them in error text.
pub fn url_secrets(url: &str) -> Vec<String> {
    let Some(parts) = split_url(url) else {
        return Vec::new();
    };
    let mut raw: Vec<&str> = parts.password.into_iter().collect();
    if let Some((_, query)) = parts.rest.split_once('?') {
        raw.extend(query.split('&').filter_map(|p| {
            p.split_once('=')
                .filter(|(k, _)| is_secret_param(k))
                .map(|(_, v)| v)
        }));
    }
    let mut out: Vec<String> = Vec::new();
    for r in raw.into_iter().filter(|r| !r.is_empty()) {
        out.push(r.to_owned());
        let decoded = percent_encoding::percent_decode_str(r)
            .decode_utf8_lossy()
            .into_owned();
        out.push(decoded.replace('+', " "));
        out.push(decoded);
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
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

    #[test]
    fn debug_shows_no_secret() {
        use secrecy::SecretString;
        let mut cfg = super::Config::with_database("postgres://app:pa/ss@db/audit");
        cfg.hook_token = Some(SecretString::from("hook-tok-123".to_owned()));
        cfg.api_token = Some(SecretString::from("api-tok-456".to_owned()));
        cfg.hook_basic = Some(SecretString::from("u:basic-789".to_owned()));
        cfg.hook_secret = Some(SecretString::from("hmac-000".to_owned()));
        cfg.ld_api_token = Some(SecretString::from("ld-tok-111".to_owned()));
        let shown = format!("{cfg:?} {cfg:#?}");
        for secret in [
            "pa/ss",
            "hook-tok-123",
            "api-tok-456",
            "basic-789",
            "hmac-000",
            "ld-tok-111",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres://app:***@db/audit"));
    }

    #[test]
    fn passwords_with_url_delimiters_are_redacted_whole() {
        for (url, shown) in [
            (
                "postgres://app:pa/ss@db/audit",
                "postgres://app:***@db/audit",
            ),
            (
                "postgres://app:pa?ss@db/audit",
                "postgres://app:***@db/audit",
            ),
            (
                "postgres://app:pa#s/s?x@db:5432/audit?sslmode=disable",
                "postgres://app:***@db:5432/audit?sslmode=disable",
            ),
            (
                "postgres://app:123/x@db/audit",
                "postgres://app:***@db/audit",
            ),
            (
                "postgres://app:p%2Fa%3Fs%40s@db/audit",
                "postgres://app:***@db/audit",
            ),
            (
                "postgres://app:p@ss@db/audit",
                "postgres://app:***@db/audit",
            ),
            (
                "postgres://db/audit?password=a/b?c&user=u",
                "postgres://db/audit?password=***&user=u",
            ),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
        }
        let secrets = super::url_secrets("postgres://app:p%2Fa%3Fs@db/audit?password=x%40y");
        for s in ["p%2Fa%3Fs", "p/a?s", "x%40y", "x@y"] {
            assert!(secrets.iter().any(|x| x == s), "{s} in {secrets:?}");
        }
    }
}
