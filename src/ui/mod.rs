//! The web UI: server-rendered HTML from templates compiled into the binary (askama), assets
//! embedded, nothing fetched from another host. Every page works without JavaScript.
//!
//! `/` asks for the read token once, then a session cookie (HttpOnly, SameSite=Strict,
//! Secure under TLS, 12 hours) carries the session; every state-changing form carries the
//! session's CSRF token. The pages read through the same code as the API: the archive's
//! filters are `/api/events`' parameters, so the URL holds the state.

pub mod session;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use crate::error::ApiError;
use crate::event::{rfc3339_ms, Source};
use crate::routes::events::{encode_cursor, parse_params};
use crate::store::Cursor;
use crate::AppState;

use session::Session;

/// Events per archive page.
pub const PAGE: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/events", get(events))
        .route("/ui/events/{source}/{id}", get(event))
        .route("/ui/preview", get(preview_form).post(preview_run))
        .route("/ui/destinations", get(destinations))
        .route("/ui/destinations/{name}/replay", post(replay))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/assets/app.js", get(script))
        .route("/ui/assets/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .route("/ui/{*rest}", axum::routing::any(not_found))
}

/// The content security policy of every page: nothing from another host, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn page(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "a UI template failed to render");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>error</title><p>The page could not be rendered.</p>".into(),
            )
        }
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    title: String,
    csrf: Option<String>,
    message: String,
}

fn error_page(
    session: Option<&Session>,
    status: StatusCode,
    message: impl Into<String>,
) -> Response {
    page(
        status,
        &ErrorPage {
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            csrf: session.map(|s| s.csrf.clone()),
            message: message.into(),
        },
    )
}

fn now_secs() -> i64 {
    crate::now_ms() / 1000
}

/// The session of a request, if its cookie carries a valid one.
pub fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let value = session::cookie_value(headers)?;
    session::check(&state.read_auth.token, value, now_secs())
}

/// The session, or the login page's address to go to.
fn require(state: &AppState, headers: &HeaderMap, here: &str) -> Result<Session, Response> {
    session_of(state, headers).ok_or_else(|| {
        let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
        Redirect::to(&format!("/?next={next}")).into_response()
    })
}

/// The session and fields of a state-changing form, after its CSRF check.
fn form_with_csrf(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    here: &str,
) -> Result<(Session, Vec<(String, String)>), Response> {
    let s = require(state, headers, here)?;
    let fields = form(body);
    if !session::csrf_ok(&s, field(&fields, "csrf")) {
        return Err(error_page(
            Some(&s),
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong; reload the page and try again.",
        ));
    }
    Ok((s, fields))
}

fn form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// A `next` that stays on this site's UI.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/ui/events"
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    title: &'static str,
    csrf: Option<String>,
    error: Option<String>,
    next: String,
}

async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if session_of(&state, &headers).is_some() {
        return Redirect::to("/ui/events").into_response();
    }
    let next = form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "next")
        .map(|(_, v)| safe_next(&v).to_owned())
        .unwrap_or_else(|| "/ui/events".into());
    page(
        StatusCode::OK,
        &LoginPage {
            title: "Sign in",
            csrf: None,
            error: None,
            next,
        },
    )
}

async fn login(State(state): State<AppState>, body: Bytes) -> Response {
    let fields = form(&body);
    let token = field(&fields, "token");
    let next = safe_next(field(&fields, "next")).to_owned();
    if token.is_empty() || !state.read_auth.check(Some(token.as_bytes())) {
        tracing::info!("UI sign-in refused: wrong token");
        return page(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                title: "Sign in",
                csrf: None,
                error: Some(
                    "That is not the read token (AUDITHOOK_API_TOKEN). The hook token cannot sign in."
                        .into(),
                ),
                next,
            },
        );
    }
    let value = session::issue(&state.read_auth.token, now_secs());
    let secure = if state.cfg.tls_cert.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session::COOKIE,
        session::LIFETIME_SECS
    );
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(s) = session_of(&state, &headers) else {
        return Redirect::to("/").into_response();
    };
    if !session::csrf_ok(&s, field(&form(&body), "csrf")) {
        return error_page(
            Some(&s),
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong; reload the page and try again.",
        );
    }
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "audithook_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

/// Unknown UI pages answer an HTML page, not the API's JSON.
async fn not_found(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let s = session_of(&state, &headers);
    error_page(s.as_ref(), StatusCode::NOT_FOUND, "There is no such page.")
}

