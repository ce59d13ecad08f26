//! Traces and nested steps: one event per root trace, carrying the call tree with inputs,
//! outputs, timings and usage, whatever mix of sequential, nested and concurrent steps ran.

use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::oneshot;
use trace_emit::trace::{ChatMessage, set_documents, set_raw_output};
use trace_emit::{
    CHAT_COMPLETION, CollectingSink, NoActiveTrace, RETRIEVER, TOOL, USER_CALL, Usage, UserSession,
    add_metadata, current_user_session, record_usage, set_output, trace, update_trace_user_session,
    with_user_session, with_user_session_sync,
};
use trace_model::{Decoder, Encoding, JsonMap, Limits, Step, TraceEvent, TraceKind, encode};

/// Float slack for sums of latencies measured in f64 milliseconds.
const EPSILON: f64 = 1e-9;

fn only_event(sink: &CollectingSink) -> TraceEvent {
    let mut events = sink.take();
    assert_eq!(events.len(), 1, "expected exactly one trace: {events:#?}");
    events.pop().expect("one event")
}

fn names(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|step| step.name.as_str()).collect()
}

fn step<'a>(steps: &'a [Step], name: &str) -> &'a Step {
    steps
        .iter()
        .find(|step| step.name == name)
        .unwrap_or_else(|| panic!("no step {name} among {:?}", names(steps)))
}

fn rounded_ms(latency_ms: f64) -> i64 {
    latency_ms.round() as i64
}

/// Each step lies inside its parent: end - start is its rounded latency, it starts no earlier
/// than the parent and ends no later (start times are whole wall-clock milliseconds, so a
/// child may round to end 1 ms after its parent), and it takes no longer than the parent.
fn assert_timings_nest(parent_start_ms: i64, parent_latency_ms: f64, steps: &[Step]) {
    let parent_end_ms = parent_start_ms + rounded_ms(parent_latency_ms);
    for step in steps {
        assert!(step.latency_ms >= 0.0, "{}: negative latency", step.name);
        assert_eq!(
            step.end_time_ms - step.start_time_ms,
            rounded_ms(step.latency_ms),
            "{}: end - start is not the rounded latency",
            step.name
        );
        assert!(
            step.start_time_ms >= parent_start_ms,
            "{} starts before its parent",
            step.name
        );
        assert!(
            step.end_time_ms <= parent_end_ms + 1,
            "{} ends after its parent",
            step.name
        );
        assert!(
            step.latency_ms <= parent_latency_ms + EPSILON,
            "{} takes longer than its parent",
            step.name
        );
        assert_timings_nest(step.start_time_ms, step.latency_ms, &step.steps);
    }
}

fn assert_close(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("a cost");
    assert!(
        (actual - expected).abs() < 1e-12,
        "cost {actual} != {expected}"
    );
}

