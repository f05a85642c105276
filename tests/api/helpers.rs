//! `spawn_app()`: the real service on 127.0.0.1:0 with a fresh SQLite file, or with a fresh
//! Postgres database when `AUDITHOOK_TEST_BACKEND=postgres` (then the API suites run against
//! Postgres; `.ci/run` runs them that way too).

use audithook::config::Config;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const HOOK_TOKEN: &str = "hook-token-for-tests";
pub const API_TOKEN: &str = "read-token-for-tests";
pub const HOOK_BASIC: &str = "ld:basic-pass";
pub const HOOK_SECRET: &str = "signing-secret";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The database URL (`sqlite://...` or `postgres://...`).
    pub url: String,
    pub dir: std::sync::Arc<tempfile::TempDir>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The configuration tests use: every credential set, the SQLite database at `db`.
pub fn test_config(db: &std::path::Path) -> Config {
    config_for(&format!("sqlite://{}", db.display()))
}

/// The configuration tests use, on the backend the suites run against: a fresh Postgres
/// database with `AUDITHOOK_TEST_BACKEND=postgres` (left to the throwaway server, as
/// `spawn_app` does), else a SQLite file in `dir`.
pub async fn config_for_backend(dir: &std::path::Path) -> Config {
    if TestDb::postgres_backend() {
        let db = TestDb::for_backend().await;
        return config_for(&db.url);
    }
    test_config(&dir.join("audithook.db"))
}

/// A one-column text query on the database at `url`, read without the app.
pub fn query_strings(url: &str, sql: &str) -> Vec<String> {
    match audithook::store::sqlite::path_from_url(url) {
        Some(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect()
        }
        None => pg_query(url, sql, None),
    }
}

/// The configuration tests use, with the database at `url`.
pub fn config_for(url: &str) -> Config {
    let mut cfg = Config::with_database(url);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.hook_token = Some(SecretString::from(HOOK_TOKEN.to_owned()));
    cfg.api_token = Some(SecretString::from(API_TOKEN.to_owned()));
    cfg.hook_basic = Some(SecretString::from(HOOK_BASIC.to_owned()));
    cfg.hook_secret = Some(SecretString::from(HOOK_SECRET.to_owned()));
    cfg
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("AUDITHOOK_TEST_BACKEND").is_ok_and(|b| b == "postgres") {
        // The database is left to the throwaway server (`.ci/postgres` clears old ones).
        let db = TestDb::postgres()
            .await
            .expect("AUDITHOOK_TEST_BACKEND=postgres needs AUDITHOOK_TEST_POSTGRES_URL");
        return spawn_with(config_for(&db.url), std::sync::Arc::new(dir)).await;
    }
    let db = dir.path().join("audithook.db");
    spawn_with(test_config(&db), std::sync::Arc::new(dir)).await
}

pub async fn spawn_with(cfg: Config, dir: std::sync::Arc<tempfile::TempDir>) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        audithook::telemetry::init();
    }
    let url = cfg.database_url.clone();
    let app = audithook::Application::build(cfg)
        .await
        .expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        client: reqwest::Client::new(),
        url,
        dir,
        shutdown,
        handle: Some(handle),
    }
}

impl TestApp {
    /// Stops the server as SIGTERM would and waits for it.
    pub async fn stop(mut self) -> std::sync::Arc<tempfile::TempDir> {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        self.dir.clone()
    }

    pub fn hook(&self) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/hooks/launchdarkly", self.base))
            .header("content-type", "application/json")
    }

    /// Posts `body` with the bearer hook token.
    pub async fn post_event(&self, body: impl Into<String>) -> reqwest::Response {
        self.hook()
            .bearer_auth(HOOK_TOKEN)
            .body(body.into())
            .send()
            .await
            .unwrap()
    }

    /// GET on a read route with the bare read token, as LaunchDarkly clients send it.
    /// Every `200` of `/api/v2/auditlog[/{id}]` is checked against LaunchDarkly's
    /// `AuditLogEntryListingRep` schema on the way (the shape its API clients require).
    pub async fn read(&self, path_and_query: &str) -> reqwest::Response {
        let resp = self
            .client
            .get(format!("{}{}", self.base, path_and_query))
            .header("authorization", API_TOKEN)
            .send()
            .await
            .unwrap();
        if !path_and_query.starts_with("/api/v2/auditlog") || resp.status() != 200 {
            return resp;
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        if let Some(validator) = listing_rep_validator() {
            let body: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
            let items: Vec<&Value> = match body.get("items") {
                Some(Value::Array(items)) => items.iter().collect(),
                _ => vec![&body],
            };
            for item in items {
                let errors: Vec<String> = validator
                    .iter_errors(item)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{path_and_query}: item {} is not a valid AuditLogEntryListingRep: {errors:?}",
                    item["_id"]
                );
            }
        }
        let mut builder = http::Response::builder().status(status);
        for (k, v) in &headers {
            builder = builder.header(k, v);
        }
        reqwest::Response::from(builder.body(bytes).unwrap())
    }

    /// The `_id`s of the items a read route answers, in order.
    pub async fn item_ids(&self, path_and_query: &str) -> Vec<String> {
        let r = self.read(path_and_query).await;
        assert_eq!(r.status(), 200, "{path_and_query}");
        let page: Value = r.json().await.unwrap();
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the metric series whose line starts with `series ` (name and labels).
    pub async fn metric_value(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{series} is not exported: {text}"))
    }

    /// Every stored `_id` in arrival order, read straight from the database.
    pub fn stored_ids(&self) -> Vec<String> {
        stored_ids_at(&self.url)
    }

    /// The stored raw body of one event, read straight from the database.
    pub fn stored_raw(&self, id: &str) -> Option<String> {
        stored_raw_at(&self.url, id)
    }
}

