//! Fake receivers for forwarding tests, faithful where the real ones have traps:
//! - a generic HTTP receiver (Logstash `http` input, a webhook, any LaunchDarkly
//!   integration's endpoint) that records every request and can answer from a script;
//! - Elasticsearch `_bulk`: NDJSON terminated by a newline, `create` that answers 409
//!   `version_conflict_engine_exception` for an `_id` it holds, per-item errors with
//!   `errors: true` at the top, 429 `es_rejected_execution_exception` items;
//! - Splunk HEC `/services/collector/event`: `Authorization: Splunk TOKEN` (401 code 2
//!   without, 403 code 4 for a wrong one, 403 code 1 while disabled), concatenated JSON
//!   events, 400 code 6 with `invalid-event-number` for an event without `event` or with a
//!   non-numeric `time` (events before it are indexed, as HEC does).

#![allow(dead_code)]

#[path = "loopback.rs"]
mod loopback;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Ids of the envelopes in JSON or NDJSON bodies, in order.
pub fn envelope_ids(bodies: &[Vec<u8>]) -> Vec<String> {
    bodies
        .iter()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["id"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A scripted answer: the next requests get these, in order, before normal service.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

#[derive(Default)]
pub struct HttpState {
    pub requests: Mutex<Vec<Received>>,
    pub script: Mutex<VecDeque<Scripted>>,
    /// Bodies containing this are refused with 400 `{"error":"rejected"}`.
    pub reject: Mutex<Option<String>>,
    /// Time taken to answer each request, in milliseconds.
    pub delay_ms: std::sync::atomic::AtomicU64,
}

pub struct HttpReceiver {
    pub base: String,
    pub state: Arc<HttpState>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn http_any(
    State(s): State<Arc<HttpState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let scripted = s.script.lock().unwrap().pop_front();
    let rejected = s
        .reject
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|m| String::from_utf8_lossy(&body).contains(m.as_str()));
    let (status, resp) = match scripted {
        Some(sc) => {
            let mut r = (StatusCode::from_u16(sc.status).unwrap(), sc.body.clone()).into_response();
            if let Some(after) = sc.retry_after {
                r.headers_mut()
                    .insert("retry-after", after.to_string().parse().unwrap());
            }
            (sc.status, r)
        }
        None if rejected => (
            400,
            (StatusCode::BAD_REQUEST, r#"{"error":"rejected"}"#).into_response(),
        ),
        None => (200, (StatusCode::OK, "ok").into_response()),
    };
    s.requests.lock().unwrap().push(Received {
        method: method.to_string(),
        target: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status,
    });
    resp
}

impl HttpReceiver {
    pub async fn start() -> HttpReceiver {
        let state = Arc::new(HttpState::default());
        let app = Router::new().fallback(http_any).with_state(state.clone());
        let (base, stop) = loopback::serve(app).await;
        HttpReceiver { base, state, stop }
    }

    /// Requests answered 2xx, in order.
    pub fn accepted(&self) -> Vec<Received> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .cloned()
            .collect()
    }

    /// Ids of the envelopes in the accepted bodies (JSON or NDJSON), in order.
    pub fn envelope_ids(&self) -> Vec<String> {
        envelope_ids(
            &self
                .accepted()
                .iter()
                .map(|r| r.body.clone())
                .collect::<Vec<_>>(),
        )
    }

    pub fn all(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    pub fn reject_containing(&self, marker: Option<&str>) {
        *self.state.reject.lock().unwrap() = marker.map(str::to_owned);
    }
}

#[derive(Default)]
pub struct EsState {
    /// `_index/_id` -> document.
    pub docs: Mutex<BTreeMap<String, Value>>,
    /// Every `_bulk` request's item ids, in order.
    pub bulks: Mutex<Vec<Vec<String>>>,
    /// Documents whose text contains this fail with 400 `mapper_parsing_exception`.
    pub mapping_error: Mutex<Option<String>>,
    /// Ids answered 429 `es_rejected_execution_exception` once each.
    pub reject_once: Mutex<Vec<String>>,
}

pub struct FakeEs {
    pub base: String,
    pub state: Arc<EsState>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FakeEs {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn es_error(status: StatusCode, ty: &str, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"root_cause": [{"type": ty, "reason": reason}], "type": ty, "reason": reason}, "status": status.as_u16()})),
    )
        .into_response()
}

