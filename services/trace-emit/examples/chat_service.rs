//! An axum chat service instrumented with every helper: the user/session middleware, a
//! traced handler with nested retrieval and completion steps, a per-trace override, a
//! session end event, and the non-blocking Kafka emitter.
//!
//! With no arguments it runs a short demo on an in-process Kafka cluster (no broker
//! needed): it serves on a loopback port, sends itself a few multi-turn chats over HTTP,
//! then reads the topic back and prints what was produced. With `--brokers` it serves
//! until Ctrl-C and emits to that cluster.

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use trace_emit::trace::{ChatMessage, set_documents, set_raw_output};
use trace_emit::{
    CHAT_COMPLETION, Emitter, EmitterConfig, RETRIEVER, Usage, UserSessionLayer,
    current_user_session, record_usage, session_end_event, set_global_sink, trace,
    update_trace_user_session,
};
use trace_model::{Decoder, Limits};

#[derive(Parser, Debug)]
#[command(about = "Chat service instrumented with the trace-emit helpers")]
struct Args {
    /// Kafka bootstrap servers; without it, an in-process demo cluster is used.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic the traces go to.
    #[arg(long, default_value = "llm-traces")]
    topic: String,
    /// Address to serve on (with --brokers).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: String,
}

#[derive(Deserialize)]
struct ChatRequest {
    message: String,
    /// A client may move this one exchange to another session (for example a side thread).
    #[serde(default)]
    side_thread: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ChatResponse {
    answer: String,
}

#[derive(Clone)]
struct AppState {
    emitter: Arc<Emitter>,
}

async fn retrieve(query: &str) -> Vec<String> {
    trace("retrieve_context")
        .step_type(RETRIEVER)
        .input("query", query)
        .run(async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let documents = vec![format!("A document about {query}.")];
            // Outside a trace this returns an error; here it cannot.
            let _recorded = set_documents(&documents);
            documents
        })
        .await
}

async fn complete(question: &str, context: &[String]) -> String {
    trace("generate_answer")
        .step_type(CHAT_COMPLETION)
        .model("gpt-4o-mini")
        .provider("OpenAI")
        .model_parameters(serde_json::json!({"temperature": 0.2, "max_tokens": 256}))
        .prompt([
            ChatMessage::system(format!("Answer from this context: {context:?}")),
            ChatMessage::user(question),
        ])
        .run(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let prompt_tokens = 40 + question.len() as i64;
            let answer = format!("Here is what I found about '{question}'.");
            let _recorded = record_usage(
                Usage::tokens(prompt_tokens, 25)
                    .cost(prompt_tokens as f64 * 1.5e-7 + 25.0 * 6e-7)
                    .model("gpt-4o-mini"),
            );
            // What the provider answered, as it came.
            let _recorded = set_raw_output(serde_json::json!({
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": &answer}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 25},
            }));
            answer
        })
        .await
}

async fn chat(
    State(_state): State<AppState>,
    Json(request): Json<ChatRequest>,
) -> Json<ChatResponse> {
    let answer = trace("chat")
        .input("user_message", &request.message)
        .run(async {
            if let Some(side_thread) = &request.side_thread {
                // Changes this trace's session only; the request's context stays as it is.
                let _in_trace = update_trace_user_session(None, Some(side_thread));
            }
            let context = retrieve(&request.message).await;
            complete(&request.message, &context).await
        })
        .await;
    Json(ChatResponse { answer })
}

/// Ends the caller's session explicitly (the sessionizer closes its window at once).
async fn end_session(State(state): State<AppState>) -> &'static str {
    state
        .emitter
        .emit(session_end_event(&current_user_session()));
    "ended"
}

fn app(state: AppState) -> Router {
    Router::new()
        .route("/chat", post(chat))
        .route("/end", post(end_session))
        .layer(UserSessionLayer::new())
        .with_state(state)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    match args.brokers.clone() {
        Some(brokers) => serve(&brokers, &args).await,
        None => demo(&args.topic).await,
    }
}

fn start_emitter(brokers: &str, topic: &str) -> anyhow::Result<Arc<Emitter>> {
    let registry = prometheus::Registry::new();
    let emitter = Emitter::try_new(EmitterConfig::new(brokers, topic), &registry)
        .context("failed to start the emitter")?;
    set_global_sink(emitter.clone());
    Ok(emitter)
}

