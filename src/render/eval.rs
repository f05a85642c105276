//! The evaluator: runs a template parsed by the `handlebars` crate with handlebars.js 4.7.7
//! semantics (strict mode), as LaunchDarkly's framework renders.
//!
//! The crate's parser gives the syntax tree (grammar, whitespace control, standalone lines,
//! positions); [`compile`] lowers it once into [`Node`]s with pre-split paths and resolved
//! helpers, and [`render`] walks them over a `serde_json::Value` without per-node allocation.
//! Rules, as in handlebars.js:
//! - `{{a.b}}` is a strict lookup: a missing field, or a lookup through `null`, `undefined`
//!   or a non-object, is an error. Helper arguments are not strict: a missing field is
//!   `undefined`, but reading a field of `undefined` or `null` is a `TypeError`.
//! - Values print as `String(v)`: arrays `a,b`, objects `[object Object]`, `null` and
//!   `undefined` nothing; `{{x}}` escapes `& < > " ' \` =`, `{{{x}}}` nothing.
//! - `if`/`unless`: `[]` is falsy, `{}` truthy; `each` iterates arrays and objects (keys in
//!   `Object.keys` order) with `@index @key @first @last`; `each`/`with` over a missing value
//!   render the `else` block; a helper called with too few arguments receives the `options`
//!   object in their place.

use base64::Engine;
use chrono::{Datelike, TimeZone, Timelike};
use handlebars::template::HelperTemplate;
use handlebars::template::{BlockParam, Parameter, Template, TemplateElement, TemplateMapping};
use handlebars::Path;
use serde_json::Value;

use super::js::{self, Js};

/// A position in the template (1-based line and column).
pub type Pos = (usize, usize);

/// A render failure at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    pub message: String,
    pub pos: Option<Pos>,
}

type R<T> = Result<T, EvalError>;