/// LaunchDarkly's `AuditLogEntryListingRep` schema (with the schemas it references), from
/// the OpenAPI document in `../shared/reference/ld-rest-api-get-audit-log-entries.md`.
pub fn listing_rep_validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: std::sync::OnceLock<Option<jsonschema::Validator>> =
        std::sync::OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/reference/ld-rest-api-get-audit-log-entries.md");
            let Ok(doc) = std::fs::read_to_string(&path) else {
                assert!(
                    !crate::skips::under_ci(),
                    "{} is absent; under CI it must be there",
                    path.display()
                );
                return None;
            };
            let yaml = doc
                .split("```yaml")
                .nth(1)
                .and_then(|rest| rest.split("```").next())
                .expect("the reference holds a yaml block");
            let spec: Value = serde_yaml::from_str(yaml).expect("the OpenAPI document parses");
            let schema = json!({
                "$ref": "#/components/schemas/AuditLogEntryListingRep",
                "components": spec["components"],
            });
            Some(jsonschema::draft202012::new(&schema).expect("the schema compiles"))
        })
        .as_ref()
}

/// Every `_id` stored in the database at `url`, in arrival order, read without the app.
pub fn stored_ids_at(url: &str) -> Vec<String> {
    match audithook::store::sqlite::path_from_url(url) {
        Some(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mut stmt = conn.prepare("SELECT id FROM events ORDER BY seq").unwrap();
            let ids = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            ids.map(Result::unwrap).collect()
        }
        None => pg_query(url, "SELECT id FROM events ORDER BY seq", None),
    }
}

/// Runs one statement on the database at `url`, without the app; returns the rows changed.
pub fn exec_sql(url: &str, sql: &str) -> u64 {
    match audithook::store::sqlite::path_from_url(url) {
        Some(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn.execute(sql, []).unwrap() as u64
        }
        None => {
            let (url, sql) = (url.to_owned(), sql.to_owned());
            on_own_runtime(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query(&sql)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            })
        }
    }
}

/// Runs a script of statements on the database at `url`, without the app.
pub fn exec_batch(url: &str, sql: &str) {
    match audithook::store::sqlite::path_from_url(url) {
        Some(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch(sql).unwrap();
        }
        None => {
            let (url, sql) = (url.to_owned(), sql.to_owned());
            on_own_runtime(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
                pool.close().await;
            })
        }
    }
}

/// The raw body of one event stored in the database at `url`, read without the app.
pub fn stored_raw_at(url: &str, id: &str) -> Option<String> {
    match audithook::store::sqlite::path_from_url(url) {
        Some(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.query_row("SELECT raw FROM events WHERE id = ?1", [id], |r| r.get(0))
                .ok()
        }
        None => pg_query(url, "SELECT raw FROM events WHERE id = $1", Some(id)).pop(),
    }
}