async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("assets/favicon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The archive's filter form, as given.
#[derive(Default)]
struct FilterForm {
    q: String,
    spec: String,
    actor: String,
    action: String,
    kind: String,
    after: String,
    before: String,
    launchdarkly: bool,
    tfc: bool,
    cbc: bool,
}

struct Row {
    source: String,
    time_iso: String,
    time_utc: String,
    actor: String,
    actor_link: String,
    action: String,
    resource: String,
    resource_link: String,
    summary: String,
    link: String,
}

#[derive(Template)]
#[template(path = "ui/events.html")]
struct EventsPage {
    title: &'static str,
    csrf: Option<String>,
    form: FilterForm,
    error: Option<String>,
    count: Option<u64>,
    rows: Vec<Row>,
    older: Option<String>,
    newest: Option<String>,
    csv: String,
    ndjson: String,
}

/// A time as a person types it: RFC 3339, epoch milliseconds, or a date picker's
/// `YYYY-MM-DDTHH:MM[:SS]` / `YYYY-MM-DD` (UTC).
pub fn parse_ui_time(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(ms) = crate::sources::launchdarkly::parse_time(v) {
        return Some(ms);
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, f) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// Link to the archive filtered on one parameter.
fn history(param: &str, value: &str) -> String {
    format!("/ui/events?{param}={}", enc(value))
}

/// The archive filter for a resource: LaunchDarkly's are specifiers, the others are text.
fn resource_link(source: &str, resource: &str) -> String {
    if source == "launchdarkly" {
        history("spec", resource)
    } else {
        history("q", resource)
    }
}

async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let here = format!(
        "/ui/events{}",
        query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    let s = match require(&state, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut f = FilterForm::default();
    // The API's parameters, with times as epoch ms.
    let mut api: Vec<(String, String)> = Vec::new();
    let mut cursor = None;
    let mut error = None;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let (k, v) = (k.into_owned(), v.into_owned());
        match k.as_str() {
            "q" => f.q = v.clone(),
            "spec" => f.spec = v.clone(),
            "actor" => f.actor = v.clone(),
            "action" => f.action = v.clone(),
            "kind" => f.kind = v.clone(),
            "source" => match v.as_str() {
                "launchdarkly" => f.launchdarkly = true,
                "tfc" => f.tfc = true,
                "cbc" => f.cbc = true,
                _ => {}
            },
            "after" | "before" => {
                if k == "after" {
                    f.after = v.clone();
                } else {
                    f.before = v.clone();
                }
                if v.trim().is_empty() {
                    continue;
                }
                match parse_ui_time(&v) {
                    Some(ms) => api.push((k, ms.to_string())),
                    None => {
                        error = Some(format!(
                            "`{k}`: {v:?} is not a time; give RFC 3339 (2026-11-01T00:00:00Z), a date (2026-11-01) or epoch milliseconds"
                        ))
                    }
                }
                continue;
            }
            "cursor" => {
                cursor = Some(v);
                continue;
            }
            _ => {}
        }
        if !v.is_empty() || k == "source" {
            api.push((k, v));
        }
    }
    let api_query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(api.iter())
        .finish();
    let ui_base: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
                .filter(|(k, v)| k != "cursor" && !v.is_empty()),
        )
        .finish();
    let mut out = EventsPage {
        title: "Archive",
        csrf: Some(s.csrf.clone()),
        form: f,
        error: None,
        count: None,
        rows: Vec::new(),
        older: None,
        newest: None,
        csv: format!("/export.csv?{api_query}"),
        ndjson: format!("/export.ndjson?{api_query}"),
    };
    if let Some(e) = error {
        out.error = Some(e);
        return page(StatusCode::BAD_REQUEST, &out);
    }
    let mut full = api_query.clone();
    full.push_str(&format!(
        "{}limit={PAGE}",
        if full.is_empty() { "" } else { "&" }
    ));
    if let Some(c) = &cursor {
        full.push_str(&format!("&cursor={}", enc(c)));
    }
    let params = match parse_params(Some(&full)) {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(api_message(&e));
            return page(StatusCode::BAD_REQUEST, &out);
        }
    };
    let listed = crate::routes::auditlog::read_page(
        &state.store,
        &params.filter,
        params.cursor.as_ref(),
        0,
        PAGE,
    )
    .await;
    let (rows, more) = match listed {
        Ok(x) => x,
        Err(e) => {
            out.error = Some(api_message(&e));
            return page(e.status(), &out);
        }
    };
    out.count = state.store.count(&params.filter).await.ok();
    let sep = if ui_base.is_empty() { "" } else { "&" };
    if more {
        if let Some(last) = rows.last() {
            out.older = Some(format!(
                "/ui/events?{ui_base}{sep}cursor={}",
                encode_cursor(&Cursor::of(last))
            ));
        }
    }
    if cursor.is_some() {
        out.newest = Some(format!("/ui/events?{ui_base}"));
    }
    out.rows = rows
        .iter()
        .map(|r| Row {
            source: r.source.clone(),
            time_iso: rfc3339_ms(r.date),
            time_utc: utc(r.date),
            actor_link: history("actor", &r.actor),
            actor: r.actor.clone(),
            action: r.action.clone(),
            resource_link: resource_link(&r.source, &r.resource),
            resource: r.resource.clone(),
            summary: if r.summary.is_empty() {
                r.id.clone()
            } else {
                r.summary.clone()
            },
            link: format!("/ui/events/{}/{}", enc(&r.source), enc(&r.id)),
        })
        .collect();
    page(StatusCode::OK, &out)
}