fn fail<T>(message: impl Into<String>) -> R<T> {
    Err(EvalError {
        message: message.into(),
        pos: None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HelperKind {
    If,
    Unless,
    Each,
    With,
    Lookup,
    Equal,
    PathEncode,
    QueryEncode,
    BasicAuth,
    FormatWithOffset,
}

fn helper_kind(name: &str) -> Option<HelperKind> {
    Some(match name {
        "if" => HelperKind::If,
        "unless" => HelperKind::Unless,
        "each" => HelperKind::Each,
        "with" => HelperKind::With,
        "lookup" => HelperKind::Lookup,
        "equal" | "equalWithElse" => HelperKind::Equal,
        "pathEncode" => HelperKind::PathEncode,
        "queryEncode" => HelperKind::QueryEncode,
        "basicAuthHeaderValue" => HelperKind::BasicAuth,
        "formatWithOffset" => HelperKind::FormatWithOffset,
        _ => return None,
    })
}

/// A path such as `../a.b`, `this.[x y]`, `@index` or `@root.kind`, pre-split.
#[derive(Debug, Clone)]
struct PathExpr {
    depth: usize,
    data: bool,
    segs: Vec<String>,
    raw: String,
}

fn parse_path(raw: &str) -> PathExpr {
    let mut rest = raw;
    let mut depth = 0;
    while let Some(r) = rest.strip_prefix("../") {
        depth += 1;
        rest = r;
    }
    if rest == ".." {
        depth += 1;
        rest = "";
    }
    let data = rest.starts_with('@');
    if data {
        rest = &rest[1..];
    }
    let mut segs = Vec::new();
    let mut current = String::new();
    let mut in_bracket = false;
    let mut bracketed = false;
    for c in rest.chars() {
        match c {
            '[' if !in_bracket => {
                in_bracket = true;
                bracketed = true;
            }
            ']' if in_bracket => in_bracket = false,
            '.' | '/' if !in_bracket => {
                if !current.is_empty() || bracketed {
                    segs.push((std::mem::take(&mut current), bracketed));
                }
                bracketed = false;
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() || bracketed {
        segs.push((current, bracketed));
    }
    // A leading `this` (unbracketed) names the current context, as does `.`.
    if !data && segs.first().is_some_and(|(s, b)| !b && s == "this") {
        segs.remove(0);
    }
    PathExpr {
        depth,
        data,
        segs: segs.into_iter().map(|(s, _)| s).collect(),
        raw: raw.to_owned(),
    }
}

#[derive(Debug, Clone)]
enum Expr {
    Path(PathExpr),
    Literal(Value),
    Sub(Box<Call>),
}

#[derive(Debug, Clone)]
enum Head {
    Helper(HelperKind),
    /// A plain path: a value, or a block over a value.
    Path(PathExpr),
    /// A name that is neither a helper nor usable as a path (it has arguments).
    Unknown(String),
    Literal(Value),
}

#[derive(Debug, Clone)]
pub struct Call {
    head: Head,
    args: Vec<Expr>,
    hash: Vec<(String, Expr)>,
}

/// A lowered template node.
#[derive(Debug, Clone)]
pub enum Node {
    Raw(String),
    Out {
        call: Call,
        escape: bool,
        pos: Option<Pos>,
    },
    Block {
        call: Call,
        body: Vec<Node>,
        inverse: Option<Vec<Node>>,
        params: Vec<String>,
        pos: Option<Pos>,
    },
}

fn path_raw(p: &Path) -> &str {
    match p {
        Path::Relative((_, raw)) => raw,
        Path::Local((_, _, raw)) => raw,
    }
}

fn lower_param(p: &Parameter) -> R<Expr> {
    Ok(match p {
        Parameter::Path(path) => Expr::Path(parse_path(path_raw(path))),
        Parameter::Name(n) => Expr::Path(parse_path(n)),
        Parameter::Literal(v) => Expr::Literal(v.clone()),
        Parameter::Subexpression(sub) => match sub.as_element() {
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                Expr::Sub(Box::new(lower_call(ht)?))
            }
            _ => return fail("unsupported subexpression"),
        },
        _ => return fail("unsupported parameter"),
    })
}

fn lower_call(ht: &HelperTemplate) -> R<Call> {
    let name = match &ht.name {
        Parameter::Name(n) => Some(n.as_str()),
        Parameter::Path(p) => Some(path_raw(p)),
        _ => None,
    };
    let has_args = !ht.params.is_empty() || !ht.hash.is_empty();
    let head = match (&ht.name, name.and_then(helper_kind)) {
        (_, Some(kind)) => Head::Helper(kind),
        (Parameter::Literal(v), None) => Head::Literal(v.clone()),
        (Parameter::Subexpression(_), None) => return fail("a subexpression cannot name a helper"),
        (_, None) if has_args => Head::Unknown(name.unwrap_or("").to_owned()),
        (_, None) => Head::Path(parse_path(name.unwrap_or(""))),
    };
    let args = ht.params.iter().map(lower_param).collect::<R<Vec<_>>>()?;
    let mut hash = Vec::with_capacity(ht.hash.len());
    for (k, v) in &ht.hash {
        hash.push((k.clone(), lower_param(v)?));
    }
    hash.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Call { head, args, hash })
}

fn block_params(bp: &Option<BlockParam>) -> Vec<String> {
    let name = |p: &Parameter| match p {
        Parameter::Name(n) => n.clone(),
        Parameter::Path(p) => path_raw(p).to_owned(),
        _ => String::new(),
    };
    match bp {
        Some(BlockParam::Single(p)) => vec![name(p)],
        Some(BlockParam::Pair((a, b))) => vec![name(a), name(b)],
        _ => Vec::new(),
    }
}

/// Lowers a parsed template.
pub fn compile(t: &Template) -> R<Vec<Node>> {
    let mut nodes = Vec::with_capacity(t.elements.len());
    for (i, el) in t.elements.iter().enumerate() {
        let pos = t.mapping.get(i).map(|m: &TemplateMapping| (m.0, m.1));
        let at = |e: EvalError| EvalError {
            pos: e.pos.or(pos),
            ..e
        };
        match el {
            TemplateElement::RawString(s) => nodes.push(Node::Raw(s.clone())),
            TemplateElement::Comment(_) => {}
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                let escape = matches!(el, TemplateElement::Expression(_));
                nodes.push(Node::Out {
                    call: lower_call(ht).map_err(at)?,
                    escape,
                    pos,
                });
            }
            TemplateElement::HelperBlock(ht) => {
                let call = lower_call(ht).map_err(at)?;
                let body = match &ht.template {
                    Some(t) => compile(t)?,
                    None => Vec::new(),
                };
                let inverse = match &ht.inverse {
                    Some(t) => Some(compile(t)?),
                    None => None,
                };
                // `{{^x}}...{{/x}}` parses with only an inverse.
                let (body, inverse) = if ht.template.is_none() && inverse.is_some() {
                    (Vec::new(), inverse.or(Some(body)))
                } else {
                    (body, inverse)
                };
                nodes.push(Node::Block {
                    call,
                    body,
                    inverse,
                    params: block_params(&ht.block_param),
                    pos,
                });
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(EvalError {
                    message: "partials are not supported".into(),
                    pos,
                });
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(EvalError {
                    message: "decorators are not supported".into(),
                    pos,
                });
            }
            _ => {
                return Err(EvalError {
                    message: "unsupported template element".into(),
                    pos,
                })
            }
        }
    }
    Ok(nodes)
}

/// `@index`, `@key`, `@first`, `@last` of one `each` iteration.
struct DataFrame<'a> {
    index: usize,
    key: Js<'a>,
    first: bool,
    last: bool,
}

/// Evaluated helper arguments (rarely more than three).
type Args<'a> = smallvec::SmallVec<[Js<'a>; 3]>;

/// Limits on one render: a deadline and a flag that stops it (the client went away, the
/// service is stopping). Checked every [`CHECK_EVERY`] steps, so a render that cannot finish
/// in time ends with an error instead of holding a core.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    pub deadline: Option<std::time::Instant>,
    /// What the deadline was, for the message.
    pub limit: std::time::Duration,
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Steps (nodes and `each` iterations) between two checks of the budget.
const CHECK_EVERY: u32 = 1024;

struct State<'a> {
    root: &'a Value,
    budget: &'a Budget,
    steps: u32,
    contexts: Vec<Js<'a>>,
    data: Vec<DataFrame<'a>>,
    block_params: Vec<(String, Js<'a>)>,
    out: String,
    max_output: usize,
    tz: chrono_tz::Tz,
}

/// Renders lowered nodes over `data`.
pub fn render(nodes: &[Node], data: &Value, tz: chrono_tz::Tz, max_output: usize) -> R<String> {
    render_within(nodes, data, tz, max_output, &Budget::default())
}

/// Renders lowered nodes over `data` within `budget`.
pub fn render_within(
    nodes: &[Node],
    data: &Value,
    tz: chrono_tz::Tz,
    max_output: usize,
    budget: &Budget,
) -> R<String> {
    let mut st = State {
        root: data,
        budget,
        steps: 0,
        contexts: vec![Js::Val(data)],
        data: Vec::new(),
        block_params: Vec::new(),
        out: String::with_capacity(4096),
        max_output,
        tz,
    };
    st.nodes(nodes)?;
    Ok(st.out)
}

fn with_pos(pos: Option<Pos>) -> impl Fn(EvalError) -> EvalError {
    move |e| EvalError {
        pos: e.pos.or(pos),
        ..e
    }
}

/// One property lookup as handlebars.js's `lookupProperty`: a `TypeError` on `undefined`
/// and `null`, own properties only.
fn step<'a>(cur: &Js<'a>, seg: &str, raw: &str) -> R<Js<'a>> {
    let v = match cur {
        Js::Undefined => {
            return fail(format!(
                "cannot read properties of undefined (reading '{seg}') in `{raw}`"
            ))
        }
        Js::Options => return Ok(Js::Undefined),
        Js::Val(v) => Some(*v),
        Js::Owned(_) => None,
    };
    if let Some(v) = v {
        return Ok(match v {
            Value::Null => {
                return fail(format!(
                    "cannot read properties of null (reading '{seg}') in `{raw}`"
                ))
            }
            Value::Object(m) => get(m, seg).map_or(Js::Undefined, Js::Val),
            Value::Array(items) if seg == "length" => Js::Owned(Value::from(items.len())),
            Value::Array(items) => index(seg)
                .and_then(|i| items.get(i))
                .map_or(Js::Undefined, Js::Val),
            Value::String(s) => string_prop(s, seg),
            _ => Js::Undefined,
        });
    }
    // An owned value (a helper's result): the same rules, cloning the child.
    let Js::Owned(v) = cur else {
        return Ok(Js::Undefined);
    };
    Ok(match v {
        Value::Null => {
            return fail(format!(
                "cannot read properties of null (reading '{seg}') in `{raw}`"
            ))
        }
        Value::Object(m) => m.get(seg).map_or(Js::Undefined, |x| Js::Owned(x.clone())),
        Value::Array(items) if seg == "length" => Js::Owned(Value::from(items.len())),
        Value::Array(items) => index(seg)
            .and_then(|i| items.get(i))
            .map_or(Js::Undefined, |x| Js::Owned(x.clone())),
        Value::String(s) => string_prop(s, seg),
        _ => Js::Undefined,
    })
}