#[tokio::test]
async fn nested_and_concurrent_steps_form_one_trace_with_the_call_tree() {
    let sink = CollectingSink::new();
    let answer = trace("answer")
        .input("question", "Capital of France?")
        .model("router-v1")
        .sink(sink.clone())
        .run(async {
            record_usage(Usage::tokens(3, 2).cost(0.001)).expect("inside the root");
            let documents = trace("retrieve")
                .step_type(RETRIEVER)
                .input("query", "capital france")
                .run(async {
                    let embedding = trace("embed")
                        .input("text", "capital france")
                        .run(async {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            record_usage(Usage {
                                tokens: Some(8),
                                cost: Some(0.0002),
                                model: Some("text-embedding-3-small".to_owned()),
                                ..Usage::default()
                            })
                            .expect("inside embed");
                            vec![0.25, 0.5]
                        })
                        .await;
                    vec![format!("Paris ({} dims)", embedding.len())]
                })
                .await;
            // Two steps awaited concurrently; their nested steps and usage interleave.
            // search_docs finishes only after search_web has, so the order is fixed.
            let (web_done, web_done_received) = oneshot::channel();
            let (web, docs) = tokio::join!(
                trace("search_web")
                    .step_type(TOOL)
                    .input("query", "capital of france")
                    .run(async {
                        let page = trace("fetch")
                            .input("url", "https://example.org/france")
                            .run(async {
                                for _ in 0..3 {
                                    tokio::task::yield_now().await;
                                }
                                record_usage(Usage::tokens(10, 4).cost(0.002))
                                    .expect("inside fetch");
                                "Paris".to_owned()
                            })
                            .await;
                        web_done.send(()).expect("search_docs is waiting");
                        page
                    }),
                trace("search_docs")
                    .step_type(TOOL)
                    .input("query", "capital of france")
                    .run(async {
                        let hit = trace("lookup")
                            .input("index", "atlas")
                            .run(async {
                                for _ in 0..3 {
                                    tokio::task::yield_now().await;
                                }
                                record_usage(Usage::tokens(6, 1)).expect("inside lookup");
                                "Paris, France".to_owned()
                            })
                            .await;
                        web_done_received.await.expect("search_web signals");
                        record_usage(Usage {
                            cost: Some(0.0005),
                            ..Usage::default()
                        })
                        .expect("inside search_docs");
                        hit
                    }),
            );
            trace("complete")
                .step_type(CHAT_COMPLETION)
                .model("gpt-4o-mini")
                .input("prompt", "Answer from the context.")
                .run(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    record_usage(Usage::tokens(42, 7).cost(0.0001)).expect("inside complete");
                    format!("{web}: {docs} ({} document)", documents.len())
                })
                .await
        })
        .await;
    assert_eq!(answer, "Paris: Paris, France (1 document)");

    let event = only_event(&sink);
    assert_eq!(event.kind, TraceKind::Trace);
    assert_eq!(event.name, "answer");
    assert_eq!(
        event.inputs,
        json!({"question": "Capital of France?"})
            .as_object()
            .cloned()
            .expect("object")
    );
    assert_eq!(event.output, json!(answer));
    assert_eq!(event.model.as_deref(), Some("router-v1"));
    assert_eq!(
        (event.user_id.as_deref(), event.session_id.as_deref()),
        (None, None)
    );
    assert!(
        event
            .inference_id
            .as_deref()
            .is_some_and(|id| !id.is_empty())
    );

    // The tree: names, order, types, parents.
    assert_eq!(
        names(&event.steps),
        ["retrieve", "search_web", "search_docs", "complete"]
    );
    let retrieve = step(&event.steps, "retrieve");
    let search_web = step(&event.steps, "search_web");
    let search_docs = step(&event.steps, "search_docs");
    let complete = step(&event.steps, "complete");
    assert_eq!(names(&retrieve.steps), ["embed"]);
    assert_eq!(names(&search_web.steps), ["fetch"]);
    assert_eq!(names(&search_docs.steps), ["lookup"]);
    assert!(complete.steps.is_empty());
    let embed = step(&retrieve.steps, "embed");
    let fetch = step(&search_web.steps, "fetch");
    let lookup = step(&search_docs.steps, "lookup");
    assert!(
        [embed, fetch, lookup]
            .iter()
            .all(|leaf| leaf.steps.is_empty())
    );
    assert_eq!(retrieve.step_type, RETRIEVER);
    assert_eq!(search_web.step_type, TOOL);
    assert_eq!(search_docs.step_type, TOOL);
    assert_eq!(complete.step_type, CHAT_COMPLETION);
    assert_eq!(embed.step_type, USER_CALL);

    // Inputs and outputs of every step.
    assert_eq!(retrieve.inputs["query"], json!("capital france"));
    assert_eq!(embed.inputs["text"], json!("capital france"));
    assert_eq!(fetch.inputs["url"], json!("https://example.org/france"));
    assert_eq!(lookup.inputs["index"], json!("atlas"));
    assert_eq!(complete.inputs["prompt"], json!("Answer from the context."));
    assert_eq!(embed.output, json!([0.25, 0.5]));
    assert_eq!(retrieve.output, json!(["Paris (2 dims)"]));
    assert_eq!(fetch.output, json!("Paris"));
    assert_eq!(search_web.output, json!("Paris"));
    assert_eq!(lookup.output, json!("Paris, France"));
    assert_eq!(search_docs.output, json!("Paris, France"));
    assert_eq!(complete.output, json!(answer));

    // Every step has its own id.
    let ids: BTreeSet<&str> = event.all_steps().map(|step| step.id.as_str()).collect();
    assert_eq!(ids.len(), 7);
    assert!(!ids.contains(""));

    // Usage stays on the step that recorded it; the row totals add up all of it.
    assert_eq!(embed.tokens, Some(8));
    assert_eq!(embed.prompt_tokens, None);
    assert_eq!(embed.model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!((retrieve.tokens, retrieve.cost), (None, None));
    assert_eq!(
        (fetch.tokens, fetch.prompt_tokens, fetch.completion_tokens),
        (Some(14), Some(10), Some(4))
    );
    assert_eq!(search_web.tokens, None);
    assert_eq!(lookup.tokens, Some(7));
    assert_eq!(search_docs.tokens, None);
    assert_close(search_docs.cost, 0.0005);
    assert_eq!(
        (
            complete.tokens,
            complete.prompt_tokens,
            complete.completion_tokens
        ),
        (Some(49), Some(42), Some(7))
    );
    assert_eq!(complete.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(event.tokens, Some(5 + 8 + 14 + 7 + 49));
    assert_eq!(event.prompt_tokens, Some(3 + 10 + 6 + 42));
    assert_eq!(event.completion_tokens, Some(2 + 4 + 1 + 7));
    assert_close(event.cost, 0.001 + 0.0002 + 0.002 + 0.0005 + 0.0001);

    // Timings: nested intervals, and sequential steps fit inside the root one after another.
    let latency_ms = event.latency_ms.expect("root latency");
    assert_timings_nest(event.timestamp_ms, latency_ms, &event.steps);
    let concurrent_ms = search_web.latency_ms.max(search_docs.latency_ms);
    assert!(latency_ms + EPSILON >= retrieve.latency_ms + concurrent_ms + complete.latency_ms);
    assert!(retrieve.start_time_ms <= search_web.start_time_ms);
    assert!(search_docs.end_time_ms <= complete.start_time_ms + 1);
}

#[tokio::test]
async fn run_result_records_errors_as_metadata() {
    let sink = CollectingSink::new();
    let result: Result<u32, String> = trace("root")
        .sink(sink.clone())
        .run_result(async {
            let parsed: Result<u32, std::io::Error> = trace("parse")
                .run_result(async { Err(std::io::Error::other("bad digit")) })
                .await;
            let fallback: Result<u32, String> = trace("fallback").run_result(async { Ok(7) }).await;
            assert!(parsed.is_err());
            assert_eq!(fallback, Ok(7));
            Err("upstream timed out".to_owned())
        })
        .await;
    assert_eq!(result, Err("upstream timed out".to_owned()));

    let event = only_event(&sink);
    assert_eq!(event.metadata["error"], json!("upstream timed out"));
    assert_eq!(event.output, json!(null));
    let parse = step(&event.steps, "parse");
    assert_eq!(parse.metadata["error"], json!("bad digit"));
    assert_eq!(parse.output, json!(null));
    let fallback = step(&event.steps, "fallback");
    assert_eq!(fallback.output, json!(7));
    assert!(!fallback.metadata.contains_key("error"));
}

#[tokio::test]
async fn set_output_wins_over_the_returned_value() {
    let sink = CollectingSink::new();
    let returned = trace("root")
        .sink(sink.clone())
        .run(async {
            trace("explicit")
                .run(async {
                    set_output("explicit step output").expect("inside a step");
                    "returned by the step"
                })
                .await;
            trace("unrecorded")
                .run_unrecorded(async { "not recorded" })
                .await;
            trace("unrecorded_with_output")
                .run_unrecorded(async {
                    set_output(json!({"chosen": true})).expect("inside a step");
                })
                .await;
            set_output(json!({"answer": 42})).expect("inside the root");
            "returned by the root"
        })
        .await;
    assert_eq!(returned, "returned by the root");

    let event = only_event(&sink);
    assert_eq!(event.output, json!({"answer": 42}));
    assert_eq!(
        step(&event.steps, "explicit").output,
        json!("explicit step output")
    );
    assert_eq!(step(&event.steps, "unrecorded").output, json!(null));
    assert_eq!(
        step(&event.steps, "unrecorded_with_output").output,
        json!({"chosen": true})
    );
}

#[tokio::test]
async fn metadata_from_the_builder_and_add_metadata_land_on_their_own_step() {
    let sink = CollectingSink::new();
    trace("root")
        .metadata("feature", "chat")
        .pipeline("pipeline-7")
        .inference_id("inference-1")
        .sink(sink.clone())
        .run(async {
            trace("step")
                .metadata("attempt", 1)
                .inference_id("ignored-on-steps")
                .run(async {
                    add_metadata("cache", "miss").expect("inside the step");
                })
                .await;
            add_metadata("variant", "b").expect("inside the root");
        })
        .await;

    let event = only_event(&sink);
    assert_eq!(event.pipeline_id.as_deref(), Some("pipeline-7"));
    assert_eq!(event.inference_id.as_deref(), Some("inference-1"));
    assert_eq!(
        event.metadata,
        json!({"feature": "chat", "variant": "b"})
            .as_object()
            .cloned()
            .expect("object")
    );
    assert_eq!(
        step(&event.steps, "step").metadata,
        json!({"attempt": 1, "cache": "miss"})
            .as_object()
            .cloned()
            .expect("object")
    );
}

#[tokio::test]
async fn usage_recorded_several_times_on_one_step_adds_up() {
    let sink = CollectingSink::new();
    trace("complete")
        .model("gpt-4o-mini")
        .sink(sink.clone())
        .run(async {
            record_usage(Usage::tokens(10, 5)).expect("inside the trace");
            // A provider that reports only a total.
            record_usage(Usage {
                tokens: Some(3),
                ..Usage::default()
            })
            .expect("inside the trace");
            record_usage(Usage::tokens(1, 1).cost(0.5).model("gpt-4o")).expect("inside the trace");
        })
        .await;

    let event = only_event(&sink);
    assert_eq!(event.tokens, Some(15 + 3 + 2));
    assert_eq!(event.prompt_tokens, Some(11));
    assert_eq!(event.completion_tokens, Some(6));
    assert_close(event.cost, 0.5);
    assert_eq!(event.model.as_deref(), Some("gpt-4o"));
}

#[test]
fn run_sync_traces_without_a_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let sink = CollectingSink::new();
    let total = with_user_session_sync(Some("sync-user"), Some("sync-session"), || {
        trace("sum")
            .input("values", [1, 2, 3])
            .sink(sink.clone())
            .run_sync(|| {
                let doubled = trace("double").run_sync(|| {
                    record_usage(Usage::tokens(2, 1)).expect("inside double");
                    12
                });
                doubled + 1
            })
    });
    assert_eq!(total, 13);

    let event = only_event(&sink);
    assert_eq!(event.name, "sum");
    assert_eq!(event.user_id.as_deref(), Some("sync-user"));
    assert_eq!(event.session_id.as_deref(), Some("sync-session"));
    assert_eq!(event.inputs["values"], json!([1, 2, 3]));
    assert_eq!(event.output, json!(13));
    assert_eq!(names(&event.steps), ["double"]);
    assert_eq!(event.steps[0].output, json!(12));
    assert_eq!(event.tokens, Some(3));
    assert_timings_nest(
        event.timestamp_ms,
        event.latency_ms.expect("latency"),
        &event.steps,
    );
}

