//! Entry point of the sessionizer service (thin: behaviour lives in the library).

use clap::{Args, Parser, Subcommand};
use service_kit::logging::JsonFields;
use sessionizer::config::{ConfigError, SessionizerConfig, ValidatedConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for a configuration that cannot be used (clap uses the same code for bad usage).
const EXIT_INVALID_CONFIG: u8 = 2;

const AFTER_HELP: &str = "\
Configuration sources, each overriding the ones before it:
  1. built-in defaults
  2. the TOML file given with --config (or SESSIONIZER_CONFIG)
  3. environment variables SESSIONIZER__SECTION__KEY, e.g. SESSIONIZER__KAFKA__BOOTSTRAP_SERVERS
The Openlayer SDK's variables OPENLAYER_API_KEY, OPENLAYER_BASE_URL,
OPENLAYER_INFERENCE_PIPELINE_ID and OPENLAYER_VERIFY_SSL fill the [openlayer] options that
none of these set. Every option is described in docs/configuration.md.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.";

/// Session-aware LLM trace pipeline: reads traces from Kafka as a consumer group, groups them
/// into sessions, enriches every trace with its session context and ships rows to Openlayer.
#[derive(Parser, Debug)]
#[command(name = "sessionizer", version = sessionizer::VERSION, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the consumer until SIGTERM or Ctrl-C, then drain, commit and exit.
    Run(ConfigArgs),
    /// Print the effective configuration with secrets redacted, or every problem in it
    /// (exit code 2).
    CheckConfig(ConfigArgs),
    /// Connect with this configuration and check what `run` needs, one line each (✓ or ✗
    /// with the fix): the brokers with the configured TLS/SASL, every topic and the
    /// changelog's partition count, the consumer group, the Schema Registry if configured,
    /// and the Openlayer key through a read-only request. Writes nothing. Exit code 0 only
    /// when every check passed (usable as an init container).
    Preflight(PreflightArgs),
    /// Produce traces given as JSON lines (one TraceEvent per line, the field names of
    /// schemas/trace_event.avsc) with the same keys and encoding as the Rust helpers: for
    /// services in other languages and for backfills. Invalid lines are reported with their
    /// line number and skipped; the exit code is 1 if any line was invalid or undelivered.
    Emit(EmitArgs),
}

#[derive(Args, Debug)]
struct PreflightArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also check the key against this Openlayer pipeline (one your producers name in
    /// `pipeline_id`); repeatable. openlayer.default_pipeline_id is always checked.
    #[arg(long = "pipeline-id", value_name = "ID")]
    pipeline_ids: Vec<String>,
    /// Bound of each request, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    timeout_secs: u64,
}

#[derive(Args, Debug)]
struct EmitArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SESSIONIZER__KAFKA__BOOTSTRAP_SERVERS")]
    brokers: String,
    /// Topic to produce to.
    #[arg(long, default_value = "llm-traces")]
    topic: String,
    /// Read from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Wire encoding: avro (single-object, the helpers' default) or json.
    #[arg(long, default_value = "avro", value_parser = ["avro", "json"])]
    encoding: String,
    /// librdkafka setting for TLS/SASL and the like, as KEY=VALUE; repeatable.
    #[arg(long = "client", value_name = "KEY=VALUE")]
    client: Vec<String>,
}

#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
struct ConfigArgs {
    /// TOML configuration file; without it, defaults and environment variables only.
    #[arg(long, short, value_name = "FILE", env = "SESSIONIZER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::Preflight(args) => preflight(&args),
        Command::Emit(args) => emit(&args),
    }
}

