use super::*;

const MINUTE: i64 = 60_000;

fn settings() -> WindowSettings {
    WindowSettings {
        gap: Duration::from_secs(30 * 60),
        max_duration: Duration::from_secs(2 * 60 * 60),
        grace: Duration::from_secs(5 * 60),
        infer_user_sessions: false,
        user_gap: Duration::from_secs(10 * 60),
    }
}

fn trace(id: &str, user: Option<&str>, session: Option<&str>, at_ms: i64) -> TraceEvent {
    let mut event = TraceEvent::new("chat", at_ms);
    event.inference_id = Some(id.to_owned());
    event.user_id = user.map(str::to_owned);
    event.session_id = session.map(str::to_owned);
    event.tokens = Some(10);
    event.cost = Some(0.5);
    event
}

fn turn(placement: Placement) -> Turn {
    match placement {
        Placement::Turn(turn) => turn,
        other => panic!("expected a turn, got {other:?}"),
    }
}

fn add(windows: &mut PartitionWindows, event: &TraceEvent) -> (Placement, Vec<ClosedSession>) {
    let mut closed = Vec::new();
    let placement = windows.add(event, "pipe", event.timestamp_ms, &mut closed);
    (placement, closed)
}

#[test]
fn numbers_turns_and_keeps_running_totals() {
    let mut windows = PartitionWindows::new(settings());
    let first = turn(add(&mut windows, &trace("a", Some("u"), Some("s"), 0)).0);
    assert_eq!(
        (
            first.turn,
            first.since_previous_ms,
            first.previous_inference_id
        ),
        (1, None, None)
    );
    let second = turn(add(&mut windows, &trace("b", Some("u"), Some("s"), 2 * MINUTE)).0);
    assert_eq!(second.turn, 2);
    assert_eq!(second.since_start_ms, 2 * MINUTE);
    assert_eq!(second.since_previous_ms, Some(2 * MINUTE));
    assert_eq!(second.previous_inference_id.as_deref(), Some("a"));
    assert_eq!(second.tokens_so_far, 20);
    assert!((second.cost_so_far - 1.0).abs() < 1e-12);
    assert_eq!(windows.num_open(), 1);
}

#[test]
fn a_copy_of_a_recent_turn_is_no_new_turn() {
    use crate::sessionize::recent::RECENT_TURNS;
    let mut windows = PartitionWindows::new(settings());
    add(&mut windows, &trace("a", Some("u"), Some("s"), 0));
    add(&mut windows, &trace("b", Some("u"), Some("s"), MINUTE));
    let (copy, closed) = add(&mut windows, &trace("a", Some("u"), Some("s"), 0));
    assert_eq!((copy, closed.len()), (Placement::Duplicate, 0));
    // Another session's turn with the same id is its own.
    assert_eq!(
        turn(add(&mut windows, &trace("a", Some("u"), Some("other"), MINUTE)).0).turn,
        1
    );
    // Traces without an id are never copies.
    let mut anonymous = trace("", Some("u"), Some("s"), 2 * MINUTE);
    anonymous.inference_id = None;
    assert_eq!(turn(add(&mut windows, &anonymous).0).turn, 3);
    assert_eq!(turn(add(&mut windows, &anonymous).0).turn, 4);
    // Only the latest turns are remembered.
    for index in 0..RECENT_TURNS {
        add(
            &mut windows,
            &trace(&format!("n{index}"), Some("u"), Some("s"), 3 * MINUTE),
        );
    }
    let forgotten = turn(add(&mut windows, &trace("b", Some("u"), Some("s"), 3 * MINUTE)).0);
    assert_eq!(forgotten.turn, 5 + RECENT_TURNS as i64);
    let state = windows.session(&forgotten.key).expect("open");
    assert_eq!(state.turns, forgotten.turn, "the copy counted nowhere");
}

#[test]
fn a_trace_after_the_gap_starts_a_new_window_of_the_same_session() {
    let mut windows = PartitionWindows::new(settings());
    add(&mut windows, &trace("a", Some("u"), Some("s"), 0));
    let (placement, closed) = add(&mut windows, &trace("b", Some("u"), Some("s"), 31 * MINUTE));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].reason, CloseReason::Gap);
    assert_eq!(closed[0].state.turns, 1);
    let reopened = turn(placement);
    assert_eq!((reopened.turn, reopened.segment), (1, 0));
}