#[tokio::test]
async fn step_helpers_outside_a_trace_report_no_active_trace() {
    with_user_session(Some("u"), Some("s"), async {
        assert_eq!(record_usage(Usage::tokens(1, 1)), Err(NoActiveTrace));
        assert_eq!(set_output("orphan"), Err(NoActiveTrace));
        assert_eq!(add_metadata("key", "value"), Err(NoActiveTrace));
        assert_eq!(set_raw_output(json!({"id": "x"})), Err(NoActiveTrace));
        assert_eq!(set_documents(["orphan"]), Err(NoActiveTrace));
        assert_eq!(
            update_trace_user_session(Some("other"), None),
            Err(NoActiveTrace)
        );

        let sink = CollectingSink::new();
        trace("finished").sink(sink.clone()).run(async {}).await;
        assert_eq!(set_output("after the trace"), Err(NoActiveTrace));
        assert_eq!(only_event(&sink).output, json!(null));
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("u"), Some("s"))
        );
    })
    .await;
}

#[tokio::test]
async fn consecutive_root_traces_are_separate_events() {
    let sink = CollectingSink::new();
    for turn in 0..3 {
        trace("turn")
            .input("turn", turn)
            .sink(sink.clone())
            .run(async move { trace("step").run(async move { turn * 10 }).await })
            .await;
    }
    let events = sink.take();
    assert_eq!(events.len(), 3);
    for (turn, event) in events.iter().enumerate() {
        assert_eq!(event.inputs["turn"], json!(turn));
        assert_eq!(names(&event.steps), ["step"]);
        assert_eq!(event.steps[0].output, json!(turn * 10));
    }
    let inference_ids: BTreeSet<_> = events.iter().map(|event| &event.inference_id).collect();
    assert_eq!(inference_ids.len(), 3);
}