fn index(seg: &str) -> Option<usize> {
    if seg.is_empty()
        || (seg.len() > 1 && seg.starts_with('0'))
        || !seg.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    seg.parse().ok()
}

fn string_prop<'a>(s: &str, seg: &str) -> Js<'a> {
    let units: Vec<u16> = s.encode_utf16().collect();
    if seg == "length" {
        return Js::Owned(Value::from(units.len()));
    }
    match index(seg).and_then(|i| units.get(i)) {
        Some(u) => Js::Owned(Value::String(String::from_utf16_lossy(&[*u]))),
        None => Js::Undefined,
    }
}

/// The last step of a strict lookup: handlebars.js's `strict(obj, name)` requires a truthy
/// `obj` having `name` (`name in obj`), so only objects and arrays pass.
fn strict_step<'a>(cur: &Js<'a>, seg: &str, raw: &str) -> R<Js<'a>> {
    let missing = || fail(format!("\"{seg}\" not defined (strict mode): `{raw}`"));
    match cur {
        Js::Val(Value::Object(m)) => get(m, seg).map_or_else(missing, |v| Ok(Js::Val(v))),
        Js::Val(Value::Array(items)) | Js::Owned(Value::Array(items))
            if seg == "length" || index(seg).is_some_and(|i| i < items.len()) =>
        {
            step(cur, seg, raw)
        }
        Js::Owned(Value::Object(m)) if m.contains_key(seg) => step(cur, seg, raw),
        // `name in obj` on a truthy primitive is a TypeError in JavaScript.
        c if c.truthy(false)
            && !matches!(
                c,
                Js::Val(Value::Object(_) | Value::Array(_))
                    | Js::Owned(Value::Object(_) | Value::Array(_))
            ) =>
        {
            fail(format!(
                "TypeError: cannot use 'in' operator to search for '{seg}' in `{raw}`"
            ))
        }
        _ => missing(),
    }
}