/// An API error's message, for a page.
fn api_message(e: &ApiError) -> String {
    match e {
        ApiError::Client { message, .. } => message.clone(),
        ApiError::Unavailable(m) => format!("The store is unavailable: {m}"),
        ApiError::Internal(_) => "Something went wrong on the server; the log says what.".into(),
    }
}

struct DiffLine {
    class: &'static str,
    sign: &'static str,
    text: String,
}

struct RenderOut {
    name: String,
    output: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/event.html")]
struct EventPage {
    title: String,
    csrf: Option<String>,
    source: String,
    id: String,
    time_iso: String,
    time_utc: String,
    actor: String,
    actor_link: String,
    action: String,
    summary: String,
    resources: Vec<(String, String)>,
    permalink: String,
    api_link: String,
    diff: Option<Vec<DiffLine>>,
    raw_pretty: String,
    renders: Vec<RenderOut>,
}

/// A line diff of `previousVersion` to `currentVersion`, pretty-printed, when both exist.
fn version_diff(raw: &Value) -> Option<Vec<DiffLine>> {
    let prev = raw.get("previousVersion")?;
    let cur = raw.get("currentVersion")?;
    let a = serde_json::to_string_pretty(prev).ok()?;
    let b = serde_json::to_string_pretty(cur).ok()?;
    let diff = similar::TextDiff::from_lines(&a, &b);
    let mut out = Vec::new();
    for group in diff.grouped_ops(3) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let (class, sign) = match change.tag() {
                    similar::ChangeTag::Delete => ("del", "-"),
                    similar::ChangeTag::Insert => ("ins", "+"),
                    similar::ChangeTag::Equal => ("ctx", " "),
                };
                out.push(DiffLine {
                    class,
                    sign,
                    text: change.value().trim_end_matches('\n').to_owned(),
                });
            }
        }
        out.push(DiffLine {
            class: "ctx",
            sign: "…",
            text: String::new(),
        });
    }
    out.pop();
    Some(out)
}

