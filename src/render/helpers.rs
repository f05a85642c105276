//! Helpers with handlebars.js semantics: the built-ins `if unless each with lookup`
//! (replacing handlebars-rust's), LaunchDarkly's `equal equalWithElse pathEncode
//! queryEncode basicAuthHeaderValue formatWithOffset`, and `__value`, which prints a
//! `{{path}}` the way handlebars.js does (strict: a missing field is an error).

use base64::Engine;
use chrono::{Datelike, TimeZone, Timelike};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, Output,
    RenderContext, RenderError, RenderErrorReason, Renderable, ScopedJson,
};
use serde_json::Value;

use super::js::{self, Js};

/// Name of the helper every plain `{{path}}` is rewritten to.
pub const VALUE_HELPER: &str = "__value";

/// Registers every helper on `registry`; `simple` dates use `tz`.
pub fn register(registry: &mut Handlebars<'static>, tz: chrono_tz::Tz) {
    registry.register_helper(VALUE_HELPER, Box::new(ValueHelper));
    registry.register_helper("if", Box::new(IfHelper { negate: false }));
    registry.register_helper("unless", Box::new(IfHelper { negate: true }));
    registry.register_helper("each", Box::new(EachHelper));
    registry.register_helper("with", Box::new(WithHelper));
    registry.register_helper("lookup", Box::new(LookupHelper));
    registry.register_helper("equal", Box::new(EqualHelper));
    registry.register_helper("equalWithElse", Box::new(EqualHelper));
    registry.register_helper("pathEncode", Box::new(EncodeHelper { component: false }));
    registry.register_helper("queryEncode", Box::new(EncodeHelper { component: true }));
    registry.register_helper("basicAuthHeaderValue", Box::new(BasicAuthHelper));
    registry.register_helper("formatWithOffset", Box::new(FormatWithOffsetHelper { tz }));
    for unsupported in [
        "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len", "raw", "log",
    ] {
        registry.unregister_helper(unsupported);
    }
}

/// The names `register` defines, which plain `{{name}}` expressions call instead of
/// looking up a field.
pub const HELPER_NAMES: &[&str] = &[
    VALUE_HELPER,
    "if",
    "unless",
    "each",
    "with",
    "lookup",
    "equal",
    "equalWithElse",
    "pathEncode",
    "queryEncode",
    "basicAuthHeaderValue",
    "formatWithOffset",
];

fn err(message: impl Into<String>) -> RenderError {
    RenderErrorReason::Other(message.into()).into()
}

/// Argument `i` as handlebars.js passes it: the options object when absent.
fn arg<'a>(h: &'a Helper<'_>, i: usize) -> Js<'a> {
    match h.param(i) {
        None => Js::Options,
        Some(p) if p.is_value_missing() => Js::Undefined,
        Some(p) => Js::Val(p.value()),
    }
}

/// handlebars.js looks paths up step by step in helper arguments: `a.b.c` with `a`
/// missing or null is a `TypeError` (reading `b` of undefined). Paths that resolved to a
/// value cannot have failed, so only missing or null values are walked.
fn check_argument_paths<'rc>(
    h: &Helper<'rc>,
    ctx: &'rc Context,
    rc: &RenderContext<'_, 'rc>,
) -> HelperResult {
    let all = h.params().iter().chain(h.hash().values());
    for p in all {
        if !(p.is_value_missing() || p.value().is_null()) {
            continue;
        }
        let Some(raw) = p.relative_path() else {
            continue;
        };
        for prefix in intermediate_prefixes(raw) {
            let v = rc.evaluate(ctx, prefix)?;
            if v.is_missing() || v.as_json().is_null() {
                return Err(err(format!(
                    "cannot read properties of {} (reading a field of `{prefix}` in `{raw}`)",
                    if v.is_missing() { "undefined" } else { "null" }
                )));
            }
        }
    }
    Ok(())
}

/// The prefixes of a path that are looked into: for `a.b.c`, `a` and `a.b`; `this.`,
/// `../` and `@root.` are scopes, not lookups.
fn intermediate_prefixes(raw: &str) -> Vec<&str> {
    let mut ends = Vec::new();
    let mut depth = 0;
    for (i, c) in raw.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' | '/' if depth == 0 => ends.push(i),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for end in ends {
        let prefix = &raw[..end];
        let last = prefix.rsplit(['.', '/']).next().unwrap_or(prefix);
        if matches!(last, "" | "." | ".." | "this" | "@root") {
            continue;
        }
        out.push(prefix);
    }
    out
}

