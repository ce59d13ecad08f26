//! Cost of the helper path per trace, against a bare rdkafka `send` of the same bytes
//! measured in the same run.
//!
//! - `bare_send`: the baseline, `ThreadedProducer::send` of a pre-encoded trace (same key,
//!   same producer settings and delivery-report thread as the emitter).
//! - `request_path`: what a request pays: context scope and lookup, building a trace with
//!   three nested steps, Avro encoding and the hand-off to librdkafka.
//! - `build_only` and `encode_only`: the two parts of the difference, for the report.
//! - `otel_sdk`: the peer a Rust team would pick instead, the `opentelemetry` SDK recording the
//!   same request as four spans (the trace and its three steps) with the same values as
//!   attributes, named as the GenAI conventions the Collector path reads. Its batch span
//!   processor hands every span to its own thread, whose exporter does what an OTLP-to-Kafka
//!   path does: each batch grouped and encoded as OTLP protobuf, sent to the same cluster.
//!   That work is off the request path, as the processor intends; ours encodes on it.
//!   The values a service has at run time are owned strings (see `otel_request`);
//!   `otel_sdk_static_values`, reported only, records them as `'static` strings instead.
//!
//! Every variant produces to an in-process cluster, so no broker is needed; delivery runs in
//! librdkafka's threads for all of them alike. Traces are timed in chunks, and between chunks
//! every variant waits, untimed, until its records are delivered (the SDK's spans exported
//! first), so no chunk shares the machine with the last one's delivery.
//! `scripts/bench.sh` turns the medians into ratios.

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use trace_emit::{
    CHAT_COMPLETION, CollectingSink, Emitter, EmitterConfig, RETRIEVER, TraceSink, Usage,
    record_usage, trace, with_user_session_sync,
};

const TOPIC: &str = "bench-traces";
/// Traces sent between waits for delivery (not measured); far below the buffer size.
const CHUNK: u64 = 2_000;

// The first of pipeline-bench's realistic traces (bench/src/traces.rs): same shape, same
// texts, so this bench measures the traces the end-to-end figures use (about 1.3 KB in Avro).
const QUESTION: &str =
    "Which neighbourhood in Lisbon is best for walking to restaurants in the evening?";
const DOCUMENT: &str = "Alfama is Lisbon's oldest district, a maze of narrow streets between the \
    castle and the river, known for fado houses and small tascas. Tram 28 passes through it.";
const ANSWER: &str = "Alfama is hard to beat for evening walks: most tascas and fado houses are a \
    few minutes apart, though the streets are steep.";

/// One request, as pipeline-bench's template: a `chat` trace with a `retrieve` step (holding
/// a nested `embed_query` model call) and a `complete` chat-completion step; three steps, two
/// levels deep, token usage and cost on the model calls, two metadata entries.
fn traced_request(sink: Arc<dyn TraceSink>) {
    let question_tokens = 40 + QUESTION.len() as i64 / 4;
    with_user_session_sync(Some("user-004711"), Some("session-4711-lisbon"), || {
        trace("chat")
            .input("user_message", QUESTION)
            .metadata("app_version", "2.14.1")
            .metadata("region", "eu-west-1")
            .sink(sink)
            .run_sync(|| {
                let documents = trace("retrieve")
                    .step_type(RETRIEVER)
                    .input("query", QUESTION)
                    .run_sync(|| {
                        trace("embed_query")
                            .model("text-embedding-3-small")
                            .run_sync(|| {
                                let _in_trace = record_usage(
                                    Usage::tokens(question_tokens, 0).cost(2e-8 * 20.0),
                                );
                                1536
                            });
                        vec![DOCUMENT]
                    });
                trace("complete")
                    .step_type(CHAT_COMPLETION)
                    .model("gpt-4o-mini")
                    .input("context", documents[0])
                    .run_sync(|| {
                        let _in_trace =
                            record_usage(Usage::tokens(question_tokens + 60, 45).cost(0.000_119));
                        ANSWER
                    })
            });
    });
}

