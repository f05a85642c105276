//! JavaScript value semantics the framework's renderer (handlebars.js) has and
//! handlebars-rust does not: `String(v)`, truthiness, `Number#toString`, `encodeURI`.

use serde_json::Value;

/// A value as a handlebars.js helper sees it.
#[derive(Debug, Clone)]
pub enum Js<'a> {
    /// A missing field.
    Undefined,
    /// A JSON value.
    Val(&'a Value),
    /// An owned JSON value (a helper's result).
    Owned(Value),
    /// The `options` object a helper receives in place of a missing argument.
    Options,
}

impl Js<'_> {
    /// The JSON value, if there is one.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Js::Val(v) => Some(v),
            Js::Owned(v) => Some(v),
            _ => None,
        }
    }

    /// JavaScript `String(v)`.
    pub fn to_js_string(&self) -> String {
        match self {
            Js::Undefined => "undefined".into(),
            Js::Options => "[object Object]".into(),
            Js::Val(v) => value_to_string(v),
            Js::Owned(v) => value_to_string(v),
        }
    }

    /// What `{{x}}` prints before escaping (handlebars.js `escapeExpression`):
    /// `undefined` and `null` print nothing, everything else `String(v)`.
    pub fn display(&self) -> String {
        match self.value() {
            Some(Value::Null) => String::new(),
            None if matches!(self, Js::Undefined) => String::new(),
            _ => self.to_js_string(),
        }
    }

    /// JavaScript `Number(v)` for the values helpers receive.
    pub fn to_number(&self) -> f64 {
        match self.value() {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(Value::Bool(b)) => f64::from(u8::from(*b)),
            Some(Value::Null) => 0.0,
            Some(Value::String(s)) => string_to_number(s),
            Some(Value::Array(a)) if a.is_empty() => 0.0,
            Some(Value::Array(a)) if a.len() == 1 => Js::Val(&a[0]).to_number_via_string(),
            _ => f64::NAN,
        }
    }

    fn to_number_via_string(&self) -> f64 {
        string_to_number(&self.display())
    }

    /// handlebars.js `if` truthiness: falsy for `undefined`, `null`, `false`, `0`, `NaN`,
    /// `""` and `[]`; `{}` is truthy.
    pub fn truthy(&self, include_zero: bool) -> bool {
        match self {
            Js::Undefined => false,
            Js::Options => true,
            Js::Val(v) => value_truthy(v, include_zero),
            Js::Owned(v) => value_truthy(v, include_zero),
        }
    }

    /// JavaScript `===` (JSON values compare by content: the same path gives the same object).
    pub fn strict_equals(&self, other: &Js<'_>) -> bool {
        match (self, other) {
            (Js::Undefined, Js::Undefined) => true,
            (Js::Options, Js::Options) => true,
            (a, b) => match (a.value(), b.value()) {
                (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        }
    }
}

fn value_truthy(v: &Value, include_zero: bool) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            !f.is_nan() && (f != 0.0 || include_zero)
        }
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

/// JavaScript `String(v)` of a JSON value: arrays join with `,` (null elements empty),
/// objects are `[object Object]`.
pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_to_string(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !item.is_null() {
                    out.push_str(&value_to_string(item));
                }
            }
            out
        }
        Value::Object(_) => "[object Object]".into(),
    }
}

fn string_to_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16)
            .map(|n| n as f64)
            .unwrap_or(f64::NAN);
    }
    match t {
        "Infinity" | "+Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ if t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            t.parse().unwrap_or(f64::NAN)
        }
        _ => f64::NAN,
    }
}

/// JavaScript `Number#toString()` (shortest round-trip digits, JS exponent rules).
pub fn number_to_string(f: f64) -> String {
    // Integers that f64 holds exactly print as their digits in JavaScript.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        if f == 0.0 {
            return "0".into();
        }
        return (f as i64).to_string();
    }
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return "0".into();
    }
    let sign = if f < 0.0 { "-" } else { "" };
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let exp_sign = if e < 0 { '-' } else { '+' };
        let rest = if k > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        format!("{}{rest}e{exp_sign}{}", &digits[..1], e.abs())
    };
    format!("{sign}{body}")
}

/// `encodeURI`: keeps `A-Z a-z 0-9 ; , / ? : @ & = + $ - _ . ! ~ * ' ( ) #`.
pub fn encode_uri(s: &str) -> String {
    percent_encode(s, b";,/?:@&=+$-_.!~*'()#")
}

/// `encodeURIComponent`: keeps `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
pub fn encode_uri_component(s: &str) -> String {
    percent_encode(s, b"-_.!~*'()")
}

fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Object keys in JavaScript's `Object.keys` order: array-index keys ascending first, then
/// the others in insertion order.
pub fn js_key_order(map: &serde_json::Map<String, Value>) -> Vec<&String> {
    let is_index = |k: &str| {
        !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_digit())
            && (k == "0" || !k.starts_with('0'))
            && k.parse::<u64>().is_ok_and(|n| n < u32::MAX as u64)
    };
    let mut index_keys: Vec<&String> = map.keys().filter(|k| is_index(k)).collect();
    if index_keys.is_empty() {
        return map.keys().collect();
    }
    index_keys.sort_by_key(|k| k.parse::<u64>().unwrap_or(0));
    index_keys.extend(map.keys().filter(|k| !is_index(k)));
    index_keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_javascript() {
        for (f, s) in [
            (1580777319650.0, "1580777319650"),
            (0.5, "0.5"),
            (1e21, "1e+21"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (-42.0, "-42"),
            (123456789012345680000.0, "123456789012345680000"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(number_to_string(f), s);
        }
    }

    #[test]
    fn strings_of_values() {
        assert_eq!(
            value_to_string(&json!(["a", null, 1, ["b", "c"], {}])),
            "a,,1,b,c,[object Object]"
        );
        assert_eq!(Js::Val(&json!(null)).display(), "");
        assert_eq!(Js::Val(&json!(false)).display(), "false");
        assert!(!Js::Val(&json!([])).truthy(false));
        assert!(Js::Val(&json!({})).truthy(false));
    }

    #[test]
    fn uri_encoding() {
        assert_eq!(
            encode_uri_component("a b&c=d/é?#"),
            "a%20b%26c%3Dd%2F%C3%A9%3F%23"
        );
        assert_eq!(encode_uri("a b&c=d/é?#"), "a%20b&c=d/%C3%A9?#");
    }

    #[test]
    fn key_order() {
        let m: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"b":1,"10":2,"a":3,"2":4,"01":5}"#).unwrap();
        let keys: Vec<&str> = js_key_order(&m).into_iter().map(String::as_str).collect();
        assert_eq!(keys, vec!["2", "10", "b", "a", "01"]);
    }
}