fn write_escaped(out: &mut dyn Output, rc: &RenderContext<'_, '_>, text: &str) -> HelperResult {
    if rc.is_disable_escape() {
        out.write(text)?;
    } else {
        out.write(&js::html_escape(text))?;
    }
    Ok(())
}

fn to_scoped(v: Js<'_>) -> ScopedJson<'static> {
    match v {
        Js::Undefined => ScopedJson::Missing,
        Js::Options => ScopedJson::Derived(Value::String("[object Object]".into())),
        Js::Val(v) => ScopedJson::Derived(v.clone()),
        Js::Owned(v) => ScopedJson::Derived(v),
    }
}

/// `{{path}}`: a missing field is an error (strict mode); the value prints as JS does.
struct ValueHelper;

impl HelperDef for ValueHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let p = h
            .param(0)
            .ok_or_else(|| err("value expression without a path"))?;
        if p.is_value_missing() {
            let path = p.relative_path().map(String::as_str).unwrap_or("?");
            return Err(err(format!("\"{path}\" not defined (strict mode)")));
        }
        write_escaped(out, rc, &Js::Val(p.value()).display())
    }
}

/// `if` and `unless`, with handlebars.js truthiness (`[]` falsy, `{}` truthy, `includeZero`).
struct IfHelper {
    negate: bool,
}

impl HelperDef for IfHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let name = if self.negate { "unless" } else { "if" };
        if h.params().len() != 1 {
            return Err(err(format!("#{name} requires exactly one argument")));
        }
        check_argument_paths(h, ctx, rc)?;
        let include_zero = h
            .hash_get("includeZero")
            .is_some_and(|v| Js::Val(v.value()).truthy(false));
        let truthy = arg(h, 0).truthy(include_zero);
        let branch = if truthy != self.negate {
            h.template()
        } else {
            h.inverse()
        };
        match branch {
            Some(t) => t.render(r, ctx, rc, out),
            None => Ok(()),
        }
    }
}

/// Sets the block's context to the value at `path`/`key` (by path when the value came
/// from the data, else by value).
fn set_block_base(
    block: &mut BlockContext<'_>,
    base: Option<&Vec<String>>,
    key: &str,
    value: &Value,
) {
    match base {
        Some(path) => {
            let mut p = path.clone();
            p.push(key.to_owned());
            *block.base_path_mut() = p;
        }
        None => block.set_base_value(value.clone()),
    }
}

/// `each` over arrays and objects (JavaScript key order), `@index @key @first @last`,
/// block params; anything else (missing, null, strings) renders the `else` block.
struct EachHelper;