async fn event(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((source, id)): Path<(String, String)>,
) -> Response {
    let here = format!("/ui/events/{}/{}", enc(&source), enc(&id));
    let s = match require(&state, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(src) = Source::parse(&source) else {
        return error_page(
            Some(&s),
            StatusCode::NOT_FOUND,
            format!("There is no source {source:?}."),
        );
    };
    let row = match state.store.get(src, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                Some(&s),
                StatusCode::NOT_FOUND,
                format!("No {source} event has the id {id:?}."),
            )
        }
        Err(e) => {
            return error_page(
                Some(&s),
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The store is unavailable: {e}"),
            )
        }
    };
    let raw = crate::event::parse_stored(&row.raw);
    let mut resources: Vec<String> = Vec::new();
    if src == Source::LaunchDarkly {
        let listed = raw
            .get("accesses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("resource").and_then(Value::as_str))
            .chain(
                raw.pointer("/target/resources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        for r in listed {
            if !resources.iter().any(|x| x == r) {
                resources.push(r.to_owned());
            }
        }
    } else if !row.resource.is_empty() {
        resources.push(row.resource.clone());
    }
    let mut renders = Vec::new();
    if src == Source::LaunchDarkly {
        let entry = crate::event::stored_entry(&row.raw, &row.id, row.date);
        let ctx = crate::render::context::template_context(&entry, &state.cfg.ld_base_url);
        for name in state.renderer.names() {
            let Some(c) = state.renderer.get(name) else {
                continue;
            };
            let data =
                crate::render::body_data(&ctx, &Value::Object(Default::default()), c.json_escape);
            let (output, error) = match state.renderer.render(c, &data) {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(e.to_string())),
            };
            renders.push(RenderOut {
                name: name.to_owned(),
                output,
                error,
            });
        }
    }
    let summary = if row.summary.is_empty() {
        row.id.clone()
    } else {
        row.summary.clone()
    };
    let out = EventPage {
        title: summary.clone(),
        csrf: Some(s.csrf.clone()),
        source: row.source.clone(),
        id: row.id.clone(),
        time_iso: rfc3339_ms(row.date),
        time_utc: utc(row.date),
        actor_link: history("actor", &row.actor),
        actor: row.actor.clone(),
        action: row.action.clone(),
        summary,
        resources: resources
            .iter()
            .map(|r| (r.clone(), resource_link(&row.source, r)))
            .collect(),
        permalink: here.clone(),
        api_link: format!("/api/events/{}/{}", enc(&row.source), enc(&row.id)),
        diff: version_diff(&raw),
        raw_pretty: serde_json::to_string_pretty(&raw).unwrap_or_else(|_| row.raw.clone()),
        renders,
    };
    page(StatusCode::OK, &out)
}

#[derive(Template)]
#[template(path = "ui/preview.html")]
struct PreviewPage {
    title: &'static str,
    csrf: Option<String>,
    csrf_value: String,
    names: Vec<String>,
    chosen: String,
    source: String,
    filename: String,
    event: String,
    form_variables: String,
    output: Option<String>,
    error: Option<String>,
}

impl PreviewPage {
    fn new(state: &AppState, s: &Session) -> Self {
        PreviewPage {
            title: "Template playground",
            csrf: Some(s.csrf.clone()),
            csrf_value: s.csrf.clone(),
            names: state
                .renderer
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            chosen: "default".into(),
            source: String::new(),
            filename: String::new(),
            event: String::new(),
            form_variables: "{}".into(),
            output: None,
            error: None,
        }
    }
}

async fn preview_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s = match require(&state, &headers, "/ui/preview") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut p = PreviewPage::new(&state, &s);
    if let Some(ev) =
        form_urlencoded::parse(q.unwrap_or_default().as_bytes()).find(|(k, _)| k == "event")
    {
        p.event = ev.1.into_owned();
    }
    page(StatusCode::OK, &p)
}

async fn preview_run(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (s, fields) = match form_with_csrf(&state, &headers, &body, "/ui/preview") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut p = PreviewPage::new(&state, &s);
    p.chosen = field(&fields, "name").to_owned();
    p.source = field(&fields, "template").to_owned();
    p.filename = field(&fields, "filename").to_owned();
    p.event = field(&fields, "event").trim().to_owned();
    p.form_variables = field(&fields, "form_variables").to_owned();
    let form_variables = if p.form_variables.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        match serde_json::from_str::<Value>(&p.form_variables) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                p.error = Some("Form variables must be a JSON object.".into());
                return page(StatusCode::BAD_REQUEST, &p);
            }
        }
    };
    let input = crate::routes::preview::PreviewIn {
        template: p.chosen.is_empty().then(|| p.source.clone()),
        name: (!p.chosen.is_empty()).then(|| p.chosen.clone()),
        context: None,
        event: Some(p.event.clone()),
        form_variables: Some(form_variables),
        filename: (!p.filename.is_empty()).then(|| p.filename.clone()),
        endpoint: false,
        oauth: None,
    };
    match crate::routes::preview::run_preview(&state, input).await {
        Ok(Ok(text)) => {
            p.output = Some(text);
            page(StatusCode::OK, &p)
        }
        Ok(Err(e)) => {
            p.error = Some(match (e.line, e.column) {
                (Some(l), Some(c)) => {
                    format!("{} error at line {l}, column {c}: {}", e.stage, e.message)
                }
                _ => format!("{} error: {}", e.stage, e.message),
            });
            page(StatusCode::UNPROCESSABLE_ENTITY, &p)
        }
        Err(e) => {
            p.error = Some(api_message(&e));
            page(e.status(), &p)
        }
    }
}