fn object(value: serde_json::Value) -> JsonMap {
    value.as_object().cloned().expect("a JSON object")
}

#[tokio::test]
async fn chat_completion_steps_record_prompt_provider_model_parameters_and_raw_output() {
    let sink = CollectingSink::new();
    trace("answer")
        .sink(sink.clone())
        .run(async {
            trace("complete")
                .step_type(CHAT_COMPLETION)
                .model("gpt-4o-mini")
                .prompt([
                    ChatMessage::system("Answer briefly."),
                    ChatMessage::user("Capital of France?"),
                ])
                .provider("OpenAI")
                .model_parameters(json!({"temperature": 0.2, "max_tokens": 256}))
                .run(async {
                    set_raw_output(json!({
                        "id": "chatcmpl-1",
                        "choices": [{"message": {"role": "assistant", "content": "Paris"}}],
                    }))
                    .expect("inside the step");
                    "Paris"
                })
                .await;
            // (role, content) pairs, and a builder raw output the step does not replace.
            trace("follow_up")
                .step_type(CHAT_COMPLETION)
                .prompt([("user", "And of Spain?"), ("assistant", "Madrid")])
                .raw_output(["chunk 1", "chunk 2"])
                .run(async { "Madrid" })
                .await;
        })
        .await;

    let event = only_event(&sink);
    let complete = step(&event.steps, "complete");
    assert_eq!(
        complete.inputs,
        object(json!({"prompt": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
        ]}))
    );
    assert_eq!(complete.provider.as_deref(), Some("OpenAI"));
    assert_eq!(
        complete.model_parameters,
        Some(object(json!({"temperature": 0.2, "max_tokens": 256})))
    );
    assert_eq!(complete.raw_output["id"], json!("chatcmpl-1"));
    assert_eq!(complete.documents, None);
    assert_eq!(complete.model.as_deref(), Some("gpt-4o-mini"));

    let follow_up = step(&event.steps, "follow_up");
    assert_eq!(
        follow_up.inputs["prompt"],
        json!([
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": "Madrid"},
        ])
    );
    assert_eq!(follow_up.raw_output, json!(["chunk 1", "chunk 2"]));
    assert_eq!(
        (&follow_up.provider, &follow_up.model_parameters),
        (&None, &None)
    );
}

