//! Harness tests of the repartition path: properties checked on runs of the simulated world
//! of `core::repartition_world`, with operations proptest picks.
//!
//! Checked on every run:
//! - no stored offset of either stream passes a message not settled (a row not acknowledged
//!   nor dead-lettered, a forward not in the repartition topic);
//! - nothing is lost: in the end every trace has an acknowledged row or a dead letter;
//! - no pause is left that the core did not mean;
//! - with a changelog, when no alignment was forced: every acknowledged copy of a row (first
//!   delivery or replay) has the same session columns (turn, running totals, previous id);
//! - without a crash and with no alignment forced: each session's turns are numbered in
//!   event-time order.

use super::repartition_world::*;
use super::*;
use crate::enrich::SESSION_COLUMNS;
use proptest::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use trace_model::routing::partition_for;

/// Every trace has its row or its dead letter (only garbage for what it is); every traces
/// message is settled.
fn check_no_loss(world: &World) -> Result<(), TestCaseError> {
    for partition in world.partitions() {
        for (offset, (_, trace)) in world.traces[partition as usize].iter().enumerate() {
            let position = (partition, offset as i64);
            prop_assert!(
                matches!(trace, Trace::Garbage { .. }) || !world.undecodable.contains(&position),
                "trace {:?} at {:?} was dead-lettered as undecodable",
                trace,
                position
            );
            let done = match trace {
                Trace::Garbage { .. } => world.dead_lettered.contains(&position),
                Trace::Row { id, .. } => {
                    world.acknowledged.contains_key(id) || world.dead_lettered.contains(&position)
                }
            };
            prop_assert!(done, "trace {:?} at {:?} was lost", trace, position);
        }
    }
    Ok(())
}