/// The same request through the OpenTelemetry SDK: four spans, the same values as attributes
/// (the return values as `output`), as an instrumented service records them with `in_span`.
/// The values a service gets at run time (the ids and the question from its request, the
/// documents and the answer from its calls) are attributes as owned strings, as a service
/// holding them borrowed from its request or response must hand them over (an attribute value
/// is `'static` or owned); names and constants stay `'static`, as with the helpers. `runtime`
/// makes those values: owned copies for the figure, or `'static` for the reported variant
/// that shows what the copies cost the peer.
fn otel_request(tracer: &SdkTracer, runtime: fn(&'static str) -> opentelemetry::Value) {
    let question_tokens = 40 + QUESTION.len() as i64 / 4;
    tracer.in_span("chat", |root| {
        let span = root.span();
        span.set_attribute(KeyValue::new("user.id", runtime("user-004711")));
        span.set_attribute(KeyValue::new("session.id", runtime("session-4711-lisbon")));
        span.set_attribute(KeyValue::new("input.user_message", runtime(QUESTION)));
        span.set_attribute(KeyValue::new("app_version", "2.14.1"));
        span.set_attribute(KeyValue::new("region", "eu-west-1"));
        let documents = tracer.in_span("retrieve", |retrieve| {
            let span = retrieve.span();
            span.set_attribute(KeyValue::new("gen_ai.operation.name", "retrieval"));
            span.set_attribute(KeyValue::new("input.query", runtime(QUESTION)));
            tracer.in_span("embed_query", |embed| {
                let span = embed.span();
                span.set_attribute(KeyValue::new("gen_ai.operation.name", "embeddings"));
                span.set_attribute(KeyValue::new(
                    "gen_ai.request.model",
                    "text-embedding-3-small",
                ));
                span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", question_tokens));
                span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", 0));
                span.set_attribute(KeyValue::new("gen_ai.usage.cost", 2e-8 * 20.0));
                span.set_attribute(KeyValue::new("output", 1536));
            });
            let documents = vec![DOCUMENT];
            span.set_attribute(KeyValue::new(
                "output",
                opentelemetry::Value::Array(
                    documents
                        .iter()
                        .map(|document| match runtime(document) {
                            opentelemetry::Value::String(text) => text,
                            other => other.as_str().into_owned().into(),
                        })
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ));
            documents
        });
        let answer = tracer.in_span("complete", |complete| {
            let span = complete.span();
            span.set_attribute(KeyValue::new("gen_ai.operation.name", "chat"));
            span.set_attribute(KeyValue::new("gen_ai.request.model", "gpt-4o-mini"));
            span.set_attribute(KeyValue::new("input.context", runtime(documents[0])));
            span.set_attribute(KeyValue::new(
                "gen_ai.usage.input_tokens",
                question_tokens + 60,
            ));
            span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", 45));
            span.set_attribute(KeyValue::new("gen_ai.usage.cost", 0.000_119));
            span.set_attribute(KeyValue::new("gen_ai.completion", runtime(ANSWER)));
            ANSWER
        });
        span.set_attribute(KeyValue::new("output", runtime(answer)));
    });
}

/// An OTLP-to-Kafka exporter: each batch becomes one OTLP protobuf request on the topic.
struct OtlpKafkaExporter {
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
    resource: ResourceAttributesWithSchema,
    /// Spans exported, to check that none was dropped.
    exported: Arc<AtomicU64>,
}

impl std::fmt::Debug for OtlpKafkaExporter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OtlpKafkaExporter")
    }
}

impl SpanExporter for OtlpKafkaExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.exported
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        };
        let payload = request.encode_to_vec();
        self.producer
            .send(BaseRecord::<(), _>::to(TOPIC).payload(&payload))
            .map_err(|(error, _)| OTelSdkError::InternalFailure(error.to_string()))
    }
}

/// Producer settings shared by the baseline and the emitter, plus room for a long run.
fn producer_settings(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151");
    config
}