#[tokio::test]
async fn retriever_steps_record_documents_from_the_builder_or_from_inside_the_step() {
    let sink = CollectingSink::new();
    trace("answer")
        .sink(sink.clone())
        .run(async {
            trace("cached")
                .step_type(RETRIEVER)
                .documents(["Paris is the capital of France."])
                .run(async {})
                .await;
            trace("search")
                .step_type(RETRIEVER)
                .documents(["replaced"])
                .run(async {
                    set_documents([
                        json!({"id": "doc-1", "text": "Paris", "score": 0.9}),
                        json!({"id": "doc-2", "text": "France", "score": 0.4}),
                    ])
                    .expect("inside the step");
                })
                .await;
            trace("empty")
                .step_type(RETRIEVER)
                .run(async {
                    set_documents(Vec::<String>::new()).expect("inside the step");
                })
                .await;
            trace("plain").run(async {}).await;
        })
        .await;

    let event = only_event(&sink);
    assert_eq!(
        step(&event.steps, "cached").documents,
        Some(vec![json!("Paris is the capital of France.")])
    );
    let search = step(&event.steps, "search");
    assert_eq!(
        search.documents,
        Some(vec![
            json!({"id": "doc-1", "text": "Paris", "score": 0.9}),
            json!({"id": "doc-2", "text": "France", "score": 0.4}),
        ])
    );
    assert_eq!(step(&event.steps, "empty").documents, Some(Vec::new()));
    assert_eq!(step(&event.steps, "plain").documents, None);
    assert_eq!(step(&event.steps, "plain").raw_output, json!(null));
}

