//! audithook: keeps a complete, searchable, exportable copy of an organisation's audit log.
//!
//! [`Application::build`] opens the store, resolves credentials and binds the listener;
//! [`app`] builds the router (tests call it directly).

pub mod auth;
pub mod config;
pub mod error;
pub mod event;
pub mod metrics;
pub mod routes;
pub mod store;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{HookAuth, ReadAuth};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels};
use crate::store::Store;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub hook_auth: Arc<HookAuth>,
    pub read_auth: Arc<ReadAuth>,
    pub renderer: Arc<render::Renderer>,
    /// Cancelled when the service starts stopping: long work (a preview render) ends then.
    pub shutdown: CancellationToken,
    /// Permits for exports running at once (`AUDITHOOK_MAX_EXPORTS`).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// The configured destinations (`AUDITHOOK_DESTINATIONS`).
    pub forwarding: Arc<forward::Forwarding>,
}

/// The router with every route and layer.
/// The current time in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn app(state: AppState) -> Router {
    let read = Router::new()
        .merge(routes::auditlog::router())
        .merge(routes::events::router())
        .merge(routes::preview::router())
        .merge(routes::export::router())
        .merge(routes::queue::router())
        .merge(routes::destinations::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_read_token,
        ));
    Router::new()
        .merge(routes::hooks::router())
        .merge(read)
        .merge(ui::router())
        .merge(routes::health::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::client(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {}", req.method(), req.uri().path()),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), record_latency))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
            tracing::info_span!("request", method = %req.method(), route = route.as_deref().unwrap_or("-"))
        }))
        .with_state(state)
}

async fn require_read_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    // A person signed in to the UI follows links to read routes (the CSV and NDJSON of a
    // filtered view) with the session cookie; only for reads, and the cookie is SameSite.
    let ui_read =
        req.method() == axum::http::Method::GET && ui::session_of(&state, req.headers()).is_some();
    if !ui_read && !state.read_auth.check(presented) {
        return ApiError::unauthorized(
            "send the read token (AUDITHOOK_API_TOKEN) as `Authorization: Bearer <token>` or `Authorization: <token>`",
        )
        .into_response();
    }
    next.run(req).await
}

/// Answers `408` with the JSON error when a request's handler has not answered within
/// `AUDITHOOK_REQUEST_TIMEOUT` (a body still arriving, a slow store). A streamed export is
/// timed until its first byte; after that it runs as long as the client reads.
async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.cfg.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::client(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {}s (AUDITHOOK_REQUEST_TIMEOUT)",
                limit.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// A method as a metric label: one of a fixed set.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn record_latency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state
        .metrics
        .request_duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    response
}

/// A configured token's digest, or the digest of one generated on first start and kept in
/// the store. A generated token is printed once, when it is made.
async fn resolve_token(
    store: &Store,
    configured: Option<&secrecy::SecretString>,
    key: &str,
    variable: &str,
    prefix: &str,
) -> anyhow::Result<auth::SecretDigest> {
    if let Some(token) = configured {
        return Ok(auth::digest(token.expose_secret().as_bytes()));
    }
    let setting = format!("{key}_sha256");
    if let Some(kept) = store.setting(&setting).await? {
        return decode_digest(&kept);
    }
    let token = auth::generate_token(prefix);
    let fresh = hex::encode(auth::digest(token.as_bytes()));
    let kept = store.setting_insert_if_absent(&setting, &fresh).await?;
    if kept == fresh {
        // Printed once, at generation; the store keeps only its digest.
        tracing::warn!(
            "generated {variable}={token} (shown only this once; the store keeps its SHA-256). \
             Set {variable} to use your own."
        );
    }
    decode_digest(&kept)
}

fn decode_digest(hex_digest: &str) -> anyhow::Result<auth::SecretDigest> {
    let bytes = hex::decode(hex_digest)?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("stored token digest has the wrong length"))
}

/// Builds the shared state: opens the store and resolves every credential.
pub async fn build_state(cfg: Config) -> anyhow::Result<AppState> {
    let metrics = Arc::new(Metrics::new());
    let store = Store::open_with(
        &cfg.database_url,
        cfg.database_max_connections,
        metrics.clone(),
    )
    .await?;
    tracing::info!(
        backend = store.backend(),
        database = %config::redact_url(&cfg.database_url),
        "store open"
    );
    let hook_token = resolve_token(
        &store,
        cfg.hook_token.as_ref(),
        "hook_token",
        "AUDITHOOK_HOOK_TOKEN",
        "ahk_",
    )
    .await?;
    let api_token = resolve_token(
        &store,
        cfg.api_token.as_ref(),
        "api_token",
        "AUDITHOOK_API_TOKEN",
        "ahr_",
    )
    .await?;
    if hook_token == api_token {
        anyhow::bail!("AUDITHOOK_HOOK_TOKEN and AUDITHOOK_API_TOKEN must differ: the token LaunchDarkly holds must not read");
    }
    let renderer = load_templates(&cfg)?;
    let destinations = cfg.load_destinations().map_err(anyhow::Error::msg)?;
    let cfg_max_exports = cfg.max_exports;
    let hook_auth = HookAuth::new(
        hook_token,
        cfg.hook_basic.as_ref(),
        cfg.hook_secret.as_ref(),
    );
    Ok(AppState {
        store,
        cfg: Arc::new(cfg),
        metrics,
        hook_auth: Arc::new(hook_auth),
        read_auth: Arc::new(ReadAuth { token: api_token }),
        renderer: Arc::new(renderer),
        shutdown: CancellationToken::new(),
        exports: Arc::new(tokio::sync::Semaphore::new(cfg_max_exports as usize)),
        forwarding: Arc::new(forward::Forwarding::new(destinations)),
    })
}

