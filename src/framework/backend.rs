//! The router: turns protocol requests into handler calls and handler
//! results into protocol replies.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use zeroize::Zeroize;

use super::error::{Error, READ_ONLY};
use super::field::{FieldValue, wipe_json};
use super::help;
use super::operation::Operation;
use super::path::{Path, Request, Response};
use crate::runtime::backend::LogicalBackend;
use crate::runtime::proto::pb;
use crate::runtime::system_view::SystemView;

/// Hooks a backend's state gets from the mount lifecycle.
#[async_trait::async_trait]
pub trait Lifecycle: Send + Sync + 'static {
    async fn initialize(&self) -> Result<(), Error> {
        Ok(())
    }
    async fn cleanup(&self) {}
    async fn invalidate(&self, _key: &str) {}
    /// The host's periodic call (every minute): called on the active node
    /// only, so that scheduled work never runs twice in a cluster.
    async fn periodic(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// What a backend says about itself in help and OpenAPI.
#[derive(Debug, Clone, Copy)]
pub struct BackendInfo {
    /// The OpenAPI document's title, e.g. "Key Management secrets engine".
    pub title: &'static str,
    /// `vault path-help <mount>/` text.
    pub help: &'static str,
}

/// A backend built from declared paths around a shared state `B`.
pub struct Backend<B> {
    state: Arc<B>,
    paths: Vec<Path<B>>,
    info: BackendInfo,
    special_paths: pb::Paths,
    /// The host's view, for the node's replication state.
    system: Option<Arc<dyn SystemView>>,
}

// ProtoError err_type values the host understands.
const ERR_INTERNAL: u32 = 2;
const ERR_UNSUPPORTED_OPERATION: u32 = 5;
const ERR_UNSUPPORTED_PATH: u32 = 6;

fn proto_error(err_type: u32, err_msg: String, err_code: i64) -> pb::ProtoError {
    pb::ProtoError {
        err_type,
        err_msg,
        err_code,
    }
}

fn data_reply(data: Map<String, Value>, warnings: Vec<String>) -> pb::HandleRequestReply {
    pb::HandleRequestReply {
        response: Some(pb::Response {
            data: Value::Object(data).to_string(),
            warnings,
            ..Default::default()
        }),
        err: None,
    }
}

fn error_reply(err: Error) -> pb::HandleRequestReply {
    let err = match err {
        // `{"error": msg}` in data is Vault's idiomatic user error: HTTP
        // 400 with the message shown as is.
        Error::BadRequest(message) => {
            let mut data = Map::new();
            data.insert("error".into(), message.into());
            return data_reply(data, Vec::new());
        }
        Error::NotFound(message) => return raw_error(404, &message),
        Error::BadGateway(message) => return raw_error(502, &message),
        Error::UnsupportedOperation => return raw_error(405, "unsupported operation"),
        Error::UnsupportedPath => return raw_error(404, "unsupported path"),
        Error::Internal(message) => proto_error(ERR_INTERNAL, message, 0),
        Error::ReadOnly => proto_error(ERR_INTERNAL, Error::ReadOnly.to_string(), 0),
    };
    pb::HandleRequestReply {
        response: None,
        err: Some(err),
    }
}

/// An error with its own status, answered as a raw response: the host
/// writes the body as is, `{"errors":[message]}` like any Vault error,
/// where a coded error would reach the user wrapped in the host's
/// "1 error occurred:" list.
fn raw_error(status: u16, message: &str) -> pb::HandleRequestReply {
    use base64::Engine as _;
    let body = serde_json::json!({ "errors": [message] }).to_string();
    let mut data = Map::new();
    data.insert("http_content_type".into(), "application/json".into());
    data.insert("http_status_code".into(), status.into());
    data.insert(
        "http_raw_body".into(),
        base64::engine::general_purpose::STANDARD
            .encode(body)
            .into(),
    );
    data_reply(data, Vec::new())
}

/// Parses `Request.data`: a JSON object, or `null` for no body.
fn parse_body(data: &mut String) -> Result<Map<String, Value>, Error> {
    let parsed = if data.trim().is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_str(data)
    };
    data.zeroize();
    match parsed {
        Ok(Value::Null) => Ok(Map::new()),
        Ok(Value::Object(map)) => Ok(map),
        Ok(mut other) => {
            wipe_json(&mut other);
            Err(Error::bad_request("the request body must be a JSON object"))
        }
        Err(_) => Err(Error::bad_request("the request body is not valid JSON")),
    }
}