#[tokio::test]
async fn model_parameters_that_are_not_a_json_object_are_not_recorded() {
    let sink = CollectingSink::new();
    trace("answer")
        .sink(sink.clone())
        .run(async {
            trace("list")
                .model_parameters([0.2, 256.0])
                .run(async {})
                .await;
            trace("empty")
                .model_parameters(JsonMap::new())
                .run(async {})
                .await;
        })
        .await;
    let event = only_event(&sink);
    assert_eq!(step(&event.steps, "list").model_parameters, None);
    assert_eq!(
        step(&event.steps, "empty").model_parameters,
        Some(JsonMap::new())
    );
}

#[tokio::test]
async fn a_root_trace_records_its_prompt_as_an_input_column() {
    let sink = CollectingSink::new();
    trace("chat")
        .prompt([ChatMessage::user("Hi")])
        .input("user_message", "Hi")
        .sink(sink.clone())
        .run(async {})
        .await;
    let event = only_event(&sink);
    assert_eq!(
        event.inputs,
        object(json!({
            "prompt": [{"role": "user", "content": "Hi"}],
            "user_message": "Hi",
        }))
    );
}

#[tokio::test]
async fn recorded_step_fields_survive_every_encoding() {
    let sink = CollectingSink::new();
    trace("answer")
        .sink(sink.clone())
        .run(async {
            trace("retrieve")
                .step_type(RETRIEVER)
                .run(async {
                    set_documents([json!({"text": "Paris", "score": 0.5}), json!("plain")])
                        .expect("inside the step");
                })
                .await;
            trace("complete")
                .step_type(CHAT_COMPLETION)
                .prompt([("user", "Capital of France? \"quoted\" ✓")])
                .provider("OpenAI")
                .model_parameters(json!({"temperature": 0.0}))
                .run(async {
                    set_raw_output(json!({"choices": [], "usage": null})).expect("inside the step");
                })
                .await;
        })
        .await;
    let event = only_event(&sink);
    assert!(event.steps[0].documents.is_some() && event.steps[1].provider.is_some());
    let decoder = Decoder::new(Limits::default());
    for encoding in [Encoding::Avro, Encoding::Json] {
        let bytes = encode(&event, encoding).expect("encodes");
        assert_eq!(
            decoder.decode(&bytes).expect("decodes"),
            event,
            "{encoding:?}"
        );
    }
}