async fn es_bulk(State(s): State<Arc<EsState>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/x-ndjson") || ct.starts_with("application/json")) {
        return es_error(
            StatusCode::NOT_ACCEPTABLE,
            "media_type_header_exception",
            &format!("Content-Type header [{ct}] is not supported"),
        );
    }
    if !body.ends_with(b"\n") {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let text = String::from_utf8_lossy(&body);
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    if lines.len() % 2 != 0 {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "Malformed action/metadata line",
        );
    }
    let mut items = Vec::new();
    let mut ids = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let action: Value = match serde_json::from_str(pair[0]) {
            Ok(v) => v,
            Err(_) => {
                return es_error(
                    StatusCode::BAD_REQUEST,
                    "x_content_parse_exception",
                    "action line is not JSON",
                )
            }
        };
        let Some(meta) = action.get("create") else {
            return es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                "expected create",
            );
        };
        let index = meta["_index"].as_str().unwrap_or("").to_owned();
        let id = meta["_id"].as_str().unwrap_or("").to_owned();
        ids.push(id.clone());
        let key = format!("{index}/{id}");
        let doc: Result<Value, _> = serde_json::from_str(pair[1]);
        let once = {
            let mut r = s.reject_once.lock().unwrap();
            match r.iter().position(|x| *x == id) {
                Some(p) => {
                    r.remove(p);
                    true
                }
                None => false,
            }
        };
        let mapping = s
            .mapping_error
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|m| pair[1].contains(m.as_str()));
        let item = if once {
            errors = true;
            json!({"create": {"_index": index, "_id": id, "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}})
        } else if doc.is_err() || mapping {
            errors = true;
            json!({"create": {"_index": index, "_id": id, "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [raw.x] of type [long]"}}})
        } else if s.docs.lock().unwrap().contains_key(&key) {
            errors = true;
            json!({"create": {"_index": index, "_id": id, "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists (current version [1])")}}})
        } else {
            s.docs.lock().unwrap().insert(key, doc.unwrap());
            json!({"create": {"_index": index, "_id": id, "_version": 1, "result": "created", "status": 201}})
        };
        items.push(item);
    }
    s.bulks.lock().unwrap().push(ids);
    axum::Json(json!({"took": 3, "errors": errors, "items": items})).into_response()
}

impl FakeEs {
    pub async fn start() -> FakeEs {
        let state = Arc::new(EsState::default());
        let app = Router::new()
            .route("/_bulk", axum::routing::post(es_bulk))
            .with_state(state.clone());
        let (base, stop) = loopback::serve(app).await;
        FakeEs { base, state, stop }
    }
}

#[derive(Default)]
pub struct HecState {
    pub token: String,
    pub disabled: AtomicBool,
    /// Indexed events, in order.
    pub events: Mutex<Vec<Value>>,
    /// Requests and their status.
    pub answers: Mutex<Vec<u16>>,
    /// Events whose text contains this are "invalid data format".
    pub invalid: Mutex<Option<String>>,
}

pub struct FakeHec {
    pub base: String,
    pub state: Arc<HecState>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for FakeHec {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn hec(status: StatusCode, text: &str, code: i64) -> Response {
    (status, axum::Json(json!({"text": text, "code": code}))).into_response()
}

async fn hec_event(State(s): State<Arc<HecState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = hec_answer(&s, &headers, &body);
    s.answers.lock().unwrap().push(r.status().as_u16());
    r
}

fn hec_answer(s: &HecState, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return hec(StatusCode::UNAUTHORIZED, "Token is required", 2);
    };
    let Some(token) = auth.strip_prefix("Splunk ") else {
        return hec(StatusCode::UNAUTHORIZED, "Invalid authorization", 3);
    };
    if token != s.token {
        return hec(StatusCode::FORBIDDEN, "Invalid token", 4);
    }
    if s.disabled.load(Ordering::SeqCst) {
        return hec(StatusCode::FORBIDDEN, "Token disabled", 1);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return hec(StatusCode::BAD_REQUEST, "No data", 5);
    }
    let invalid = s.invalid.lock().unwrap().clone();
    let stream = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    for (n, ev) in stream.enumerate() {
        let ok = match &ev {
            Ok(v) => {
                v.get("event").is_some()
                    && v.get("time").is_none_or(Value::is_number)
                    && !invalid
                        .as_ref()
                        .is_some_and(|m| v.to_string().contains(m.as_str()))
            }
            Err(_) => false,
        };
        if !ok {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"text": "Invalid data format", "code": 6, "invalid-event-number": n}),
                ),
            )
                .into_response();
        }
        s.events.lock().unwrap().push(ev.unwrap());
    }
    hec(StatusCode::OK, "Success", 0)
}

impl FakeHec {
    pub async fn start(token: &str) -> FakeHec {
        let state = Arc::new(HecState {
            token: token.to_owned(),
            ..HecState::default()
        });
        let app = Router::new()
            .route("/services/collector/event", axum::routing::post(hec_event))
            .with_state(state.clone());
        let (base, stop) = loopback::serve(app).await;
        FakeHec { base, state, stop }
    }
}
