//! Configuration problems, collected while validating so that every one is reported at once,
//! each naming its key and what was expected, as a bullet list in both services' errors.

use std::fmt;

/// One invalid value: its key path and what was expected (never a secret's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `kafka.bootstrap_servers`, or a variable such as `OPENLAYER_VERIFY_SSL`.
    pub key: String,
    /// What is wrong and what was expected, with an example.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.key, self.message)
    }
}

/// The problems found so far, in the order they were found.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// The problem `key` has when `value` is zero: "must be at least 1, e.g. `example`".
    pub fn require_at_least_one<T: PartialEq + From<u8>>(
        &mut self,
        key: &str,
        value: T,
        example: &str,
    ) {
        if value == T::from(0) {
            self.push(key, format!("must be at least 1, e.g. `{example}`"));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// `items` one per line, each as `  - item`: how both services list problems and unknown keys.
pub fn bullet_list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| format!("  - {item}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_listed_in_the_order_found() {
        let mut problems = Problems::default();
        assert!(problems.is_empty());
        problems.push(
            "http.listen",
            "must be an address and port, e.g. `0.0.0.0:8080`",
        );
        problems.push("kafka.topic", "must not be empty");
        assert_eq!(
            bullet_list(&problems.into_vec()),
            "  - http.listen must be an address and port, e.g. `0.0.0.0:8080`\n  - kafka.topic \
             must not be empty"
        );
    }
}