/// A field of an object. Small objects are scanned (faster than hashing the key).
#[inline]
fn get<'v>(m: &'v serde_json::Map<String, Value>, key: &str) -> Option<&'v Value> {
    if m.len() <= 32 {
        // Length and first byte rule out most keys without a call to memcmp.
        let (len, first) = (key.len(), key.as_bytes().first().copied());
        m.iter()
            .find(|(k, _)| {
                k.len() == len && k.as_bytes().first().copied() == first && k.as_str() == key
            })
            .map(|(_, v)| v)
    } else {
        m.get(key)
    }
}

fn truthy_with_zero(v: &Js<'_>) -> bool {
    v.truthy(true)
}

impl<'a> State<'a> {
    fn write(&mut self, text: &str, escape: bool) -> R<()> {
        if escape {
            escape_into(&mut self.out, text);
        } else {
            self.out.push_str(text);
        }
        if self.out.len() > self.max_output {
            return fail(format!("output exceeds {} bytes", self.max_output));
        }
        Ok(())
    }

    /// Counts a step; every [`CHECK_EVERY`] steps, checks the budget.
    #[inline(always)]
    fn tick(&mut self) -> R<()> {
        self.steps = self.steps.wrapping_add(1);
        if self.steps % CHECK_EVERY != 0 {
            return Ok(());
        }
        self.check_budget()
    }

