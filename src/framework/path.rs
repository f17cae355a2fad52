//! Path declarations: pattern, fields, operations and help in one place,
//! like Vault's `framework.Path`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::error::Error;
use super::field::{Field, FieldValue, Secret};
use super::operation::Operation;

/// What a handler returns: a response, or none (HTTP 204 for writes, 404
/// for reads).
pub type HandlerResult = Result<Option<Response>, Error>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
pub type Handler<B> = Arc<dyn Fn(Arc<B>, Request) -> HandlerFuture + Send + Sync>;
pub type ExistenceFuture = Pin<Box<dyn Future<Output = Result<bool, Error>> + Send>>;
pub type ExistenceCheck<B> = Arc<dyn Fn(Arc<B>, Request) -> ExistenceFuture + Send + Sync>;

/// Wraps an async function as a [`Handler`].
pub fn handler<B, F, Fut>(f: F) -> Handler<B>
where
    F: Fn(Arc<B>, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |b, r| Box::pin(f(b, r)))
}

/// Wraps an async function as an [`ExistenceCheck`].
pub fn existence<B, F, Fut>(f: F) -> ExistenceCheck<B>
where
    F: Fn(Arc<B>, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, Error>> + Send + 'static,
{
    Arc::new(move |b, r| Box::pin(f(b, r)))
}

/// One operation a path supports.
pub struct OperationHandler<B> {
    pub operation: Operation,
    /// Whether it writes storage: on an HA standby it is then forwarded to
    /// the active node before any work. Derived from the operation, so that
    /// no path can forget it.
    pub writes: bool,
    pub handler: Handler<B>,
    /// The OpenAPI operationId, as Vault Enterprise names it.
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub answer: Answer,
}

/// What a successful operation answers, for OpenAPI; the unit tests check
/// every answer against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with data.
    Data,
    /// 204, or 200 with only warnings.
    NoContent,
}

impl Answer {
    /// Reads and lists answer with data, writes and deletes without,
    /// unless a path says otherwise.
    pub const fn default_for(operation: Operation) -> Self {
        match operation {
            Operation::Read | Operation::List => Self::Data,
            _ => Self::NoContent,
        }
    }
}

/// A segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    /// `{name}`: one segment holding a Vault-style name.
    Capture(&'static str),
}

/// A path of the backend. Patterns are `/`-separated literals and
/// `{captures}`; a pattern ending in `/` is a list path and also matches
/// without the slash.
pub struct Path<B> {
    pub pattern: &'static str,
    segments: Vec<Segment>,
    trailing_slash: bool,
    pub fields: Vec<Field>,
    pub operations: Vec<OperationHandler<B>>,
    pub existence_check: Option<ExistenceCheck<B>>,
    pub synopsis: &'static str,
    pub description: &'static str,
}

impl<B> Path<B> {
    pub fn new(pattern: &'static str) -> Self {
        let trailing_slash = pattern.ends_with('/');
        let segments = pattern
            .trim_end_matches('/')
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Capture(name),
                    None => Segment::Literal(s),
                },
            )
            .collect();
        Self {
            pattern,
            segments,
            trailing_slash,
            fields: Vec::new(),
            operations: Vec::new(),
            existence_check: None,
            synopsis: "",
            description: "",
        }
    }

    pub fn field(mut self, field: Field) -> Self {
        self.fields.push(field);
        self
    }

    pub fn operation(
        mut self,
        operation: Operation,
        operation_id: &'static str,
        summary: &'static str,
        handler: Handler<B>,
    ) -> Self {
        self.operations.push(OperationHandler {
            operation,
            writes: operation.writes(),
            handler,
            operation_id,
            summary,
            answer: Answer::default_for(operation),
        });
        self
    }

    /// Declares that `operation`, declared before, answers with data.
    pub fn answers_with_data(mut self, operation: Operation) -> Self {
        for op in self
            .operations
            .iter_mut()
            .filter(|o| o.operation == operation)
        {
            op.answer = Answer::Data;
        }
        self
    }

    pub fn existence_check(mut self, check: ExistenceCheck<B>) -> Self {
        self.existence_check = Some(check);
        self
    }

    pub fn help(mut self, synopsis: &'static str, description: &'static str) -> Self {
        self.synopsis = synopsis;
        self.description = description;
        self
    }

    /// Matches a request path, returning the captured segments.
    pub fn matches(&self, path: &str) -> Option<HashMap<String, String>> {
        let path = if self.trailing_slash {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut captures = HashMap::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if *literal == part => {}
                Segment::Capture(name) if is_name(part) => {
                    captures.insert((*name).to_owned(), part.to_owned());
                }
                _ => return None,
            }
        }
        Some(captures)
    }

    pub fn handler_for(&self, operation: Operation) -> Option<&OperationHandler<B>> {
        self.operations.iter().find(|o| o.operation == operation)
    }

    pub fn capture_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(name) => Some(*name),
            Segment::Literal(_) => None,
        })
    }

    /// The pattern in OpenAPI form: `key/{name}` stays as written.
    pub fn openapi_path(&self) -> String {
        format!("/{}", self.pattern)
    }

    /// The pattern as the regular expression Vault would print.
    pub fn route_regex(&self) -> String {
        let body: Vec<String> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => (*l).to_owned(),
                Segment::Capture(name) => format!("(?P<{name}>\\w(([\\w-.]+)?\\w)?)"),
            })
            .collect();
        let slash = if self.trailing_slash { "/?" } else { "" };
        format!("^{}{slash}$", body.join("/"))
    }
}

