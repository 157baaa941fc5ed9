//! Logs and traces of the binary. Logs go to stderr (`RUST_LOG`, `STEPWISE_LOG_FORMAT=json`).
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans
//! are also exported over OTLP/HTTP (protobuf) with `service.name` from `OTEL_SERVICE_NAME`
//! (default `stepwise`); otherwise no exporter is built at all. Which spans are exported is
//! `STEPWISE_TRACE_FILTER` (an `EnvFilter`, default `info`), independent of `RUST_LOG`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Keeps the OTLP exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered. Call before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: could not flush traces to the OTLP collector: {e}");
            }
        }
    }
}

/// Whether OTLP export is configured.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

fn otlp_provider() -> Option<SdkTracerProvider> {
    if !otlp_configured() {
        return None;
    }
    // The exporter reads the endpoint, headers and timeout from the standard OTEL_* variables.
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("warning: OTLP export disabled: {e}");
            return None;
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "stepwise".into());
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    )
}

/// Installs the global subscriber: stderr logs, plus OTLP export when configured. Call once,
/// before the async runtime starts (the exporter runs on its own thread).
pub fn init() -> Telemetry {
    let log_filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("STEPWISE_LOG_FORMAT").as_deref() == Ok("json");
    let text_layer = (!json).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter())
    });
    let json_layer = json.then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
    });
    let provider = otlp_provider();
    // Traces have their own filter, so that quiet logs (RUST_LOG=warn) still export spans.
    let otel_layer = provider.as_ref().map(|p| {
        let filter = EnvFilter::try_from_env("STEPWISE_TRACE_FILTER")
            .unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("stepwise"))
            .with_filter(filter)
    });
    tracing_subscriber::registry()
        .with(text_layer)
        .with(json_layer)
        .with(otel_layer)
        .init();
    Telemetry { provider }
}