struct DeadView {
    source: String,
    event_id: String,
    status: String,
    error: String,
    body: String,
    time: String,
    link: String,
}

struct DestView {
    name: String,
    kind: String,
    target: String,
    delivered: String,
    lag_events: String,
    lag_seconds: String,
    retrying: String,
    dead_count: String,
    last_error: String,
    dead: Vec<DeadView>,
}

#[derive(Template)]
#[template(path = "ui/destinations.html")]
struct DestinationsPage {
    title: &'static str,
    csrf: Option<String>,
    csrf_value: String,
    message: Option<String>,
    items: Vec<DestView>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn destinations_page(state: &AppState, s: &Session, message: Option<String>) -> Response {
    let mut items = Vec::new();
    for r in &state.forwarding.runners {
        let v = match crate::routes::destinations::state_of(state, r).await {
            Ok(v) => v,
            Err(e) => return error_page(Some(s), e.status(), api_message(&e)),
        };
        let letters = state
            .store
            .dead_letters_list(&r.dest.name, None, 20)
            .await
            .unwrap_or_default();
        items.push(DestView {
            name: text(&v["name"]),
            kind: text(&v["kind"]),
            target: text(&v["target"]),
            delivered: text(&v["delivered"]),
            lag_events: text(&v["lag"]["events"]),
            lag_seconds: text(&v["lag"]["seconds"]),
            retrying: text(&v["retrying"]),
            dead_count: text(&v["dead_letters_count"]),
            last_error: match v["last_error"].as_object() {
                Some(e) => format!(
                    "{} {} ({}) at {}",
                    text(&e["status"]),
                    text(&e["message"]),
                    text(&e["class"]),
                    text(&e["at"])
                ),
                None => String::new(),
            },
            dead: letters
                .into_iter()
                .map(|d| DeadView {
                    link: format!("/ui/events/{}/{}", enc(&d.source), enc(&d.event_id)),
                    source: d.source,
                    event_id: d.event_id,
                    status: d.status.map_or("-".into(), |s| s.to_string()),
                    error: d.error,
                    body: d.body.chars().take(500).collect(),
                    time: rfc3339_ms(d.at),
                })
                .collect(),
        });
    }
    page(
        StatusCode::OK,
        &DestinationsPage {
            title: "Destinations",
            csrf: Some(s.csrf.clone()),
            csrf_value: s.csrf.clone(),
            message,
            items,
        },
    )
}

async fn destinations(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match require(&state, &headers, "/ui/destinations") {
        Ok(s) => destinations_page(&state, &s, None).await,
        Err(r) => r,
    }
}

async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (s, fields) = match form_with_csrf(&state, &headers, &body, "/ui/destinations") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(runner) = state.forwarding.get(&name) else {
        return error_page(
            Some(&s),
            StatusCode::NOT_FOUND,
            format!("No destination is named {name:?}."),
        );
    };
    let message = match field(&fields, "what") {
        "dead_letters" => match state.store.dead_letters_replay(&name).await {
            Ok(n) => format!("{name}: {n} dead letters will be retried."),
            Err(e) => return error_page(Some(&s), StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        "after" => {
            let Some(t) = parse_ui_time(field(&fields, "after")) else {
                return error_page(Some(&s), StatusCode::BAD_REQUEST, "Give the time to replay from as RFC 3339 (2026-11-01T00:00:00Z), a date or epoch milliseconds.");
            };
            match state.store.destination_replay_from(&name, t).await {
                Ok(Some(_)) => format!(
                    "{name}: every event dated from {} will be delivered again.",
                    rfc3339_ms(t)
                ),
                Ok(None) => {
                    return error_page(
                        Some(&s),
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The destination has not started yet.",
                    )
                }
                Err(e) => {
                    return error_page(Some(&s), StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
            }
        }
        _ => return error_page(Some(&s), StatusCode::BAD_REQUEST, "Unknown replay."),
    };
    tracing::info!(destination = %name, "replay asked for in the UI");
    runner.wake.notify_one();
    destinations_page(&state, &s, Some(message)).await
}