impl<B: Lifecycle> Backend<B> {
    /// The host's periodic call: the state's periodic work, on the active
    /// node only. Replies as Vault's framework does when there is nothing
    /// to roll back.
    async fn periodic(&self) -> pb::HandleRequestReply {
        // The reply Vault's framework gives when there is nothing to roll
        // back: the host ignores exactly this error, silently.
        let nothing = || pb::HandleRequestReply {
            response: None,
            err: Some(proto_error(ERR_UNSUPPORTED_OPERATION, String::new(), 0)),
        };
        if self.is_standby().await {
            return nothing();
        }
        match self.state.periodic().await {
            Ok(()) => nothing(),
            Err(err) => {
                log::error!("periodic work failed: {err}");
                error_reply(err)
            }
        }
    }

    pub fn new(
        state: Arc<B>,
        paths: Vec<Path<B>>,
        info: BackendInfo,
        special_paths: pb::Paths,
    ) -> Self {
        Self {
            state,
            paths,
            info,
            special_paths,
            system: None,
        }
    }

    /// The same backend, asking `system` whether the node is a standby.
    pub fn with_system(mut self, system: Arc<dyn SystemView>) -> Self {
        self.system = Some(system);
        self
    }

    /// Whether this node is an HA standby, asked when a write arrives: the
    /// state changes on promotion and demotion. If the host cannot say,
    /// the request runs, and a storage write on a standby would still be
    /// refused and forwarded.
    async fn is_standby(&self) -> bool {
        let Some(system) = &self.system else {
            return false;
        };
        match system.replication_state().await {
            Ok(state) => state.is_standby(),
            Err(err) => {
                log::warn!("reading the replication state: {err}");
                false
            }
        }
    }

    /// The backend's state, for tests and the runtime's lifecycle calls.
    pub fn state(&self) -> &Arc<B> {
        &self.state
    }

    fn route(&self, path: &str) -> Option<(&Path<B>, HashMap<String, String>)> {
        self.paths
            .iter()
            .find_map(|p| p.matches(path).map(|c| (p, c)))
    }