#[test]
fn a_tick_between_two_traces_does_not_change_where_the_second_goes() {
    // Session `s` last at 0; the partition's event time passes its gap (31 min, another
    // session), but not its watermark (26 min, grace 5); then a trace of `s` within grace
    // and within the gap of its own last trace. With or without a tick in between, it is
    // the session's second turn.
    let traces = [
        trace("a", Some("u"), Some("s"), 0),
        trace("b", Some("v"), Some("t"), 31 * MINUTE),
        trace("c", Some("u"), Some("s"), 29 * MINUTE),
    ];
    let mut with_tick = PartitionWindows::new(settings());
    let mut without_tick = PartitionWindows::new(settings());
    for (index, event) in traces.iter().enumerate() {
        if index == 2 {
            let mut closed = Vec::new();
            with_tick.expire(event.timestamp_ms, &mut closed);
            assert!(closed.is_empty(), "a trace of `s` may still come");
        }
        let ticked = turn(add(&mut with_tick, event).0);
        let straight = turn(add(&mut without_tick, event).0);
        assert_eq!(
            (ticked.turn, ticked.segment),
            (straight.turn, straight.segment)
        );
        if index == 2 {
            assert_eq!(ticked.turn, 2);
        }
    }
    assert_eq!(with_tick.num_open(), without_tick.num_open());
}

/// A copy is placed alike with or without a tick before it (a replay runs none): past
/// grace it ships marked late, whether or not a tick closed its session meanwhile.
#[test]
fn a_tick_does_not_change_how_a_copy_is_placed() {
    for (copy_at, later_at) in [(0, 40 * MINUTE), (20 * MINUTE, 51 * MINUTE)] {
        let traces = [
            trace("a", Some("u"), Some("s"), copy_at),
            trace("b", Some("v"), Some("t"), later_at),
            trace("a", Some("u"), Some("s"), copy_at),
        ];
        let mut with_tick = PartitionWindows::new(settings());
        let mut without_tick = PartitionWindows::new(settings());
        let mut placements = Vec::new();
        for (index, event) in traces.iter().enumerate() {
            if index == 2 {
                with_tick.expire(event.timestamp_ms, &mut Vec::new());
            }
            let ticked = add(&mut with_tick, event).0;
            let straight = add(&mut without_tick, event).0;
            assert_eq!(
                std::mem::discriminant(&ticked),
                std::mem::discriminant(&straight),
                "{ticked:?} / {straight:?}"
            );
            placements.push(ticked);
        }
        assert_ne!(placements[2], Placement::Duplicate, "copy at {copy_at}");
    }
}

#[test]
fn max_duration_splits_into_segments() {
    let mut windows = PartitionWindows::new(settings());
    for minute in (0..=100).step_by(20) {
        add(
            &mut windows,
            &trace(&format!("t{minute}"), None, Some("s"), minute * MINUTE),
        );
    }
    let (placement, closed) = add(
        &mut windows,
        &trace("late-turn", None, Some("s"), 120 * MINUTE),
    );
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].reason, CloseReason::MaxDuration);
    assert_eq!(closed[0].state.turns, 6);
    let next = turn(placement);
    assert_eq!((next.turn, next.segment), (1, 1));
}

#[test]
fn session_end_closes_the_window_and_makes_no_row() {
    let mut windows = PartitionWindows::new(settings());
    add(&mut windows, &trace("a", Some("u"), Some("s"), 0));
    let mut end = trace("end", Some("u"), Some("s"), MINUTE);
    end.kind = TraceKind::SessionEnd;
    let (placement, _) = add(&mut windows, &end);
    match placement {
        Placement::End {
            closed: Some(closed),
        } => {
            assert_eq!(closed.reason, CloseReason::EndEvent);
            assert_eq!(closed.state.turns, 1);
        }
        other => panic!("expected a closed session, got {other:?}"),
    }
    assert_eq!(windows.num_open(), 0);
    let again = turn(add(&mut windows, &trace("b", Some("u"), Some("s"), 2 * MINUTE)).0);
    assert_eq!(again.turn, 1);
}

