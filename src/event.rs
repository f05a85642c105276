//! The event model: turning a received body (hook default payload or REST entry) into a
//! [`NewEvent`] for the store, and a stored body back into LaunchDarkly's listing shape.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest `_id` accepted (LaunchDarkly's are 24 hex characters).
pub const MAX_ID_LEN: usize = 128;
/// Deepest nesting of arrays and objects accepted in an event (the body itself is 1): a
/// listing wraps an event two levels deeper, and JSON readers commonly stop at 128.
pub const MAX_DEPTH: usize = 120;

/// How deep arrays and objects nest in `v` (a scalar is 0). `v` came from serde_json, which
/// stops at 128 levels, so the recursion is bounded.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Latest event time accepted: 9999-12-31T23:59:59.999Z, the last one RFC 3339 can write.
pub const MAX_DATE_MS: i64 = 253_402_300_799_999;

/// How an event arrived (a secondary attribute: identity is `(source, id)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Delivered to `POST /hooks/launchdarkly`.
    Hook,
    /// Pulled from a vendor's REST API (LaunchDarkly, Terraform Cloud, Carbon Black Cloud).
    Rest,
}

impl Channel {
    /// The name kept in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Hook => "hook",
            Channel::Rest => "rest",
        }
    }
}

/// The system an event's audit log belongs to: with the event's `id`, its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    LaunchDarkly,
    /// Terraform Cloud (HCP Terraform) audit trails.
    Tfc,
    /// Carbon Black Cloud audit logs.
    Cbc,
}

impl Source {
    /// Every source, in the order their names sort.
    pub const ALL: [Source; 3] = [Source::Cbc, Source::LaunchDarkly, Source::Tfc];

    /// The name kept in the store and used in the API (`launchdarkly`, `tfc`, `cbc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::LaunchDarkly => "launchdarkly",
            Source::Tfc => "tfc",
            Source::Cbc => "cbc",
        }
    }

    /// The source named `name`, if any.
    pub fn parse(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access recorded on an entry: what was done to which resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Access {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub resource: String,
}

/// A validated event ready to store: the raw body plus the columns readers filter on.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    /// Event time in epoch milliseconds.
    pub date: i64,
    pub kind: String,
    pub name: String,
    pub title: String,
    pub member_id: Option<String>,
    pub member_email: Option<String>,
    pub token_id: Option<String>,
    /// Accesses as JSON (`[{"action":..,"resource":..}]`).
    pub accesses: String,
    /// Resource specifiers (accesses and target), newline-separated.
    pub resources: String,
    /// Lower-cased text `q` searches.
    pub search: String,
    /// The body exactly as received.
    pub raw: String,
    /// Whose audit log it belongs to.
    pub source: Source,
    /// How it arrived.
    pub channel: Channel,
    /// The common envelope: who did it (email, name or id).
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To what.
    pub resource: String,
    /// One human line.
    pub summary: String,
}

