//! Crash loop: while sessions stream in, the instance is SIGKILLed at random moments and
//! restarted each time. Every trace must be shipped at least once, with the turn number and
//! running totals of an uninterrupted run; duplicates stay within what was in flight. Sessions
//! end all through the feed: every one must get its summary and its session row, each with
//! the session's exact turn count, copies again within what was in flight.

use super::feed::{Feed, Plan};
use super::probe::{Instance, Rng, wait_until};
use super::{CloseEffects, Outcome, Scene, Size};
use crate::{bootstrap, read_all};
use serde_json::Value;
use std::collections::HashMap;
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
        end_sessions: true,
    };
    let mut scene = Scene::new("crash", 4).await;
    scene.with_session_rows();
    let mut rng = Rng::seeded();
    outcome.note(format!(
        "{} traces in {} sessions, {num_kills} SIGKILLs at random moments (RELIABILITY_SEED={})",
        plan.num_traces(),
        plan.num_sessions,
        rng.seed()
    ));
    let feed = Feed::start(&bootstrap(), &scene.topics.traces, plan.clone());

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

    let mut last = Instance::start(&scene.env);
    let timeout = size.pick(Duration::from_secs(180), Duration::from_secs(900));
    // Every session ends: its row and its summary come once its end event was applied, which
    // for a close a kill undid is when this instance replays it (an earlier life may have
    // shipped the row already).
    let all_closed = wait_until(timeout, async || {
        last.sample(&scene.server).await;
        session_rows(&scene).len() >= plan.num_sessions
            && summaries(&scene).len() >= plan.num_sessions
    })
    .await;
    outcome.check(all_closed, || "not every session closed in time".to_owned());
    scene.finish(&mut outcome, feed, last, timeout).await;
    check_closes(&scene, &plan, &mut outcome);
    outcome
}

/// Copies of each session's row, by session id.
fn session_rows(scene: &Scene) -> HashMap<String, Vec<Value>> {
    let pipeline = scene.sessions_pipeline.as_deref().unwrap_or_default();
    let mut rows: HashMap<String, Vec<Value>> = HashMap::new();
    for row in scene.server.rows_for(pipeline) {
        let session = row["session_id"].as_str().unwrap_or_default().to_owned();
        rows.entry(session).or_default().push(row);
    }
    rows
}

/// The turn count of each copy of each session's summary, by session id.
fn summaries(scene: &Scene) -> HashMap<String, Vec<i64>> {
    let mut summaries: HashMap<String, Vec<i64>> = HashMap::new();
    // Every copy: the sessions topic holds them all, duplicates too.
    let records = read_all(
        &bootstrap(),
        &scene.topics.sessions,
        1,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    for record in &records {
        let summary = trace_model::codec::avro::decode_session_summary(&record.payload)
            .expect("summaries decode");
        summaries
            .entry(summary.session_id)
            .or_default()
            .push(summary.num_turns);
    }
    summaries
}

/// Every session's summary and session row came, with the session's turn count, and copies
/// stay within what was in flight at the kills (a close redone after a crash).
fn check_closes(scene: &Scene, plan: &Plan, outcome: &mut Outcome) {
    let summaries = summaries(scene);
    let rows: HashMap<String, Vec<i64>> = session_rows(scene)
        .into_iter()
        .map(|(session, rows)| {
            let turns = rows.iter().map(|row| row["turns"].as_i64().unwrap_or(-1));
            (session, turns.collect())
        })
        .collect();
    for (name, by_session) in [("summaries", &summaries), ("session rows", &rows)] {
        let mut wrong = Vec::new();
        for (session, copies) in by_session {
            let want = session
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| plan.turns_of(n) as i64);
            if copies.iter().any(|turns| Some(*turns) != want) {
                wrong.push(format!("{session}: {copies:?}, want {want:?}"));
            }
        }
        outcome.check(wrong.is_empty(), || {
            format!(
                "{} sessions' {name} have the wrong turn count, e.g. {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(3)]
            )
        });
        let missing: Vec<String> = (0..plan.num_sessions)
            .map(|n| plan.session_id(n))
            .filter(|session| !by_session.contains_key(session))
            .collect();
        if !missing.is_empty() {
            let copies: Vec<String> = missing
                .iter()
                .take(8)
                .map(|session| {
                    format!(
                        "{session} ({} summaries, {} rows)",
                        summaries.get(session).map_or(0, Vec::len),
                        rows.get(session).map_or(0, Vec::len)
                    )
                })
                .collect();
            outcome.note(format!(
                "{name} missing for {} sessions, e.g. {copies:?}",
                missing.len(),
            ));
        }
        let known = plan.num_sessions - missing.len();
        outcome.take_close_effects(CloseEffects {
            name,
            num_sessions: plan.num_sessions,
            num_delivered: known,
            num_received: by_session.values().map(Vec::len).sum(),
            duplicate_bound: outcome.duplicate_bound,
        });
    }
}