    #[cold]
    #[inline(never)]
    fn check_budget(&self) -> R<()> {
        if let Some(cancel) = &self.budget.cancel {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return fail(
                    "rendering was stopped (the request ended or the service is stopping)",
                );
            }
        }
        if let Some(deadline) = self.budget.deadline {
            if std::time::Instant::now() > deadline {
                return fail(format!(
                    "rendering took longer than the {}s limit (AUDITHOOK_RENDER_TIMEOUT)",
                    self.budget.limit.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    fn nodes(&mut self, nodes: &[Node]) -> R<()> {
        for node in nodes {
            self.tick()?;
            match node {
                Node::Raw(s) => self.write(s, false)?,
                Node::Out { call, escape, pos } => {
                    self.out_node(call, *escape).map_err(with_pos(*pos))?
                }
                Node::Block {
                    call,
                    body,
                    inverse,
                    params,
                    pos,
                } => self
                    .block(call, body, inverse.as_deref(), params)
                    .map_err(with_pos(*pos))?,
            }
        }
        Ok(())
    }

    /// Resolves a path; `strict` for `{{path}}` (the last step must exist).
    #[inline]
    fn resolve(&self, p: &PathExpr, strict: bool) -> R<Js<'a>> {
        // The common case: a plain path from the current context through objects whose
        // keys are all there. Anything else takes the general path from the start.
        if !p.data && p.depth == 0 {
            if let Some(Js::Val(mut v)) = self.contexts.last() {
                let shadowed = !self.block_params.is_empty()
                    && p.segs
                        .first()
                        .is_some_and(|f| self.block_params.iter().any(|(n, _)| n == f));
                if !shadowed {
                    let mut found = true;
                    for seg in &p.segs {
                        match v {
                            Value::Object(m) => match get(m, seg) {
                                Some(x) => v = x,
                                None => {
                                    found = false;
                                    break;
                                }
                            },
                            _ => {
                                found = false;
                                break;
                            }
                        }
                    }
                    if found {
                        return Ok(Js::Val(v));
                    }
                }
            }
        }
        self.resolve_general(p, strict)
    }

    fn resolve_general(&self, p: &PathExpr, strict: bool) -> R<Js<'a>> {
        let mut segs = p.segs.iter();
        let mut cur = if p.data {
            let Some(name) = segs.next() else {
                return fail(format!("invalid data path `{}`", p.raw));
            };
            if name == "root" {
                Js::Val(self.root)
            } else {
                let frame = self
                    .data
                    .len()
                    .checked_sub(1 + p.depth)
                    .and_then(|i| self.data.get(i));
                match (frame, name.as_str()) {
                    (Some(f), "index") => Js::Owned(Value::from(f.index)),
                    (Some(f), "key") => f.key.clone(),
                    (Some(f), "first") => Js::Owned(Value::Bool(f.first)),
                    (Some(f), "last") => Js::Owned(Value::Bool(f.last)),
                    _ if strict && p.segs.len() == 1 => {
                        return fail(format!("\"{name}\" not defined (strict mode): `{}`", p.raw))
                    }
                    _ => Js::Undefined,
                }
            }
        } else {
            let first = p.segs.first();
            let param = (p.depth == 0)
                .then(|| first.and_then(|f| self.block_params.iter().rev().find(|(n, _)| n == f)))
                .flatten();
            match param {
                Some((_, v)) => {
                    segs.next();
                    v.clone()
                }
                None => self
                    .contexts
                    .len()
                    .checked_sub(1 + p.depth)
                    .and_then(|i| self.contexts.get(i))
                    .cloned()
                    .unwrap_or(Js::Undefined),
            }
        };
        let mut segs = segs.peekable();
        while let Some(seg) = segs.next() {
            if strict && segs.peek().is_none() {
                return strict_step(&cur, seg, &p.raw);
            }
            cur = step(&cur, seg, &p.raw)?;
        }
        Ok(cur)
    }

    fn eval(&mut self, e: &Expr) -> R<Js<'a>> {
        match e {
            Expr::Path(p) => self.resolve(p, false),
            Expr::Literal(v) => Ok(Js::Owned(v.clone())),
            Expr::Sub(call) => self.call_value(call),
        }
    }

    fn args(&mut self, call: &Call) -> R<Args<'a>> {
        let mut out = Args::new();
        for a in &call.args {
            out.push(self.eval(a)?);
        }
        Ok(out)
    }

