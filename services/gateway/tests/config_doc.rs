//! `docs/configuration.md`'s gateway table stays in step with the code: every option has a
//! row naming its variable and showing its default, and no row names an option the code lacks.

use gateway::config::GatewayConfig;
use serde_json::Value;
use std::path::Path;

fn gateway_section() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md is readable");
    let start = doc.find("\n## Gateway\n").expect("a Gateway section");
    doc[start..].to_owned()
}

/// Every option's key path and default, from the real type.
fn option_defaults() -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: &Value, options: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(table) if prefix != "kafka.client" => {
                for (key, child) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, options);
                }
            }
            _ => options.push((prefix.to_owned(), value.clone())),
        }
    }
    let defaults = serde_json::to_value(GatewayConfig::default()).expect("defaults serialize");
    let mut options = Vec::new();
    walk("", &defaults, &mut options);
    options
}

fn variable(key: &str) -> String {
    let base = format!("GATEWAY__{}", key.to_uppercase().replace('.', "__"));
    if key == "kafka.client" {
        format!("{base}__<PROPERTY>")
    } else {
        base
    }
}

#[test]
fn every_gateway_option_has_a_row_with_its_variable_and_default() {
    let section = gateway_section();
    let options = option_defaults();
    assert!(options.len() >= 20, "found only {} options", options.len());
    for (key, default) in options {
        let row_start = format!("| `{}` | `{key}` |", variable(&key));
        let row = section
            .lines()
            .find(|line| line.starts_with(&row_start))
            .unwrap_or_else(|| panic!("no row starting {row_start}"));
        let shown = match &default {
            Value::Null => "unset".to_owned(),
            Value::String(text) => format!("`\"{text}\"`"),
            Value::Object(_) => "empty".to_owned(),
            Value::Array(items) if items.is_empty() => "empty".to_owned(),
            other => format!("`{other}`"),
        };
        assert!(
            row.contains(&shown),
            "row for `{key}` does not show {shown}: {row}"
        );
    }
}

#[test]
fn the_gateway_table_names_no_option_the_code_lacks() {
    let known: Vec<String> = option_defaults()
        .into_iter()
        .map(|(key, _)| variable(&key))
        .collect();
    for line in gateway_section()
        .lines()
        .filter(|line| line.starts_with("| `GATEWAY__"))
    {
        let named = line
            .trim_start_matches("| `")
            .split('`')
            .next()
            .expect("a variable");
        assert!(
            known.iter().any(|variable| variable == named),
            "unknown option {named}"
        );
    }
}
