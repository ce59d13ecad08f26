//! The command-line entry points a new user meets after the demo: `sessionizer emit` and
//! `sessionizer check-config`, run as the real executable.

use end_to_end::{bootstrap, create_topic, read_topic, sessionizer_path, unique_name};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use trace_model::{Decoder, Limits};

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