/// Vault's `GenericNameRegex`: word characters, with `-` and `.` inside.
pub fn is_name(s: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    word(first) && word(last) && s.chars().all(|c| word(c) || c == '-' || c == '.')
}

/// A request as a handler sees it: fields already coerced and validated.
pub struct Request {
    pub operation: Operation,
    pub path: String,
    pub mount_point: String,
    captures: HashMap<String, String>,
    values: HashMap<&'static str, FieldValue>,
    provided: Vec<&'static str>,
}

impl Request {
    pub fn new(
        operation: Operation,
        path: String,
        mount_point: String,
        captures: HashMap<String, String>,
        values: HashMap<&'static str, FieldValue>,
        provided: Vec<&'static str>,
    ) -> Self {
        Self {
            operation,
            path,
            mount_point,
            captures,
            values,
            provided,
        }
    }

    /// A captured path segment. Patterns guarantee the capture exists.
    pub fn capture(&self, name: &str) -> &str {
        self.captures
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Whether the client sent the field (as opposed to its default).
    pub fn is_set(&self, name: &str) -> bool {
        self.provided.contains(&name)
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(FieldValue::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.values.get(name) {
            Some(FieldValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn seconds(&self, name: &str) -> Option<i64> {
        match self.values.get(name) {
            Some(FieldValue::Seconds(s)) => Some(*s),
            _ => None,
        }
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name) {
            Some(FieldValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn strings(&self, name: &str) -> Option<&[String]> {
        match self.values.get(name) {
            Some(FieldValue::Strings(s)) => Some(s),
            _ => None,
        }
    }

    pub fn pairs(&self, name: &str) -> Option<&BTreeMap<String, Secret>> {
        match self.values.get(name) {
            Some(FieldValue::Pairs(p)) => Some(p),
            _ => None,
        }
    }
}

/// A successful response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Response {
    pub data: Map<String, Value>,
    pub warnings: Vec<String>,
}

impl Response {
    pub fn data(data: Map<String, Value>) -> Self {
        Self {
            data,
            warnings: Vec::new(),
        }
    }

    /// A list response: `{"keys": [...]}`. An empty list becomes no
    /// response, which the host turns into 404 as Vault does.
    pub fn list(keys: Vec<String>) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        let mut data = Map::new();
        data.insert("keys".into(), keys.into());
        Some(Self::data(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_and_list_paths() {
        let p: Path<()> = Path::new("kms/{name}/key/{key_name}");
        let c = p.matches("kms/azure-1/key/k.v2").unwrap();
        assert_eq!(c["name"], "azure-1");
        assert_eq!(c["key_name"], "k.v2");
        assert!(p.matches("kms/a/key/").is_none());
        assert!(p.matches("kms/a/key/-bad").is_none());
        assert!(p.matches("kms/a/key/b/c").is_none());
        let list: Path<()> = Path::new("kms/{name}/key/");
        assert!(list.matches("kms/a/key/").is_some());
        assert!(list.matches("kms/a/key").is_some());
        assert_eq!(
            list.route_regex(),
            "^kms/(?P<name>\\w(([\\w-.]+)?\\w)?)/key/?$"
        );
    }

    #[test]
    fn names_follow_vault_generic_name_regex() {
        for ok in ["a", "example-key", "k_1.2", "A9"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", ".a", "a b", "a/b", "ключ"] {
            assert!(!is_name(bad), "{bad}");
        }
    }
}
