//! The repartition path through the core: a trace read in another partition than its
//! session's is forwarded and settles when Kafka has the forward; the forward, read back in
//! its session's partition, becomes the row (with the id of where it was first read); a
//! forward read twice is applied once, also after a restore from the changelog.

use super::tests::settings;
use super::*;
use crate::batch::Position;
use crate::sessionize::store::RestoredPartition;
use crate::sink::ShipReport;
use trace_model::routing::partition_for;
use trace_model::{Limits, TraceEvent};

const PARTITIONS: i32 = 4;

fn now() -> Now {
    Now::system()
}

fn new_core(changelog: bool) -> (Core, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("metrics");
    let mut settings = settings(changelog);
    settings.repartition_partitions = Some(PARTITIONS);
    let core = Core::new(settings, Decoder::new(Limits::default()), metrics, now());
    (core, registry)
}

/// A session id whose partition is `partition`.
fn session_in(partition: i32) -> String {
    (0..)
        .map(|n| format!("session-{n}"))
        .find(|id| partition_for(id.as_bytes(), PARTITIONS) == partition)
        .expect("some id lands there")
}

fn trace(session: &str) -> Vec<u8> {
    trace_at(session, 1_700_000_000_000)
}

fn trace_at(session: &str, at_ms: i64) -> Vec<u8> {
    let mut event = TraceEvent::new("turn", at_ms);
    event.session_id = Some(session.to_owned());
    event.tokens = Some(5);
    trace_model::codec::json::encode_trace(&event)
}

fn received<'a>(
    stream: Stream,
    partition: i32,
    offset: i64,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    first_read: Option<Position>,
) -> Received<'a> {
    Received {
        stream,
        partition,
        offset,
        first_read,
        order_key_ms: None,
        marker: None,
        // Appended now: a marker read through now covers it.
        kafka_timestamp_ms: Some(now().wall_ms),
        key,
        payload,
        shared_payload: None,
    }
}

/// A marker from `from` read at `offset` of partition `partition` of the repartition topic.
fn read_marker(
    core: &mut Core,
    (partition, offset): (i32, i64),
    marker: Marker,
    out: &mut Vec<Effect>,
) {
    let mut message = received(Stream::Repartition, partition, offset, None, &[], None);
    message.marker = Some(marker);
    core.message(message, None, now(), out);
}

/// Read through what the test appends in the next minute.
fn caught_up_ms() -> Option<i64> {
    Some(now().wall_ms + 60_000)
}

/// Every input of `partition` is caught up for the next minute: its own (nothing left to
/// read) and every other partition's (a marker each, from repartition offset 100 on).
fn caught_up(core: &mut Core, partition: i32, out: &mut Vec<Effect>) {
    for (offset, from) in (100..).zip((0..PARTITIONS).filter(|from| *from != partition)) {
        let marker = Marker {
            from,
            bound_ms: None,
            read_through_ms: caught_up_ms(),
            epoch: None,
        };
        read_marker(core, (partition, offset), marker, out);
    }
    // Fetched since now, and found caught up long enough after.
    let high = |at_ms| HashMap::from([(partition, HighWatermark { offset: 0, at_ms })]);
    core.update_lag_gauges(&high(now().wall_ms), now());
    let at_ms = now().wall_ms + 60_000 + CAUGHT_UP_MARGIN_MS + FETCH_SETTLE_MS;
    core.update_lag_gauges(&high(at_ms), now());
    core.tick(now(), out);
}

/// The forward of `payload`, first read at offset 7 of partition 0, read at `offset` of
/// partition 2 of the repartition topic.
fn read_forward(
    core: &mut Core,
    offset: i64,
    session: &str,
    payload: &[u8],
    out: &mut Vec<Effect>,
) {
    let first_read = Some(Position {
        partition: 0,
        offset: 7,
    });
    let message = received(
        Stream::Repartition,
        2,
        offset,
        Some(session.as_bytes()),
        payload,
        first_read,
    );
    core.message(message, None, now(), out);
}

