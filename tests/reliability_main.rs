//! `make reliability`: every scenario of the reliability suite, a table on stdout and the
//! report in `bench-results/reliability.json`. Exits 1 when any scenario fails.
//!
//! Usage: `reliability [quick|full] [SCENARIO ...]` (default: full, every scenario).

use end_to_end::reliability::{self, Report, SCENARIOS, Size};
use std::path::Path;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut size = Size::Full;
    let mut chosen = Vec::new();
    for argument in std::env::args().skip(1) {
        if let Some(parsed) = Size::parse(&argument) {
            size = parsed;
        } else if SCENARIOS.contains(&argument.as_str()) {
            chosen.push(argument);
        } else {
            eprintln!("usage: reliability [quick|full] [SCENARIO ...]; scenarios: {SCENARIOS:?}");
            std::process::exit(2);
        }
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.iter().map(|name| (*name).to_owned()).collect();
    }
    let mut report = Report::default();
    for name in &chosen {
        eprintln!("reliability: {name} ({size:?})");
        let outcome = reliability::run(name, size).await;
        eprintln!("reliability: {name}: {}", outcome.verdict());
        report.outcomes.push(outcome);
    }
    for outcome in report.outcomes.iter().filter(|outcome| !outcome.passed()) {
        for log in &outcome.logs {
            eprintln!("--- {} instance log (tail) ---\n{log}", outcome.scenario);
        }
    }
    println!("{}", report.table());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results/reliability.json");
    let written = std::fs::create_dir_all(path.parent().expect("a parent")).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report.json()).expect("json"),
        )
    });
    match written {
        Ok(()) => eprintln!("reliability: wrote bench-results/reliability.json"),
        Err(error) => {
            eprintln!("reliability: cannot write bench-results/reliability.json: {error}")
        }
    }
    if report.outcomes.iter().any(|outcome| !outcome.passed()) {
        std::process::exit(1);
    }
}
