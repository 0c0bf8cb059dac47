//! Logging (`tracing`, JSON or pretty) and the Prometheus metrics every other module updates.
//! Labels are bounded: no per-room or per-user label, ever.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::config::LogFormat;

/// The target of the spans opened for every message (`publish_message` on the pod that
/// committed it, `deliver` on every other): they are for traces. The log lines leave them out,
/// and without a trace pipeline they are not made at all: the log layer formats every span's
/// fields when it opens, which was ~2% of a core at 42,000 messages/s of ingest.
pub const PER_MESSAGE: &str = "confab::trace";

/// Logging, and tracing over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Keep the guard
/// alive until the process ends: dropping it flushes buffered spans.
pub fn init_logging(format: LogFormat) -> TraceGuard {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer as _, fmt};
    let mut filter = EnvFilter::try_from_env("CONFAB_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = otlp_provider();
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("confab")));
    if otel.is_none() {
        filter = filter.add_directive(
            format!("{PER_MESSAGE}=off")
                .parse()
                .expect("a valid directive"),
        );
    }
    let logs = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target(PER_MESSAGE, LevelFilter::OFF);
    let (json, pretty) = match format {
        LogFormat::Json => (
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_filter(logs.clone()),
            ),
            None,
        ),
        LogFormat::Pretty => (None, Some(fmt::layer().with_filter(logs))),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .with(otel)
        .try_init();
    TraceGuard(provider)
}