    fn hash_truthy(&mut self, call: &Call, key: &str) -> R<bool> {
        match call.hash.iter().find(|(k, _)| k == key) {
            Some((_, e)) => Ok(self.eval(e)?.truthy(false)),
            None => Ok(false),
        }
    }

    /// A helper used for its value (`{{helper ...}}` or a subexpression).
    fn call_value(&mut self, call: &Call) -> R<Js<'a>> {
        if let Head::Path(p) = &call.head {
            return self.resolve(p, true);
        }
        let args = self.args(call)?;
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Js::Options);
        match &call.head {
            Head::Path(p) => self.resolve(p, true),
            Head::Literal(v) => Ok(Js::Owned(v.clone())),
            Head::Unknown(name) => fail(format!(
                "\"{name}\" not defined (strict mode): no helper or field named `{name}`"
            )),
            Head::Helper(kind) => match kind {
                HelperKind::Lookup => {
                    let obj = arg(0);
                    if !obj.truthy(false) && !matches!(obj.value(), Some(Value::Array(_))) {
                        return Ok(obj);
                    }
                    let field = arg(1).to_js_string();
                    step(&obj, &field, "lookup")
                }
                HelperKind::PathEncode => Ok(Js::Owned(Value::String(js::encode_uri(
                    &arg(0).to_js_string(),
                )))),
                HelperKind::QueryEncode => Ok(Js::Owned(Value::String(js::encode_uri_component(
                    &arg(0).to_js_string(),
                )))),
                HelperKind::BasicAuth => {
                    let pair = format!("{}:{}", arg(0).to_js_string(), arg(1).to_js_string());
                    Ok(Js::Owned(Value::String(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    ))))
                }
                HelperKind::FormatWithOffset => {
                    format_with_offset(&arg(0), &arg(1), &arg(2), self.tz)
                }
                // Block helpers used inline render nothing (their block is a no-op), but
                // their arguments are still checked.
                HelperKind::If | HelperKind::Unless => {
                    if args.len() != 1 {
                        return fail("#if requires exactly one argument");
                    }
                    Ok(Js::Owned(Value::String(String::new())))
                }
                HelperKind::With | HelperKind::Each | HelperKind::Equal => {
                    Ok(Js::Owned(Value::String(String::new())))
                }
            },
        }
    }

    fn out_node(&mut self, call: &Call, escape: bool) -> R<()> {
        match self.call_value(call)? {
            Js::Val(Value::String(s)) => self.write(s, escape),
            Js::Owned(Value::String(s)) => self.write(&s, escape),
            v => {
                let text = v.display();
                self.write(&text, escape)
            }
        }
    }

    fn with_context(&mut self, ctx: Js<'a>, body: &[Node]) -> R<()> {
        self.contexts.push(ctx);
        let r = self.nodes(body);
        self.contexts.pop();
        r
    }

    fn block(
        &mut self,
        call: &Call,
        body: &[Node],
        inverse: Option<&[Node]>,
        params: &[String],
    ) -> R<()> {
        let inverse = inverse.unwrap_or(&[]);
        let kind = match &call.head {
            Head::Helper(k) => *k,
            Head::Path(p) => {
                let v = self.resolve(p, true)?;
                return self.block_helper_missing(v, body, inverse, params);
            }
            Head::Unknown(name) => {
                return fail(format!(
                    "\"{name}\" not defined (strict mode): no helper or field named `{name}`"
                ))
            }
            Head::Literal(_) => return fail("a literal cannot open a block"),
        };
        // The block helpers of one argument take it without building an argument list.
        // Any other count has every argument evaluated first (an argument's own error
        // comes first, as in handlebars.js), then is refused.
        if let ([arg], HelperKind::If | HelperKind::Unless | HelperKind::With | HelperKind::Each) =
            (call.args.as_slice(), kind)
        {
            let v = self.eval(arg)?;
            return match kind {
                HelperKind::If | HelperKind::Unless => {
                    let include_zero = self.hash_truthy(call, "includeZero")?;
                    let truthy = v.truthy(include_zero);
                    self.nodes(if truthy != (kind == HelperKind::Unless) {
                        body
                    } else {
                        inverse
                    })
                }
                HelperKind::With => self.with_block(v, body, inverse, params),
                _ => self.each(v, body, inverse, params),
            };
        }
        let args = self.args(call)?;
        match kind {
            HelperKind::If => fail("#if requires exactly one argument"),
            HelperKind::Unless => fail("#unless requires exactly one argument"),
            HelperKind::Equal => {
                if args.len() != 2 {
                    return fail("equal needs exactly two arguments (TypeError: options.fn is not a function)");
                }
                self.nodes(if args[0].strict_equals(&args[1]) {
                    body
                } else {
                    inverse
                })
            }
            HelperKind::With => fail("#with requires exactly one argument"),
            HelperKind::Each => fail("Must pass iterator to #each"),
            _ => fail("this helper cannot open a block"),
        }
    }

    /// `{{#with v}}`: the body in `v`'s context (with `as |name|`, `v` named too), or the
    /// inverse when `v` is falsy.
    fn with_block(
        &mut self,
        v: Js<'a>,
        body: &[Node],
        inverse: &[Node],
        params: &[String],
    ) -> R<()> {
        if !truthy_with_zero(&v) {
            return self.nodes(inverse);
        }
        let pushed = params.first().map(|n| (n.clone(), v.clone()));
        if let Some(p) = pushed.clone() {
            self.block_params.push(p);
        }
        let r = self.with_context(v, body);
        if pushed.is_some() {
            self.block_params.pop();
        }
        r
    }

    /// `{{#value}}` where `value` is not a helper (handlebars.js `blockHelperMissing`).
    fn block_helper_missing(
        &mut self,
        v: Js<'a>,
        body: &[Node],
        inverse: &[Node],
        params: &[String],
    ) -> R<()> {
        match v.value() {
            Some(Value::Bool(true)) => self.nodes(body),
            Some(Value::Bool(false)) | Some(Value::Null) | None if !matches!(v, Js::Options) => {
                self.nodes(inverse)
            }
            Some(Value::Array(a)) if a.is_empty() => self.nodes(inverse),
            Some(Value::Array(_)) => self.each(v, body, inverse, params),
            _ => self.with_context(v, body),
        }
    }

    fn each(&mut self, v: Js<'a>, body: &[Node], inverse: &[Node], params: &[String]) -> R<()> {
        let items: Vec<(Js<'a>, Js<'a>)> = match &v {
            Js::Val(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, x)| (Js::Owned(Value::from(i)), Js::Val(x)))
                .collect(),
            Js::Val(Value::Object(map)) => js::js_key_order(map)
                .into_iter()
                .map(|k| (Js::Owned(Value::String(k.clone())), Js::Val(&map[k])))
                .collect(),
            Js::Owned(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, x)| (Js::Owned(Value::from(i)), Js::Owned(x.clone())))
                .collect(),
            Js::Owned(Value::Object(map)) => js::js_key_order(map)
                .into_iter()
                .map(|k| {
                    (
                        Js::Owned(Value::String(k.clone())),
                        Js::Owned(map[k].clone()),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        if items.is_empty() {
            return self.nodes(inverse);
        }
        let n = items.len();
        for (i, (key, item)) in items.into_iter().enumerate() {
            self.tick()?;
            self.data.push(DataFrame {
                index: i,
                key: key.clone(),
                first: i == 0,
                last: i + 1 == n,
            });
            let mut pushed = 0;
            if let Some(name) = params.first() {
                self.block_params.push((name.clone(), item.clone()));
                pushed += 1;
            }
            if let Some(name) = params.get(1) {
                self.block_params.push((name.clone(), key));
                pushed += 1;
            }
            let r = self.with_context(item, body);
            self.block_params.truncate(self.block_params.len() - pushed);
            self.data.pop();
            r?;
        }
        Ok(())
    }
}

/// Bytes `{{x}}` escapes.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'"' as usize] = true;
    t[b'\'' as usize] = true;
    t[b'`' as usize] = true;
    t[b'=' as usize] = true;
    t
};