/// Why a body is not an acceptable event. Each maps to a `400`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    #[error("body must be a JSON object (one audit-log event), not {0}")]
    NotObject(&'static str),
    #[error("event has no `_id` string")]
    MissingId,
    #[error("event `_id` must be 1 to {MAX_ID_LEN} characters, not only whitespace, with no control characters")]
    BadId,
    #[error("event has no time: expected `date` (epoch ms) or `timestamp.milliseconds`")]
    MissingTime,
    #[error("event nests arrays and objects more than {MAX_DEPTH} deep (recursion limit), which readers wrapping it in a listing could not parse")]
    TooDeep,
    #[error("event `{field}` must be epoch milliseconds from 0 to {MAX_DATE_MS} (1970 to year 9999), got {value}")]
    BadTime { field: &'static str, value: i64 },
    #[error("event field has the wrong type: {0}")]
    WrongType(String),
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "_id", borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    date: Option<i64>,
    timestamp: Option<Timestamp>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    member: Option<Member>,
    #[serde(default)]
    token: Option<Token>,
    #[serde(default)]
    accesses: Option<Vec<Access>>,
    #[serde(default)]
    target: Option<Target>,
}

#[derive(Deserialize)]
struct Timestamp {
    milliseconds: Option<i64>,
}

#[derive(Deserialize)]
struct Member {
    #[serde(rename = "_id")]
    id: Option<String>,
    email: Option<String>,
    #[serde(rename = "firstName")]
    first_name: Option<String>,
    #[serde(rename = "lastName")]
    last_name: Option<String>,
}

#[derive(Deserialize)]
struct Token {
    #[serde(rename = "_id")]
    id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    resources: Option<Vec<String>>,
}

/// Validates a body and extracts the stored columns. The raw bytes are kept unchanged.
///
/// The whole body is parsed as every reader parses it (JSON nested at most 128 deep, no
/// lone surrogate escapes), so whatever is accepted here reads back whole on every path.
pub fn normalise(body: &[u8], channel: Channel) -> Result<NewEvent, EventError> {
    // The common case in one walk that builds nothing, then the fields read straight from
    // the bytes; anything unusual (an error to report, a repeated field) takes the checked
    // path, which gives the same answer with the same message.
    let incoming = match incoming_fast(body) {
        Some(incoming) => incoming,
        None => incoming_checked(body)?,
    };
    from_incoming(incoming, body, channel)
}

/// The stored columns from the fields read, the body kept as it came.
fn from_incoming(
    incoming: Incoming<'_>,
    body: &[u8],
    channel: Channel,
) -> Result<NewEvent, EventError> {
    let id = incoming.id.ok_or(EventError::MissingId)?.into_owned();
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || id.trim().is_empty()
        || id.chars().any(char::is_control)
    {
        return Err(EventError::BadId);
    }
    let (field, date) = match (
        incoming.date,
        incoming.timestamp.and_then(|t| t.milliseconds),
    ) {
        (Some(d), _) => ("date", d),
        (None, Some(ms)) => ("timestamp.milliseconds", ms),
        (None, None) => return Err(EventError::MissingTime),
    };
    if !(0..=MAX_DATE_MS).contains(&date) {
        return Err(EventError::BadTime { field, value: date });
    }
    let accesses = incoming.accesses.unwrap_or_default();
    let mut resources: Vec<&str> = accesses.iter().map(|a| a.resource.as_str()).collect();
    if let Some(target) = &incoming.target {
        for r in target.resources.iter().flatten() {
            if !resources.contains(&r.as_str()) {
                resources.push(r);
            }
        }
    }
    let resources = resources.join("\n");
    let (member_id, member_email, member_name) = match incoming.member {
        Some(m) => {
            let name = [m.first_name.as_deref(), m.last_name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            (m.id, m.email, name)
        }
        None => (None, None, String::new()),
    };
    let (token_id, token_name) = match incoming.token {
        Some(t) => (t.id, t.name),
        None => (None, None),
    };
    // Who did it: the member's email, else the token's name, else either's id. The
    // migration that introduced the envelope computes the same in SQL for stored events.
    let actor = [&member_email, &token_name, &member_id, &token_id]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_default();
    let (action, resource) = accesses
        .first()
        .map(|a| (a.action.clone(), a.resource.clone()))
        .unwrap_or_default();
    let kind = incoming.kind.unwrap_or_default();
    let name = incoming.name.unwrap_or_default();
    let title = incoming.title.unwrap_or_default();
    let search = [
        name.as_str(),
        title.as_str(),
        kind.as_str(),
        incoming.description.as_deref().unwrap_or(""),
        incoming.comment.as_deref().unwrap_or(""),
        member_email.as_deref().unwrap_or(""),
        member_name.as_str(),
        token_name.as_deref().unwrap_or(""),
        resources.as_str(),
    ]
    .join("\n")
    .to_lowercase();
    let accesses =
        serde_json::to_string(&accesses).map_err(|e| EventError::WrongType(e.to_string()))?;
    // The body parsed as JSON, so it is valid UTF-8.
    let raw = String::from_utf8(body.to_vec()).map_err(|e| EventError::Malformed(e.to_string()))?;
    Ok(NewEvent {
        id,
        date,
        kind,
        name,
        summary: title.clone(),
        title,
        member_id,
        member_email,
        token_id,
        accesses,
        resources,
        search,
        raw,
        source: Source::LaunchDarkly,
        channel,
        actor,
        action,
        resource,
    })
}

/// The checked path: the body parsed into a `Value` (so a repeated key keeps its last
/// value, as every reader sees it), then the fields read from that.
fn incoming_checked(body: &[u8]) -> Result<Incoming<'_>, EventError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| classify(body, e))?;
    if !value.is_object() {
        return Err(EventError::NotObject(match value {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            _ => "a number",
        }));
    }
    if depth(&value) > MAX_DEPTH {
        return Err(EventError::TooDeep);
    }
    Incoming::deserialize(value).map_err(|e| EventError::WrongType(e.to_string()))
}

/// The fast path: `None` wherever [`incoming_checked`] could answer differently. The walk
/// accepts exactly what the `Value` parser accepts (it is the same parser, with its
/// recursion limit and its checks of strings and numbers), and reading [`Incoming`] from
/// the bytes fails on a repeated field where the `Value` would keep the last.
fn incoming_fast(body: &[u8]) -> Option<Incoming<'_>> {
    let Shape { object, depth } = serde_json::from_slice(body).ok()?;
    if !object || depth > MAX_DEPTH {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// What walking a JSON value learns without building it: whether it is an object and how
/// deep arrays and objects nest in it (as [`depth`] counts).
struct Shape {
    object: bool,
    depth: usize,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl ShapeVisitor {
    fn scalar<E>(self) -> Result<Shape, E> {
        Ok(Shape {
            object: false,
            depth: 0,
        })
    }
}

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        self.scalar()
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        self.scalar()
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        self.scalar()
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        self.scalar()
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        self.scalar()
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        self.scalar()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut depth = 0;
        while let Some(item) = seq.next_element::<Shape>()? {
            depth = depth.max(item.depth);
        }
        Ok(Shape {
            object: false,
            depth: depth + 1,
        })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut depth = 0;
        while let Some((_, value)) = map.next_entry::<Key, Shape>()? {
            depth = depth.max(value.depth);
        }
        Ok(Shape {
            object: true,
            depth: depth + 1,
        })
    }
}

/// An object's key, checked as a string (escapes decoded, lone surrogates refused) and
/// dropped.
struct Key;

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, _: &str) -> Result<Key, E> {
                Ok(Key)
            }
        }
        d.deserialize_str(V)
    }
}

