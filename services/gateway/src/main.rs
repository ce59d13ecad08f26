//! Entry point of the gateway (thin: behaviour lives in the library).

use clap::{Args, Parser, Subcommand};
use gateway::config::{GatewayConfig, ValidatedConfig};
use service_kit::logging::JsonFields;
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
    /// Connect with this configuration and check what `run` needs, one line each (✓ or ✗
    /// with the fix): the brokers with the configured TLS/SASL and the traces topic. Produces
    /// nothing. Exit code 0 only when every check passed (usable as an init container).
    Preflight(PreflightArgs),
}

#[derive(Args, Debug)]
struct PreflightArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Bound of each request, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout_secs: u64,
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
        Command::Preflight(args) => preflight(&args),
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

fn preflight(args: &PreflightArgs) -> ExitCode {
    let validated = match load(&args.config) {
        Ok((_config, validated)) => validated,
        Err(code) => return code,
    };
    let timeout = std::time::Duration::from_secs(args.timeout_secs);
    let report = gateway::preflight::run(&validated.kafka, timeout);
    print!("{report}");
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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

fn run(args: &ConfigArgs) -> ExitCode {
    let validated = match load(args) {
        Ok((_config, validated)) => validated,
        Err(code) => return code,
    };
    let logging = service_kit::logging::init(
        validated.log.format,
        &validated.log.filter,
        JsonFields::Nested,
    );
    if let Err(error) = logging {
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
    let shutdown = {
        let _runtime = runtime.enter();
        service_kit::shutdown::signal()
    };
    match runtime.block_on(gateway::run(validated, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            service_kit::fatal::report("gateway", &error);
            ExitCode::FAILURE
        }
    }
}