fn escape_into(out: &mut String, s: &str) {
    // Most values hold nothing to escape: copy them whole.
    if !s.bytes().any(|b| NEEDS_ESCAPE[b as usize]) {
        out.push_str(s);
        return;
    }
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#x27;",
            b'`' => "&#x60;",
            b'=' => "&#x3D;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

/// `formatWithOffset ms offsetSeconds format` as the framework: `new Date(ms + offset * 1000)`
/// then `milliseconds`, `seconds` (rounded), `rfc3339` (`toISOString`), `simple`
/// (`yyyy-mm-dd h:MM:ss` in `tz`); any other format gives the milliseconds.
fn format_with_offset<'a>(
    epoch: &Js<'_>,
    offset: &Js<'_>,
    format: &Js<'_>,
    tz: chrono_tz::Tz,
) -> R<Js<'a>> {
    let offset_ms = offset.to_number() * 1000.0;
    // A string epoch concatenates into a string the Date constructor cannot parse.
    let sum = match epoch.value() {
        Some(Value::String(_) | Value::Object(_) | Value::Array(_)) | None => f64::NAN,
        Some(_) => epoch.to_number() + offset_ms,
    };
    let t = if sum.is_finite() && sum.abs() <= 8.64e15 {
        sum.trunc() + 0.0
    } else {
        f64::NAN
    };
    let format = match format {
        Js::Val(Value::String(s)) => s.as_str(),
        Js::Owned(Value::String(s)) => s.as_str(),
        _ => "",
    };
    let text = match format {
        "seconds" => return Ok(number(((t / 1000.0) + 0.5).floor())),
        "rfc3339" => {
            let dt = datetime(t).ok_or_else(|| EvalError {
                message: "RangeError: Invalid time value".into(),
                pos: None,
            })?;
            iso_string(&dt)
        }
        "simple" => {
            let dt = datetime(t).ok_or_else(|| EvalError {
                message: "TypeError: Invalid date".into(),
                pos: None,
            })?;
            let local = dt.with_timezone(&tz);
            let hour12 = match local.hour() % 12 {
                0 => 12,
                h => h,
            };
            format!(
                "{:04}-{:02}-{:02} {}:{:02}:{:02}",
                local.year(),
                local.month(),
                local.day(),
                hour12,
                local.minute(),
                local.second()
            )
        }
        _ => return Ok(number(t)),
    };
    Ok(Js::Owned(Value::String(text)))
}

