//! The command-line entry points a new user meets first: `sessionizer demo` (what `make run`
//! runs) and `sessionizer emit`, run as the real executable.

use end_to_end::{bootstrap, create_topic, read_topic, sessionizer_path, unique_name};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use trace_model::{Decoder, Limits};

#[test]
fn demo_runs_the_whole_pipeline_in_process_and_exits_zero() {
    let output_dir = std::env::temp_dir().join(unique_name("sessionizer-demo"));
    let output = Command::new(sessionizer_path())
        .args([
            "demo",
            "--timeout-secs",
            "60",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
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
    assert!(stdout.contains("12 sessions closed"), "{stdout}");
    assert!(stdout.contains("end_event: 6"), "{stdout}");
    // The other six close by inactivity: on the wall clock (idle) or, when other sessions'
    // traces moved the partition's event time on first, by event time (gap).
    let closed_by_inactivity = stdout
        .lines()
        .filter(|line| line.ends_with(" idle") || line.ends_with(" gap"))
        .count();
    assert_eq!(closed_by_inactivity, 6, "{stdout}");
    assert!(stdout.contains("rows shipped: 45"), "{stdout}");
    assert!(stdout.contains("dead letters: 3"), "{stdout}");

    let recorded =
        std::fs::read_to_string(output_dir.join("requests.jsonl")).expect("requests recorded");
    let requests: Vec<Value> = recorded
        .lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    let rows: Vec<&Value> = requests
        .iter()
        .filter(|request| request["request"] == "data-stream")
        .flat_map(|request| request["rows"].as_array().expect("rows").iter())
        .collect();
    assert_eq!(rows.len(), 45);
    let ids: std::collections::HashSet<&str> = rows
        .iter()
        .filter_map(|row| row["inferenceId"].as_str())
        .collect();
    assert_eq!(ids.len(), 45, "every good trace exactly once");

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
        .filter(|line| line.starts_with("user-"))
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let turns = columns[2].parse().expect("turns");
            let tokens = columns[4].parse().expect("tokens");
            (columns[1], turns, tokens)
        })
        .collect();
    assert_eq!(table.len(), 12, "{stdout}");
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
    assert_eq!(updates, 12, "each closed session's final turn is marked");
    let _cleanup = std::fs::remove_dir_all(&output_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_produces_json_lines_like_the_helpers_and_reports_bad_lines_by_number() {
    let topic = unique_name("emitted");
    create_topic(&bootstrap(), &topic, 3).await;
    let lines = [
        r#"{"name":"chat","timestamp_ms":1700000000000,"inference_id":"e-1","session_id":"s-1","user_id":"u-1","inputs":{"q":"hi"},"output":"hello"}"#,
        "not json at all",
        r#"{"name":"chat","timestamp_ms":1700000000001,"inference_id":"e-2","user_id":""}"#,
        "",
        r#"{"name":"chat","timestamp_ms":1700000000002,"inference_id":"e-3","user_id":"u-2"}"#,
    ];
    let mut child = Command::new(sessionizer_path())
        .args(["emit", "--brokers", &bootstrap(), "--topic", &topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("emit starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("write line");
        }
    }
    let output = child.wait_with_output().expect("emit finishes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "invalid lines make the exit code 1: {stderr}"
    );
    assert!(stderr.contains("line 2:"), "{stderr}");
    assert!(stderr.contains("line 3: user_id is empty"), "{stderr}");
    assert!(
        stderr.contains("emitted 2 traces, 2 lines invalid"),
        "{stderr}"
    );

    let records = read_topic(&bootstrap(), &topic, 3, 2, Duration::from_secs(30));
    assert_eq!(records.len(), 2);
    let decoder = Decoder::new(Limits::default());
    for record in &records {
        assert_eq!(
            record.payload[..2],
            [0xC3, 0x01],
            "avro single-object, as the helpers send"
        );
        let event = decoder.decode(&record.payload).expect("decodes");
        let expected_key = event.session_id.clone().or(event.user_id.clone());
        assert_eq!(
            record
                .key
                .clone()
                .map(|key| String::from_utf8(key).expect("utf-8")),
            expected_key
        );
        assert!(record.header("error.reason").is_none());
    }
}

#[test]
fn check_config_prints_the_effective_configuration_from_file_and_environment() {
    let file = std::env::temp_dir().join(format!("{}.toml", unique_name("check-config")));
    std::fs::write(
        &file,
        "[kafka]\nbootstrap_servers = \"kafka-a:9092\"\ntopic = \"from-file\"\n\n[batch]\nmax_rows = 250\n",
    )
    .expect("config file");
    let output = Command::new(sessionizer_path())
        .args(["check-config", "--config"])
        .arg(&file)
        .env("OPENLAYER_API_KEY", "sk-check-config-secret")
        // The environment overrides the file.
        .env("SESSIONIZER__BATCH__MAX_ROWS", "500")
        .output()
        .expect("check-config runs");
    let _cleanup = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("bootstrap_servers = \"kafka-a:9092\""),
        "{stdout}"
    );
    assert!(stdout.contains("topic = \"from-file\""), "{stdout}");
    assert!(stdout.contains("max_rows = 500"), "{stdout}");
    assert!(!stdout.contains("sk-check-config-secret"), "{stdout}");
}