fn session_columns(row: &Value) -> Vec<(&'static str, Value)> {
    SESSION_COLUMNS
        .iter()
        .map(|column| (*column, row.get(*column).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// Every acknowledged copy of a row has the same session columns.
fn check_replays_identical(world: &World) -> Result<(), TestCaseError> {
    for (id, copies) in &world.acknowledged {
        let first = session_columns(&copies[0].1);
        for (life, row) in &copies[1..] {
            prop_assert_eq!(
                &session_columns(row),
                &first,
                "row {} acknowledged again in life {} differs",
                id,
                life
            );
        }
    }
    Ok(())
}

/// The rows of each session (id and start) acknowledged in the first life are numbered in
/// event-time order.
fn check_turns_in_event_time_order(world: &World) -> Result<(), TestCaseError> {
    let mut by_id = BTreeMap::new();
    for log in &world.traces {
        for (_, trace) in log {
            if let Trace::Row {
                id, session, at_ms, ..
            } = trace
            {
                by_id.insert(id.clone(), (session.clone(), *at_ms));
            }
        }
    }
    // By session id and start: (event time, turn, inference id).
    type Turns = Vec<(i64, i64, String)>;
    let mut sessions: BTreeMap<(String, String), Turns> = BTreeMap::new();
    for (id, copies) in &world.acknowledged {
        let Some((_, row)) = copies.iter().find(|(life, _)| *life == 0) else {
            continue;
        };
        if row.get("close_reason").is_some() {
            // A session row (core::tests checks them).
            continue;
        }
        let (session, at_ms) = &by_id[id];
        let turn = row["session_turn"].as_i64();
        prop_assert!(turn.is_some(), "row {} has no turn: {}", id, row);
        // A gap longer than the session gap starts a new session of the same id.
        let started = row["session_started_at"].to_string();
        sessions
            .entry((session.clone(), started))
            .or_default()
            .push((*at_ms, turn.unwrap_or(0), id.clone()));
    }
    for (session, mut rows) in sessions {
        rows.sort();
        for pair in rows.windows(2) {
            prop_assert!(
                pair[0].1 < pair[1].1,
                "session {:?}: turns out of event-time order: {:?}",
                session,
                rows
            );
        }
    }
    Ok(())
}

fn check(
    changelog: bool,
    num_partitions: i32,
    specs: &[Spec],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let world = run_world(changelog, num_partitions, specs, ops);
    prop_assert!(world.stray_pause.is_none(), "{:?}", world.stray_pause);
    check_no_loss(&world)?;
    let unforced = world.forced() == 0.0;
    // Only without forced alignment: a forced release depends on when things arrived, which
    // a replay after a crash does not repeat (minimal case: two turns of one session in two
    // partitions, the first forced out after 5 s and numbered 1; after the crash the replay
    // applies the forward first and numbers it 2). Checkpoints that landed in part are
    // included: session records name the forwards their state holds (`rf`); before they did,
    // this harness found a forward applied twice after such a restore (its seed is kept).
    if changelog && unforced {
        check_replays_identical(&world)?;
    }
    let crashed = ops.iter().any(|op| matches!(op, Op::Crash { .. }));
    if unforced && !crashed {
        check_turns_in_event_time_order(&world)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mixed_sessions_with_a_changelog_lose_nothing_and_replay_exactly(
        num_partitions in 2..=3i32,
        specs in prop::collection::vec(spec(), 0..28),
        ops in prop::collection::vec(op(true), 0..160),
    ) {
        check(true, num_partitions, &specs, &ops)?;
    }

    /// More runs where properties 3 and 4 apply: no tick jumps past `align_max_wait`.
    #[test]
    fn mixed_sessions_with_a_changelog_and_no_long_pause_replay_exactly(
        num_partitions in 2..=3i32,
        specs in prop::collection::vec(spec(), 0..28),
        ops in prop::collection::vec(op(false), 0..160),
    ) {
        check(true, num_partitions, &specs, &ops)?;
    }

    #[test]
    fn mixed_sessions_without_a_changelog_lose_nothing(
        num_partitions in 2..=3i32,
        specs in prop::collection::vec(spec(), 0..28),
        ops in prop::collection::vec(op(true), 0..160),
    ) {
        check(false, num_partitions, &specs, &ops)?;
    }
}

/// Found by the harness above: after a restore, a forward redelivered from a committed offset
/// below the restored checkpoint (skipped as already applied) is read after traces of the
/// new life; while those are unsettled, `MergedLog::offsets_at` reports the replay's offset as
/// the smallest open one of the repartition stream, below the restored checkpoint's, and the
/// next checkpoint stores it: the stored offset goes back. Nothing unsettled is passed (the
/// messages between are all applied and checkpointed), so the properties above hold.
#[test]
fn a_replay_below_the_restored_checkpoint_does_not_move_the_stored_offset_back() {
    let session = (0..SESSIONS)
        .find(|session| partition_for(session_id(*session).as_bytes(), 2) == 0)
        .expect("a session of partition 0");
    let trace = |partition| Spec {
        session,
        partition,
        advance_ms: 1_000,
        garbage: false,
    };
    // A read in partition 1 and forwarded; B1 and B2 read in place, after a restart.
    let mut world = World::new(true, 2, &[trace(1), trace(0), trace(0)]);
    let ack = Op::Ack {
        pick: 0,
        reject_one: false,
    };
    let all_checkpoints_done = |world: &mut World| {
        while !world.checkpoints.is_empty() {
            world.step(&Op::CheckpointDone {
                pick: 0,
                delivered: true,
            });
        }
    };
    world.step(&Op::RestoreDone(0));
    world.step(&Op::RestoreDone(0));
    world.step(&Op::DeliverTraces(1));
    world.step(&Op::Produce);
    world.step(&Op::DeliverRepartition(0));
    world.step(&Op::Tick(6_000));
    world.step(&Op::Tick(200));
    world.step(&ack);
    all_checkpoints_done(&mut world);
    world.step(&Op::Tick(300));
    all_checkpoints_done(&mut world);
    assert_eq!(world.stored.get(&(Stream::Repartition, 0)), Some(&1));
    // Nothing committed: the forward is read again after the restart.
    world.crash(0);
    world.step(&Op::RestoreDone(0));
    world.step(&Op::RestoreDone(0));
    world.step(&Op::DeliverTraces(0));
    world.step(&Op::Tick(6_000));
    world.step(&Op::Tick(200));
    world.step(&Op::DeliverTraces(0));
    world.step(&Op::Tick(6_000));
    world.step(&Op::DeliverRepartition(0));
    all_checkpoints_done(&mut world);
    world.step(&ack);
    world.step(&Op::Tick(300));
    all_checkpoints_done(&mut world);
    let stored = world.stored.get(&(Stream::Repartition, 0)).copied();
    assert!(
        stored.is_none_or(|stored| stored >= 1),
        "the stored repartition offset went back below the restored checkpoint's: {stored:?}"
    );
}