fn classify(body: &[u8], e: serde_json::Error) -> EventError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => EventError::Malformed(e.to_string()),
        Category::Data => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
            match first {
                Some(b'{') => EventError::WrongType(e.to_string()),
                Some(b'[') => EventError::NotObject("an array"),
                Some(b'"') => EventError::NotObject("a string"),
                Some(b'n') => EventError::NotObject("null"),
                Some(b't' | b'f') => EventError::NotObject("a boolean"),
                _ => EventError::NotObject("a number"),
            }
        }
    }
}

/// A stored body as a JSON object. Ingest accepts only bodies that parse, so this is the
/// body itself; a row written before that check that no longer parses reads as `{}` (the
/// readers fill in `_id` and `date` from the row), never as an error.
pub fn parse_stored(raw: &str) -> Value {
    match serde_json::from_str(raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

/// A stored entry as the template context is made from: its body, with `_id` and `date`
/// from the row when the body lacks them.
pub fn stored_entry(raw: &str, id: &str, date: i64) -> Value {
    let mut entry = parse_stored(raw);
    if let Value::Object(m) = &mut entry {
        m.entry("_id")
            .or_insert_with(|| Value::String(id.to_owned()));
        m.entry("date").or_insert_with(|| Value::from(date));
    }
    entry
}

/// The type of one property of LaunchDarkly's `AuditLogEntryListingRep` and the schemas it
/// references (`../shared/reference/ld-rest-api-get-audit-log-entries.md`).
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    /// `{name: Link}`, a `Link` being an object whose `href` and `type` are strings.
    Links,
    /// An array of strings.
    Strs,
    /// An array of `ResourceAccess`.
    Accesses,
    /// An object with these typed properties (others are kept as they are).
    Obj(&'static [(&'static str, Ty)]),
}

