//! One span's GenAI semantic-convention attributes as the fields of an Openlayer step.
//!
//! Current conventions first (`gen_ai.input.messages`, `gen_ai.provider.name`, ...), then the
//! older ones instrumentation libraries still emit (`gen_ai.system`, per-message events,
//! `gen_ai.prompt`/`gen_ai.completion`, and OpenLLMetry's indexed `gen_ai.prompt.0.content`).
//! Every attribute not mapped here is kept in the step's metadata.

use crate::attributes::{Attributes, parsed_json, text_of, to_json, to_map};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

pub const OPERATION: &str = "gen_ai.operation.name";
pub const CONVERSATION_ID: &str = "gen_ai.conversation.id";
pub const SESSION_ID: &str = "session.id";
pub const USER_ID: &str = "user.id";
pub const END_USER_ID: &str = "enduser.id";
pub const PIPELINE_ID: &str = "openlayer.inference_pipeline_id";

/// Session attributes, most specific first.
pub const SESSION_KEYS: [&str; 2] = [CONVERSATION_ID, SESSION_ID];
/// User attributes, most specific first.
pub const USER_KEYS: [&str; 2] = [USER_ID, END_USER_ID];

const RESPONSE_MODEL: &str = "gen_ai.response.model";
const REQUEST_MODEL: &str = "gen_ai.request.model";
const INPUT_TOKENS: [&str; 2] = ["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"];
const OUTPUT_TOKENS: [&str; 2] = [
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
];
const TOTAL_TOKENS: &str = "llm.usage.total_tokens";
const PROVIDER: [&str; 2] = ["gen_ai.provider.name", "gen_ai.system"];
const COST: [&str; 3] = ["gen_ai.usage.cost", "llm.usage.cost", "openlayer.cost"];
const INPUT_MESSAGES: &str = "gen_ai.input.messages";
const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
const SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
const PROMPT: &str = "gen_ai.prompt";
const COMPLETION: &str = "gen_ai.completion";
const TOOL_NAME: &str = "gen_ai.tool.name";
const TOOL_ARGUMENTS: &str = "gen_ai.tool.call.arguments";
const TOOL_RESULT: &str = "gen_ai.tool.call.result";
/// `gen_ai.request.<name>` attributes that become `modelParameters.<name>`.
const MODEL_PARAMETERS: [&str; 9] = [
    "temperature",
    "max_tokens",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop_sequences",
    "choice.count",
];
/// Span events of the older conventions, one per message, and the role each stands for.
const MESSAGE_EVENTS: [(&str, &str); 4] = [
    ("gen_ai.system.message", "system"),
    ("gen_ai.user.message", "user"),
    ("gen_ai.assistant.message", "assistant"),
    ("gen_ai.tool.message", "tool"),
];
const CHOICE_EVENT: &str = "gen_ai.choice";

/// The Openlayer step type of a `gen_ai.operation.name`; `user_call` for anything else.
pub fn step_type(operation: Option<&str>) -> &'static str {
    match operation {
        Some("chat" | "text_completion" | "generate_content") => "chat_completion",
        Some("embeddings") => "embedding",
        Some("execute_tool") => "tool",
        Some("invoke_agent" | "create_agent") => "agent",
        Some("retrieval") => "retriever",
        _ => "user_call",
    }
}

/// What a span says as a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepFields {
    pub step_type: &'static str,
    pub inputs: Map<String, Value>,
    pub output: Value,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub tokens: Option<i64>,
    pub cost: Option<f64>,
    pub model_parameters: Option<Map<String, Value>>,
    pub raw_output: Value,
    /// Every attribute not mapped above.
    pub metadata: Map<String, Value>,
}