fn emit(args: &EmitArgs) -> ExitCode {
    use std::io::BufRead as _;
    let mut config = trace_emit::EmitterConfig::new(&args.brokers, &args.topic);
    config.encoding = if args.encoding == "json" {
        trace_model::Encoding::Json
    } else {
        trace_model::Encoding::Avro
    };
    for setting in &args.client {
        let Some((key, value)) = setting.split_once('=') else {
            eprintln!("sessionizer emit: --client expects KEY=VALUE, got `{setting}`");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        };
        config.client.insert(key.to_owned(), value.to_owned());
    }
    let registry = prometheus::Registry::new();
    let emitter = match trace_emit::Emitter::try_new(config, &registry) {
        Ok(emitter) => emitter,
        Err(error) => {
            eprintln!("sessionizer emit: {:#}", anyhow::Error::from(error));
            return ExitCode::FAILURE;
        }
    };
    let input: Box<dyn std::io::BufRead> = match &args.file {
        Some(path) => match std::fs::File::open(path) {
            Ok(file) => Box::new(std::io::BufReader::new(file)),
            Err(error) => {
                eprintln!("sessionizer emit: cannot read {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::stdin().lock()),
    };
    // The same checks the sessionizer applies, so a line that is produced will be accepted.
    let decoder = trace_model::Decoder::new(trace_model::Limits::default());
    let (mut num_emitted, mut num_invalid) = (0usize, 0usize);
    for (index, line) in input.lines().enumerate() {
        let line_number = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                eprintln!("line {line_number}: cannot read: {error}");
                num_invalid += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match decoder.decode(line.as_bytes()) {
            Ok(event) => {
                if emitter.emit(event) {
                    num_emitted += 1;
                } else {
                    eprintln!("line {line_number}: producer buffer full or closed, not emitted");
                    num_invalid += 1;
                }
            }
            Err(error) => {
                eprintln!("line {line_number}: {error}");
                num_invalid += 1;
            }
        }
    }
    let flushed = emitter.close(std::time::Duration::from_secs(30));
    let num_undelivered: f64 = registry
        .gather()
        .iter()
        .filter(|family| family.name() == "trace_emit_delivery_errors_total")
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| metric.get_counter().get_value())
        .sum();
    eprintln!(
        "emitted {num_emitted} traces, {num_invalid} lines invalid, {num_undelivered} undelivered"
    );
    if let Err(error) = flushed {
        eprintln!("sessionizer emit: {error}");
        return ExitCode::FAILURE;
    }
    if num_invalid > 0 || num_undelivered > 0.0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(args: &ConfigArgs) -> ExitCode {
    let config = match load_config(args) {
        Ok(config) => config,
        Err(error) => return report_invalid_config(&error),
    };
    let logging =
        service_kit::logging::init(config.log.format, &config.log.filter, JsonFields::TopLevel);
    if let Err(error) = logging {
        eprintln!("sessionizer: cannot set up logging: {error}");
        return ExitCode::FAILURE;
    }
    for warning in &config.warnings {
        tracing::warn!(warning = %warning, "risky configuration");
    }
    tracing::info!(
        version = sessionizer::VERSION,
        bootstrap_servers = %config.kafka.bootstrap_servers,
        group_id = %config.kafka.group_id,
        topic = %config.kafka.topic,
        openlayer = %config.sink.base_url,
        "configuration loaded"
    );
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    // Listen for signals before anything else starts: a SIGTERM during start-up (joining the
    // group, restoring state) is then a clean stop rather than the default kill.
    let shutdown = {
        let _runtime = runtime.enter();
        service_kit::shutdown::signal()
    };
    match runtime.block_on(sessionizer::service::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            service_kit::fatal::report("sessionizer", &error);
            ExitCode::FAILURE
        }
    }
}

fn preflight(args: &PreflightArgs) -> ExitCode {
    let config = match load_config(&args.config) {
        Ok(config) => config,
        Err(error) => return report_invalid_config(&error),
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let timeout = std::time::Duration::from_secs(args.timeout_secs);
    let report = runtime.block_on(sessionizer::preflight::run(
        &config,
        &args.pipeline_ids,
        timeout,
    ));
    print!("{report}");
    if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_config(args: &ConfigArgs) -> ExitCode {
    match load_config(args) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Err(error) => report_invalid_config(&error),
    }
}

fn load_config(args: &ConfigArgs) -> Result<ValidatedConfig, ConfigError> {
    // Variables that are not Unicode cannot be configuration; skip them rather than panic.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    SessionizerConfig::load(args.config.as_deref(), &env)?.validate()
}

fn report_invalid_config(error: &ConfigError) -> ExitCode {
    match error {
        // The config crate's message names the key and its source but not what failed.
        ConfigError::Load(_) => eprintln!("sessionizer: invalid configuration: {error}"),
        _ => eprintln!("sessionizer: {error}"),
    }
    ExitCode::from(EXIT_INVALID_CONFIG)
}

/// The multi-threaded runtime every async command runs on.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("sessionizer: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}