#[test]
fn traces_without_ids_pass_through() {
    let mut windows = PartitionWindows::new(settings());
    assert_eq!(
        add(&mut windows, &trace("a", None, None, 0)).0,
        Placement::Passthrough
    );
    assert_eq!(
        add(&mut windows, &trace("b", Some("u"), None, 0)).0,
        Placement::Passthrough
    );
}

#[test]
fn late_traces_within_grace_join_and_later_ones_are_marked() {
    let mut windows = PartitionWindows::new(settings());
    add(&mut windows, &trace("a", None, Some("s"), 10 * MINUTE));
    add(&mut windows, &trace("other", None, Some("t"), 20 * MINUTE));
    let joined = turn(add(&mut windows, &trace("b", None, Some("s"), 16 * MINUTE)).0);
    assert!(joined.late_within_grace);
    assert_eq!(joined.turn, 2);
    let (placement, _) = add(&mut windows, &trace("c", Some("u"), Some("s"), 14 * MINUTE));
    assert_eq!(
        placement,
        Placement::Late {
            session_id: Some("s".into()),
            user_id: Some("u".into())
        }
    );
    assert_eq!(
        windows
            .session(&SessionKey {
                pipeline_id: "pipe".into(),
                session_id: "s".into()
            })
            .map(|state| state.turns),
        Some(2)
    );
}

#[test]
fn quiet_partitions_close_sessions_by_wall_clock() {
    let mut windows = PartitionWindows::new(settings());
    let mut closed = Vec::new();
    windows.add(
        &trace("a", None, Some("s"), 0),
        "pipe",
        1_000_000,
        &mut closed,
    );
    windows.expire(1_000_000 + 29 * MINUTE, &mut closed);
    assert!(closed.is_empty());
    windows.expire(1_000_000 + 30 * MINUTE, &mut closed);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].reason, CloseReason::Idle);
}

#[test]
fn busy_partitions_close_stale_sessions_by_event_time() {
    let mut windows = PartitionWindows::new(settings());
    let mut closed = Vec::new();
    windows.add(&trace("a", None, Some("stale"), 0), "pipe", 0, &mut closed);
    // Event time 31 minutes: the watermark (26, grace 5) is not a gap past `stale` yet.
    windows.add(
        &trace("b", None, Some("busy"), 31 * MINUTE),
        "pipe",
        1,
        &mut closed,
    );
    windows.expire(2, &mut closed);
    assert!(closed.is_empty());
    windows.add(
        &trace("c", None, Some("busy"), 35 * MINUTE),
        "pipe",
        1,
        &mut closed,
    );
    windows.expire(2, &mut closed);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].key.session_id, "stale");
    assert_eq!(closed[0].reason, CloseReason::Gap);
}

#[test]
fn infers_deterministic_sessions_for_users_without_one() {
    let mut windows = PartitionWindows::new(WindowSettings {
        infer_user_sessions: true,
        ..settings()
    });
    let first = turn(add(&mut windows, &trace("a", Some("u"), None, 0)).0);
    let second = turn(add(&mut windows, &trace("b", Some("u"), None, MINUTE)).0);
    assert!(first.inferred);
    assert_eq!(first.key, second.key);
    assert_eq!(second.turn, 2);
    assert_eq!(first.key.session_id, inferred_session_id("u", 0));
    // After the user gap (10 minutes here) a new inferred session starts.
    let (placement, closed) = add(&mut windows, &trace("c", Some("u"), None, 12 * MINUTE));
    assert_eq!(closed.len(), 1);
    let third = turn(placement);
    assert_ne!(third.key, first.key);
    assert_eq!(third.turn, 1);
}

#[test]
fn pipelines_keep_separate_sessions() {
    let mut windows = PartitionWindows::new(settings());
    let mut closed = Vec::new();
    let event = trace("a", None, Some("s"), 0);
    turn(windows.add(&event, "one", 0, &mut closed));
    let other = turn(windows.add(&event, "two", 0, &mut closed));
    assert_eq!(other.turn, 1);
    assert_eq!(windows.num_open(), 2);
}
