//! Openlayer outage and storm: the server answers 503 to everything for a while, then 429
//! with `Retry-After: 1` to every third request, then recovers. Memory stays bounded (the
//! partitions are paused), no request starts inside a `Retry-After` window, nothing is lost.

use super::feed::{Feed, Plan};
use super::probe::{Instance, sum, wait_until};
use super::{Outcome, Scene, Size};
use crate::bootstrap;
use crate::service::set;
use fakes::openlayer::Fault;
use std::time::{Duration, Instant};

/// Rows the instance may hold unacknowledged before it pauses its partitions.
const MAX_UNACKED_ROWS: usize = 400;
const MAX_ROWS: usize = 100;
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Two of the request timeouts `service_env` configures (10 s): when `/readyz` turns 503.
const SINK_FAILING_AFTER: Duration = Duration::from_secs(20);
/// Requests already on their way when a 429 was answered may arrive a little after it.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(250);

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("openlayer_outage");
    let outage = size.pick(Duration::from_secs(10), Duration::from_secs(120));
    let storm = size.pick(Duration::from_secs(8), Duration::from_secs(60));
    let traces_per_sec = size.pick(100.0, 200.0);
    let plan = Plan {
        prefix: "outage".to_owned(),
        num_sessions: size.pick(100, 1000),
        num_turns: size.pick(25, 40),
        traces_per_sec,
        mixed: false,
        end_sessions: false,
    };
    outcome.note(format!(
        "{} traces; 503 for {} s, then 429 Retry-After {} s on every third request for {} s",
        plan.num_traces(),
        outage.as_secs(),
        RETRY_AFTER.as_secs(),
        storm.as_secs()
    ));
    let mut scene = Scene::new("outage", 4).await;
    set(
        &mut scene.env,
        "SESSIONIZER__BATCH__MAX_UNACKED_ROWS",
        &MAX_UNACKED_ROWS.to_string(),
    );
    set(
        &mut scene.env,
        "SESSIONIZER__BATCH__MAX_ROWS",
        &MAX_ROWS.to_string(),
    );
    set(&mut scene.env, "SESSIONIZER__BATCH__LINGER_MS", "100");
    let feed = Feed::start(&bootstrap(), &scene.topics.traces, plan);
    let instance = Instance::start(&scene.env);
    let shipping = wait_until(Duration::from_secs(60), async || {
        scene.server.num_rows() > 0
    })
    .await;
    outcome.check(shipping, || "nothing shipped before the outage".to_owned());

    scene.server.set_responder(|_| Some(Fault::Status(503)));
    let rows_before_outage = scene.server.num_rows();
    let mut max_paused = 0.0_f64;
    let mut max_in_flight = 0.0_f64;
    let mut not_ready_seen = false;
    let outage_ends = Instant::now() + outage;
    while Instant::now() < outage_ends {
        if let Some(metrics) = instance.metrics().await {
            max_paused = max_paused.max(sum(&metrics, "sessionizer_partitions_paused"));
            max_in_flight = max_in_flight.max(sum(&metrics, "sessionizer_rows_in_flight"));
        }
        not_ready_seen |= instance.readiness().await == Some(503);
        outcome.observe_rss(instance.process.peak_rss_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome.check(scene.server.num_rows() == rows_before_outage, || {
        "rows were accepted during the outage".to_owned()
    });
    outcome.check(max_paused > 0.0, || {
        "no partition was paused while Openlayer was down".to_owned()
    });
    outcome.check(max_in_flight <= (MAX_UNACKED_ROWS + MAX_ROWS) as f64, || {
        format!("{max_in_flight} rows in flight, above the {MAX_UNACKED_ROWS}-row limit and one batch")
    });
    // The service calls the sink failing once a batch has retried for two request timeouts.
    if outage > SINK_FAILING_AFTER + Duration::from_secs(5) {
        outcome.check(not_ready_seen, || {
            format!("/readyz stayed 200 through a {} s outage", outage.as_secs())
        });
    }
    outcome.note(format!(
        "during the outage: up to {max_paused} partitions paused, {max_in_flight} rows in \
         flight; /readyz said 503 (due after {} s): {not_ready_seen}",
        SINK_FAILING_AFTER.as_secs()
    ));

    let storm_starts = Instant::now();
    scene.server.set_responder(|request| {
        (request.index % 3 == 0).then_some(Fault::RateLimitedSecs(RETRY_AFTER.as_secs()))
    });
    while storm_starts.elapsed() < storm {
        outcome.observe_rss(instance.process.peak_rss_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scene.server.set_responder(|_| None);
    let recovered_at = Instant::now();
    let rows_at_recovery = scene.server.num_rows();

    let timeout = size.pick(Duration::from_secs(120), Duration::from_secs(600));
    let shipped_at = scene.finish(&mut outcome, feed, instance, timeout).await;
    let drained_in = shipped_at.duration_since(recovered_at);
    let rows_since_recovery = scene.server.num_rows().saturating_sub(rows_at_recovery);
    outcome.note(format!(
        "after recovery: {rows_since_recovery} rows in {:.1} s ({:.0} rows/s, feed rate {:.0}/s)",
        drained_in.as_secs_f64(),
        rows_since_recovery as f64 / drained_in.as_secs_f64().max(0.001),
        traces_per_sec
    ));

    // Retry-After: after each 429, no request starts within the wait it named.
    let requests = scene.server.requests();
    let mut violations = Vec::new();
    let mut num_rate_limited = 0;
    for limited in requests.iter().filter(|request| request.status == 429) {
        num_rate_limited += 1;
        let window = limited.arrived + IN_FLIGHT_GRACE..limited.arrived + RETRY_AFTER;
        violations.extend(
            requests
                .iter()
                .filter(|request| window.contains(&request.arrived))
                .map(|request| request.arrived.duration_since(limited.arrived)),
        );
    }
    outcome.check(num_rate_limited > 0, || {
        "the storm rate-limited nothing".to_owned()
    });
    outcome.check(violations.is_empty(), || {
        format!(
            "{} requests started inside a Retry-After window, e.g. {:?} after the 429",
            violations.len(),
            violations.first()
        )
    });
    outcome.note(format!("{num_rate_limited} requests answered 429"));

    outcome
}