const SUBJECT: &[(&str, Ty)] = &[
    ("_links", Ty::Links),
    ("name", Ty::Str),
    ("avatarUrl", Ty::Str),
];
const MEMBER: &[(&str, Ty)] = &[
    ("_links", Ty::Links),
    ("_id", Ty::Str),
    ("email", Ty::Str),
    ("firstName", Ty::Str),
    ("lastName", Ty::Str),
];
const TOKEN: &[(&str, Ty)] = &[
    ("_links", Ty::Links),
    ("_id", Ty::Str),
    ("name", Ty::Str),
    ("ending", Ty::Str),
    ("serviceToken", Ty::Bool),
];
const APP: &[(&str, Ty)] = &[
    ("_links", Ty::Links),
    ("_id", Ty::Str),
    ("isScim", Ty::Bool),
    ("name", Ty::Str),
    ("maintainerName", Ty::Str),
];
const TARGET: &[(&str, Ty)] = &[
    ("_links", Ty::Links),
    ("name", Ty::Str),
    ("resources", Ty::Strs),
];
const PARENT: &[(&str, Ty)] = &[
    ("_links", Ty::Links),
    ("name", Ty::Str),
    ("resource", Ty::Str),
];
/// The optional properties of an entry; the required ones are set by [`listing_rep`].
const ENTRY_OPTIONAL: &[(&str, Ty)] = &[
    ("comment", Ty::Str),
    ("subject", Ty::Obj(SUBJECT)),
    ("member", Ty::Obj(MEMBER)),
    ("token", Ty::Obj(TOKEN)),
    ("app", Ty::Obj(APP)),
    ("titleVerb", Ty::Str),
    ("title", Ty::Str),
    ("target", Ty::Obj(TARGET)),
    ("parent", Ty::Obj(PARENT)),
];

/// Fields LaunchDarkly's `AuditLogEntryListingRep` requires as strings, with `""` used when a
/// stored body lacks one or holds another type.
const REQUIRED_STRINGS: [&str; 5] = [
    "_accountId",
    "kind",
    "name",
    "description",
    "shortDescription",
];

/// Whether `v` is valid as `ty`, after fixing what can be fixed in place; `false` means the
/// property must go (an optional property of the wrong type, such as `"_links": null`).
fn conform(v: &mut Value, ty: Ty) -> bool {
    match ty {
        Ty::Str => v.is_string(),
        Ty::Bool => v.is_boolean(),
        Ty::Strs => match v {
            Value::Array(items) => {
                items.retain(Value::is_string);
                true
            }
            _ => false,
        },
        Ty::Links => match v {
            Value::Object(links) => {
                links.retain(|_, link| match link {
                    Value::Object(l) => ["href", "type"]
                        .iter()
                        .all(|k| l.get(*k).is_none_or(Value::is_string)),
                    _ => false,
                });
                true
            }
            _ => false,
        },
        Ty::Accesses => match v {
            Value::Array(items) => {
                items.retain_mut(|a| match a {
                    Value::Object(m) => {
                        m.retain(|k, x| {
                            !matches!(k.as_str(), "action" | "resource") || x.is_string()
                        });
                        true
                    }
                    _ => false,
                });
                true
            }
            _ => false,
        },
        Ty::Obj(props) => match v {
            Value::Object(m) => {
                conform_props(m, props);
                true
            }
            _ => false,
        },
    }
}