fn forwards(effects: &[Effect]) -> Vec<Forward> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Repartition(forward) => Some(forward.clone()),
            _ => None,
        })
        .collect()
}

fn stores(effects: &[Effect]) -> Vec<(Stream, i32, i64)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::StoreOffset {
                stream,
                partition,
                offset,
            } => Some((*stream, *partition, *offset)),
            _ => None,
        })
        .collect()
}

/// Flushes and acknowledges every batch; returns the rows' inference ids and turns.
fn ship_all(core: &mut Core, out: &mut Vec<Effect>) -> Vec<(String, i64)> {
    core.flush_all(out);
    let mut rows = Vec::new();
    for effect in std::mem::take(out) {
        if let Effect::Ship(batch) = effect {
            for row in &batch.rows {
                let row: serde_json::Value = serde_json::from_str(row.get()).expect("row json");
                rows.push((
                    row["inferenceId"].as_str().expect("id").to_owned(),
                    row["session_turn"].as_i64().expect("turn"),
                ));
            }
            core.shipped(batch, ShipReport::default(), now(), out);
        } else {
            out.push(effect);
        }
    }
    rows
}

fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    crate::metrics::sample_sum(registry, name, None)
}

#[test]
fn a_trace_in_another_partition_is_forwarded_and_settles_once_kafka_has_it() {
    let (mut core, registry) = new_core(false);
    let mut out = Vec::new();
    core.assigned(&[0, 1, 2, 3], &mut out);
    out.clear();
    let session = session_in(2);
    let payload = trace(&session);
    core.message(
        received(Stream::Traces, 0, 7, Some(b"any"), &payload, None),
        None,
        now(),
        &mut out,
    );
    let sent = forwards(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    let forward = &sent[0];
    assert_eq!(
        (forward.to_partition, forward.key.as_str(), forward.reason),
        (2, session.as_str(), "other_partition")
    );
    assert_eq!(
        forward.origin.read_at,
        Position {
            partition: 0,
            offset: 7
        }
    );
    assert_eq!(forward.payload, payload, "forwarded unchanged");
    assert!(
        stores(&out).is_empty(),
        "nothing stored before the forward lands"
    );
    out.clear();
    core.repartitioned(forward, true, &mut out);
    assert_eq!(stores(&out), [(Stream::Traces, 0, 8)]);
    assert_eq!(
        metric(&registry, "sessionizer_traces_repartitioned_total"),
        1.0
    );

    // Where it belongs, it is sessionized; keyless traces are routed too.
    out.clear();
    let here = trace(&session_in(1));
    core.message(
        received(Stream::Traces, 1, 0, None, &here, None),
        None,
        now(),
        &mut out,
    );
    assert!(forwards(&out).is_empty(), "already in its partition");
    let keyless = trace(&session_in(3));
    core.message(
        received(Stream::Traces, 1, 1, None, &keyless, None),
        None,
        now(),
        &mut out,
    );
    assert_eq!(
        forwards(&out).iter().map(|f| f.reason).collect::<Vec<_>>(),
        ["no_key"]
    );
}

#[test]
fn a_forward_becomes_one_row_with_the_id_of_where_it_was_first_read() {
    let (mut core, registry) = new_core(false);
    let mut out = Vec::new();
    core.assigned(&[2], &mut out);
    caught_up(&mut core, 2, &mut out);
    let session = session_in(2);
    let payload = trace(&session);
    read_forward(&mut core, 0, &session, &payload, &mut out);
    // Sent again by a sender that crashed before committing.
    read_forward(&mut core, 1, &session, &payload, &mut out);
    let rows = ship_all(&mut core, &mut out);
    assert_eq!(rows, [("traces-0-7".to_owned(), 1)]);
    assert_eq!(
        metric(&registry, "sessionizer_repartitioned_duplicates_total"),
        1.0
    );
    assert_eq!(
        metric(&registry, "sessionizer_events_consumed_total"),
        0.0,
        "forwards and markers are not new traces"
    );
    assert!(
        stores(&out).contains(&(Stream::Repartition, 2, 103)),
        "both and the markers settled: {out:?}"
    );
}

#[test]
fn the_duplicate_check_survives_a_restore_from_the_changelog() {
    let session = session_in(2);
    let payload = trace(&session);
    let (mut core, _) = new_core(true);
    let mut out = Vec::new();
    core.assigned(&[2], &mut out);
    core.restored(2, RestoredPartition::default(), &mut out);
    caught_up(&mut core, 2, &mut out);
    read_forward(&mut core, 0, &session, &payload, &mut out);
    assert_eq!(ship_all(&mut core, &mut out).len(), 1);
    out.clear();
    core.checkpoint(now(), &mut out);
    let mut restored = RestoredPartition::default();
    let mut written = None;
    for effect in &out {
        if let Effect::WriteCheckpoint { checkpoint, writes } = effect {
            for write in writes {
                restored
                    .apply(write.key().as_bytes(), &write.value())
                    .expect("record decodes");
            }
            written = Some(*checkpoint);
        }
    }
    let written = written.expect("a checkpoint");
    assert_eq!(written.offsets.repartition, Some(103));

    // A new process restores the partition and reads the forward sent again.
    let (mut core, registry) = new_core(true);
    let mut out = Vec::new();
    core.assigned(&[2], &mut out);
    core.restored(2, restored, &mut out);
    caught_up(&mut core, 2, &mut out);
    read_forward(&mut core, 200, &session, &payload, &mut out);
    assert!(ship_all(&mut core, &mut out).is_empty(), "applied once");
    assert_eq!(
        metric(&registry, "sessionizer_repartitioned_duplicates_total"),
        1.0
    );
}

#[test]
fn a_backlog_is_applied_in_event_time_order_across_the_inputs() {
    let (mut core, registry) = new_core(false);
    let mut out = Vec::new();
    core.assigned(&[2], &mut out);
    let session = session_in(2);
    let marker = |from, bound_ms, read_through_ms| Marker {
        from,
        bound_ms,
        read_through_ms,
        epoch: None,
    };
    let caught_up = caught_up_ms();
    read_marker(&mut core, (2, 0), marker(1, None, caught_up), &mut out);
    read_marker(&mut core, (2, 1), marker(3, None, caught_up), &mut out);
    // Partition 2 reads turns 2 and 4 in place before partition 0 has forwarded 1 and 3.
    for (offset, at_ms) in [(0, 2_000), (1, 4_000)] {
        let payload = trace_at(&session, at_ms);
        let message = received(Stream::Traces, 2, offset, None, &payload, None);
        core.message(message, None, now(), &mut out);
    }
    assert!(
        ship_all(&mut core, &mut out).is_empty(),
        "both wait for partition 0"
    );
    let forward_from_0 = |core: &mut Core, offset: i64, at_ms: i64, out: &mut Vec<Effect>| {
        let payload = trace_at(&session, at_ms);
        let mut message = received(
            Stream::Repartition,
            2,
            offset,
            None,
            &payload,
            Some(Position {
                partition: 0,
                offset: 10 + offset,
            }),
        );
        message.order_key_ms = Some(at_ms);
        core.message(message, None, now(), out);
    };
    forward_from_0(&mut core, 2, 1_000, &mut out);
    forward_from_0(&mut core, 3, 3_000, &mut out);
    let rows = ship_all(&mut core, &mut out);
    // Turn 4 waits: partition 0 may still forward something before it.
    assert_eq!(
        rows,
        [
            ("traces-0-12".to_owned(), 1),
            ("traces-2-0".to_owned(), 2),
            ("traces-0-13".to_owned(), 3)
        ]
    );
    assert!(
        stores(&out)
            .iter()
            .all(|(stream, _, offset)| *stream != Stream::Traces || *offset <= 1),
        "nothing stored past the held trace: {out:?}"
    );
    read_marker(&mut core, (2, 4), marker(0, Some(5_000), None), &mut out);
    assert_eq!(
        ship_all(&mut core, &mut out),
        [("traces-2-1".to_owned(), 4)]
    );
    assert_eq!(metric(&registry, "sessionizer_alignment_forced_total"), 0.0);
}

#[test]
fn a_marker_of_an_earlier_owner_does_not_cover_what_was_appended_since() {
    let (mut core, _) = new_core(false);
    let mut out = Vec::new();
    core.assigned(&[2], &mut out);
    let session = session_in(2);
    let payload = trace_at(&session, 2_000);
    core.message(
        received(Stream::Traces, 2, 0, None, &payload, None),
        None,
        now(),
        &mut out,
    );
    // Partition 0's owner read it through a minute ago, then left (a rebalance, a crash):
    // what was appended to 0 since may hold an earlier turn.
    let stale = Marker {
        from: 0,
        bound_ms: Some(1_000),
        read_through_ms: Some(now().wall_ms - 60_000),
        epoch: None,
    };
    read_marker(&mut core, (2, 0), stale, &mut out);
    for from in [1, 3] {
        let marker = Marker {
            from,
            bound_ms: None,
            read_through_ms: Some(now().wall_ms),
            epoch: None,
        };
        read_marker(&mut core, (2, from.into()), marker, &mut out);
    }
    assert!(
        ship_all(&mut core, &mut out).is_empty(),
        "partition 0 may still forward something before 2000"
    );
    let new_owner = Marker {
        from: 0,
        bound_ms: Some(1_000),
        read_through_ms: Some(now().wall_ms),
        epoch: None,
    };
    read_marker(&mut core, (2, 4), new_owner, &mut out);
    assert_eq!(ship_all(&mut core, &mut out).len(), 1);
}

#[test]
fn markers_come_every_50_ms_for_a_few_partitions_and_space_out_to_100_ms_for_many() {
    assert_eq!(marker_interval(3, 3), Duration::from_millis(50));
    assert_eq!(marker_interval(1, 1), Duration::from_millis(50));
    // 12 of 24 partitions: 288 records per round, 4,000 a second at 72 ms.
    assert_eq!(marker_interval(12, 24), Duration::from_millis(72));
    assert_eq!(marker_interval(12, 100), Duration::from_millis(100));
    assert_eq!(marker_interval(0, 0), Duration::from_millis(50));
}

fn traces_fetching(effects: &[Effect]) -> Vec<(bool, Vec<i32>)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::PauseTraces(partitions) => Some((false, partitions.clone())),
            Effect::ResumeTraces(partitions) => Some((true, partitions.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_partition_read_ahead_pauses_its_traces_until_the_others_catch_up() {
    let (mut core, registry) = new_core(false);
    let mut out = Vec::new();
    core.settings.align_max_buffered = 4;
    core.assigned(&[2], &mut out);
    let session = session_in(2);
    let caught_up = caught_up_ms();
    for (offset, from) in [(0, 1), (1, 3)] {
        let marker = Marker {
            from,
            bound_ms: None,
            read_through_ms: caught_up,
            epoch: None,
        };
        read_marker(&mut core, (2, offset), marker, &mut out);
    }
    // Partition 0 says nothing: everything read in place waits for it.
    for offset in 0..4 {
        let payload = trace_at(&session, 1_000 * (offset + 1));
        let message = received(Stream::Traces, 2, offset, None, &payload, None);
        core.message(message, None, now(), &mut out);
        let expected = if offset < 3 {
            vec![]
        } else {
            vec![(false, vec![2])]
        };
        assert_eq!(traces_fetching(&out), expected, "after offset {offset}");
    }
    assert_eq!(metric(&registry, "sessionizer_partitions_throttled"), 1.0);
    // Only the traces topic pauses: partition 0's marker still comes, and lets them go.
    out.clear();
    let marker = Marker {
        from: 0,
        bound_ms: None,
        read_through_ms: caught_up,
        epoch: None,
    };
    read_marker(&mut core, (2, 2), marker, &mut out);
    assert_eq!(traces_fetching(&out), [(true, vec![2])]);
    assert_eq!(ship_all(&mut core, &mut out).len(), 4);
    assert_eq!(metric(&registry, "sessionizer_partitions_throttled"), 0.0);
    assert_eq!(
        metric(&registry, "sessionizer_alignment_throttled_total"),
        1.0
    );
    assert_eq!(metric(&registry, "sessionizer_alignment_forced_total"), 0.0);
}

#[test]
fn a_partition_revoked_while_paused_for_alignment_is_resumed() {
    let (mut core, _) = new_core(false);
    let mut out = Vec::new();
    core.settings.align_max_buffered = 1;
    core.assigned(&[2], &mut out);
    let payload = trace_at(&session_in(2), 1_000);
    let message = received(Stream::Traces, 2, 0, None, &payload, None);
    core.message(message, None, now(), &mut out);
    assert_eq!(traces_fetching(&out), [(false, vec![2])]);
    out.clear();
    core.revoked(&[2], &mut out);
    // librdkafka would keep the pause for the partition's next assignment.
    assert_eq!(traces_fetching(&out), [(true, vec![2])]);
}

/// Partition `partition` reads, at `offset`, a trace of `session` that happened and was
/// appended at `at_ms`.
fn read_trace_at(
    core: &mut Core,
    (partition, offset): (i32, i64),
    session: &str,
    at_ms: i64,
    out: &mut Vec<Effect>,
) {
    let payload = trace_at(session, at_ms);
    let mut message = received(Stream::Traces, partition, offset, None, &payload, None);
    message.kafka_timestamp_ms = Some(at_ms);
    core.message(message, None, now(), out);
}

/// Partitions 0 and 2 owned here, 1 and 3 elsewhere and caught up; partition 2 has read a
/// trace of its session (turn 2), appended a second after the returned start.
fn owning_0_and_2_with_turn_2_read(core: &mut Core, out: &mut Vec<Effect>) -> i64 {
    core.assigned(&[0, 2], out);
    for (offset, from) in [(0, 1), (1, 3)] {
        let marker = Marker {
            from,
            bound_ms: None,
            read_through_ms: caught_up_ms(),
            epoch: None,
        };
        read_marker(core, (2, offset), marker, out);
    }
    let start = now().wall_ms;
    read_trace_at(core, (2, 0), &session_in(2), start + 1_000, out);
    start
}

#[test]
fn a_partition_follows_another_owned_here_once_it_read_its_marker_and_forwards() {
    let (mut core, registry) = new_core(false);
    let mut out = Vec::new();
    // Partition 2 reads turn 2 of its session; partition 0 reads turn 1, and forwards it.
    let start = owning_0_and_2_with_turn_2_read(&mut core, &mut out);
    read_trace_at(&mut core, (0, 0), &session_in(2), start + 500, &mut out);
    let forward = forwards(&out).pop().expect("turn 1 forwarded");
    core.tick(now(), &mut out);
    let marker_of_0 = out
        .iter()
        .find_map(|effect| match effect {
            Effect::Marker(marker) if marker.from == 0 => Some(*marker),
            _ => None,
        })
        .expect("partition 0 sends a marker");
    assert!(marker_of_0.epoch.is_some());
    read_marker(&mut core, (2, 2), marker_of_0, &mut out);
    // Partition 0 reads on, past turn 2's append time; turn 1 is still on its way.
    read_trace_at(&mut core, (0, 1), &session_in(0), start + 2_000, &mut out);
    assert!(
        ship_all(&mut core, &mut out).is_empty(),
        "turn 2 waits for the forward partition 0 sent"
    );
    let mut message = received(
        Stream::Repartition,
        2,
        3,
        Some(forward.key.as_bytes()),
        &forward.payload,
        Some(Position {
            partition: 0,
            offset: 0,
        }),
    );
    message.order_key_ms = Some(forward.order_key_ms);
    message.kafka_timestamp_ms = Some(start + 500);
    core.message(message, None, now(), &mut out);
    // No marker of partition 0 says it read past turn 2; its owner here knows.
    assert_eq!(
        ship_all(&mut core, &mut out),
        [("traces-0-0".to_owned(), 1), ("traces-2-0".to_owned(), 2)]
    );
    assert_eq!(metric(&registry, "sessionizer_alignment_forced_total"), 0.0);
}

#[test]
fn a_partition_owned_here_is_not_followed_before_its_marker_is_read() {
    let (mut core, _) = new_core(false);
    let mut out = Vec::new();
    let start = owning_0_and_2_with_turn_2_read(&mut core, &mut out);
    // An earlier owner of partition 0 may have forwarded something that partition 2 has not
    // read yet: only a marker of this ownership, read after it, rules that out.
    read_trace_at(&mut core, (0, 0), &session_in(0), start + 2_000, &mut out);
    assert!(ship_all(&mut core, &mut out).is_empty());
    let stale = Marker {
        from: 0,
        bound_ms: None,
        read_through_ms: None,
        epoch: Some(u64::MAX),
    };
    read_marker(&mut core, (2, 2), stale, &mut out);
    assert!(
        ship_all(&mut core, &mut out).is_empty(),
        "another ownership's"
    );
}

#[test]
fn a_partition_revoked_under_backpressure_is_resumed_for_its_next_assignment() {
    let (mut core, _) = new_core(false);
    let mut out = Vec::new();
    core.assigned(&[2], &mut out);
    caught_up(&mut core, 2, &mut out);
    let session = session_in(2);
    // More rows than `batch.max_unacked_rows` (8) unacknowledged: fetching pauses.
    for offset in 0..8 {
        let payload = trace(&session);
        let message = received(Stream::Traces, 2, offset, None, &payload, None);
        core.message(message, None, now(), &mut out);
    }
    core.tick(now(), &mut out);
    assert!(
        out.iter()
            .any(|effect| matches!(effect, Effect::Pause(partitions) if partitions == &[2])),
        "{out:?}"
    );
    out.clear();
    core.revoked(&[2], &mut out);
    // Without a changelog, nothing resumes it when it is assigned again.
    assert!(
        out.iter()
            .any(|effect| matches!(effect, Effect::Resume(partitions) if partitions == &[2])),
        "{out:?}"
    );
}

/// The reasons of the dead letters in `out`, in order.
fn dead_letter_reasons(out: &[Effect]) -> Vec<&'static str> {
    out.iter()
        .filter_map(|effect| match effect {
            Effect::DeadLetter(letter) => Some(letter.reason),
            _ => None,
        })
        .collect()
}

#[test]
fn dead_letters_keep_the_read_order_when_a_held_trace_fails_to_decode() {
    let (mut core, _) = new_core(false);
    let mut out = Vec::new();
    // Partition 2 owned here, the others elsewhere and silent: its traces wait.
    core.assigned(&[2], &mut out);
    out.clear();
    let mut event = TraceEvent::new("cut", 1_000);
    event.session_id = Some(session_in(2));
    let mut cut = trace_model::encode(&event, trace_model::Encoding::Avro).expect("encodes");
    cut.truncate(cut.len() - 3);
    let garbage = b"\x42not a trace".to_vec();
    for (offset, payload) in [(0, &cut), (1, &garbage)] {
        let mut message = received(Stream::Traces, 2, offset, None, payload, None);
        message.kafka_timestamp_ms = Some(1_000);
        core.message(message, None, now(), &mut out);
    }
    assert_eq!(dead_letter_reasons(&out), Vec::<&str>::new(), "both wait");
    // Past `align_max_wait`: what waits goes, in order.
    let start = now();
    let later = Now {
        instant: start.instant + Duration::from_secs(6),
        wall_ms: start.wall_ms + 6_000,
    };
    core.tick(later, &mut out);
    assert_eq!(dead_letter_reasons(&out), ["truncated", "unknown_framing"]);
}
