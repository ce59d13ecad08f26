//! Fuzz-style properties of the configuration loader: mutated files and arbitrary values for
//! every option never panic, every refusal names what it refuses and never shows the API key,
//! and whatever is accepted is safe to run with (no duration that overflows a clock).

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use sessionizer::config::{ConfigError, SessionizerConfig, ValidatedConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

const API_KEY: &str = "sk-live-FUZZ-0123456789";

/// The configuration the Kubernetes base ships: a realistic file to mutate.
fn deployed_file() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/base/sessionizer.toml");
    std::fs::read_to_string(path).expect("read deploy/k8s/base/sessionizer.toml")
}

/// Every option as `section.key`, from the effective configuration `check-config` prints.
fn option_keys() -> Vec<String> {
    let env = HashMap::from([("OPENLAYER_API_KEY".to_owned(), API_KEY.to_owned())]);
    let defaults = SessionizerConfig::load(None, &env)
        .and_then(SessionizerConfig::validate)
        .expect("the defaults are valid");
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in defaults.to_redacted_toml().lines() {
        let line = line.trim_start_matches("# ");
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !section.contains('.')
        {
            keys.push(format!("{section}.{key}"));
        } else if let Some(key) = line.strip_suffix(" is unset") {
            keys.push(format!("{section}.{key}"));
        }
    }
    assert!(keys.len() >= 30, "found the options: {keys:?}");
    keys
}

fn load(
    file: Option<&[u8]>,
    variables: &HashMap<String, String>,
) -> Result<ValidatedConfig, ConfigError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path: Option<PathBuf> = file.map(|bytes| {
        let path = std::env::temp_dir().join(format!(
            "sessionizer-config-fuzz-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).expect("write the temp file");
        path
    });
    let result =
        SessionizerConfig::load(path.as_deref(), variables).and_then(SessionizerConfig::validate);
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Every duration the runtime adds to clocks.
fn durations(config: &ValidatedConfig) -> Vec<Duration> {
    let mut durations = vec![
        config.kafka.checkpoint_interval,
        config.kafka.session_timeout,
        config.session.gap,
        config.session.max_duration,
        config.session.grace,
        config.session.idle_check_interval,
        config.session.user_gap,
        config.batch.linger,
        config.sink.request_timeout,
        config.sink.initial_backoff,
        config.sink.max_backoff,
        config.http.liveness_window,
        config.shutdown.drain_timeout,
    ];
    durations.extend(config.sink.retry_deadline);
    durations
}

fn check_accepted(config: &ValidatedConfig) -> Result<(), TestCaseError> {
    let now = Instant::now();
    let wall = SystemTime::now();
    for duration in durations(config) {
        // Twice: deadlines are sometimes computed from an already advanced instant.
        prop_assert!(
            now.checked_add(duration * 2).is_some(),
            "{duration:?} overflows an Instant"
        );
        prop_assert!(
            wall.checked_add(duration * 2).is_some(),
            "{duration:?} overflows the wall clock"
        );
        prop_assert!(
            i64::try_from(duration.as_millis()).is_ok(),
            "{duration:?} overflows i64 ms"
        );
    }
    Ok(())
}

fn check_refused(error: &ConfigError, names: &[&str]) -> Result<(), TestCaseError> {
    let message = error.to_string();
    let detail = format!("{message} {:?}", error.problems());
    prop_assert!(!message.trim().is_empty(), "an empty error message");
    prop_assert!(
        !detail.contains(API_KEY),
        "the key is in an error: {detail}"
    );
    if !names.is_empty() {
        prop_assert!(
            names.iter().any(|name| detail.contains(name)),
            "the error names none of {names:?}: {detail}"
        );
    }
    Ok(())
}

/// Values a person or a template engine might put into an option.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|number| number.to_string()),
        any::<i64>().prop_map(|number| number.to_string()),
        (0_u64..100_000).prop_map(|number| number.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("99999999999999999999999".to_owned()),
        any::<f64>().prop_map(|number| number.to_string()),
        prop_oneof![
            Just("true"),
            Just("false"),
            Just(""),
            Just(" "),
            Just("null"),
            Just("[]")
        ]
        .prop_map(str::to_owned),
        "[a-z0-9._:/-]{0,40}",
        any::<String>(),
        "\\PC{200,400}",
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        bit: u8,
    },
    Insert {
        at: prop::sample::Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: prop::sample::Index,
        len: usize,
    },
    Duplicate {
        at: prop::sample::Index,
        len: usize,
    },
    Truncate {
        at: prop::sample::Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>();
    prop_oneof![
        (at.clone(), 0_u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at.clone(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at.clone(), 1_usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at.clone(), 1_usize..4096).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip { at, bit } => {
            let index = at.index(bytes.len());
            bytes[index] ^= 1 << bit;
        }
        Mutation::Insert {
            at,
            bytes: inserted,
        } => {
            let index = at.index(bytes.len());
            bytes.splice(index..index, inserted.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let start = at.index(bytes.len());
            let end = (start + len).min(bytes.len());
            bytes.drain(start..end);
        }
        Mutation::Duplicate { at, len } => {
            let start = at.index(bytes.len());
            let end = (start + len).min(bytes.len());
            let copy = bytes[start..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(bytes.len())),
    }
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        // Each case writes and parses a file: a few hundred keep the suite quick.
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn mutated_files_are_loaded_or_refused_without_panicking(
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut file = deployed_file().into_bytes();
        for mutation in &mutations {
            apply(&mut file, mutation);
        }
        let env = HashMap::from([("OPENLAYER_API_KEY".to_owned(), API_KEY.to_owned())]);
        match load(Some(&file), &env) {
            Ok(config) => check_accepted(&config)?,
            Err(error) => check_refused(&error, &[])?,
        }
    }

    #[test]
    fn any_value_for_any_option_is_accepted_safely_or_refused_by_name(
        option in prop::sample::select(option_keys()),
        value in value(),
        through_environment in any::<bool>(),
    ) {
        let (section, key) = option.split_once('.').expect("section.key");
        let mut env = HashMap::from([("OPENLAYER_API_KEY".to_owned(), API_KEY.to_owned())]);
        let variable = format!("SESSIONIZER__{}__{}", section.to_uppercase(), key.to_uppercase());
        let result = if through_environment {
            env.insert(variable.clone(), value);
            load(None, &env)
        } else {
            let text = format!("[{section}]\n{key} = {}\n", toml_string(&value));
            load(Some(text.as_bytes()), &env)
        };
        match result {
            Ok(config) => check_accepted(&config)?,
            Err(error) => check_refused(&error, &[option.as_str(), variable.as_str(), key])?,
        }
    }
}

/// `value` as a TOML value: numbers, booleans and arrays as they are, the rest quoted.
fn toml_string(value: &str) -> String {
    let plain = value.parse::<i64>().is_ok()
        || value.parse::<f64>().is_ok_and(f64::is_finite)
        || matches!(value, "true" | "false" | "[]");
    if plain {
        value.to_owned()
    } else {
        serde_json::to_string(value).expect("a JSON string is a TOML basic string")
    }
}