fn conform_props(m: &mut Map<String, Value>, props: &[(&str, Ty)]) {
    for (key, ty) in props {
        if let Some(v) = m.get_mut(*key) {
            if !conform(v, *ty) {
                m.remove(*key);
            }
        }
    }
}

/// Turns a stored body into LaunchDarkly's `AuditLogEntryListingRep` shape, valid against
/// that schema whatever the body holds (LaunchDarkly's API clients reject a whole page for
/// one invalid item).
///
/// A REST entry is returned as stored. A hook default payload gains `date` (from
/// `timestamp.milliseconds`), `accesses` (empty when absent) and the required strings;
/// optional properties of the wrong type (the default payload's `"target": {"_links": null}`)
/// are dropped; its other fields (`timestamp`, `markdownTitle`, ...) are kept. The stored
/// bytes are not changed: this is the read shape only.
pub fn listing_rep(raw: &str, date: i64, id: &str) -> Value {
    let mut map = match parse_stored(raw) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let links_ok = map.get_mut("_links").is_some_and(|l| conform(l, Ty::Links));
    if !links_ok {
        map.insert("_links".into(), Value::Object(Map::new()));
    }
    if let Some(Value::Object(links)) = map.get_mut("_links") {
        if !links.contains_key("self") {
            let href = format!("/api/v2/auditlog/{id}");
            links.insert(
                "self".into(),
                serde_json::json!({"href": href, "type": "application/json"}),
            );
        }
    }
    map.insert("_id".into(), Value::String(id.to_owned()));
    if !map.get("date").is_some_and(Value::is_i64) {
        map.insert("date".into(), Value::from(date));
    }
    let accesses_ok = map
        .get_mut("accesses")
        .is_some_and(|a| conform(a, Ty::Accesses));
    if !accesses_ok {
        map.insert("accesses".into(), Value::Array(Vec::new()));
    }
    for key in REQUIRED_STRINGS {
        if !map.get(key).is_some_and(Value::is_string) {
            map.insert(key.into(), Value::String(String::new()));
        }
    }
    conform_props(&mut map, ENTRY_OPTIONAL);
    Value::Object(map)
}

/// The common envelope every source's events map to (`/api/events`, queues, the UI,
/// destinations).
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub source: &'a str,
    pub id: &'a str,
    /// Epoch milliseconds.
    pub date: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub summary: &'a str,
    /// The payload as received (JSON text).
    pub raw: &'a str,
}

/// RFC 3339 with milliseconds and `Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Writes `e` as one JSON object: `source`, `id`, `date`, `time`, `actor`, `action`,
/// `resource`, `summary`, `raw` (the payload inline, as stored; `{}` should a stored body
/// not be a JSON object).
pub fn write_envelope(out: &mut Vec<u8>, e: &Envelope<'_>) {
    let raw = match serde_json::from_str::<&serde_json::value::RawValue>(e.raw) {
        Ok(r) if r.get().trim_start().starts_with('{') => r.get(),
        _ => "{}",
    };
    let s = |out: &mut Vec<u8>, v: &str| {
        // Serialising a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, v);
    };
    out.extend_from_slice(b"{\"source\":");
    s(out, e.source);
    out.extend_from_slice(b",\"id\":");
    s(out, e.id);
    out.extend_from_slice(format!(",\"date\":{},\"time\":", e.date).as_bytes());
    s(out, &rfc3339_ms(e.date));
    out.extend_from_slice(b",\"actor\":");
    s(out, e.actor);
    out.extend_from_slice(b",\"action\":");
    s(out, e.action);
    out.extend_from_slice(b",\"resource\":");
    s(out, e.resource);
    out.extend_from_slice(b",\"summary\":");
    s(out, e.summary);
    out.extend_from_slice(b",\"raw\":");
    out.extend_from_slice(raw.as_bytes());
    out.push(b'}');
}