    /// Coerces the body and captures against the path's fields. Unknown
    /// fields become warnings, as in Vault.
    fn build_request(
        &self,
        path: &Path<B>,
        captures: HashMap<String, String>,
        operation: Operation,
        request: &mut pb::Request,
    ) -> Result<(Request, Vec<String>), Error> {
        let mut body = parse_body(&mut request.data)?;
        let result = Self::coerce_fields(path, &captures, &body);
        body.values_mut().for_each(wipe_json);
        let (values, provided, unknown) = result?;
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            warnings.push(format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                unknown.join(" ")
            ));
        }
        let req = Request::new(
            operation,
            request.path.clone(),
            request.mount_point.clone(),
            captures,
            values,
            provided,
        );
        Ok((req, warnings))
    }

    #[allow(clippy::type_complexity)]
    fn coerce_fields(
        path: &Path<B>,
        captures: &HashMap<String, String>,
        body: &Map<String, Value>,
    ) -> Result<
        (
            HashMap<&'static str, FieldValue>,
            Vec<&'static str>,
            Vec<String>,
        ),
        Error,
    > {
        let mut values = HashMap::new();
        let mut provided = Vec::new();
        for field in &path.fields {
            let raw = captures
                .get(field.name)
                .map(|c| Value::String(c.clone()))
                .or_else(|| body.get(field.name).cloned());
            match raw {
                Some(raw) => {
                    values.insert(field.name, field.coerce(&raw)?);
                    provided.push(field.name);
                }
                None => {
                    if let Some(default) = &field.default {
                        values.insert(field.name, field.coerce(default)?);
                    }
                }
            }
        }
        let mut unknown: Vec<String> = body
            .keys()
            .filter(|k| !path.fields.iter().any(|f| f.name == k.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        Ok((values, provided, unknown))
    }

    fn help_reply(&self, request: &pb::Request) -> pb::HandleRequestReply {
        let mut data = Map::new();
        if request.path.is_empty() {
            data.insert(
                "help".into(),
                help::root_help(self.info.help, &self.paths).into(),
            );
            data.insert(
                "openapi".into(),
                help::openapi_document(&self.paths, self.info.title, self.info.help),
            );
        } else {
            let Some((path, _)) = self.route(&request.path) else {
                // Help must not get a raw response (the host's help handler
                // expects help data or an error).
                return pb::HandleRequestReply {
                    response: None,
                    err: Some(proto_error(ERR_UNSUPPORTED_PATH, String::new(), 0)),
                };
            };
            data.insert("help".into(), help::path_help(&request.path, path).into());
            data.insert("see_also".into(), Value::Array(Vec::new()));
            data.insert(
                "openapi".into(),
                help::openapi_document(std::slice::from_ref(path), self.info.title, path.synopsis),
            );
        }
        data_reply(data, Vec::new())
    }

    async fn dispatch(&self, mut request: pb::Request) -> pb::HandleRequestReply {
        let operation = Operation::parse(&request.operation);
        match operation {
            // Keep the path as it is; only a nil reply or err_type 5 does that
            // without side effects.
            Operation::ResolvePath => return pb::HandleRequestReply::default(),
            Operation::Help => return self.help_reply(&request),
            Operation::Rollback => return self.periodic().await,
            _ => {}
        }
        let Some((path, captures)) = self.route(&request.path) else {
            return error_reply(Error::UnsupportedPath);
        };
        let Some(op) = path.handler_for(operation) else {
            return error_reply(Error::UnsupportedOperation);
        };
        // Before anything else, not even a storage read: the host runs the
        // request again on the active node.
        if op.writes && self.is_standby().await {
            log::debug!(path = request.path.as_str(), operation = operation.as_str(); "forwarding a write from this standby to the active node");
            return error_reply(Error::ReadOnly);
        }
        let (req, mut warnings) = match self.build_request(path, captures, operation, &mut request)
        {
            Ok(built) => built,
            Err(err) => return error_reply(err),
        };
        #[cfg(test)]
        let answer = op.answer;
        match (op.handler)(self.state.clone(), req).await {
            Ok(Some(Response {
                data,
                warnings: mut extra,
            })) => {
                #[cfg(test)]
                assert!(
                    data.is_empty() || answer == super::path::Answer::Data,
                    "{} {} answered with data, but OpenAPI declares no content",
                    operation.as_str(),
                    path.pattern
                );
                warnings.append(&mut extra);
                data_reply(data, warnings)
            }
            // A write without data still has to carry its warnings.
            Ok(None) if !warnings.is_empty() => data_reply(Map::new(), warnings),
            Ok(None) => pb::HandleRequestReply::default(),
            Err(err) => {
                if let Error::Internal(message) = &err {
                    // A standby's storage refusing a write is forwarded by
                    // the host: routine, not an error.
                    if message.contains(READ_ONLY) {
                        log::debug!(path = request.path.as_str(), operation = operation.as_str(); "forwarding: {message}");
                    } else {
                        log::error!(path = request.path.as_str(), operation = operation.as_str(); "request failed: {message}");
                    }
                }
                error_reply(err)
            }
        }
    }
}

#[async_trait::async_trait]
impl<B: Lifecycle> LogicalBackend for Backend<B> {
    async fn handle_request(&self, request: pb::Request) -> pb::HandleRequestReply {
        self.dispatch(request).await
    }

    async fn existence_check(&self, mut request: pb::Request) -> pb::HandleExistenceCheckReply {
        let operation = Operation::parse(&request.operation);
        let Some((path, captures)) = self.route(&request.path) else {
            return pb::HandleExistenceCheckReply::default();
        };
        let Some(check) = &path.existence_check else {
            return pb::HandleExistenceCheckReply::default();
        };
        // Existence checks precede writes; a standby forwards the write and
        // reads nothing for it.
        if self.is_standby().await {
            return pb::HandleExistenceCheckReply::default();
        }
        // Bad input is reported by the write itself, with the field named.
        let Ok((req, _)) = self.build_request(path, captures, operation, &mut request) else {
            return pb::HandleExistenceCheckReply::default();
        };
        match check(self.state.clone(), req).await {
            Ok(exists) => pb::HandleExistenceCheckReply {
                check_found: true,
                exists,
                err: None,
            },
            Err(err) => pb::HandleExistenceCheckReply {
                check_found: false,
                exists: false,
                err: Some(proto_error(ERR_INTERNAL, err.to_string(), 0)),
            },
        }
    }

    fn special_paths(&self) -> pb::Paths {
        self.special_paths.clone()
    }

    async fn initialize(&self) -> Result<(), String> {
        self.state.initialize().await.map_err(|e| e.to_string())
    }

    async fn cleanup(&self) {
        self.state.cleanup().await;
    }

    async fn invalidate(&self, key: &str) {
        self.state.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::field::{Field, FieldType};
    use crate::framework::path::handler;

    struct Echo;
    impl Lifecycle for Echo {}

    fn backend() -> Backend<Echo> {
        let path = Path::new("thing/{name}")
            .field(Field::new("name", FieldType::Name, "Name of the thing"))
            .field(Field::new("count", FieldType::Int, "How many").default_value(1))
            .operation(
                Operation::Update,
                "writeThing",
                "Write a thing",
                handler(|_, req: Request| async move {
                    let mut data = Map::new();
                    data.insert("name".into(), req.capture("name").into());
                    data.insert("count".into(), req.int("count").into());
                    data.insert("count_set".into(), req.is_set("count").into());
                    Ok(Some(Response::data(data)))
                }),
            )
            .answers_with_data(Operation::Update)
            .operation(
                Operation::Read,
                "readThing",
                "Read a thing",
                handler(|_, req: Request| async move {
                    Err(Error::not_found(format!(
                        "thing {:?} not found",
                        req.capture("name")
                    )))
                }),
            )
            .help("Manage things.", "Things are things.");
        Backend::new(
            Arc::new(Echo),
            vec![path],
            BackendInfo {
                title: "Echo engine",
                help: "Test backend.",
            },
            pb::Paths::default(),
        )
    }

    fn request(op: &str, path: &str, data: &str) -> pb::Request {
        pb::Request {
            operation: op.into(),
            path: path.into(),
            data: data.into(),
            ..Default::default()
        }
    }

    fn data_of(reply: &pb::HandleRequestReply) -> Value {
        serde_json::from_str(&reply.response.as_ref().unwrap().data).unwrap()
    }

    #[tokio::test]
    async fn coerces_fields_and_applies_defaults() {
        let b = backend();
        let reply = b
            .handle_request(request("update", "thing/a", r#"{"count":"3"}"#))
            .await;
        assert_eq!(
            data_of(&reply),
            serde_json::json!({"name":"a","count":3,"count_set":true})
        );
        let reply = b.handle_request(request("update", "thing/a", "null")).await;
        assert_eq!(
            data_of(&reply),
            serde_json::json!({"name":"a","count":1,"count_set":false})
        );
    }

    #[tokio::test]
    async fn bad_input_is_a_400_naming_the_field() {
        let reply = backend()
            .handle_request(request("update", "thing/a", r#"{"count":"x"}"#))
            .await;
        assert!(reply.err.is_none());
        let error = data_of(&reply)["error"].as_str().unwrap().to_owned();
        assert!(error.contains("\"count\""), "{error}");
        let reply = backend()
            .handle_request(request("update", "thing/a", "[1]"))
            .await;
        assert!(
            data_of(&reply)["error"]
                .as_str()
                .unwrap()
                .contains("JSON object")
        );
    }

    #[tokio::test]
    async fn unknown_fields_are_warnings() {
        let reply = backend()
            .handle_request(request("update", "thing/a", r#"{"zz":1,"aa":2}"#))
            .await;
        assert_eq!(
            reply.response.unwrap().warnings,
            vec!["Endpoint ignored these unrecognized parameters: [aa zz]"]
        );
    }

    /// The status and message of a raw error reply.
    fn raw_error_of(reply: &pb::HandleRequestReply) -> (u64, String) {
        use base64::Engine as _;
        assert!(reply.err.is_none(), "{reply:?}");
        let data = data_of(reply);
        let body = base64::engine::general_purpose::STANDARD
            .decode(data["http_raw_body"].as_str().unwrap())
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(data["http_content_type"], "application/json");
        (
            data["http_status_code"].as_u64().unwrap(),
            body["errors"][0].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn unsupported_paths_operations_and_not_found() {
        let b = backend();
        // Answered raw, so that the user reads the message as it is, not in
        // the host's "1 error occurred:" list.
        let reply = b.handle_request(request("read", "nothing", "")).await;
        assert_eq!(raw_error_of(&reply), (404, "unsupported path".into()));
        let reply = b.handle_request(request("delete", "thing/a", "")).await;
        assert_eq!(raw_error_of(&reply), (405, "unsupported operation".into()));
        let reply = b.handle_request(request("read", "thing/a", "")).await;
        assert_eq!(raw_error_of(&reply), (404, "thing \"a\" not found".into()));
        // Help and the host's own calls keep protocol errors.
        assert_eq!(
            b.handle_request(request("help", "nope", ""))
                .await
                .err
                .unwrap()
                .err_type,
            ERR_UNSUPPORTED_PATH
        );
        let reply = b
            .handle_request(request("resolve-path", "thing/a", ""))
            .await;
        assert!(reply.response.is_none() && reply.err.is_none());
        assert_eq!(
            b.handle_request(request("rollback", "", ""))
                .await
                .err
                .unwrap()
                .err_type,
            5
        );
    }

    struct Node(std::sync::atomic::AtomicU32);

    #[async_trait::async_trait]
    impl SystemView for Node {
        async fn server_version(
            &self,
        ) -> Result<String, crate::runtime::system_view::SystemViewError> {
            Ok("2.7.2".into())
        }
        async fn replication_state(
            &self,
        ) -> Result<
            crate::runtime::system_view::ReplicationState,
            crate::runtime::system_view::SystemViewError,
        > {
            Ok(crate::runtime::system_view::ReplicationState(
                self.0.load(std::sync::atomic::Ordering::SeqCst),
            ))
        }
    }

    /// Counts handler runs and periodic calls.
    #[derive(Default)]
    struct Counting {
        handled: std::sync::atomic::AtomicU32,
        periodic: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl Lifecycle for Counting {
        async fn periodic(&self) -> Result<(), Error> {
            self.periodic
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn standbys_forward_writes_before_any_work_and_skip_periodic_work() {
        use std::sync::atomic::Ordering::SeqCst;
        let count = |b: Arc<Counting>, _req: Request| async move {
            b.handled.fetch_add(1, SeqCst);
            Ok(None)
        };
        let path = Path::new("thing/{name}")
            .field(Field::new("name", FieldType::Name, "Name"))
            .existence_check(crate::framework::path::existence(
                |b: Arc<Counting>, _req: Request| async move {
                    b.handled.fetch_add(100, SeqCst);
                    Ok(false)
                },
            ))
            .operation(Operation::Create, "c", "c", handler(count))
            .operation(Operation::Update, "u", "u", handler(count))
            .operation(Operation::Delete, "d", "d", handler(count))
            .operation(Operation::Read, "r", "r", handler(count));
        let state = Arc::new(Counting::default());
        let node = Arc::new(Node(std::sync::atomic::AtomicU32::new(24576)));
        let info = BackendInfo {
            title: "t",
            help: "h",
        };
        let b = Backend::new(state.clone(), vec![path], info, pb::Paths::default())
            .with_system(node.clone());
        for op in ["create", "update", "delete"] {
            let err = b
                .handle_request(request(op, "thing/a", r#"{"x":1}"#))
                .await
                .err
                .unwrap();
            assert_eq!(err.err_type, ERR_INTERNAL, "{op}");
            assert!(err.err_msg.contains(READ_ONLY), "{}", err.err_msg);
        }
        let check = b.existence_check(request("update", "thing/a", "")).await;
        assert!(
            !check.check_found,
            "a standby answers existence checks without reading"
        );
        assert_eq!(state.handled.load(SeqCst), 0, "nothing ran on the standby");
        assert!(
            b.handle_request(request("read", "thing/a", ""))
                .await
                .err
                .is_none()
        );
        assert_eq!(state.handled.load(SeqCst), 1, "reads run locally");
        assert_eq!(
            b.handle_request(request("rollback", "", ""))
                .await
                .err
                .unwrap()
                .err_type,
            5
        );
        assert_eq!(
            state.periodic.load(SeqCst),
            0,
            "no periodic work on a standby"
        );

        // Promoted: everything runs here.
        node.0.store(8224, SeqCst);
        assert!(
            b.handle_request(request("update", "thing/a", ""))
                .await
                .err
                .is_none()
        );
        assert!(
            b.existence_check(request("update", "thing/a", ""))
                .await
                .check_found
        );
        assert_eq!(state.handled.load(SeqCst), 102);
        b.handle_request(request("rollback", "", "")).await;
        assert_eq!(state.periodic.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn help_is_never_empty_and_carries_openapi() {
        let b = backend();
        let root = data_of(
            &b.handle_request(request(
                "help",
                "",
                r#"{"requestResponsePrefix":"keymgmt"}"#,
            ))
            .await,
        );
        assert!(root["openapi"]["paths"]["/thing/{name}"]["post"]["operationId"] == "writeThing");
        assert_eq!(root["openapi"]["info"]["title"], "Echo engine");
        let listing = root["help"].as_str().unwrap();
        let paths = listing.split("## PATHS").nth(1).expect("a PATHS section");
        assert!(
            paths.contains("\n    ^thing/") && paths.contains("\n        Manage things."),
            "{listing}"
        );
        let one = data_of(&b.handle_request(request("help", "thing/x", "")).await);
        let text = one["help"].as_str().unwrap();
        assert!(
            text.contains("Manage things.") && text.contains("count (integer)"),
            "{text}"
        );
        assert!(
            b.handle_request(request("help", "nope", ""))
                .await
                .err
                .is_some()
        );
    }
}
