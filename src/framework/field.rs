//! Typed request fields, coerced the way Vault's `framework.FieldData`
//! does, because that is what the vault/bao CLI and HTTP clients rely on:
//! the CLI sends every `k=v` value as a string (`min_enabled_version="2"`),
//! a repeated `k=v=w` as a list of `"v=w"` strings, and JSON clients send
//! native types.

use std::collections::BTreeMap;

use serde_json::Value;
use zeroize::{Zeroize, Zeroizing};

use super::error::{Error, quote};

/// The type of a field, which decides how raw input is coerced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    /// A path segment: one name, never empty.
    Name,
    Int,
    Bool,
    /// A list of strings, given as a JSON list or one comma-separated string.
    CommaStringSlice,
    /// String pairs, given as a JSON object, or `k=v` strings (one or a list).
    KvPairs,
    /// Seconds, given as a number or a Go duration string (`90s`, `1h30m`).
    DurationSeconds,
}

impl FieldType {
    /// The OpenAPI schema of the type.
    pub fn openapi_schema(self) -> Value {
        match self {
            Self::String | Self::Name => serde_json::json!({"type": "string"}),
            Self::Int => serde_json::json!({"type": "integer"}),
            Self::Bool => serde_json::json!({"type": "boolean"}),
            Self::CommaStringSlice => {
                serde_json::json!({"type": "array", "items": {"type": "string"}})
            }
            Self::KvPairs => {
                serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}})
            }
            Self::DurationSeconds => serde_json::json!({"type": "string", "format": "duration"}),
        }
    }

    fn display(self) -> &'static str {
        match self {
            Self::String | Self::Name => "string",
            Self::Int => "integer",
            Self::Bool => "boolean",
            Self::CommaStringSlice => "list of strings",
            Self::KvPairs => "list of key=value pairs",
            Self::DurationSeconds => "duration",
        }
    }
}

/// Longest name of a key or a provider. No provider can hold longer ones
/// (Azure key names: 127 characters, AWS aliases: 256), and a bound keeps
/// every message and storage key small.
pub const MAX_NAME_LEN: usize = 128;

/// A declared field of a path.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: &'static str,
    pub kind: FieldType,
    pub description: &'static str,
    pub default: Option<Value>,
    /// Never echoed anywhere: not in errors, not in help examples.
    pub sensitive: bool,
    /// Allowed values, for help and OpenAPI.
    pub allowed: &'static [&'static str],
    /// Which of create and update take the field (OpenAPI only; the
    /// handler enforces it).
    pub scope: FieldScope,
    /// Whether a create must give it.
    pub required_on_create: bool,
}

/// Which writes of a path take a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldScope {
    Always,
    /// Set at creation, fixed afterwards.
    CreateOnly,
    /// Meaningful only once the object exists.
    UpdateOnly,
}

impl Field {
    pub fn new(name: &'static str, kind: FieldType, description: &'static str) -> Self {
        Self {
            name,
            kind,
            description,
            default: None,
            sensitive: false,
            allowed: &[],
            scope: FieldScope::Always,
            required_on_create: false,
        }
    }

    /// Taken at creation only; fixed afterwards.
    pub fn create_only(mut self) -> Self {
        self.scope = FieldScope::CreateOnly;
        self
    }

    pub fn update_only(mut self) -> Self {
        self.scope = FieldScope::UpdateOnly;
        self
    }

    pub fn required_on_create(mut self) -> Self {
        self.required_on_create = true;
        self
    }

    pub fn default_value(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    pub fn allowed(mut self, values: &'static [&'static str]) -> Self {
        self.allowed = values;
        self
    }
}

/// A coerced field value. Key/value pairs may be credentials, so their
/// values are wiped on drop.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    String(String),
    Int(i64),
    Bool(bool),
    Strings(Vec<String>),
    Pairs(BTreeMap<String, Secret>),
    Seconds(i64),
}

/// A string wiped from memory on drop and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn type_error(field: &Field, raw: &Value) -> Error {
    let shown = if field.sensitive {
        // Write-only: say what kind of value came, never what it was.
        match raw {
            Value::String(_) => " a string (not shown: the field is write-only)",
            Value::Number(_) => " a number",
            Value::Bool(_) => " a boolean",
            Value::Null => " null",
            Value::Array(_) => " a list with an item that is not a key=value string",
            Value::Object(_) => " an object with a value that is not a string",
        }
        .to_owned()
    } else {
        match raw {
            Value::String(s) => format!(" {}", quote(s)),
            Value::Number(n) => format!(" {n}"),
            Value::Bool(b) => format!(" {b}"),
            Value::Null => " null".to_owned(),
            Value::Array(_) => " (a list)".to_owned(),
            Value::Object(_) => " (an object)".to_owned(),
        }
    };
    Error::bad_request(format!(
        "invalid value for field \"{}\": expected {}, got{shown}",
        field.name,
        field.kind.display()
    ))
}