/// Writes `rows` as a JSON array of envelopes.
pub fn write_envelopes(out: &mut Vec<u8>, rows: &[crate::store::StoredEvent]) {
    out.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_envelope(out, &row.envelope());
    }
    out.push(b']');
}

/// Writes `rows` as a JSON array of listing reps into `out`, consuming each row as it goes,
/// so a page's memory is its answer's bytes plus one entry, not several copies of the page.
pub fn write_listing_items(out: &mut Vec<u8>, rows: Vec<crate::store::StoredEvent>) {
    out.push(b'[');
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let rep = listing_rep(&row.raw, row.date, &row.id);
        drop(row);
        // Serialising a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &rep);
    }
    out.push(b']');
}

/// Whether a LaunchDarkly resource specifier pattern (`*` globs, e.g.
/// `proj/*:env/production:flag/*`) matches a resource. A pattern also matches every
/// resource beneath what it names: `proj/default` matches `proj/default:env/test:flag/x`.
/// Tags (`;tag1,tag2`) are ignored on both sides.
pub fn spec_matches(pattern: &str, resource: &str) -> bool {
    let pattern = strip_tags(pattern);
    let resource = strip_tags(resource);
    if glob(pattern.as_bytes(), resource.as_bytes()) {
        return true;
    }
    resource
        .match_indices(':')
        .any(|(i, _)| glob(pattern.as_bytes(), resource[..i].as_bytes()))
}

pub(crate) fn strip_tags(spec: &str) -> std::borrow::Cow<'_, str> {
    if !spec.contains(';') {
        return std::borrow::Cow::Borrowed(spec);
    }
    let parts: Vec<&str> = spec
        .split(':')
        .map(|p| p.split(';').next().unwrap_or(p))
        .collect();
    std::borrow::Cow::Owned(parts.join(":"))
}

/// Newline-separated resource specifiers with every line's tags removed.
pub fn strip_tags_lines(resources: &str) -> std::borrow::Cow<'_, str> {
    if !resources.contains(';') {
        return std::borrow::Cow::Borrowed(resources);
    }
    let lines: Vec<std::borrow::Cow<'_, str>> = resources.split('\n').map(strip_tags).collect();
    std::borrow::Cow::Owned(lines.join("\n"))
}

