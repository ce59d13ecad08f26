//! Security: the Openlayer API key never appears in logs (at trace level), error messages,
//! `/metrics` or `check-config` output; TLS verification is on unless explicitly turned off;
//! the metrics port serves nothing but `/metrics`, `/healthz` and `/readyz`; ids are
//! validated before they reach Openlayer.
//!
//! The container's non-root user and read-only root filesystem are checked on the rendered
//! manifests and the Dockerfile by `scripts/check-deploy.sh`.

use super::probe::{Instance, wait_until};
use super::{Outcome, Scene, Size};
use crate::service::{Sessionizer, http_get, set};
use crate::{
    bootstrap, chat_trace, create_service_topics, now_ms, produce_trace, producer, read_topic,
};
use fakes::openlayer::Fault;
use std::collections::BTreeMap;
use std::time::Duration;

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("security");
    let num_traces = size.pick(6, 60);
    let api_key = format!("sk-live-DISTINCTIVE-{}", uuid::Uuid::new_v4().simple());
    let topics = create_service_topics("rel-security-", 3).await;
    let mut scene = Scene::with_topics(topics, &api_key).await;
    let server = &scene.server;
    set(&mut scene.env, "SESSIONIZER__LOG__FILTER", "trace");
    set(&mut scene.env, "SESSIONIZER__BATCH__MAX_ROWS", "2");
    // Every request refused as unauthorized, then failing: each failure is logged with
    // whatever context the service gives it.
    server.push_faults(Fault::Status(401), 10_000);

    let producer = producer();
    let base = now_ms();
    for turn in 1..=num_traces as i64 {
        let event = chat_trace("kim", "secret", turn, 3, base + turn * 1000);
        produce_trace(&producer, &scene.topics.traces, &event).await;
    }
    // An id over 200 characters: validated and dead-lettered, never sent to Openlayer.
    let mut long_id = chat_trace("kim", "secret", 0, 3, base);
    long_id.inference_id = Some("x".repeat(201));
    produce_trace(&producer, &scene.topics.traces, &long_id).await;

    let mut instance = Instance::start(&scene.env);
    let refused = wait_until(Duration::from_secs(90), async || {
        server.requests().len() >= 3
    })
    .await;
    outcome.check(refused, || "no refused requests".to_owned());
    let requests = server.requests();
    outcome.check(requests.iter().all(|request| request.status == 401), || {
        "a request was not refused".to_owned()
    });
    outcome.check(
        requests.iter().all(|request| {
            request
                .headers
                .get("authorization")
                .is_some_and(|value| value.as_bytes() == format!("Bearer {api_key}").as_bytes())
        }),
        || "the key is not sent where it belongs".to_owned(),
    );
    outcome.check(
        requests.iter().all(|request| {
            !request
                .rows
                .iter()
                .any(|row| row["inferenceId"].as_str().is_some_and(|id| id.len() > 200))
        }),
        || "an id over 200 characters reached Openlayer".to_owned(),
    );

    match instance.metrics().await {
        Some(metrics) => {
            outcome.check(
                metrics.contains("sessionizer_openlayer_requests_total{status=\"401\"}"),
                || "the refusals are not counted".to_owned(),
            );
            outcome.check(!metrics.contains(&api_key), || {
                "the key is in /metrics".to_owned()
            });
        }
        None => outcome.failures.push("/metrics does not answer".to_owned()),
    }
    for path in ["/", "/metrics/extra", "/health", "/debug", "/nope"] {
        let status = http_get(instance.http, path)
            .await
            .map(|(status, _)| status);
        outcome.check(status == Some(404), || {
            format!("{path} answered {status:?}")
        });
    }

    // The refused rows and the long id are dead letters, not losses.
    let letters = read_topic(
        &bootstrap(),
        &scene.topics.dead_letters,
        1,
        num_traces + 1,
        Duration::from_secs(60),
    );
    outcome.num_sent = num_traces + 1;
    outcome.num_dead_lettered = letters.len();
    outcome.num_lost = (num_traces + 1).saturating_sub(letters.len());
    outcome.check(outcome.num_lost == 0, || {
        format!(
            "{} dead letters for {} refused traces",
            letters.len(),
            num_traces + 1
        )
    });
    outcome.check(
        letters
            .iter()
            .any(|letter| letter.header("error.reason").as_deref() == Some("id_too_long")),
        || "the long id was not dead-lettered as id_too_long".to_owned(),
    );
    outcome.check(
        letters.iter().all(|letter| {
            letter
                .headers
                .iter()
                .all(|(_, value)| !value.contains(&api_key))
        }),
        || "the key is in a dead letter's headers".to_owned(),
    );
    outcome.observe_rss(instance.process.peak_rss_bytes());
    instance.process.stop().await;
    outcome.keep_logs(&instance.process);
    let logs = instance.process.output();
    outcome.check(logs.contains("401") && logs.contains("TRACE"), || {
        "the refusals were not logged at trace level".to_owned()
    });
    let leaks = logs.lines().filter(|line| line.contains(&api_key)).count();
    outcome.check(leaks == 0, || format!("the key is in {leaks} log lines"));

    check_config(&mut outcome, &scene.env, &api_key).await;
    outcome
}

/// `check-config`: the key redacted, TLS verification on by default and off only when asked,
/// and a key that cannot be used refused without being echoed.
async fn check_config(outcome: &mut Outcome, env: &BTreeMap<String, String>, api_key: &str) {
    let (code, stdout, output) = run_check_config(env).await;
    outcome.check(code == Some(0), || format!("check-config failed\n{output}"));
    outcome.check(!output.contains(api_key), || {
        "check-config printed the key".to_owned()
    });
    outcome.check(
        stdout
            .lines()
            .any(|line| line == "api_key = \"**redacted**\""),
        || "check-config does not say the key is redacted".to_owned(),
    );
    outcome.check(
        stdout.lines().any(|line| line == "verify_tls = true"),
        || "TLS verification is not on by default".to_owned(),
    );

    let mut insecure = env.clone();
    set(&mut insecure, "OPENLAYER_VERIFY_SSL", "false");
    let (code, stdout, output) = run_check_config(&insecure).await;
    outcome.check(
        code == Some(0) && stdout.lines().any(|line| line == "verify_tls = false"),
        || format!("OPENLAYER_VERIFY_SSL=false does not turn verification off\n{output}"),
    );

    // A key that cannot be a header value: refused at start, without repeating it.
    let unusable = format!("{api_key}\nsecond line");
    let mut broken = env.clone();
    set(&mut broken, "OPENLAYER_API_KEY", &unusable);
    for command in ["check-config", "run"] {
        let mut process = Sessionizer::spawn("unusable-key", &[command], &broken);
        let exit = process.wait_exit(Duration::from_secs(30)).await;
        let output = process.output();
        outcome.check(exit.is_some_and(|exit| exit.code() != Some(0)), || {
            format!("`{command}` accepted an API key with a line break\n{output}")
        });
        outcome.check(!output.contains(api_key), || {
            format!("`{command}` echoed the unusable key")
        });
    }
}

async fn run_check_config(env: &BTreeMap<String, String>) -> (Option<i32>, String, String) {
    let mut process = Sessionizer::spawn("check-config", &["check-config"], env);
    let exit = process.wait_exit(Duration::from_secs(30)).await;
    (
        exit.and_then(|exit| exit.code()),
        process.stdout(),
        process.output(),
    )
}