async fn serve(brokers: &str, args: &Args) -> anyhow::Result<()> {
    let emitter = start_emitter(brokers, &args.topic)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    println!("chat service on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app(AppState {
            emitter: emitter.clone(),
        }),
    )
    .with_graceful_shutdown(async {
        // If the signal handler cannot be installed, serve until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await?;
    let flushed =
        tokio::task::spawn_blocking(move || emitter.close(Duration::from_secs(10))).await?;
    flushed.context("traces left undelivered at shutdown")
}

const DEMO_PARTITIONS: i32 = 3;

async fn demo(topic: &str) -> anyhow::Result<()> {
    let cluster = MockCluster::<DefaultProducerContext>::new(1).context("mock cluster")?;
    cluster
        .create_topic(topic, DEMO_PARTITIONS, 1)
        .context("create demo topic")?;
    let brokers = cluster.bootstrap_servers();
    let emitter = start_emitter(&brokers, topic)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(
        axum::serve(
            listener,
            app(AppState {
                emitter: emitter.clone(),
            }),
        )
        .into_future(),
    );
    println!("chat service on http://{address} (in-process Kafka at {brokers})\n");

    let client = reqwest::Client::new();
    let conversations = [
        (
            "ana",
            "ana-trip",
            [
                "Best time to visit Lisbon?",
                "And where should I stay?",
                "Thanks!",
            ],
        ),
        (
            "ben",
            "ben-code",
            [
                "Why does my Rust future not run?",
                "How do I join two futures?",
                "Got it.",
            ],
        ),
        (
            "ana",
            "ana-cooking",
            [
                "A quick vegan dinner idea?",
                "Without chickpeas?",
                "Perfect.",
            ],
        ),
    ];
    let mut sent = 0;
    for (user, session, turns) in conversations {
        for (turn, message) in turns.iter().enumerate() {
            let side_thread = (user == "ben" && turn == 1).then_some("ben-code-side-thread");
            let response: ChatResponse = client
                .post(format!("http://{address}/chat"))
                .header("x-user-id", user)
                .header("x-session-id", session)
                .json(&serde_json::json!({ "message": message, "side_thread": side_thread }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            println!(
                "{user:>4} [{session}] > {message}\n{:>4}   < {}",
                "", response.answer
            );
            sent += 1;
        }
    }
    client
        .post(format!("http://{address}/end"))
        .header("x-user-id", "ana")
        .header("x-session-id", "ana-trip")
        .send()
        .await?
        .error_for_status()?;
    sent += 1;
    server.abort();

    let flushed = {
        let emitter = emitter.clone();
        tokio::task::spawn_blocking(move || emitter.flush(Duration::from_secs(10))).await?
    };
    flushed.context("traces left undelivered")?;
    print_topic(&brokers, topic, sent)?;
    Ok(())
}

fn print_topic(brokers: &str, topic: &str, expected: usize) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "chat-service-demo-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..DEMO_PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    let decoder = Decoder::new(Limits::default());
    println!("\nproduced to '{topic}':");
    println!(
        "{:<4} {:>3} {:<22} {:<5} {:<22} {:<12} {:>6} {:>10} {:>5}",
        "part", "off", "key", "user", "session", "kind", "tokens", "cost", "steps"
    );
    let mut received = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received < expected && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let event = decoder
            .decode(message.payload().unwrap_or_default())
            .context("produced record does not decode")?;
        println!(
            "{:<4} {:>3} {:<22} {:<5} {:<22} {:<12} {:>6} {:>10.6} {:>5}",
            message.partition(),
            message.offset(),
            String::from_utf8_lossy(message.key().unwrap_or_default()),
            event.user_id.as_deref().unwrap_or("-"),
            event.session_id.as_deref().unwrap_or("-"),
            event.kind.as_str(),
            event.tokens.unwrap_or(0),
            event.cost.unwrap_or(0.0),
            event.all_steps().count(),
        );
        received += 1;
    }
    anyhow::ensure!(
        received == expected,
        "read {received} of {expected} produced traces back"
    );
    println!("\n{received} traces produced, each session in one partition, keyed by session id.");
    Ok(())
}