/// `*` matches any run of bytes; everything else matches itself. Iterative, no allocation.
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_and_prefix_matching() {
        assert!(spec_matches(
            "proj/*:env/production:flag/*",
            "proj/default:env/production:flag/a"
        ));
        assert!(!spec_matches(
            "proj/*:env/production:flag/*",
            "proj/default:env/test:flag/a"
        ));
        assert!(spec_matches("proj/default", "proj/default:env/test:flag/a"));
        assert!(!spec_matches("proj/def", "proj/default:env/test:flag/a"));
        assert!(spec_matches("proj/*;ops:env/*", "proj/x;ops,web:env/prod"));
        assert!(spec_matches("*", "member/123"));
        assert!(!spec_matches("flag/*", "proj/x:env/y:flag/z"));
    }

    #[test]
    fn classifies_bad_bodies() {
        assert_eq!(
            normalise(b"[1]", Channel::Hook).unwrap_err(),
            EventError::NotObject("an array")
        );
        assert_eq!(
            normalise(b" 42", Channel::Hook).unwrap_err(),
            EventError::NotObject("a number")
        );
        assert!(matches!(
            normalise(b"{\"_id\":", Channel::Hook),
            Err(EventError::Malformed(_))
        ));
        assert_eq!(
            normalise(b"{\"date\":1}", Channel::Hook).unwrap_err(),
            EventError::MissingId
        );
        assert_eq!(
            normalise(b"{\"_id\":\"a\"}", Channel::Hook).unwrap_err(),
            EventError::MissingTime
        );
        assert!(matches!(
            normalise(b"{\"_id\":5,\"date\":1}", Channel::Hook),
            Err(EventError::WrongType(_))
        ));
    }

    /// The fast path answers exactly as the checked path would, or leaves the body to it.
    #[test]
    fn fast_and_checked_paths_agree() {
        let deep = |n: usize| {
            format!(
                "{{\"_id\":\"d\",\"date\":1,\"x\":{}1{}}}",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let bodies: Vec<String> = vec![
            r#"{"_id":"a","date":5,"kind":"flag","name":"N","title":"T","member":{"_id":"m","email":"E@x","firstName":"A","lastName":"B"},"accesses":[{"action":"updateOn","resource":"proj/p:env/e:flag/f"}],"target":{"resources":["proj/p:env/e:flag/f","proj/p:env/e:flag/g"]},"extra":{"k":[1,2.5,-3,true,null,"s"]}}"#.into(),
            r#"{"_id":"esc\u00e9\n","timestamp":{"milliseconds":7},"token":{"_id":"t","name":"ci"}}"#.into(),
            // A repeated field: the checked path keeps the last, as readers do.
            r#"{"_id":"first","_id":"second","date":1}"#.into(),
            r#"{"_id":"a","date":1,"member":{"email":"x","email":"y"}}"#.into(),
            r#"{"_id":"a","date":1,"ignored":1,"ignored":2}"#.into(),
            // A lone surrogate in a field nobody reads is still refused.
            r#"{"_id":"a","date":1,"other":"\ud800"}"#.into(),
            r#"{"_id":"a","date":1,"\udc00":1}"#.into(),
            r#"{"_id":"a","date":1,"n":1e400}"#.into(),
            r#"{"_id":"a","date":1} x"#.into(),
            r#"{"_id":"a","date":1.5}"#.into(),
            r#"{"_id":"a","date":18446744073709551615}"#.into(),
            r#"{"_id":"a","date":1,"kind":5}"#.into(),
            r#"{"_id":"a","date":1,"kind":null,"member":null}"#.into(),
            "[]".into(),
            "\"s\"".into(),
            "".into(),
            deep(MAX_DEPTH - 1),
            deep(MAX_DEPTH),
            deep(126),
            deep(127),
            deep(200),
        ];
        for body in &bodies {
            let b = body.as_bytes();
            let checked = incoming_checked(b).and_then(|i| from_incoming(i, b, Channel::Hook));
            let got = normalise(b, Channel::Hook);
            assert_eq!(format!("{got:?}"), format!("{checked:?}"), "body {body}");
        }
        // The walk alone accepts what the checked path accepts, and counts depth alike.
        assert!(incoming_fast(deep(MAX_DEPTH - 1).as_bytes()).is_some());
        assert!(incoming_fast(deep(MAX_DEPTH).as_bytes()).is_none());
        assert!(incoming_fast(bodies[2].as_bytes()).is_none());
        assert_eq!(
            normalise(bodies[2].as_bytes(), Channel::Hook).unwrap().id,
            "second"
        );
        assert_eq!(
            normalise(deep(MAX_DEPTH).as_bytes(), Channel::Hook).unwrap_err(),
            EventError::TooDeep
        );
    }

    #[test]
    fn hook_payload_gets_listing_fields() {
        let raw = r#"{"_id":"x","timestamp":{"milliseconds":5},"kind":"flag","name":"n"}"#;
        let ev = normalise(raw.as_bytes(), Channel::Hook).unwrap();
        assert_eq!(ev.date, 5);
        let rep = listing_rep(raw, ev.date, &ev.id);
        assert_eq!(rep["date"], 5);
        assert_eq!(rep["accesses"], serde_json::json!([]));
        assert_eq!(rep["description"], "");
        assert_eq!(rep["_links"]["self"]["href"], "/api/v2/auditlog/x");
    }
}
