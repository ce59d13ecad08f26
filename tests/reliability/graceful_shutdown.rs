//! Graceful shutdown: SIGTERM under load drains within the deadline and commits; after a
//! clean restart nothing is shipped twice.

use super::feed::{Feed, Plan};
use super::probe::{Instance, wait_until};
use super::{Outcome, Scene, Size};
use crate::bootstrap;
use std::time::{Duration, Instant};

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("graceful_shutdown");
    let num_stops = size.pick(2, 5);
    let plan = Plan {
        prefix: "sigterm".to_owned(),
        num_sessions: size.pick(100, 1000),
        num_turns: size.pick(20, 50),
        traces_per_sec: size.pick(150.0, 600.0),
        mixed: false,
        end_sessions: false,
    };
    let num_traces = plan.num_traces();
    outcome.note(format!(
        "{num_traces} traces; SIGTERM under load {num_stops} times, each followed by a restart"
    ));
    let scene = Scene::new("sigterm", 4).await;
    let feed = Feed::start(&bootstrap(), &scene.topics.traces, plan);
    let mut drains = Vec::new();
    for stop in 1..=num_stops {
        let mut instance = Instance::start(&scene.env);
        // Under load: stop once this instance has shipped its share of the stream.
        let target = num_traces * stop / (num_stops + 1);
        let reached = wait_until(Duration::from_secs(120), async || {
            scene.server.num_rows() >= target
        })
        .await;
        outcome.check(reached, || {
            format!("stop {stop}: only {} rows shipped", scene.server.num_rows())
        });
        outcome.observe_rss(instance.process.peak_rss_bytes());
        let sigterm_at = Instant::now();
        // Asserts a zero exit within the drain deadline plus a margin.
        instance.process.stop().await;
        outcome.keep_logs(&instance.process);
        drains.push(sigterm_at.elapsed().as_secs_f64());
        let output = instance.process.output();
        outcome.check(!output.contains("drain deadline passed"), || {
            format!("stop {stop}: the drain did not finish inside its deadline\n{output}")
        });
        outcome.num_restarts += 1;
    }
    outcome.note(format!(
        "exits after SIGTERM took {} s",
        drains
            .iter()
            .map(|secs| format!("{secs:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let last = Instance::start(&scene.env);
    // A clean stop leaves nothing in flight: the duplicate bound stays 0.
    let timeout = size.pick(Duration::from_secs(120), Duration::from_secs(600));
    scene.finish(&mut outcome, feed, last, timeout).await;
    outcome
}
