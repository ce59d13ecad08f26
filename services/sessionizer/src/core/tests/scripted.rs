//! Scripted worlds: a few steps each, checking when a message and the effects of the
//! session closes it causes let its offset be stored.

use super::*;

#[test]
fn a_session_end_closes_its_session_and_settles_with_the_effects_of_the_close() {
    let logs = build_logs(&[
        vec![
            Spec::Trace {
                session: 0,
                advance_ms: 0,
                tokens: 5,
                named: true,
            },
            Spec::End { session: 0 },
        ],
        vec![],
    ]);
    let mut world = World::new(false, logs);
    world.step(&Op::Deliver(0));
    world.step(&Op::Deliver(0));
    assert_eq!(
        world.core.num_unsettled(),
        2,
        "the trace waits for its row, the end for the session row, summary and final turn"
    );
    world.step(&Op::Tick(150));
    assert_eq!(world.ships.len(), 2);
    for _ in 0..2 {
        world.step(&Op::Ack {
            pick: 0,
            reject_one: false,
        });
    }
    assert_eq!(
        world.stored.get(&0),
        Some(&1),
        "the summary is not delivered"
    );
    world.step(&Op::SummaryDone {
        pick: 0,
        delivered: true,
    });
    assert_eq!(
        world.stored.get(&0),
        Some(&1),
        "the final-turn update is not accepted"
    );
    world.step(&Op::Tick(1));
    assert_eq!(world.final_turn_updates.len(), 1, "its row is acknowledged");
    assert_eq!(world.final_turn_updates[0].inference_id, "p0-0");
    world.step(&Op::UpdateDone {
        pick: 0,
        accepted: true,
    });
    assert_eq!(world.stored.get(&0), Some(&2));
    let key = SessionKey {
        pipeline_id: "pipe".into(),
        session_id: "s0-0".to_owned(),
    };
    let owned = world.core.owned.get(&0).expect("partition 0 is owned");
    assert!(
        owned.windows.session(&key).is_none(),
        "the session is closed"
    );
}

#[test]
fn with_a_changelog_offsets_wait_for_the_checkpoint() {
    let logs = build_logs(&[
        vec![Spec::Trace {
            session: 1,
            advance_ms: 0,
            tokens: 5,
            named: true,
        }],
        vec![],
    ]);
    let mut world = World::new(true, logs);
    world.step(&Op::RestoreDone(0));
    world.step(&Op::RestoreDone(0));
    world.step(&Op::Deliver(0));
    world.step(&Op::Tick(150));
    world.step(&Op::Ack {
        pick: 0,
        reject_one: false,
    });
    assert_eq!(
        world.stored.get(&0),
        None,
        "acknowledged, not yet checkpointed"
    );
    world.step(&Op::Tick(100));
    assert_eq!(world.checkpoints.len(), 1);
    world.step(&Op::CheckpointDone {
        pick: 0,
        delivered: true,
    });
    assert_eq!(world.stored.get(&0), Some(&1));
}

#[test]
fn a_closing_message_settles_once_its_session_row_summary_and_final_turn_update_are_done() {
    let logs = build_logs(&[
        vec![
            Spec::Trace {
                session: 0,
                advance_ms: 0,
                tokens: 5,
                named: true,
            },
            // A gap later: closes the first window, opens the next segment.
            Spec::Trace {
                session: 0,
                advance_ms: GAP_MS + 1,
                tokens: 7,
                named: true,
            },
        ],
        vec![],
    ]);
    let mut world = World::new(false, logs);
    world.step(&Op::Deliver(0));
    world.step(&Op::Tick(150));
    world.step(&Op::Ack {
        pick: 0,
        reject_one: false,
    });
    assert_eq!(world.stored.get(&0), Some(&1));
    world.step(&Op::Deliver(0));
    world.step(&Op::Tick(150));
    let kinds: Vec<RowKind> = world.ships.iter().map(|batch| batch.kind).collect();
    assert_eq!(kinds.len(), 2, "the session row and the new trace's row");
    let session_batch = kinds
        .iter()
        .position(|kind| *kind == RowKind::Session)
        .expect("a session row");
    assert_eq!(world.ships[session_batch].pipeline_id, "sessions");
    let row: Value =
        serde_json::from_str(world.ships[session_batch].rows[0].get()).expect("a JSON row");
    assert!(
        row["inferenceId"]
            .as_str()
            .is_some_and(|id| id.starts_with("pipe/s0-0@")),
        "{row}"
    );
    assert_eq!(row["turns"], 1);
    assert_eq!(row["tokens"], 5);
    assert_eq!(row["close_reason"], "gap");
    // The trace's own row first: its message still waits for the session row.
    let trace_batch = 1 - session_batch;
    world.step(&Op::Ack {
        pick: trace_batch as u8,
        reject_one: false,
    });
    assert_eq!(
        world.stored.get(&0),
        Some(&1),
        "the session row is not acknowledged"
    );
    world.step(&Op::Ack {
        pick: 0,
        reject_one: false,
    });
    assert_eq!(
        world.stored.get(&0),
        Some(&1),
        "the summary is not delivered"
    );
    world.step(&Op::SummaryDone {
        pick: 0,
        delivered: false,
    });
    assert_eq!(
        world.stored.get(&0),
        Some(&1),
        "an undelivered summary keeps the close uncommitted"
    );
    assert!(world.summaries.is_empty());
    world.step(&Op::Tick(1_000));
    assert_eq!(world.summaries.len(), 1, "the summary is sent again");
    world.step(&Op::SummaryDone {
        pick: 0,
        delivered: true,
    });
    assert_eq!(world.final_turn_updates.len(), 1);
    // Refused (or failed through its retries): dead-lettered, which settles it.
    world.step(&Op::UpdateDone {
        pick: 0,
        accepted: false,
    });
    assert_eq!(world.stored.get(&0), Some(&1));
    assert_eq!(world.dead_letters.len(), 1);
    assert_eq!(world.dead_letters[0].reason, "final_turn_update_failed");
    world.step(&Op::DeadLetterDone {
        pick: 0,
        delivered: true,
    });
    assert_eq!(world.stored.get(&0), Some(&2));
}

