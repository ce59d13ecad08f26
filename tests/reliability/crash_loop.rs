//! Crash loop: while sessions stream in, the instance is SIGKILLed at random moments and
//! restarted each time. Every trace must be shipped at least once, with the turn number and
//! running totals of an uninterrupted run; duplicates stay within what was in flight.

use super::feed::{Feed, Plan};
use super::probe::{Instance, Rng, wait_until};
use super::{Outcome, Scene, Size};
use crate::bootstrap;
use std::time::{Duration, Instant};

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("crash_loop");
    let num_kills = size.pick(4, 20);
    let plan = Plan {
        prefix: "crash".to_owned(),
        num_sessions: size.pick(150, 5000),
        num_turns: size.pick(20, 40),
        traces_per_sec: size.pick(100.0, 1100.0),
        mixed: true,
    };
    let scene = Scene::new("crash", 4).await;
    let mut rng = Rng::seeded();
    outcome.note(format!(
        "{} traces in {} sessions, {num_kills} SIGKILLs at random moments (RELIABILITY_SEED={})",
        plan.num_traces(),
        plan.num_sessions,
        rng.seed()
    ));
    let feed = Feed::start(&bootstrap(), &scene.topics.traces, plan);

    let mut lifetimes = Vec::new();
    let mut num_mid_stream = 0;
    let mut num_repartitioned = 0.0;
    let mut num_forced = 0.0;
    for kill in 0..num_kills {
        // One kill in four comes early (during the group join or the state restore), the
        // others at a random moment after the instance became ready, mid-stream.
        let early = kill % 4 == 3;
        let mut instance = Instance::start(&scene.env);
        let rows_at_start = scene.server.num_rows();
        if !early {
            let server = &scene.server;
            let ready = wait_until(Duration::from_secs(60), async || {
                instance.sample(server).await;
                instance.readiness().await == Some(200)
            })
            .await;
            outcome.check(ready, || "an instance never became ready".to_owned());
        }
        let extra = if early {
            rng.between(Duration::from_millis(500), Duration::from_secs(3))
        } else {
            // Mid-stream means after the first rows of this life reached Openlayer: how long a
            // restore and the first batch take depends on the machine's load, so a delay
            // counted from readiness alone often killed instances that had not shipped yet.
            let server = &scene.server;
            // Once the feed is over and committed a life may have nothing to ship: the wait is
            // bounded, and the count of kills mid-stream below judges the run.
            let _shipped = wait_until(Duration::from_secs(20), async || {
                instance.sample(server).await;
                server.num_rows() > rows_at_start
            })
            .await;
            rng.between(Duration::from_millis(0), Duration::from_secs(2))
        };
        let until = Instant::now() + extra;
        while Instant::now() < until {
            instance.sample(&scene.server).await;
            outcome.observe_rss(instance.process.peak_rss_bytes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outcome.check(instance.process.still_running(), || {
            format!(
                "an instance exited on its own before its kill\n{}",
                instance.process.output()
            )
        });
        num_repartitioned += instance.repartitioned();
        num_forced += instance.alignment_forced();
        instance.process.kill();
        outcome.keep_logs(&instance.process);
        // A request the dead instance had fully sent may still be answered and recorded.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rows_now = scene.server.num_rows();
        if rows_now > rows_at_start {
            num_mid_stream += 1;
        }
        outcome.duplicate_bound += instance.rows_in_flight(rows_now, scene.checkpoint_interval);
        outcome.num_restarts += 1;
        lifetimes.push(instance.started.elapsed().as_secs_f64());
    }
    outcome.note(format!(
        "kills after {} s of life; {num_mid_stream} of them while the instance was shipping",
        lifetimes
            .iter()
            .map(|secs| format!("{secs:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // The feed's partitioner (CRC32) mostly disagrees with the sessions' partitions: the
    // kills come while traces go through the repartition topic.
    outcome.note(format!(
        "{num_repartitioned:.0} traces forwarded through the repartition topic by the killed instances, \
         {num_forced:.0} applied before their partition's inputs caught up"
    ));
    outcome.check(num_repartitioned > 0.0, || {
        "no trace went through the repartition topic before a kill".to_owned()
    });
    let num_late = num_kills - num_kills / 4;
    outcome.check(num_mid_stream * 2 >= num_late, || {
        format!("only {num_mid_stream} of {num_late} kills after readiness came while shipping")
    });

    let last = Instance::start(&scene.env);
    let timeout = size.pick(Duration::from_secs(180), Duration::from_secs(900));
    scene.finish(&mut outcome, feed, last, timeout).await;
    outcome
}
