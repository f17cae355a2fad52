//! hclog-style JSON logging on stderr.
//!
//! go-plugin parses every stderr line of a plugin as hclog JSON and re-logs
//! it in the host's log under the plugin's name. A line is recognised only
//! when `@timestamp` has exactly six fractional digits, so the format here is
//! fixed. stdout is reserved for the handshake line and is never written.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;
use time::macros::format_description;

/// The process-wide logger. Install it once with [`init`].
struct HclogJson {
    level: LevelFilter,
}

/// Installs the JSON logger. `KEYMGMT_LOG_LEVEL` (trace, debug, info, warn,
/// error) selects the level; info by default.
pub fn init() {
    let level = std::env::var("KEYMGMT_LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(HclogJson { level })).is_ok() {
        log::set_max_level(level);
    }
}

fn hclog_level(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Formats a timestamp as Go's `2006-01-02T15:04:05.000000Z07:00` in UTC.
pub fn hclog_timestamp(at: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    at.format(&format).unwrap_or_default()
}

/// Renders one record as a single JSON line, without the trailing newline.
fn render(record: &Record<'_>, at: OffsetDateTime) -> String {
    struct Fields<'a>(&'a mut Map<String, Json>);
    impl<'kvs> VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
            self.0
                .insert(key.as_str().to_owned(), Json::String(value.to_string()));
            Ok(())
        }
    }
    let mut line = Map::new();
    line.insert("@level".into(), hclog_level(record.level()).into());
    line.insert("@message".into(), record.args().to_string().into());
    line.insert("@timestamp".into(), hclog_timestamp(at).into());
    line.insert("@module".into(), record.target().into());
    // A failed visit only loses extra fields; the message itself is kept.
    let _ = record.key_values().visit(&mut Fields(&mut line));
    Json::Object(line).to_string()
}

/// Log targets that never reach the log, at any level: the AWS SDK's
/// request signing traces the canonical request, session token included,
/// and its HTTP layers dump headers. They log through `tracing`, which has
/// no subscriber here, so this is the second line of defence should a
/// dependency ever bridge `tracing` to `log`.
const SILENCED_TARGETS: &[&str] = &["aws_", "hyper", "h2::", "rustls", "tower", "reqwest"];

fn silenced(target: &str) -> bool {
    SILENCED_TARGETS
        .iter()
        .any(|prefix| target.starts_with(prefix))
        || target == "h2"
}

impl Log for HclogJson {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && !silenced(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = render(record, OffsetDateTime::now_utc());
        let mut stderr = std::io::stderr().lock();
        // Nowhere to report a failed write to stderr; dropping the line is all we can do.
        let _ = writeln!(stderr, "{line}");
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_six_fractional_digits_and_zulu() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_073_000_123).unwrap();
        assert_eq!(hclog_timestamp(at), "2026-11-18T11:06:40.073000Z");
    }

    #[test]
    fn dependencies_that_see_requests_are_silenced() {
        let logger = HclogJson {
            level: LevelFilter::Trace,
        };
        for target in [
            "aws_sigv4::http_request::sign",
            "aws_smithy_runtime::client::orchestrator",
            "aws_config::imds",
            "hyper_util::client",
            "h2::codec",
            "rustls::client",
            "reqwest::connect",
        ] {
            let metadata = Metadata::builder()
                .level(Level::Error)
                .target(target)
                .build();
            assert!(!logger.enabled(&metadata), "{target}");
        }
        let ours = Metadata::builder()
            .level(Level::Trace)
            .target("vault_plugin_secrets_keymgmt::engine")
            .build();
        assert!(logger.enabled(&ours));
    }

    #[test]
    fn line_is_hclog_json_with_extra_fields() {
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let kvs = [("mount", "keymgmt/")];
        let record = Record::builder()
            .level(Level::Warn)
            .target("keymgmt")
            .args(format_args!("hello \"world\""))
            .key_values(&kvs)
            .build();
        let parsed: Json = serde_json::from_str(&render(&record, at)).unwrap();
        assert_eq!(parsed["@level"], "warn");
        assert_eq!(parsed["@message"], "hello \"world\"");
        assert_eq!(parsed["@timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(parsed["mount"], "keymgmt/");
    }
}