/// Maps one span.
pub fn step_fields(span: &Span) -> StepFields {
    let attributes = Attributes(&span.attributes);
    let mut used: HashSet<&str> = HashSet::new();
    let text = |key: &str| attributes.str(key).map(str::to_owned);
    let operation = first(&[OPERATION], &mut used, text);
    let step_type = step_type(operation.as_deref());
    let model = first(&[RESPONSE_MODEL, REQUEST_MODEL], &mut used, text);
    let provider = first(&PROVIDER, &mut used, text);
    if model.is_some() {
        used.extend([RESPONSE_MODEL, REQUEST_MODEL]);
    }
    let int = |key: &str| attributes.int(key);
    let prompt_tokens = first(&INPUT_TOKENS, &mut used, int);
    let completion_tokens = first(&OUTPUT_TOKENS, &mut used, int);
    let tokens =
        first(&[TOTAL_TOKENS], &mut used, int).or(match (prompt_tokens, completion_tokens) {
            (None, None) => None,
            (prompt, completion) => {
                Some(prompt.unwrap_or(0).saturating_add(completion.unwrap_or(0)))
            }
        });
    let cost = first(&COST, &mut used, |key| attributes.number(key));
    let mut parameters = Map::new();
    for name in MODEL_PARAMETERS {
        let key = format!("gen_ai.request.{name}");
        if let Some(value) = attributes.get(&key) {
            parameters.insert(name.to_owned(), to_json(value));
        }
    }
    let mut inputs = Map::new();
    let mut output = Value::Null;
    let mut raw_output = Value::Null;
    if let Some(prompt) = prompt_messages(span, &attributes) {
        inputs.insert("prompt".to_owned(), Value::Array(prompt));
    }
    if let Some(messages) = attributes.json(OUTPUT_MESSAGES) {
        output = messages_text(&messages);
        raw_output = messages;
    } else if let Some(text) = choice_text(span, &attributes) {
        output = text;
    }
    if step_type == "tool" {
        if let Some(name) = attributes.str(TOOL_NAME) {
            inputs.insert("tool".to_owned(), Value::from(name));
        }
        if let Some(arguments) = attributes.json(TOOL_ARGUMENTS) {
            inputs.insert("arguments".to_owned(), arguments);
        }
        if let Some(result) = attributes.json(TOOL_RESULT) {
            output = result;
        }
        used.extend([TOOL_NAME, TOOL_ARGUMENTS, TOOL_RESULT]);
    }
    let metadata = to_map(&span.attributes)
        .into_iter()
        .filter(|(key, _)| !used.contains(key.as_str()) && !consumed(key))
        .collect();
    StepFields {
        step_type,
        inputs,
        output,
        model,
        provider,
        prompt_tokens,
        completion_tokens,
        tokens,
        cost,
        model_parameters: (!parameters.is_empty()).then_some(parameters),
        raw_output,
        metadata,
    }
}