impl HelperDef for EachHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        check_argument_paths(h, ctx, rc)?;
        let param = h
            .param(0)
            .ok_or_else(|| err("Must pass iterator to #each"))?;
        let Some(template) = h.template() else {
            return Err(err("#each needs a block"));
        };
        let base = param.context_path();
        let entries: Vec<(Value, &Value)> = match param.value() {
            _ if param.is_value_missing() => Vec::new(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::from(i), v))
                .collect(),
            Value::Object(map) => js::js_key_order(map)
                .into_iter()
                .map(|k| (Value::String(k.clone()), &map[k]))
                .collect(),
            _ => Vec::new(),
        };
        if entries.is_empty() {
            return match h.inverse() {
                Some(t) => t.render(r, ctx, rc, out),
                None => Ok(()),
            };
        }
        rc.push_block(BlockContext::new());
        let len = entries.len();
        for (i, (key, value)) in entries.iter().enumerate() {
            if let Some(block) = rc.block_mut() {
                block.set_local_var("first", Value::Bool(i == 0));
                block.set_local_var("last", Value::Bool(i == len - 1));
                block.set_local_var("index", Value::from(i));
                block.set_local_var("key", key.clone());
                let key_str = match key {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                set_block_base(block, base, &key_str, value);
                if let Some(name) = h.block_param() {
                    let mut params = BlockParams::new();
                    params.add_value(name, (*value).clone())?;
                    block.set_block_params(params);
                } else if let Some((name, index_name)) = h.block_param_pair() {
                    let mut params = BlockParams::new();
                    params.add_value(name, (*value).clone())?;
                    params.add_value(index_name, key.clone())?;
                    block.set_block_params(params);
                }
            }
            template.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

/// `with`: renders the block in the value's context unless the value is empty
/// (`undefined`, `null`, `false`, `""`, `[]`; `0` and `{}` are not).
struct WithHelper;

impl HelperDef for WithHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        if h.params().len() != 1 {
            return Err(err("#with requires exactly one argument"));
        }
        check_argument_paths(h, ctx, rc)?;
        let param = h
            .param(0)
            .ok_or_else(|| err("#with requires exactly one argument"))?;
        let empty = !arg(h, 0).truthy(true);
        if empty {
            return match h.inverse() {
                Some(t) => t.render(r, ctx, rc, out),
                None => Ok(()),
            };
        }
        let Some(template) = h.template() else {
            return Ok(());
        };
        let mut block = BlockContext::new();
        match param.context_path() {
            Some(path) => *block.base_path_mut() = path.clone(),
            None => block.set_base_value(param.value().clone()),
        }
        if let Some(name) = h.block_param() {
            let mut params = BlockParams::new();
            params.add_value(name, param.value().clone())?;
            block.set_block_params(params);
        }
        rc.push_block(block);
        let result = template.render(r, ctx, rc, out);
        rc.pop_block();
        result
    }
}

/// `lookup obj field`: `obj` itself when falsy, else its own property `field`.
struct LookupHelper;

impl LookupHelper {
    fn lookup<'a>(h: &'a Helper<'_>) -> Js<'a> {
        let obj = arg(h, 0);
        if !obj.truthy(false) && !matches!(obj.value(), Some(Value::Array(_))) {
            return obj;
        }
        let field = arg(h, 1).to_js_string();
        let Js::Val(target) = obj else {
            return Js::Undefined;
        };
        match target {
            Value::Object(map) => map.get(&field).map_or(Js::Undefined, Js::Val),
            Value::Array(items) if field == "length" => Js::Owned(Value::from(items.len())),
            Value::Array(items) => field
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map_or(Js::Undefined, Js::Val),
            Value::String(s) if field == "length" => {
                Js::Owned(Value::from(s.encode_utf16().count()))
            }
            _ => Js::Undefined,
        }
    }
}

impl HelperDef for LookupHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        check_argument_paths(h, ctx, rc)?;
        Ok(to_scoped(Self::lookup(h)))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        check_argument_paths(h, ctx, rc)?;
        write_escaped(out, rc, &Self::lookup(h).display())
    }
}

/// `equal a b` (and `equalWithElse`): the block when `a === b`, else the `else` block.
struct EqualHelper;

impl HelperDef for EqualHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        if h.params().len() < 2 || h.template().is_none() {
            return Err(err(format!("{} needs two arguments and a block", h.name())));
        }
        check_argument_paths(h, ctx, rc)?;
        let branch = if arg(h, 0).strict_equals(&arg(h, 1)) {
            h.template()
        } else {
            h.inverse()
        };
        match branch {
            Some(t) => t.render(r, ctx, rc, out),
            None => Ok(()),
        }
    }
}

/// Defines `call` (escaped output) and `call_inner` (the value, for subexpressions) from
/// one function computing the helper's result.
macro_rules! value_helper {
    ($name:ident, |$self_:ident, $h:ident| $body:expr) => {
        impl HelperDef for $name {
            fn call_inner<'reg: 'rc, 'rc>(
                &self,
                h: &Helper<'rc>,
                _: &'reg Handlebars<'reg>,
                ctx: &'rc Context,
                rc: &mut RenderContext<'reg, 'rc>,
            ) -> Result<ScopedJson<'rc>, RenderError> {
                check_argument_paths(h, ctx, rc)?;
                Ok(ScopedJson::Derived(self.compute(h)?))
            }

            fn call<'reg: 'rc, 'rc>(
                &self,
                h: &Helper<'rc>,
                _: &'reg Handlebars<'reg>,
                ctx: &'rc Context,
                rc: &mut RenderContext<'reg, 'rc>,
                out: &mut dyn Output,
            ) -> HelperResult {
                check_argument_paths(h, ctx, rc)?;
                let v = self.compute(h)?;
                write_escaped(out, rc, &Js::Val(&v).display())
            }
        }

        impl $name {
            fn compute(&$self_, $h: &Helper<'_>) -> Result<Value, RenderError> {
                $body
            }
        }
    };
}