fn number<'a>(f: f64) -> Js<'a> {
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        Js::Owned(Value::from(f as i64))
    } else {
        Js::Owned(Value::String(js::number_to_string(f)))
    }
}

fn datetime(t: f64) -> Option<chrono::DateTime<chrono::Utc>> {
    if !t.is_finite() {
        return None;
    }
    chrono::Utc.timestamp_millis_opt(t as i64).single()
}

/// `Date#toISOString()`: six-digit signed years outside 0..=9999.
fn iso_string(dt: &chrono::DateTime<chrono::Utc>) -> String {
    let year = dt.year();
    let y = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{}{:06}", if year < 0 { '-' } else { '+' }, year.abs())
    };
    format!(
        "{y}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.timestamp_subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = parse_path("../../a.[b c]/d");
        assert_eq!(
            (p.depth, p.data, p.segs.clone()),
            (2, false, vec!["a".into(), "b c".into(), "d".into()])
        );
        let p = parse_path("this.values");
        assert_eq!(p.segs, vec!["values"]);
        let p = parse_path("@root.kind");
        assert!(p.data);
        assert_eq!(p.segs, vec!["root", "kind"]);
        assert!(parse_path("this").segs.is_empty());
        assert_eq!(parse_path("[this]").segs, vec!["this"]);
    }
}
