//! Synthetic chat traffic for the demo, emitted through the real producer helpers: users in
//! multi-turn sessions, each turn a traced function with nested retrieval and completion steps,
//! recorded with the fields Openlayer's SDK sends for them (a retriever's documents; a chat
//! completion's prompt messages, provider, model parameters and raw response).

use std::time::Duration;
use trace_emit::trace::{ChatMessage, set_documents, set_raw_output};
use trace_emit::{
    CHAT_COMPLETION, Emitter, RETRIEVER, Usage, UserSession, record_usage, session_end_event,
    trace, with_user_session,
};
use trace_model::JsonMap;

/// One scripted conversation.
struct Conversation {
    topic: &'static str,
    turns: &'static [(&'static str, &'static str)],
}

const CONVERSATIONS: &[Conversation] = &[
    Conversation {
        topic: "travel",
        turns: &[
            (
                "When is the best time to visit Lisbon?",
                "Spring (March to May): mild, sunny, fewer crowds than summer.",
            ),
            (
                "Which neighbourhood should I stay in?",
                "Alfama for charm and fado, Príncipe Real for quiet streets near Bairro Alto.",
            ),
            (
                "How do I get to Belém from there?",
                "Tram 15 from Praça da Figueira or Cais do Sodré, about 25 minutes.",
            ),
            (
                "Any day trip you recommend?",
                "Sintra: palaces in the hills, 40 minutes by train from Rossio.",
            ),
        ],
    },
    Conversation {
        topic: "rust",
        turns: &[
            (
                "Why does my async function never run?",
                "Futures are lazy: it runs only when awaited or spawned.",
            ),
            (
                "How do I run two futures at once?",
                "Use tokio::join! for a fixed set, or a JoinSet for many.",
            ),
            (
                "And if one of them fails?",
                "try_join! stops at the first error; JoinSet lets you handle each result.",
            ),
        ],
    },
    Conversation {
        topic: "cooking",
        turns: &[
            (
                "A quick vegan dinner idea?",
                "Chickpea curry with spinach and coconut milk, 25 minutes.",
            ),
            (
                "Something without chickpeas?",
                "Crispy tofu with peanut sauce and rice noodles.",
            ),
            (
                "Can I prepare it the day before?",
                "Yes: press and marinate the tofu overnight, fry it just before eating.",
            ),
            (
                "What goes with it?",
                "Quick-pickled cucumber and a squeeze of lime.",
            ),
            ("Thanks!", "Enjoy your dinner!"),
        ],
    },
    Conversation {
        topic: "billing",
        turns: &[
            (
                "Why was I charged twice this month?",
                "One charge is the annual renewal, the other this month's add-on seats.",
            ),
            (
                "Can I get an invoice for the add-on?",
                "Yes: Settings → Billing → Invoices lists it; you can download a PDF.",
            ),
        ],
    },
];

/// How the demo's traffic is shaped.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSettings {
    pub num_users: usize,
    pub sessions_per_user: usize,
    /// Turns emitted per second, over all sessions.
    pub turns_per_second: f64,
}

/// What was emitted, for the end-of-run check.
#[derive(Debug, Default, Clone, Copy)]
pub struct Emitted {
    pub traces: usize,
    pub session_ends: usize,
}

fn model_for(topic: &str) -> &'static str {
    if topic == "rust" {
        "gpt-4o"
    } else {
        "gpt-4o-mini"
    }
}

/// The parameters every demo completion is called with.
fn model_parameters() -> JsonMap {
    let mut parameters = JsonMap::new();
    parameters.insert("temperature".into(), 0.2.into());
    parameters.insert("max_tokens".into(), 256.into());
    parameters
}

