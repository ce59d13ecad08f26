//! Entry point of the gateway (thin: behaviour lives in the library).

use clap::{Args, Parser, Subcommand};
use gateway::config::{GatewayConfig, LogFormat, ValidatedConfig};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a configuration that cannot be used (clap uses the same code for bad usage).
const EXIT_INVALID_CONFIG: u8 = 2;

const AFTER_HELP: &str = "\
Configuration sources, each overriding the ones before it:
  1. built-in defaults
  2. the TOML file given with --config (or GATEWAY_CONFIG)
  3. environment variables GATEWAY__SECTION__KEY, e.g. GATEWAY__KAFKA__BOOTSTRAP_SERVERS
Every option is described in docs/configuration.md.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.";

/// Openlayer-compatible ingest gateway: services using Openlayer's SDKs set
/// OPENLAYER_BASE_URL to it, and their rows join the session pipeline through Kafka.
#[derive(Parser, Debug)]
#[command(name = "gateway", version = gateway::VERSION, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve until SIGTERM or Ctrl-C, then drain and exit.
    Run(ConfigArgs),
    /// Print the effective configuration with secrets redacted, or every problem in it
    /// (exit code 2).
    CheckConfig(ConfigArgs),
}

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
struct ConfigArgs {
    /// TOML configuration file; without it, defaults and environment variables only.
    #[arg(long, short, value_name = "FILE", env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::CheckConfig(args) => check_config(&args),
    }
}

fn load(args: &ConfigArgs) -> Result<(GatewayConfig, ValidatedConfig), ExitCode> {
    let loaded = GatewayConfig::load(args.config.as_deref(), std::env::vars().collect())
        .and_then(|config| config.validate().map(|validated| (config, validated)));
    loaded.map_err(|error| {
        eprintln!("gateway: {error}");
        ExitCode::from(EXIT_INVALID_CONFIG)
    })
}

fn check_config(args: &ConfigArgs) -> ExitCode {
    match load(args) {
        Ok((config, _validated)) => match config_text(&config) {
            Ok(text) => {
                // A closed pipe (`| head`) is not an error worth a panic.
                let _written = writeln!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("gateway: {error}");
                ExitCode::FAILURE
            }
        },
        Err(code) => code,
    }
}

/// The configuration as JSON (secrets redacted by its `Serialize`), pretty-printed.
fn config_text(config: &GatewayConfig) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(config)
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|error| anyhow::anyhow!(error))
}

fn run(args: &ConfigArgs) -> ExitCode {
    let validated = match load(args) {
        Ok((_config, validated)) => validated,
        Err(code) => return code,
    };
    if let Err(error) = init_tracing(validated.log.format, &validated.log.filter) {
        eprintln!("gateway: cannot set up logging: {error}");
        return ExitCode::from(EXIT_INVALID_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(gateway::run(validated, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %anyhow::Error::from(error), "gateway failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
                tracing::info!("SIGTERM received");
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
