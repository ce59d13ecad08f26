//! The OpenTelemetry clients of the tests (`tests/otel/`): the official Python SDK (with the
//! OpenAI instrumentation) and the JavaScript SDK, run as child processes, and the check that
//! every turn they recorded reached Openlayer once, numbered in its conversation.

use crate::workspace;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One turn as a client recorded it (`--sent`, one JSON line per turn).
#[derive(Debug)]
pub struct OtelTurn {
    pub session: String,
    pub turn: u64,
    pub trace_id: String,
    pub tokens: i64,
    pub answer: String,
}

impl OtelTurn {
    fn parse(line: &str) -> OtelTurn {
        let sent: Value = serde_json::from_str(line).expect("a sent line");
        let text = |key: &str| sent[key].as_str().expect("a string").to_owned();
        OtelTurn {
            session: text("session"),
            turn: sent["turn"].as_u64().expect("turn"),
            trace_id: text("trace_id"),
            tokens: sent["tokens"].as_i64().expect("tokens"),
            answer: text("answer"),
        }
    }

    /// The turns a client wrote to `path`; removes the file.
    pub fn read_sent(path: &Path) -> Vec<OtelTurn> {
        let text = std::fs::read_to_string(path).expect("the client wrote what it sent");
        let _removed = std::fs::remove_file(path);
        text.lines().map(OtelTurn::parse).collect()
    }
}

/// A Python client of `tests/otel/` in the `otel-sdk` venv (created by
/// `scripts/python-venv.sh` if needed), run with `--prefix --sessions --turns --sent`.
pub fn python(script: &str) -> Command {
    let output = Command::new(workspace().join("scripts/python-venv.sh"))
        .arg("otel-sdk")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/python-venv.sh");
    assert!(
        output.status.success(),
        "scripts/python-venv.sh otel-sdk failed"
    );
    let python = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("python");
    let mut command = Command::new(python);
    command.arg(workspace().join("tests/otel").join(script));
    command
}

/// The JavaScript client, its packages from `scripts/node-modules.sh`.
pub fn node() -> Command {
    let output = Command::new(workspace().join("scripts/node-modules.sh"))
        .arg(workspace().join("tests/otel/node"))
        .arg("otel-node")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/node-modules.sh");
    assert!(output.status.success(), "scripts/node-modules.sh failed");
    let modules = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut command = Command::new("node");
    command
        .arg(workspace().join("tests/otel/node/genai_chat.js"))
        .env("NODE_PATH", modules);
    command
}

/// Every turn shipped once and nothing else, numbered in its conversation, with running tokens,
/// the resource's `service.name` and the mapped chat step.
pub fn assert_exact_sessions(turns: &[OtelTurn], shipped: &[Value], service_name: &str) {
    let mut by_id: HashMap<String, Map<String, Value>> = HashMap::new();
    for row in shipped {
        let row = row.as_object().expect("row object").clone();
        let id = row["inferenceId"].as_str().expect("inferenceId").to_owned();
        let previous = by_id.insert(id, row);
        assert!(previous.is_none(), "shipped twice: {previous:?}");
    }
    assert_eq!(
        shipped.len(),
        turns.len(),
        "one row per trace, nothing else"
    );
    for row in shipped {
        eprintln!(
            "DEBUG shipped {} {} {} {}",
            row["session_id"], row["inferenceTimestamp"], row["session_turn"], row["inferenceId"]
        );
    }
    for turn in turns {
        eprintln!(
            "DEBUG sent {} {} {}",
            turn.session, turn.turn, turn.trace_id
        );
    }
    let mut tokens_so_far: HashMap<&str, i64> = HashMap::new();
    for turn in turns {
        let row = by_id
            .get(&turn.trace_id)
            .unwrap_or_else(|| panic!("trace {} not shipped", turn.trace_id));
        let so_far = tokens_so_far.entry(turn.session.as_str()).or_default();
        *so_far += turn.tokens;
        assert_eq!(row["session_id"], json!(turn.session));
        assert_eq!(row["session_turn"], json!(turn.turn), "{}", turn.trace_id);
        assert_eq!(row["session_tokens_so_far"], json!(*so_far));
        assert_eq!(row["output"], json!(turn.answer));
        assert_eq!(row["service.name"], json!(service_name));
        let chat = &row["steps"][0]["steps"][0];
        assert_eq!(chat["type"], "chat_completion", "{row:?}");
        assert_eq!(chat["model"], "gpt-4o-mini");
        assert_eq!(chat["provider"], "openai");
        assert_eq!(chat["tokens"], json!(turn.tokens));
        assert_eq!(
            chat["inputs"]["prompt"],
            json!([{"role": "user", "content": format!("question {}", turn.turn)}])
        );
    }
}