/// Go's `strconv.ParseBool`, which Vault uses for string booleans.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_int(raw: &Value) -> Option<i64> {
    match raw {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A Go duration (`1h2m3.5s`, `300ms`), plain seconds, or whole days
/// (`7d`), rounded down to whole seconds; empty is 0. These are the forms
/// Vault's `parseutil.ParseDurationSecond` accepts.
fn parse_duration_seconds(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    if let Ok(seconds) = s.parse::<i64>() {
        return Some(seconds);
    }
    if let Some(days) = s.strip_suffix('d')
        && let Ok(days) = days.parse::<i64>()
    {
        return days.checked_mul(86_400);
    }
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    let seconds = total.floor() as i64;
    Some(if negative { -seconds } else { seconds })
}

fn scalar_string(raw: &Value) -> Option<String> {
    match raw {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn split_pair(field: &Field, item: &str) -> Result<(String, Secret), Error> {
    match item.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            Ok((k.trim().to_owned(), Secret::new(v.to_owned())))
        }
        _ => Err(Error::bad_request(format!(
            "invalid value for field \"{}\": expected key=value pairs",
            field.name
        ))),
    }
}

impl Field {
    /// Coerces raw JSON input to this field's type.
    pub fn coerce(&self, raw: &Value) -> Result<FieldValue, Error> {
        let fail = || type_error(self, raw);
        Ok(match self.kind {
            FieldType::String => FieldValue::String(scalar_string(raw).ok_or_else(fail)?),
            FieldType::Name => match raw {
                // Characters, as the message says (bytes would refuse 128
                // two-byte characters as "more than 128"); the path rules,
                // ASCII only, refuse such names anyway.
                Value::String(s) if s.chars().count() > MAX_NAME_LEN => {
                    return Err(Error::bad_request(format!(
                        "{}: names are at most {MAX_NAME_LEN} characters, this one has {}",
                        self.name,
                        s.chars().count()
                    )));
                }
                Value::String(s) if !s.is_empty() => FieldValue::String(s.clone()),
                _ => return Err(fail()),
            },
            FieldType::Int => FieldValue::Int(parse_int(raw).ok_or_else(fail)?),
            FieldType::Bool => FieldValue::Bool(match raw {
                Value::Bool(b) => *b,
                Value::String(s) => parse_bool(s.trim()).ok_or_else(fail)?,
                Value::Number(n) => n.as_f64().map(|f| f != 0.0).ok_or_else(fail)?,
                _ => return Err(fail()),
            }),
            FieldType::CommaStringSlice => FieldValue::Strings(match raw {
                Value::String(s) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        scalar_string(item)
                            .map(|s| s.trim().to_owned())
                            .ok_or_else(fail)
                    })
                    .collect::<Result<_, _>>()?,
                Value::Null => Vec::new(),
                _ => return Err(fail()),
            }),
            FieldType::KvPairs => FieldValue::Pairs(match raw {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Secret::new(scalar_string(v).ok_or_else(fail)?))))
                    .collect::<Result<_, Error>>()?,
                Value::String(s) => [split_pair(self, s)?].into_iter().collect(),
                Value::Array(items) => {
                    let mut pairs = BTreeMap::new();
                    for item in items {
                        let (key, value) = match item {
                            Value::String(s) => split_pair(self, s)?,
                            _ => return Err(fail()),
                        };
                        // Which value was meant is unknowable; the key is
                        // not echoed, as it may be a pasted secret.
                        if pairs.insert(key, value).is_some() {
                            return Err(Error::bad_request(format!(
                                "{}: the same key is given more than once",
                                self.name
                            )));
                        }
                    }
                    pairs
                }
                Value::Null => BTreeMap::new(),
                _ => return Err(fail()),
            }),
            FieldType::DurationSeconds => FieldValue::Seconds(match raw {
                Value::String(s) => parse_duration_seconds(s).ok_or_else(fail)?,
                other => parse_int(other).ok_or_else(fail)?,
            }),
        })
    }
}

