//! A fatal error, reported once with its whole cause chain in the log (for the collector)
//! and on stderr (for a person at a terminal or `kubectl logs --previous`).

use std::error::Error;
use std::fmt::Write as _;

/// `error` and each of its sources, outermost first, joined by `: `.
pub fn cause_chain(error: &(dyn Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers that print their source's text (`#[error(transparent)]`) add nothing.
        if !chain.ends_with(&text) {
            let _ = write!(chain, ": {text}");
        }
        source = cause.source();
    }
    chain
}

/// Logs and prints `error` with its causes, and what to do next.
pub fn report(service: &str, error: &(dyn Error + 'static)) {
    let chain = cause_chain(error);
    tracing::error!(error = %chain, "{service} stopped");
    eprintln!("{service}: {chain}");
    eprintln!(
        "{service}: `{service} preflight --config FILE` checks the brokers, topics and access \
         this configuration needs, one line each with the fix"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer {
        text: &'static str,
        source: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str(self.text)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source
                .as_deref()
                .map(|layer| layer as &(dyn Error + 'static))
        }
    }

    fn layer(text: &'static str, source: Option<Layer>) -> Layer {
        Layer {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn names_every_cause_outermost_first() {
        let error = layer(
            "failed to prepare topics",
            Some(layer(
                "topic `llm-traces` does not exist",
                Some(layer("UnknownTopicOrPartition", None)),
            )),
        );
        assert_eq!(
            cause_chain(&error),
            "failed to prepare topics: topic `llm-traces` does not exist: UnknownTopicOrPartition"
        );
    }

    #[test]
    fn skips_a_transparent_wrapper_repeating_its_source() {
        let error = layer("broker down", Some(layer("broker down", None)));
        assert_eq!(cause_chain(&error), "broker down");
    }
}
