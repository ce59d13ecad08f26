//! Entry point of the sessionizer service (thin: behaviour lives in the library).

use clap::Parser;

/// Session-aware LLM trace pipeline: Kafka in, sessionized and enriched rows out to Openlayer.
#[derive(Parser, Debug)]
#[command(version = sessionizer::VERSION)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "sessionizer: the consumer service is not built yet; see README.md for what works today"
    );
    std::process::ExitCode::FAILURE
}