/// Waits until nothing is in flight (for the raw producers; the emitter's variant waits with
/// `Emitter::flush`). rdkafka's `flush` polls the queue that the producer's own polling thread
/// serves, for up to 100 ms before it looks again, so it returns up to 100 ms after the last
/// delivery; criterion plans a sample's iterations from wall time, and gave samples of a
/// few hundred traces. Each turn calls `flush` without waiting, a nudge to send what is
/// lingering.
fn wait_delivered(in_flight: impl Fn() -> i32, send_lingering: impl Fn()) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight() > 0 {
        assert!(Instant::now() < deadline, "delivery stalled");
        send_lingering();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `one` `iterations` times in chunks of `CHUNK`, timing only the chunks: `deliver`
/// runs between them, unmeasured, so every variant pays delivery outside the figure alike.
fn time_in_chunks(iterations: u64, mut one: impl FnMut(), mut deliver: impl FnMut()) -> Duration {
    let mut measured = Duration::ZERO;
    let mut remaining = iterations;
    while remaining > 0 {
        let chunk = remaining.min(CHUNK);
        let started = Instant::now();
        for _ in 0..chunk {
            one();
        }
        measured += started.elapsed();
        deliver();
        remaining -= chunk;
    }
    measured
}

fn bench_emit_path(criterion: &mut Criterion) {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();

    let collector = CollectingSink::new();
    traced_request(collector.clone());
    let sample = collector.take().pop().expect("one trace");
    let payload = trace_model::encode(&sample, trace_model::Encoding::Avro).expect("encode");
    let key = sample.partition_key().expect("key").to_owned();
    println!(
        "trace: {} bytes in Avro, {} steps",
        payload.len(),
        sample.all_steps().count()
    );

    let mut group = criterion.benchmark_group("emit_path");

    // A ThreadedProducer, as the emitter uses: the same thread serves delivery reports for
    // both, so the ratio shows what the helpers add, not a different delivery setup.
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_settings(&bootstrap).create().expect("producer");
    group.bench_function("bare_send", |bencher| {
        bencher.iter_custom(|iterations| {
            time_in_chunks(
                iterations,
                || {
                    producer
                        .send(BaseRecord::to(TOPIC).key(&key).payload(black_box(&payload)))
                        .map_err(|(error, _)| error)
                        .expect("librdkafka has room");
                },
                || {
                    wait_delivered(
                        || producer.in_flight_count(),
                        || drop(producer.flush(Duration::ZERO)),
                    )
                },
            )
        });
    });
    struct Discard;
    impl TraceSink for Discard {
        fn emit(&self, event: trace_model::TraceEvent) {
            drop(black_box(event));
        }
    }
    let discard: Arc<dyn TraceSink> = Arc::new(Discard);
    group.bench_function("build_only", |bencher| {
        bencher.iter(|| traced_request(black_box(discard.clone())));
    });
    group.bench_function("encode_only", |bencher| {
        bencher.iter(|| trace_model::encode(black_box(&sample), trace_model::Encoding::Avro));
    });

    let registry = prometheus::Registry::new();
    let mut config = EmitterConfig::new(&bootstrap, TOPIC);
    config.queue_capacity = 2_000_000;
    config
        .client
        .insert("queue.buffering.max.kbytes".into(), "2097151".into());
    let emitter = Emitter::try_new(config, &registry).expect("emitter");
    let sink: Arc<dyn TraceSink> = emitter.clone();

    group.bench_function("request_path", |bencher| {
        bencher.iter_custom(|iterations| {
            time_in_chunks(
                iterations,
                || traced_request(black_box(sink.clone())),
                || emitter.flush(Duration::from_secs(30)).expect("delivered"),
            )
        });
    });

    let resource = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", "bench-service"))
        .build();
    let exported = Arc::new(AtomicU64::new(0));
    let otlp_producer: Arc<ThreadedProducer<DefaultProducerContext>> =
        Arc::new(producer_settings(&bootstrap).create().expect("producer"));
    let exporter = OtlpKafkaExporter {
        producer: otlp_producer.clone(),
        resource: (&resource).into(),
        exported: exported.clone(),
    };
    // Room for every span between flushes, so no span is dropped (dropping is cheaper).
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(4 * CHUNK as usize * 2)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .build();
    let tracer = provider.tracer("bench");
    let mut requests = 0u64;
    let owned: fn(&'static str) -> opentelemetry::Value = |text| text.to_owned().into();
    let borrowed: fn(&'static str) -> opentelemetry::Value = |text| text.into();
    for (name, runtime) in [("otel_sdk", owned), ("otel_sdk_static_values", borrowed)] {
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iterations| {
                requests += iterations;
                time_in_chunks(
                    iterations,
                    || otel_request(black_box(&tracer), runtime),
                    || {
                        provider.force_flush().expect("flush the span processor");
                        wait_delivered(
                            || otlp_producer.in_flight_count(),
                            || drop(otlp_producer.flush(Duration::ZERO)),
                        );
                    },
                )
            });
        });
    }
    group.finish();
    provider.shutdown().expect("shut the tracer provider down");
    assert_eq!(
        exported.load(Ordering::Relaxed),
        4 * requests,
        "the peer must export every span (dropping is cheaper)"
    );

    emitter
        .close(Duration::from_secs(30))
        .expect("close emitter");
    let dropped = registry
        .gather()
        .iter()
        .filter(|family| family.name() == "trace_emit_events_dropped_total")
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| metric.get_counter().get_value())
        .sum::<f64>();
    assert_eq!(dropped, 0.0, "the bench must not measure the drop path");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = bench_emit_path
}
criterion_main!(benches);