/// The first of `keys` whose value `read` accepts; that key counts as mapped (`used`).
fn first<T>(
    keys: &[&'static str],
    used: &mut HashSet<&'static str>,
    read: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    keys.iter().find_map(|key| {
        let value = read(key)?;
        used.insert(key);
        Some(value)
    })
}

/// Attributes mapped into step fields whatever their value: they are not repeated in the
/// metadata.
fn consumed(key: &str) -> bool {
    key == INPUT_MESSAGES
        || key == OUTPUT_MESSAGES
        || key == SYSTEM_INSTRUCTIONS
        || key == PROMPT
        || key == COMPLETION
        || key.starts_with("gen_ai.prompt.")
        || key.starts_with("gen_ai.completion.")
        || key
            .strip_prefix("gen_ai.request.")
            .is_some_and(|name| MODEL_PARAMETERS.contains(&name))
}

/// The prompt as Openlayer's `[{role, content}]`, from the first convention the span uses.
fn prompt_messages(span: &Span, attributes: &Attributes<'_>) -> Option<Vec<Value>> {
    let mut messages = Vec::new();
    if let Some(instructions) = attributes.json(SYSTEM_INSTRUCTIONS) {
        messages.push(json!({"role": "system", "content": parts_text(&instructions)}));
    }
    if let Some(Value::Array(input)) = attributes.json(INPUT_MESSAGES) {
        messages.extend(input.iter().map(|message| {
            let role = message.get("role").cloned().unwrap_or(Value::Null);
            let content = message
                .get("parts")
                .map(parts_text)
                .or_else(|| message.get("content").cloned())
                .unwrap_or(Value::Null);
            json!({"role": role, "content": content})
        }));
        return Some(messages);
    }
    let from_events: Vec<Value> = span
        .events
        .iter()
        .filter_map(|event| {
            let (_, role) = MESSAGE_EVENTS
                .iter()
                .find(|(name, _)| *name == event.name)?;
            let content = Attributes(&event.attributes)
                .json("content")
                .unwrap_or(Value::Null);
            Some(json!({"role": role, "content": content}))
        })
        .collect();
    if !from_events.is_empty() {
        messages.extend(from_events);
        return Some(messages);
    }
    let indexed = indexed_messages(attributes, "gen_ai.prompt");
    if !indexed.is_empty() {
        messages.extend(indexed);
        return Some(messages);
    }
    if let Some(prompt) = attributes.json(PROMPT) {
        match prompt {
            Value::Array(list) => messages.extend(list),
            text => messages.push(json!({"role": "user", "content": text})),
        }
        return Some(messages);
    }
    (!messages.is_empty()).then_some(messages)
}

/// The completion text from the older conventions: a `gen_ai.choice` event, OpenLLMetry's
/// `gen_ai.completion.0.content`, or `gen_ai.completion`.
fn choice_text(span: &Span, attributes: &Attributes<'_>) -> Option<Value> {
    let from_event = span
        .events
        .iter()
        .find(|event| event.name == CHOICE_EVENT)
        .and_then(|event| Attributes(&event.attributes).json("message"))
        .map(|message| message.get("content").cloned().unwrap_or(message));
    from_event
        .or_else(|| {
            indexed_messages(attributes, "gen_ai.completion")
                .first()
                .and_then(|message| message.get("content").cloned())
        })
        .or_else(|| attributes.json(COMPLETION))
}

/// Most messages read from indexed attributes: a span with more is not a conversation anyone
/// reads back, and the cap keeps a hostile span from costing more than one pass.
const MAX_INDEXED_MESSAGES: usize = 1024;

/// OpenLLMetry's `<prefix>.<i>.role` / `<prefix>.<i>.content`, in index order from 0 up to the
/// first missing index; one pass over the attributes.
fn indexed_messages(attributes: &Attributes<'_>, prefix: &str) -> Vec<Value> {
    let mut by_index: std::collections::BTreeMap<usize, (Option<&str>, Option<Value>)> =
        std::collections::BTreeMap::new();
    for pair in attributes.0 {
        let Some((index, field)) = pair
            .key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split_once('.'))
        else {
            continue;
        };
        let Some(index) = index
            .parse::<usize>()
            .ok()
            .filter(|index| *index < MAX_INDEXED_MESSAGES)
        else {
            continue;
        };
        let entry = by_index.entry(index).or_default();
        let Some(value) = pair.value.as_ref() else {
            continue;
        };
        match field {
            "role" => entry.0 = text_of(value),
            "content" => entry.1 = Some(parsed_json(value)),
            _ => {}
        }
    }
    by_index
        .into_iter()
        .enumerate()
        .take_while(|(expected, (index, (role, content)))| {
            expected == index && (role.is_some() || content.is_some())
        })
        .map(|(_, (_, (role, content)))| {
            json!({
                "role": role.unwrap_or("user"),
                "content": content.unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// The text of a message's `parts` (`[{type: "text", content}]`), joined; anything else as
/// it is.
fn parts_text(parts: &Value) -> Value {
    let Value::Array(list) = parts else {
        return parts.clone();
    };
    let texts: Vec<&str> = list
        .iter()
        .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|part| part.get("content").and_then(Value::as_str))
        .collect();
    if texts.is_empty() {
        parts.clone()
    } else {
        Value::from(texts.join("\n"))
    }
}

/// The text of the first output message.
fn messages_text(messages: &Value) -> Value {
    match messages {
        Value::Array(list) => list
            .first()
            .map(|message| {
                message
                    .get("parts")
                    .map(parts_text)
                    .or_else(|| message.get("content").cloned())
                    .unwrap_or(Value::Null)
            })
            .unwrap_or(Value::Null),
        other => other.clone(),
    }
}