/// The response an OpenAI-style provider would have sent, recorded as the step's raw output.
fn provider_response(
    model: &str,
    answer: &str,
    prompt_tokens: i64,
    completion_tokens: i64,
) -> JsonMap {
    let mut message = JsonMap::new();
    message.insert("role".into(), "assistant".into());
    message.insert("content".into(), answer.into());
    let mut choice = JsonMap::new();
    choice.insert("index".into(), 0.into());
    choice.insert("message".into(), message.into());
    choice.insert("finish_reason".into(), "stop".into());
    let mut usage = JsonMap::new();
    usage.insert("prompt_tokens".into(), prompt_tokens.into());
    usage.insert("completion_tokens".into(), completion_tokens.into());
    usage.insert(
        "total_tokens".into(),
        (prompt_tokens + completion_tokens).into(),
    );
    let mut response = JsonMap::new();
    response.insert("object".into(), "chat.completion".into());
    response.insert("model".into(), model.into());
    response.insert("choices".into(), vec![choice].into());
    response.insert("usage".into(), usage.into());
    response
}

async fn one_turn(topic: &'static str, question: &'static str, answer: &'static str) {
    trace("chat")
        .input("user_message", question)
        .metadata("topic", topic)
        .run(async {
            let documents = trace("retrieve_context")
                .step_type(RETRIEVER)
                .input("query", question)
                .run(async {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let documents = vec![format!("Knowledge-base article about {topic}.")];
                    let _in_trace = set_documents(&documents);
                    documents
                })
                .await;
            let model = model_for(topic);
            trace("generate_answer")
                .step_type(CHAT_COMPLETION)
                .model(model)
                .provider("OpenAI")
                .model_parameters(model_parameters())
                .prompt([
                    ChatMessage::system(format!(
                        "Answer in one sentence from this context: {}",
                        documents.join(" ")
                    )),
                    ChatMessage::user(question),
                ])
                .run(async {
                    tokio::time::sleep(Duration::from_millis(8)).await;
                    let prompt_tokens = 60 + question.len() as i64 / 3;
                    let completion_tokens = 10 + answer.len() as i64 / 4;
                    let price = if model == "gpt-4o" { 2.5e-6 } else { 1.5e-7 };
                    let _in_trace = record_usage(
                        Usage::tokens(prompt_tokens, completion_tokens)
                            .cost((prompt_tokens + 4 * completion_tokens) as f64 * price)
                            .model(model),
                    );
                    let _in_trace = set_raw_output(provider_response(
                        model,
                        answer,
                        prompt_tokens,
                        completion_tokens,
                    ));
                    answer
                })
                .await
        })
        .await;
}

/// Emits every user's sessions, interleaved, at `turns_per_second`. Every other session ends
/// with an explicit end event; the rest are left to close by inactivity.
pub async fn run(emitter: &Emitter, settings: WorkloadSettings) -> Emitted {
    let mut sessions = Vec::new();
    for user in 0..settings.num_users {
        for index in 0..settings.sessions_per_user {
            let conversation = &CONVERSATIONS[(user + index) % CONVERSATIONS.len()];
            let ids = UserSession {
                user_id: Some(format!("user-{:02}", user + 1)),
                session_id: Some(format!(
                    "chat-{:02}-{}-{}",
                    user + 1,
                    conversation.topic,
                    index + 1
                )),
            };
            sessions.push((ids, conversation, 0usize));
        }
    }
    let pause = Duration::from_secs_f64(1.0 / settings.turns_per_second.max(0.1));
    let mut emitted = Emitted::default();
    let mut round = 0usize;
    while sessions
        .iter()
        .any(|(_, conversation, next)| *next < conversation.turns.len())
    {
        for (number, (ids, conversation, next)) in sessions.iter_mut().enumerate() {
            let Some((question, answer)) = conversation.turns.get(*next).copied() else {
                continue;
            };
            // Sessions start staggered, so some are still talking while others went quiet.
            if number / 3 > round {
                continue;
            }
            *next += 1;
            with_user_session(
                ids.user_id.as_deref(),
                ids.session_id.as_deref(),
                one_turn(conversation.topic, question, answer),
            )
            .await;
            emitted.traces += 1;
            if *next == conversation.turns.len() && number % 2 == 0 {
                emitter.emit(session_end_event(ids));
                emitted.session_ends += 1;
            }
            tokio::time::sleep(pause).await;
        }
        round += 1;
    }
    emitted
}
