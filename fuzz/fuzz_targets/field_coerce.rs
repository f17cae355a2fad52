//! Field coercion (`framework::field`), every field type: how one value of
//! a request's JSON body becomes a typed field.
//!
//! Input: one byte choosing the type (low 3 bits) and whether the field is
//! sensitive (bit 3), then the JSON value as text.
//!
//! Properties: no panic; a refusal is a 400 naming the field; a sensitive
//! field's refusal depends on the shape of the value, never its content; a
//! coerced value written back as canonical JSON coerces to itself; the
//! types' own rules (Go's `ParseBool`, integers, the name length limit).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vault_plugin_secrets_keymgmt::framework::Error;
use vault_plugin_secrets_keymgmt::framework::field::{
    Field, FieldType, FieldValue, MAX_NAME_LEN, wipe_json,
};

const TYPES: [FieldType; 7] = [
    FieldType::String,
    FieldType::Name,
    FieldType::Int,
    FieldType::Bool,
    FieldType::CommaStringSlice,
    FieldType::KvPairs,
    FieldType::DurationSeconds,
];

const NAME: &str = "fuzzed_field";

/// The JSON a client would send for `value`: what it coerces back from.
fn canonical(value: &FieldValue) -> Value {
    match value {
        FieldValue::String(s) => Value::String(s.clone()),
        FieldValue::Int(i) | FieldValue::Seconds(i) => Value::from(*i),
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::Strings(items) => items.iter().cloned().map(Value::String).collect(),
        FieldValue::Pairs(pairs) => Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.expose().to_owned())))
                .collect(),
        ),
    }
}

/// The same value with other letters and digits (ROT13 and ROT5): a
/// bijection, so lengths, separators, equal and distinct strings stay.
fn masked(raw: &Value) -> Value {
    let mask = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                'a'..='z' => (b'a' + (c as u8 - b'a' + 13) % 26) as char,
                'A'..='Z' => (b'A' + (c as u8 - b'A' + 13) % 26) as char,
                '0'..='9' => (b'0' + (c as u8 - b'0' + 5) % 10) as char,
                other => other,
            })
            .collect()
    };
    match raw {
        Value::String(s) => Value::String(mask(s)),
        Value::Array(items) => items.iter().map(masked).collect(),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (mask(k), masked(v))).collect())
        }
        other => other.clone(),
    }
}

fn message(err: &Error) -> &str {
    match err {
        Error::BadRequest(m) => m,
        other => panic!("a refused value must be a 400, got {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(raw) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let kind = TYPES[usize::from(selector & 7) % TYPES.len()];
    let sensitive = selector & 8 != 0;
    let mut field = Field::new(NAME, kind, "fuzzed");
    if sensitive {
        field = field.sensitive();
    }
    let _ = kind.openapi_schema();

    match field.coerce(&raw) {
        Err(err) => {
            let text = message(&err);
            assert!(
                text.contains(NAME),
                "the error does not name the field: {text}"
            );
            if sensitive {
                // Whatever the value was, the message is the same as for
                // any other value of its shape.
                if let Err(other) = field.coerce(&masked(&raw)) {
                    assert_eq!(
                        text,
                        message(&other),
                        "a sensitive value shows in its error"
                    );
                }
            }
            if let (FieldType::Name, Value::String(s)) = (kind, &raw)
                && !s.is_empty()
            {
                assert!(
                    s.chars().count() > MAX_NAME_LEN,
                    "a name within the limit was refused: {text}"
                );
            }
        }
        Ok(value) => {
            let again = field
                .coerce(&canonical(&value))
                .unwrap_or_else(|e| panic!("the canonical form of {value:?} was refused: {e}"));
            assert_eq!(again, value, "coercion is not stable");
            match (&value, &raw) {
                (FieldValue::String(s), Value::String(r)) => assert_eq!(s, r),
                (FieldValue::String(s), _) if kind == FieldType::Name => {
                    assert!(!s.is_empty() && s.chars().count() <= MAX_NAME_LEN)
                }
                (FieldValue::Int(i), Value::String(r)) => {
                    assert_eq!(Some(*i), r.trim().parse().ok(), "{r:?}")
                }
                (FieldValue::Int(i), Value::Number(n)) => {
                    if let Some(exact) = n.as_i64() {
                        assert_eq!(*i, exact)
                    }
                }
                (FieldValue::Bool(b), Value::String(r)) => {
                    let go = match r.trim() {
                        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                        _ => None,
                    };
                    assert_eq!(Some(*b), go, "{r:?}");
                }
                (FieldValue::Strings(items), _) => {
                    assert!(items.iter().all(|s| s.trim() == s), "{items:?}");
                }
                (FieldValue::Seconds(s), Value::String(r)) => {
                    if let Ok(plain) = r.trim().parse::<i64>() {
                        assert_eq!(*s, plain);
                    }
                }
                _ => {}
            }
        }
    }

    let mut wiped = raw;
    wipe_json(&mut wiped);
    assert!(!contains_text(&wiped), "wipe_json left a string: {wiped}");
});

fn contains_text(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => items.iter().any(contains_text),
        Value::Object(map) => map.values().any(contains_text),
        _ => false,
    }
}
