//! `path-help` text and the OpenAPI document the host merges into
//! `sys/internal/specs/openapi`.

use serde_json::{Map, Value, json};

use super::field::FieldScope;
use super::operation::Operation;
use super::path::{Answer, OperationHandler, Path};

/// The text `vault path-help <mount>/<path>` prints, in Vault's layout.
pub fn path_help<B>(request_path: &str, path: &Path<B>) -> String {
    let mut text = format!(
        "Request:        {request_path}\nMatching Route: {}\n\n{}\n",
        path.route_regex(),
        path.synopsis
    );
    let mut fields: Vec<_> = path.fields.iter().collect();
    fields.sort_by_key(|f| f.name);
    if !fields.is_empty() {
        text.push_str("\n## PARAMETERS\n");
        for field in fields {
            let kind = field.kind.openapi_schema()["type"]
                .as_str()
                .unwrap_or("string")
                .to_owned();
            text.push_str(&format!(
                "\n    {} ({kind})\n\n        {}\n",
                field.name, field.description
            ));
            if !field.allowed.is_empty() {
                text.push_str(&format!("        One of: {}\n", field.allowed.join(", ")));
            }
            if let Some(default) = &field.default {
                text.push_str(&format!("        Default: {default}\n"));
            }
        }
    }
    if !path.description.is_empty() {
        text.push_str(&format!(
            "\n## DESCRIPTION\n\n{}\n",
            path.description.trim()
        ));
    }
    text
}

/// The text `vault path-help <mount>/` prints: the backend's help, then
/// every path with its one-line synopsis, in Vault's layout.
pub fn root_help<B>(help: &str, paths: &[Path<B>]) -> String {
    let mut text = format!(
        "## DESCRIPTION\n\n{}\n\n## PATHS\n\nThe following paths are supported by this backend. To view help for\nany of the paths below, use the help command with any route matching\nthe path pattern. Note that depending on the policy of your auth token,\nyou may or may not be able to access certain paths.\n",
        help.trim()
    );
    for path in paths {
        text.push_str(&format!(
            "\n    {}\n        {}\n",
            path.route_regex(),
            path.synopsis.trim()
        ));
    }
    text
}

fn parameter_schema<B>(path: &Path<B>, name: &str) -> Value {
    let field = path.fields.iter().find(|f| f.name == name);
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": field.map(|f| f.description).unwrap_or_default(),
        "schema": {"type": "string"},
    })
}

/// What a create takes, answers and requires.
fn create_item<B>(path: &Path<B>, create: &OperationHandler<B>) -> Value {
    let required: Vec<&str> = path
        .fields
        .iter()
        .filter(|f| f.required_on_create)
        .map(|f| f.name)
        .collect();
    let status = match create.answer {
        Answer::Data => "200",
        Answer::NoContent => "204",
    };
    json!({
        "operationId": create.operation_id,
        "summary": create.summary,
        "required": required,
        "ignoredFields": path
            .fields
            .iter()
            .filter(|f| f.scope == FieldScope::UpdateOnly)
            .map(|f| f.name)
            .collect::<Vec<_>>(),
        "responses": {status: {"description": if status == "204" { "No Content" } else { "OK" }}},
    })
}

fn body_schema<B>(path: &Path<B>) -> Value {
    let captures: Vec<&str> = path.capture_names().collect();
    let mut properties = Map::new();
    for field in path.fields.iter().filter(|f| !captures.contains(&f.name)) {
        let mut schema = field.kind.openapi_schema();
        schema["description"] = field.description.into();
        if !field.allowed.is_empty() {
            schema["enum"] = field.allowed.into();
        }
        if let Some(default) = &field.default {
            schema["default"] = default.clone();
        }
        match field.scope {
            FieldScope::Always => {}
            FieldScope::CreateOnly => schema["x-vault-createOnly"] = true.into(),
            FieldScope::UpdateOnly => schema["x-vault-updateOnly"] = true.into(),
        }
        properties.insert(field.name.to_owned(), schema);
    }
    json!({"type": "object", "properties": properties})
}

/// The OpenAPI 3 item for one path.
pub fn path_item<B>(path: &Path<B>) -> Value {
    let mut item = Map::new();
    item.insert("description".into(), path.synopsis.into());
    let parameters: Vec<Value> = path
        .capture_names()
        .map(|n| parameter_schema(path, n))
        .collect();
    if !parameters.is_empty() {
        item.insert("parameters".into(), parameters.into());
    }
    for op in &path.operations {
        let responses = match op.answer {
            Answer::Data => json!({"200": {"description": "OK"}}),
            Answer::NoContent => json!({
                "204": {"description": "No Content"},
                "200": {"description": "OK, with warnings only"},
            }),
        };
        let base = json!({
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": ["secrets"],
            "responses": responses,
        });
        match op.operation {
            Operation::Read => {
                item.insert("get".into(), base);
            }
            Operation::List => {
                let mut get = base;
                get["parameters"] = json!([{
                    "name": "list", "in": "query", "required": true,
                    "description": "Must be set to `true`",
                    "schema": {"type": "string", "enum": ["true"]},
                }]);
                item.insert("get".into(), get);
            }
            // Both are POST: the update describes it, the create is
            // described inside (`x-vault-create`), with its required fields.
            Operation::Update => {
                let mut post = base;
                post["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": body_schema(path)}},
                });
                if let Some(create) = path.handler_for(Operation::Create) {
                    post["description"] = format!(
                        "Creates the object when it does not exist ({}), updates it otherwise ({}). \
                         Fields marked x-vault-createOnly are taken at creation only.",
                        create.summary, op.summary
                    )
                    .into();
                    post["x-vault-create"] = create_item(path, create);
                }
                item.insert("post".into(), post);
            }
            Operation::Create if path.handler_for(Operation::Update).is_none() => {
                let mut post = base;
                post["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": body_schema(path)}},
                });
                item.insert("post".into(), post);
            }
            Operation::Delete => {
                item.insert("delete".into(), base);
            }
            _ => {}
        }
    }
    if path.handler_for(Operation::Create).is_some() {
        item.insert("x-vault-createSupported".into(), true.into());
    }
    Value::Object(item)
}

/// The whole backend's OpenAPI document.
pub fn openapi_document<B>(paths: &[Path<B>], title: &str, description: &str) -> Value {
    let mut items = Map::new();
    for path in paths {
        items.insert(path.openapi_path(), path_item(path));
    }
    json!({
        "openapi": "3.0.2",
        "info": {
            "title": title,
            "description": description,
            "version": super::super::runtime::control::plugin_version(),
            "license": {"name": "Mozilla Public License 2.0", "url": "https://www.mozilla.org/en-US/MPL/2.0"},
        },
        "paths": items,
        "components": {"schemas": {}},
    })
}
