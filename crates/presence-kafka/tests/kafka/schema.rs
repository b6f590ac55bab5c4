//! The JSON value against `docs/schema/presence-record.v1.json`, with a small validator for
//! exactly the draft 2020-12 keywords that schema uses (an unknown keyword fails the test, so
//! the check cannot silently pass over something it does not understand).

use presence_frame::{
    EventTime, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};
use presence_kafka::PresenceRecord;
use serde_json::{Map, Value};

fn schema() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/schema/presence-record.v1.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every violation of `schema` by `value`, as paths and reasons.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Value::Object(schema) = schema else {
        panic!("{path}: a schema must be an object");
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$schema" | "$id" | "title" | "description" | "examples" | "$comment" => {}
            "type" => {
                let allowed: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                    _ => panic!("{path}: bad type keyword"),
                };
                if !allowed.iter().any(|t| has_type(value, t)) {
                    errors.push(format!("{path}: {value} is not of type {allowed:?}"));
                }
            }
            "const" => {
                if value != rule {
                    errors.push(format!("{path}: {value} is not {rule}"));
                }
            }
            "enum" => {
                if !rule.as_array().unwrap().contains(value) {
                    errors.push(format!("{path}: {value} is not one of {rule}"));
                }
            }
            "minimum" | "maximum" => {
                if let (Some(v), Some(limit)) = (as_i128(value), as_i128(rule)) {
                    let ok = if keyword == "minimum" {
                        v >= limit
                    } else {
                        v <= limit
                    };
                    if !ok {
                        errors.push(format!("{path}: {v} breaks {keyword} {limit}"));
                    }
                }
            }
            "minLength" => {
                if let Value::String(s) = value
                    && (s.chars().count() as u64) < rule.as_u64().unwrap()
                {
                    errors.push(format!("{path}: {s:?} is shorter than {rule}"));
                }
            }
            "format" => {
                assert_eq!(rule, "date-time", "{path}: unsupported format {rule}");
                if let Value::String(s) = value
                    && EventTime::parse_rfc3339(s).is_err()
                {
                    errors.push(format!("{path}: {s:?} is not an RFC 3339 date-time"));
                }
            }
            "required" => {
                if let Value::Object(object) = value {
                    for name in rule.as_array().unwrap() {
                        let name = name.as_str().unwrap();
                        if !object.contains_key(name) {
                            errors.push(format!("{path}: required property {name} is missing"));
                        }
                    }
                }
            }
            "properties" => {
                if let Value::Object(object) = value {
                    for (name, sub) in rule.as_object().unwrap() {
                        if let Some(v) = object.get(name) {
                            validate(sub, v, &format!("{path}/{name}"), errors);
                        }
                    }
                }
            }
            "additionalProperties" => {
                assert!(
                    rule.is_boolean(),
                    "{path}: only a boolean additionalProperties is supported"
                );
                if rule == false
                    && let Value::Object(object) = value
                {
                    let declared = schema.get("properties").and_then(Value::as_object);
                    for name in object.keys() {
                        if !declared.is_some_and(|d| d.contains_key(name)) {
                            errors.push(format!("{path}: property {name} is not allowed"));
                        }
                    }
                }
            }
            other => panic!("{path}: the test validator does not know keyword {other}; extend it"),
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

fn as_i128(value: &Value) -> Option<i128> {
    value
        .as_u64()
        .map(i128::from)
        .or_else(|| value.as_i64().map(i128::from))
}

fn errors_of(value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate(&schema(), value, "", &mut errors);
    errors
}

fn records() -> Vec<Value> {
    let full = PresenceEvent {
        user: UserId::Genesys(Guid::parse("9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f").unwrap()),
        time: EventTime(1_764_320_597_067),
        state: PresenceState::new(Status::ON_QUEUE, Location::UNKNOWN, GroupMask(u64::MAX))
            .with_message("Back in 5")
            .with_definition_id("e08eaf1b-ee47-4fa9-a231-1200e284798f"),
        source: Source::Stream,
    };
    let bare = PresenceEvent {
        user: UserId::Relay(0),
        time: EventTime(0),
        state: PresenceState::new(Status(200), Location(7), GroupMask(0)),
        source: Source::Relay,
    };
    let resync = PresenceEvent {
        source: Source::Resync,
        ..full.clone()
    };
    [full, bare, resync]
        .iter()
        .map(|e| {
            serde_json::from_slice(&PresenceRecord::new(e, EventTime(1_764_320_600_000)).to_json())
                .unwrap()
        })
        .collect()
}

#[test]
fn serialized_records_match_the_schema() {
    for record in records() {
        assert_eq!(errors_of(&record), Vec::<String>::new(), "{record}");
    }
}

#[test]
fn the_schema_documents_every_field_and_requires_them_all() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let declared: &Map<String, Value> = schema["properties"].as_object().unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for record in records() {
        for name in record.as_object().unwrap().keys() {
            assert!(declared.contains_key(name), "{name} is not in the schema");
            assert!(required.contains(&name.as_str()), "{name} is not required");
            assert!(
                declared[name]["description"].is_string(),
                "{name} has no description"
            );
        }
    }
    assert_eq!(required.len(), records()[0].as_object().unwrap().len());
}

#[test]
fn the_validator_catches_what_the_schema_forbids() {
    let good = records().remove(0);
    let broken = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut value = good.clone();
        f(value.as_object_mut().unwrap());
        errors_of(&value)
    };
    assert_eq!(broken(&|o| drop(o.remove("userId"))).len(), 1);
    assert_eq!(
        broken(&|o| drop(o.insert("statusCode".into(), "8".into()))).len(),
        1
    );
    assert_eq!(
        broken(&|o| drop(o.insert("statusCode".into(), 256.into()))).len(),
        1
    );
    assert_eq!(
        broken(&|o| drop(o.insert("source".into(), "kafka".into()))).len(),
        1
    );
    assert_eq!(
        broken(&|o| drop(o.insert("schemaVersion".into(), 2.into()))).len(),
        1
    );
    assert_eq!(
        broken(&|o| drop(o.insert("eventTime".into(), "yesterday".into()))).len(),
        1
    );
    assert_eq!(
        broken(&|o| drop(o.insert("message".into(), 5.into()))).len(),
        1
    );
    assert_eq!(
        broken(&|o| drop(o.insert("groupMask".into(), (-1).into()))).len(),
        1
    );
    assert!(broken(&|o| drop(o.insert("futureField".into(), true.into()))).is_empty());
}
