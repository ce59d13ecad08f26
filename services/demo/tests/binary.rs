//! `make run` as a new user meets it: the demo executable, run to the end, prints a session
//! table that matches the requests it recorded.

use serde_json::Value;
use std::process::Command;

#[test]
fn demo_runs_the_whole_pipeline_in_process_and_exits_zero() {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    let output_dir =
        std::env::temp_dir().join(format!("sessionizer-demo-{}-{started}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_sessionizer-demo"))
        .args(["--timeout-secs", "60", "--metrics-listen", "127.0.0.1:0"])
        .arg("--output-dir")
        .arg(&output_dir)
        // The demo must not pick up a real account from the environment in a test.
        .env_remove("OPENLAYER_API_KEY")
        .env_remove("OPENLAYER_INFERENCE_PIPELINE_ID")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Twelve chats through the helpers, two conversations through OpenTelemetry.
    assert!(stdout.contains("14 sessions closed"), "{stdout}");
    assert!(stdout.contains("end_event: 6"), "{stdout}");
    // The other six close by inactivity: on the wall clock (idle) or, when other sessions'
    // traces moved the partition's event time on first, by event time (gap).
    let closed_by_inactivity = stdout
        .lines()
        .filter(|line| line.ends_with(" idle") || line.ends_with(" gap"))
        .count();
    assert_eq!(closed_by_inactivity, 8, "{stdout}");
    assert!(stdout.contains("rows shipped: 51"), "{stdout}");
    assert!(stdout.contains("dead letters: 3"), "{stdout}");

    let recorded =
        std::fs::read_to_string(output_dir.join("requests.jsonl")).expect("requests recorded");
    let requests: Vec<Value> = recorded
        .lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    let rows_of = |pipeline: &str| -> Vec<&Value> {
        requests
            .iter()
            .filter(|request| request["request"] == "data-stream")
            .filter(|request| request["pipeline_id"] == pipeline)
            .flat_map(|request| request["rows"].as_array().expect("rows").iter())
            .collect()
    };
    // One row per closed session in the sessions pipeline, each with its turn count.
    assert!(
        stdout.contains("session rows shipped to the sessions pipeline demo-sessions: 14"),
        "{stdout}"
    );
    let session_rows = rows_of("demo-sessions");
    assert_eq!(session_rows.len(), 14);
    let session_ids: std::collections::HashSet<&str> = session_rows
        .iter()
        .filter_map(|row| row["session_id"].as_str())
        .collect();
    assert_eq!(session_ids.len(), 14, "one row per session");
    for row in &session_rows {
        assert!(
            row["turns"].as_i64().is_some_and(|turns| turns >= 1),
            "{row}"
        );
        assert!(row["output"].is_string(), "{row}");
    }
    let rows = rows_of("demo-pipeline");
    assert_eq!(rows.len(), 51);
    let ids: std::collections::HashSet<&str> = rows
        .iter()
        .filter_map(|row| row["inferenceId"].as_str())
        .collect();
    assert_eq!(ids.len(), 51, "every good trace exactly once");

    // The columns the config names are numbers on every row, late ones (no usage) included.
    for row in &rows {
        for column in ["latency", "tokens", "cost"] {
            assert!(row[column].is_number(), "{column} of {row}");
        }
    }
    // Each turn's steps carry the SDK's fields of their type.
    let turns: Vec<&Value> = rows
        .iter()
        .copied()
        .filter(|row| row["session_late"] == false)
        .filter(|row| {
            row["session_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("chat-"))
        })
        .collect();
    assert_eq!(turns.len(), 43);
    // The OpenTelemetry conversations: a request span around a chat span, per turn.
    let otel: Vec<&Value> = rows
        .iter()
        .copied()
        .filter(|row| {
            row["session_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("otel-"))
        })
        .collect();
    assert_eq!(otel.len(), 6);
    for row in otel {
        assert_eq!(row["service.name"], "support-bot", "{row}");
        let chat = &row["steps"][0]["steps"][0];
        assert_eq!(chat["type"], "chat_completion", "{row}");
        assert_eq!(chat["provider"], "openai");
        assert_eq!(chat["tokens"], 52);
        assert_eq!(chat["inputs"]["prompt"][0]["role"], "user");
        assert_eq!(row["output"], chat["output"]);
    }
    for row in turns {
        let steps = row["steps"][0]["steps"].as_array().expect("nested steps");
        let [retriever, completion] = &steps[..] else {
            panic!("a retriever and a completion step: {row}");
        };
        assert_eq!(retriever["type"], "retriever");
        assert!(
            retriever["documents"]
                .as_array()
                .is_some_and(|documents| !documents.is_empty())
        );
        assert_eq!(completion["type"], "chat_completion");
        let prompt = completion["inputs"]["prompt"]
            .as_array()
            .expect("prompt messages");
        let roles: Vec<&str> = prompt
            .iter()
            .filter_map(|message| message["role"].as_str())
            .collect();
        assert_eq!(roles, ["system", "user"], "{row}");
        assert_eq!(prompt[1]["content"], row["user_message"]);
        assert_eq!(completion["provider"], "OpenAI");
        assert_eq!(completion["modelParameters"]["temperature"], 0.2);
        assert_eq!(
            completion["rawOutput"]["choices"][0]["message"]["content"],
            completion["output"]
        );
    }

    // Every session in the printed table matches its rows: as many turns, numbered 1..n in
    // order, with running token totals that end at the table's total.
    let mut by_session: std::collections::BTreeMap<&str, Vec<&Value>> = Default::default();
    for row in rows.iter().filter(|row| row["session_late"] == false) {
        by_session
            .entry(row["session_id"].as_str().expect("session id"))
            .or_default()
            .push(row);
    }
    let table: Vec<(&str, usize, i64)> = stdout
        .lines()
        .filter(|line| line.starts_with("user-") || line.starts_with("otel-user-"))
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let turns = columns[2].parse().expect("turns");
            let tokens = columns[4].parse().expect("tokens");
            (columns[1], turns, tokens)
        })
        .collect();
    assert_eq!(table.len(), 14, "{stdout}");
    for (session, turns, tokens) in table {
        let mut session_rows = by_session
            .remove(session)
            .expect("rows of a listed session");
        session_rows.sort_by_key(|row| row["session_turn"].as_i64());
        let numbered: Vec<i64> = session_rows
            .iter()
            .map(|row| row["session_turn"].as_i64().expect("turn"))
            .collect();
        assert_eq!(
            numbered,
            (1..=turns as i64).collect::<Vec<_>>(),
            "{session}"
        );
        let last = session_rows.last().expect("a row");
        assert_eq!(last["session_tokens_so_far"], tokens, "{session}");
    }
    assert!(
        by_session.is_empty(),
        "rows of sessions missing from the table: {by_session:?}"
    );
    let late = rows
        .iter()
        .filter(|row| row["session_late"] == true)
        .count();
    assert_eq!(late, 2, "the two late traces are marked");
    assert!(
        requests
            .iter()
            .filter(|request| request["request"] == "data-stream")
            .all(|request| request["config"]["sessionIdColumnName"] == "session_id")
    );
    let updates = requests
        .iter()
        .filter(|request| {
            request["request"] == "row-update" && request["row"]["session_final_turn"] == true
        })
        .count();
    assert_eq!(updates, 14, "each closed session's final turn is marked");
    let _cleanup = std::fs::remove_dir_all(&output_dir);
}