/// `pathEncode` (`encodeURI`) and `queryEncode` (`encodeURIComponent`) of `String(v)`.
struct EncodeHelper {
    component: bool,
}

value_helper!(EncodeHelper, |self, h| {
    let s = arg(h, 0).to_js_string();
    Ok(Value::String(if self.component {
        js::encode_uri_component(&s)
    } else {
        js::encode_uri(&s)
    }))
});

/// `basicAuthHeaderValue user password`: `Basic base64(user:password)`.
struct BasicAuthHelper;

value_helper!(BasicAuthHelper, |self, h| {
    let _ = self;
    let pair = format!("{}:{}", arg(h, 0).to_js_string(), arg(h, 1).to_js_string());
    Ok(Value::String(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )))
});

/// `formatWithOffset ms offsetSeconds format`: `milliseconds`, `seconds` (rounded),
/// `rfc3339` (`toISOString`, with `.sssZ`), `simple` (`yyyy-mm-dd h:MM:ss` in the
/// configured zone); any other format gives the milliseconds.
struct FormatWithOffsetHelper {
    tz: chrono_tz::Tz,
}

value_helper!(FormatWithOffsetHelper, |self, h| {
    let offset_ms = arg(h, 1).to_number() * 1000.0;
    // `new Date(ms + offset * 1000)`: a string epoch concatenates into a string the Date
    // constructor cannot parse, so it is an invalid date, as are out-of-range times.
    let epoch = arg(h, 0);
    let sum = match epoch.value() {
        Some(Value::String(_) | Value::Object(_) | Value::Array(_)) | None => f64::NAN,
        Some(_) => epoch.to_number() + offset_ms,
    };
    let t = if sum.is_finite() && sum.abs() <= 8.64e15 {
        sum.trunc() + 0.0
    } else {
        f64::NAN
    };
    let t_value = number_value(t);
    let format = match arg(h, 2) {
        Js::Val(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    match format.as_str() {
        "milliseconds" => Ok(t_value),
        "seconds" => Ok(number_value((t / 1000.0 + 0.5).floor())),
        "rfc3339" => {
            let dt = to_datetime(t).ok_or_else(|| err("RangeError: Invalid time value"))?;
            Ok(Value::String(iso_string(&dt)))
        }
        "simple" => {
            let dt = to_datetime(t).ok_or_else(|| err("TypeError: Invalid date"))?;
            let local = dt.with_timezone(&self.tz);
            let hour12 = match local.hour() % 12 {
                0 => 12,
                h => h,
            };
            Ok(Value::String(format!(
                "{:04}-{:02}-{:02} {}:{:02}:{:02}",
                local.year(),
                local.month(),
                local.day(),
                hour12,
                local.minute(),
                local.second()
            )))
        }
        _ => Ok(t_value),
    }
});

fn number_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(js::number_to_string(f)))
    }
}

/// `new Date(t)`: valid for |t| <= 8.64e15 ms.
fn to_datetime(t: f64) -> Option<chrono::DateTime<chrono::Utc>> {
    if !t.is_finite() || t.abs() > 8.64e15 {
        return None;
    }
    chrono::Utc.timestamp_millis_opt(t.trunc() as i64).single()
}

/// `Date#toISOString()`: `YYYY-MM-DDTHH:mm:ss.sssZ`, six-digit signed years outside 0..=9999.
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
    use super::intermediate_prefixes;

    #[test]
    fn prefixes() {
        assert_eq!(intermediate_prefixes("a.b.c"), vec!["a", "a.b"]);
        assert_eq!(intermediate_prefixes("this.a.b"), vec!["this.a"]);
        assert_eq!(intermediate_prefixes("../a.b"), vec!["../a"]);
        assert_eq!(intermediate_prefixes("@root.a.b"), vec!["@root.a"]);
        assert_eq!(intermediate_prefixes("a.[b.c].d"), vec!["a", "a.[b.c]"]);
        assert!(intermediate_prefixes("a").is_empty());
    }
}