#[test]
fn an_idle_close_holds_the_checkpoint_until_its_effects_are_done() {
    let logs = build_logs(&[
        vec![Spec::Trace {
            session: 0,
            advance_ms: 0,
            tokens: 5,
            named: true,
        }],
        vec![],
    ]);
    let mut world = World::new(true, logs);
    world.step(&Op::RestoreDone(0));
    world.step(&Op::RestoreDone(0));
    world.step(&Op::Deliver(0));
    world.step(&Op::Tick(150));
    world.step(&Op::Ack {
        pick: 0,
        reject_one: false,
    });
    world.step(&Op::Tick(100));
    world.step(&Op::CheckpointDone {
        pick: 0,
        delivered: true,
    });
    assert_eq!(world.stored.get(&0), Some(&1));
    let num_records = world.changelog_records.len();
    // A gap of wall clock without traces: the session closes idle.
    world.elapsed_ms += GAP_MS as u64;
    world.step(&Op::Tick(1));
    world.step(&Op::Tick(150));
    assert_eq!(world.ships.len(), 1, "the session row");
    assert_eq!(world.ships[0].kind, RowKind::Session);
    world.step(&Op::Tick(300));
    assert!(
        world.checkpoints.is_empty(),
        "no checkpoint records the close before its row is acknowledged"
    );
    world.step(&Op::Ack {
        pick: 0,
        reject_one: false,
    });
    world.step(&Op::Tick(300));
    assert!(
        world.checkpoints.is_empty(),
        "nor before its summary is delivered"
    );
    world.step(&Op::SummaryDone {
        pick: 0,
        delivered: true,
    });
    world.step(&Op::Tick(300));
    assert!(
        world.checkpoints.is_empty(),
        "nor before its final-turn update is accepted"
    );
    world.step(&Op::UpdateDone {
        pick: 0,
        accepted: true,
    });
    world.step(&Op::Tick(300));
    assert_eq!(world.checkpoints.len(), 1, "the close is checkpointed");
    world.step(&Op::CheckpointDone {
        pick: 0,
        delivered: true,
    });
    let restored = world.read_changelog(0);
    assert!(world.changelog_records.len() > num_records);
    assert!(
        restored
            .sessions
            .values()
            .all(|record| record.state.is_none()),
        "the session is closed in the changelog"
    );
}

#[test]
fn a_trace_naming_a_sessions_pipeline_is_dead_lettered() {
    let mut event = TraceEvent::new("turn", 1_700_000_000_000);
    event.session_id = Some("s".to_owned());
    event.pipeline_id = Some("sessions".to_owned());
    let logs = vec![vec![trace_model::codec::json::encode_trace(&event)], vec![]];
    let mut world = World::new(false, logs);
    world.step(&Op::Deliver(0));
    let reasons: Vec<&str> = world
        .dead_letters
        .iter()
        .map(|letter| letter.reason)
        .collect();
    assert_eq!(reasons, ["sessions_pipeline"]);
    assert!(world.ships.is_empty());
}