/// The W3C `traceparent` of the current span (empty without tracing), to carry a trace to
/// other pods in bus envelopes.
pub fn current_traceparent() -> String {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the trace a `traceparent` names (from another pod).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if traceparent.is_empty() {
        return;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

/// Keeps the trace pipeline alive; dropping it flushes what is buffered.
pub struct TraceGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// The OTLP trace pipeline, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific
/// variable) is set. Spans go out over OTLP/HTTP in batches; W3C trace context is the
/// propagation format, also across pods through the bus.
fn otlp_provider() -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    let configured = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !configured {
        return None;
    }
    // The blocking HTTP client must not be built inside the async runtime.
    let exporter = std::thread::spawn(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
    })
    .join()
    .ok()?;
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("confab: OTLP exporter not started: {e}");
            return None;
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "confab".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    pub registry: Registry,
    pub ws_connections: IntGauge,
    pub ws_opened: IntCounter,
    pub ws_closed: IntCounterVec,
    pub subscriptions: IntGauge,
    pub messages_received: IntCounter,
    pub messages_committed: IntCounter,
    pub acks: IntCounter,
    pub deliveries: IntCounter,
    pub slow_consumers: IntCounter,
    pub gap_fills: IntCounter,
    pub commit_batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub http_requests: IntCounterVec,
    pub http_header_timeouts: IntCounter,
    pub http_seconds: HistogramVec,
    pub delivery_latency: Histogram,
    pub bus_lag: Histogram,
    pub bus_publish: Histogram,
    pub store_query: HistogramVec,
    pub redis_command: HistogramVec,
    pub rate_limited: IntCounterVec,
    pub oidc_fetches: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_attempt_seconds: Histogram,
    pub webhook_queue_depth: IntGauge,
    pub webhook_oldest_due_seconds: Gauge,
    pub ready: IntGauge,
    pub outbound_queue_frames: IntGauge,
    pub outbound_queue_max_frames: IntGauge,
    pub presence_users: IntGauge,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            }};
        }
        let build = reg!(IntGauge::with_opts(
            Opts::new("confab_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION"))
        ));
        build.set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds (the "near capacity" alert is their ratio), read from /proc.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Metrics(Arc::new(Inner {
            ws_connections: reg!(IntGauge::new(
                "confab_ws_connections",
                "Open WebSocket connections on this pod (the HPA scales on it)."
            )),
            ws_opened: reg!(IntCounter::new(
                "confab_ws_connections_opened_total",
                "WebSocket connections opened."
            )),
            webhook_deliveries: reg!(IntCounterVec::new(
                Opts::new(
                    "confab_webhook_deliveries_total",
                    "Webhook delivery attempts by outcome: delivered, retry (will be tried again) or failed (given up)."
                ),
                &["outcome"]
            )),
            webhook_attempt_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_webhook_attempt_duration_seconds",
                    "Time of one webhook delivery attempt, answer read."
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
                ])
            )),
            webhook_queue_depth: reg!(IntGauge::new(
                "confab_webhook_queue_depth",
                "Webhook events waiting for delivery (due or being retried), installation-wide."
            )),
            webhook_oldest_due_seconds: reg!(Gauge::new(
                "confab_webhook_oldest_due_age_seconds",
                "Age of the oldest webhook event not yet delivered (0 when none)."
            )),
            oidc_fetches: reg!(IntCounterVec::new(
                Opts::new(
                    "confab_oidc_key_set_fetches_total",
                    "Reads of the OpenID provider's discovery document and key set, by outcome."
                ),
                &["outcome"]
            )),
            ws_closed: reg!(IntCounterVec::new(
                Opts::new(
                    "confab_ws_connections_closed_total",
                    "WebSocket connections closed, by reason."
                ),
                &["reason"]
            )),
            subscriptions: reg!(IntGauge::new(
                "confab_subscriptions",
                "Room subscriptions held by connections on this pod."
            )),
            messages_received: reg!(IntCounter::new(
                "confab_messages_received_total",
                "Messages submitted by clients (WebSocket and REST)."
            )),
            messages_committed: reg!(IntCounter::new(
                "confab_messages_committed_total",
                "Messages durably committed by this pod."
            )),
            acks: reg!(IntCounter::new(
                "confab_acks_total",
                "Acks sent to senders."
            )),
            deliveries: reg!(IntCounter::new(
                "confab_deliveries_total",
                "Events queued to local subscribers (fan-out)."
            )),
            slow_consumers: reg!(IntCounter::new(
                "confab_slow_consumers_total",
                "Connections closed because their outbound queue overflowed."
            )),
            gap_fills: reg!(IntCounter::new(
                "confab_gap_fills_total",
                "Times missing messages were read back from the store for delivery."
            )),
            commit_batch_size: reg!(Histogram::with_opts(
                HistogramOpts::new("confab_commit_batch_size", "Messages per group commit.")
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0
                    ])
            )),
            commit_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("confab_commit_duration_seconds", "Group commit latency.")
                    .buckets(latency.clone())
            )),
            http_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "confab_http_requests_total",
                    "HTTP requests by route template and status."
                ),
                &["method", "route", "status"]
            )),
            http_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "confab_http_request_duration_seconds",
                    "HTTP request latency."
                )
                .buckets(latency.clone()),
                &["method", "route"]
            )),
            delivery_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_delivery_latency_seconds",
                    "From the server reading a message to writing it to a subscriber's socket."
                )
                .buckets(latency.clone())
            )),
            bus_lag: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_bus_lag_seconds",
                    "From another pod publishing an event to this pod receiving it."
                )
                .buckets(latency.clone())
            )),
            bus_publish: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "confab_bus_publish_duration_seconds",
                    "One pipelined publish to the bus."
                )
                .buckets(latency.clone())
            )),
            store_query: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "confab_store_query_duration_seconds",
                    "Store calls by operation."
                )
                .buckets(latency.clone()),
                &["op"]
            )),
            redis_command: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "confab_redis_command_duration_seconds",
                    "Redis commands by kind."
                )
                .buckets(latency),
                &["command"]
            )),
            http_header_timeouts: reg!(IntCounter::new(
                "confab_http_header_timeouts_total",
                "Connections closed because a request's headers did not arrive in time."
            )),
            rate_limited: reg!(IntCounterVec::new(
                Opts::new(
                    "confab_rate_limited_total",
                    "Requests and messages refused by a rate limit."
                ),
                &["scope"]
            )),
            ready: reg!(IntGauge::new(
                "confab_ready",
                "1 while the pod is ready (store and bus answer, not draining)."
            )),
            outbound_queue_frames: reg!(IntGauge::new(
                "confab_outbound_queue_frames",
                "Frames waiting in all connections' outbound queues on this pod."
            )),
            outbound_queue_max_frames: reg!(IntGauge::new(
                "confab_outbound_queue_max_frames",
                "The longest outbound queue on this pod."
            )),
            presence_users: reg!(IntGauge::new(
                "confab_presence_users",
                "Users online in rooms on this pod (one per user and room)."
            )),
            registry,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 metrics")
    }
}