/// Overwrites every string in a JSON value, so request bodies that carried
/// credentials do not linger in freed memory.
pub fn wipe_json(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => {
            map.values_mut().for_each(wipe_json);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(kind: FieldType) -> Field {
        Field::new("f", kind, "")
    }

    #[test]
    fn ints_from_numbers_and_cli_strings() {
        let f = field(FieldType::Int);
        assert_eq!(f.coerce(&json!(2)).unwrap(), FieldValue::Int(2));
        assert_eq!(f.coerce(&json!("2")).unwrap(), FieldValue::Int(2));
        assert_eq!(f.coerce(&json!(3.0)).unwrap(), FieldValue::Int(3));
        let err = f.coerce(&json!("abc")).unwrap_err();
        assert_eq!(
            err,
            Error::bad_request("invalid value for field \"f\": expected integer, got \"abc\"")
        );
        assert!(f.coerce(&json!(2.5)).is_err());
        assert!(f.coerce(&json!(true)).is_err());
    }

    #[test]
    fn bools_like_go_parse_bool() {
        let f = field(FieldType::Bool);
        assert_eq!(f.coerce(&json!("true")).unwrap(), FieldValue::Bool(true));
        assert_eq!(f.coerce(&json!("F")).unwrap(), FieldValue::Bool(false));
        assert_eq!(f.coerce(&json!(false)).unwrap(), FieldValue::Bool(false));
        assert!(f.coerce(&json!("yes")).is_err());
    }

    #[test]
    fn comma_string_slices() {
        let f = field(FieldType::CommaStringSlice);
        let want = FieldValue::Strings(vec!["encrypt".into(), "decrypt".into()]);
        assert_eq!(f.coerce(&json!("encrypt, decrypt")).unwrap(), want);
        assert_eq!(f.coerce(&json!(["encrypt", "decrypt"])).unwrap(), want);
        assert_eq!(f.coerce(&json!("")).unwrap(), FieldValue::Strings(vec![]));
        assert!(f.coerce(&json!({"a": 1})).is_err());
    }

    #[test]
    fn kv_pairs_from_cli_lists_single_strings_and_objects() {
        let f = field(FieldType::KvPairs);
        let FieldValue::Pairs(from_cli) = f
            .coerce(&json!(["client_id=a", "client_secret=b=c"]))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(from_cli["client_id"].expose(), "a");
        assert_eq!(from_cli["client_secret"].expose(), "b=c");
        let FieldValue::Pairs(single) = f.coerce(&json!("tenant_id=t")).unwrap() else {
            panic!()
        };
        assert_eq!(single["tenant_id"].expose(), "t");
        let FieldValue::Pairs(object) = f.coerce(&json!({"a": "b"})).unwrap() else {
            panic!()
        };
        assert_eq!(object["a"].expose(), "b");
        assert!(f.coerce(&json!(["novalue"])).is_err());
        assert!(f.coerce(&json!({"a": {"nested": 1}})).is_err());
    }

    #[test]
    fn sensitive_values_never_appear_in_errors_or_debug() {
        let f = Field::new("credentials", FieldType::Int, "").sensitive();
        let err = f.coerce(&json!("hunter2")).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let value = FieldValue::Pairs([("k".to_owned(), Secret::new("hunter2".into()))].into());
        assert!(!format!("{value:?}").contains("hunter2"));
    }

    #[test]
    fn name_limit_counts_characters_not_bytes() {
        // Found by the field_coerce fuzz target: 128 two-byte characters
        // were refused with "at most 128 characters, this one has 128".
        let f = field(FieldType::Name);
        let at_limit = "é".repeat(MAX_NAME_LEN);
        assert_eq!(
            f.coerce(&json!(at_limit)).unwrap(),
            FieldValue::String(at_limit.clone())
        );
        let over = "é".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            f.coerce(&json!(over)).unwrap_err(),
            Error::bad_request(format!(
                "f: names are at most {MAX_NAME_LEN} characters, this one has {}",
                MAX_NAME_LEN + 1
            ))
        );
        assert!(f.coerce(&json!("k".repeat(MAX_NAME_LEN))).is_ok());
        assert!(f.coerce(&json!("k".repeat(MAX_NAME_LEN + 1))).is_err());
    }

    #[test]
    fn durations() {
        let f = field(FieldType::DurationSeconds);
        assert_eq!(f.coerce(&json!(30)).unwrap(), FieldValue::Seconds(30));
        assert_eq!(f.coerce(&json!("90")).unwrap(), FieldValue::Seconds(90));
        assert_eq!(
            f.coerce(&json!("1h30m")).unwrap(),
            FieldValue::Seconds(5400)
        );
        assert_eq!(f.coerce(&json!("1.5s")).unwrap(), FieldValue::Seconds(1));
        assert_eq!(
            f.coerce(&json!("7d")).unwrap(),
            FieldValue::Seconds(604_800)
        );
        assert_eq!(f.coerce(&json!("")).unwrap(), FieldValue::Seconds(0));
        assert!(f.coerce(&json!("1 fortnight")).is_err());
        assert!(f.coerce(&json!("1d2h")).is_err());
        assert!(f.coerce(&json!("99999999999999999d")).is_err());
    }

    #[test]
    fn wipe_clears_nested_strings() {
        let mut v = json!({"credentials": ["client_secret=s3cr3t"], "n": 1});
        wipe_json(&mut v);
        assert!(!v.to_string().contains("s3cr3t"));
    }
}
