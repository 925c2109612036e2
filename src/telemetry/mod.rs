//! Logs and metrics set-up. Metric names and labels live in `metrics`; nothing
//! else in the crate spells a metric name.

mod json_log;
pub mod metrics;

/// `s` as the inside of a JSON string (quotes, backslashes and control
/// characters escaped), written to `w`.
pub(crate) use json_log::escape as json_escape;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber: JSON (or text) on stdout, filtered by the
/// configured level. Safe to call more than once (later calls are no-ops).
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = match cfg.format {
        LogFormat::Json => builder.fmt_fields(json_log::JsonFields).event_format(json_log::JsonLine).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
