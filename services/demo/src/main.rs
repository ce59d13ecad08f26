//! Entry point of the demo (`make run`): parses the flags, sets up logging and a runtime, and
//! runs [`sessionizer_demo::run`].

use clap::Parser;
use service_kit::logging::{JsonFields, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run the whole product in one process with nothing to install: an in-process Kafka
/// cluster, synthetic multi-user chat traffic emitted through the producer helpers, the
/// sessionizer service, and a local Openlayer-compatible endpoint that records every request
/// (or the real Openlayer when OPENLAYER_API_KEY and OPENLAYER_INFERENCE_PIPELINE_ID are set).
#[derive(Parser, Debug)]
#[command(name = "sessionizer-demo", version = sessionizer::VERSION)]
struct DemoArgs {
    /// Users chatting.
    #[arg(long, default_value_t = 6)]
    users: usize,
    /// Sessions per user.
    #[arg(long, default_value_t = 2)]
    sessions_per_user: usize,
    /// Chat turns per second, over all sessions.
    #[arg(long, default_value_t = 8.0)]
    rate: f64,
    /// Inactivity gap in seconds; short so that sessions close by inactivity during the demo.
    #[arg(long, default_value_t = 4)]
    gap_secs: u64,
    /// Directory for the recorded Openlayer requests.
    #[arg(long, default_value = "target/demo")]
    output_dir: PathBuf,
    /// Address for /metrics, /healthz and /readyz while the demo runs (a free port if taken).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: std::net::SocketAddr,
    /// Give up (exit code 1) if not every row was shipped after this many seconds.
    #[arg(long, default_value_t = 90)]
    timeout_secs: u64,
    /// Keep the sessionizer and /metrics running this many seconds after the traffic was
    /// shipped, so that a Prometheus can scrape the finished demo.
    #[arg(long, default_value_t = 0)]
    keep_serving_secs: u64,
}

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    if let Err(error) = service_kit::logging::init(LogFormat::Text, &filter, JsonFields::TopLevel) {
        eprintln!("sessionizer-demo: cannot set up logging: {error}");
        return ExitCode::FAILURE;
    }
    let settings = sessionizer_demo::DemoSettings {
        num_users: args.users,
        sessions_per_user: args.sessions_per_user,
        turns_per_second: args.rate,
        gap: Duration::from_secs(args.gap_secs),
        output_dir: args.output_dir,
        metrics_listen: args.metrics_listen,
        timeout: Duration::from_secs(args.timeout_secs),
        keep_serving: Duration::from_secs(args.keep_serving_secs),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessionizer-demo: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sessionizer_demo::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessionizer demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