/// The built-in templates, overridden by those in `cfg.templates` when that directory
/// exists. A template that does not parse stops start-up with its file, line and column.
pub fn load_templates(cfg: &Config) -> anyhow::Result<render::Renderer> {
    let tz =
        render::parse_tz(&cfg.timezone).map_err(|e| anyhow::anyhow!("AUDITHOOK_TIMEZONE: {e}"))?;
    let mut renderer = render::Renderer::with_builtin(tz);
    if cfg.templates.is_dir() {
        let loaded = renderer.load_dir(&cfg.templates)?;
        tracing::info!(dir = %cfg.templates.display(), templates = ?loaded, "loaded templates");
    } else {
        tracing::info!(dir = %cfg.templates.display(), "templates directory not found; using the built-in templates");
    }
    Ok(renderer)
}

/// A built, bound service, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    /// Set when the service serves HTTPS itself.
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    /// Sources polled (those with credentials).
    tfc: Option<sources::tfc::client::TfcClient>,
    cbc: Option<sources::cbc::client::CbcClient>,
}

/// The TLS configuration from `AUDITHOOK_TLS_CERT` and `AUDITHOOK_TLS_KEY`: both or neither.
async fn load_tls(cfg: &Config) -> anyhow::Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "AUDITHOOK_TLS_CERT={} / AUDITHOOK_TLS_KEY={}: cannot load the certificate and key: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
            Ok(Some(tls))
        }
        (Some(_), None) => anyhow::bail!(
            "AUDITHOOK_TLS_CERT is set but AUDITHOOK_TLS_KEY is not: set both to serve HTTPS"
        ),
        (None, Some(_)) => anyhow::bail!(
            "AUDITHOOK_TLS_KEY is set but AUDITHOOK_TLS_CERT is not: set both to serve HTTPS"
        ),
    }
}

impl Application {
    /// Opens the store, resolves credentials and binds `cfg.listen` (port 0 picks a free port).
    pub async fn build(cfg: Config) -> anyhow::Result<Self> {
        let listen = cfg.listen;
        let tls = load_tls(&cfg).await?;
        let tfc = cfg.tfc_client().map_err(anyhow::Error::msg)?;
        let cbc = cfg.cbc_client().map_err(anyhow::Error::msg)?;
        let state = build_state(cfg).await?;
        state.forwarding.open(&state.store).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let shutdown = state.shutdown.clone();
        Ok(Self {
            listener,
            state,
            shutdown,
            tls,
            tfc,
            cbc,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Cancelling this token stops the server as SIGTERM does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM or the shutdown token: stops accepting, finishes
    /// in-flight requests, then commits what is queued and closes the store.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            shutdown,
            tls,
            tfc,
            cbc,
        } = self;
        let tfc = tfc.map(|client| {
            tokio::spawn(sources::tfc::poll_loop(
                state.store.clone(),
                client,
                state.cfg.poll_interval,
                state.metrics.clone(),
                shutdown.child_token(),
            ))
        });
        let cbc = cbc.map(|client| {
            tokio::spawn(sources::cbc::poll_loop(
                state.store.clone(),
                client,
                state.cfg.poll_interval,
                state.metrics.clone(),
                shutdown.child_token(),
            ))
        });
        tracing::info!(
            addr = %listener.local_addr()?,
            tls = tls.is_some(),
            "audithook listening"
        );
        let store = state.store.clone();
        let forwarding = state.forwarding.start(
            &state.store,
            &state.metrics,
            &state.cfg.ld_base_url,
            &shutdown.child_token(),
        );
        let catchup = state.cfg.ld_api_token.clone().map(|token| {
            tokio::spawn(sources::launchdarkly::catchup::run_loop(
                state.store.clone(),
                state.cfg.ld_base_url.clone(),
                token,
                state.cfg.catchup_interval,
                state.cfg.catchup_overlap,
                state.metrics.clone(),
                shutdown.child_token(),
            ))
        });
        let router = app(state);
        let stop = shutdown.clone();
        let signal_stop = shutdown.clone();
        let stopping = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = stop.cancelled() => {}
            }
            signal_stop.cancel();
            tracing::info!("shutting down: finishing in-flight requests");
        };
        match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopping)
                    .await?
            }
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let on_stop = handle.clone();
                tokio::spawn(async move {
                    stopping.await;
                    on_stop.graceful_shutdown(None);
                });
                axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                    .handle(handle)
                    .serve(router.into_make_service())
                    .await?;
            }
        }
        shutdown.cancel();
        for task in [catchup, tfc, cbc].into_iter().flatten() {
            let _ = task.await;
        }
        for task in forwarding {
            let _ = task.await;
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
pub mod export;
pub mod forward;
pub mod render;
pub mod sources;
pub mod ui;