/// The `_id`s of the next batch (at most `limit`) queue `consumer` hands out at `base`.
pub async fn take_queue(
    client: &reqwest::Client,
    base: &str,
    consumer: &str,
    limit: usize,
) -> Vec<String> {
    let page: Value = client
        .get(format!("{base}/queue/{consumer}?limit={limit}"))
        .header("authorization", API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A default hook payload, shaped as LaunchDarkly's documentation shows it.
pub fn hook_payload(id: &str, ms: i64) -> Value {
    json!({
        "_links": {
            "canonical": {"href": "/api/v2/flags/always-snippet/example-test", "type": "application/json"},
            "parent": {"href": "/api/v2/auditlog", "type": "application/json"},
            "self": {"href": format!("/api/v2/auditlog/{id}"), "type": "application/json"},
            "site": {"href": "/always-snippet/production/features/example-test", "type": "text/html"}
        },
        "_id": id,
        "_accountId": "",
        "timestamp": {"milliseconds": ms, "seconds": ms / 1000, "rfc3339": "2020-02-04T01:02:14Z", "simple": "2020-02-04 01:02:14"},
        "kind": "flag",
        "name": "Example test",
        "description": "",
        "shortDescription": "",
        "comment": "This is just a test",
        "member": {
            "_links": {"parent": {"href": "/api/v2/members", "type": "application/json"}},
            "_id": "569f514183f2164430000002",
            "email": "sandy@example.com",
            "firstName": "Sandy",
            "lastName": "Smith"
        },
        "titleVerb": "",
        "markdownTitle": "[Sandy Smith](mailto:sandy@example.com) turned on the flag [Example test](https://app.launchdarkly.com/example-project/production/features/example-test) in `Production`",
        "title": "Sandy Smith turned on the flag Example test in 'Production'",
        "target": {"_links": null, "name": ""}
    })
}

/// A REST `AuditLogEntryListingRep`.
pub fn rest_entry(id: &str, ms: i64, name: &str, resource: &str, member: &str) -> Value {
    json!({
        "_links": {"self": {"href": format!("/api/v2/auditlog/{id}"), "type": "application/json"}},
        "_id": id,
        "_accountId": "acct1",
        "date": ms,
        "accesses": [{"action": "updateOn", "resource": resource}],
        "kind": "flag",
        "name": name,
        "description": format!("changed {name}"),
        "shortDescription": "",
        "member": {"_id": member, "email": format!("{member}@example.com"), "firstName": "M", "lastName": member},
        "titleVerb": "turned on the flag",
        "title": format!("M {member} turned on the flag {name}"),
        "target": {"name": name, "resources": [resource]}
    })
}

/// A fresh, empty database for one test: a SQLite file in a temporary directory, or a new
/// database on the Postgres server named by `AUDITHOOK_TEST_POSTGRES_URL`.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// For Postgres: the admin URL and the database's name, to drop it afterwards.
    pg: Option<(String, String)>,
}

/// Why Postgres tests are skipped, or `None` when they run. With `AUDITHOOK_REQUIRE_POSTGRES`
/// set (as CI sets it), a missing server fails the test instead.
pub fn postgres_url() -> Option<String> {
    match std::env::var("AUDITHOOK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("AUDITHOOK_REQUIRE_POSTGRES").is_none(),
                "AUDITHOOK_REQUIRE_POSTGRES is set but AUDITHOOK_TEST_POSTGRES_URL is not"
            );
            crate::skips::skip(
                "AUDITHOOK_TEST_POSTGRES_URL is not set (eval \"$(.ci/postgres)\" starts a server and sets it)",
            );
            None
        }
    }
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            url: format!("sqlite://{}", dir.path().join("audithook.db").display()),
            _dir: Some(dir),
            pg: None,
        }
    }

    /// Whether the suites run against Postgres (`AUDITHOOK_TEST_BACKEND=postgres`).
    pub fn postgres_backend() -> bool {
        std::env::var("AUDITHOOK_TEST_BACKEND").is_ok_and(|b| b == "postgres")
    }

    /// A fresh database on the backend the suites run against: Postgres with
    /// `AUDITHOOK_TEST_BACKEND=postgres` (its server is then required), else SQLite.
    pub async fn for_backend() -> TestDb {
        if Self::postgres_backend() {
            Self::postgres()
                .await
                .expect("AUDITHOOK_TEST_BACKEND=postgres needs AUDITHOOK_TEST_POSTGRES_URL")
        } else {
            Self::sqlite()
        }
    }

    /// A new database on the test Postgres server, or `None` (with a message) without one.
    pub async fn postgres() -> Option<TestDb> {
        let admin = postgres_url()?;
        let (name, url) = crate::pg::fresh_database(&admin, "audithook_t").await;
        Some(TestDb {
            url,
            _dir: None,
            pg: Some((admin, name)),
        })
    }

    /// Opens the store (migrating it), as `serve` does.
    pub async fn open(&self) -> audithook::store::Store {
        audithook::store::Store::open(
            &self.url,
            std::sync::Arc::new(audithook::metrics::Metrics::new()),
        )
        .await
        .expect("store opens")
    }

    /// Opens the store with explicit options.
    pub async fn open_with(
        &self,
        options: &audithook::store::StoreOptions,
    ) -> audithook::store::Store {
        audithook::store::Store::open_with_options(
            &self.url,
            options,
            std::sync::Arc::new(audithook::metrics::Metrics::new()),
        )
        .await
        .expect("store opens")
    }

    /// Drops a Postgres database (SQLite's directory goes with the value).
    pub async fn remove(self) {
        if let Some((admin, name)) = &self.pg {
            crate::pg::drop_database(admin, name).await;
        }
    }
}

/// Runs `fut` to completion on a thread and runtime of its own, so sync test code can call
/// async database clients whether or not a runtime is already running on this thread.
fn on_own_runtime<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    })
    .join()
    .unwrap()
}

/// Runs a one-column text query on Postgres from sync code.
fn pg_query(url: &str, sql: &str, arg: Option<&str>) -> Vec<String> {
    let (url, sql, arg) = (url.to_owned(), sql.to_owned(), arg.map(str::to_owned));
    on_own_runtime(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        if let Some(a) = &arg {
            q = q.bind(a);
        }
        q.fetch_all(&mut conn).await.unwrap()
    })
}
