//! Rows grouped per Openlayer pipeline into data-stream requests, flushed when a batch reaches
//! `max_rows` or `max_bytes`, or has waited `linger`. Each row carries its Kafka origin, so
//! an acknowledged batch says exactly which offsets are settled.

use crate::enrich::openlayer_config;
use crate::session_row::session_config;
use crate::sink::RowJson;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Room reserved for the request envelope and config around the rows.
const ENVELOPE_BYTES: usize = 1024;

/// Validated `[batch]`: when a batch is sent (what the [`Batcher`] reads), and how many
/// requests and unacknowledged rows the pipeline allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    /// Openlayer requests in flight at once, across all inference pipelines.
    pub max_in_flight_requests: usize,
    /// Above this many enriched but unacknowledged rows the partitions pause.
    pub max_unacked_rows: usize,
}

/// Where a row came from: settles `sequence` of `partition` once shipped or dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    /// The message's place among the partition's messages (`core::merge`).
    pub sequence: i64,
    /// Where the trace was first read from the traces topic, for dead-letter headers.
    pub read_at: Position,
    /// Kafka timestamp of the message, for the end-to-end delay metric.
    pub kafka_timestamp_ms: Option<i64>,
}

/// A partition and offset of the traces topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// One data-stream request's worth of rows for one pipeline.
#[derive(Debug)]
pub struct Batch {
    pub pipeline_id: String,
    pub kind: RowKind,
    pub config: Value,
    pub rows: Vec<RowJson>,
    pub origins: Vec<Origin>,
    pub bytes: usize,
}

/// What a row describes; rows of each kind are batched apart, as their `config` differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// A trace, with its session columns.
    Trace,
    /// A closed session (`session_row`).
    Session,
}

/// Open batches are per pipeline and kind of row.
type BatchKey = (String, RowKind);

#[derive(Debug)]
struct OpenBatch {
    rows: Vec<RowJson>,
    origins: Vec<Origin>,
    bytes: usize,
    input_names: BTreeSet<String>,
    has_user: bool,
    has_session: bool,
    opened_at: Instant,
}

impl OpenBatch {
    fn new(opened_at: Instant) -> Self {
        OpenBatch {
            rows: Vec::new(),
            origins: Vec::new(),
            bytes: ENVELOPE_BYTES,
            input_names: BTreeSet::new(),
            has_user: false,
            has_session: false,
            opened_at,
        }
    }

    fn seal(self, (pipeline_id, kind): BatchKey) -> Batch {
        Batch {
            config: match kind {
                RowKind::Trace => {
                    openlayer_config(&self.input_names, self.has_user, self.has_session)
                }
                RowKind::Session => session_config(self.has_user),
            },
            pipeline_id,
            kind,
            rows: self.rows,
            origins: self.origins,
            bytes: self.bytes,
        }
    }
}

/// A row on its way into a batch.
#[derive(Debug)]
pub struct RowToBatch<'a, I> {
    pub pipeline_id: &'a str,
    pub row: RowJson,
    pub origin: Origin,
    pub kind: RowKind,
    /// The trace's input names: the config's `inputVariableNames` is their union.
    pub input_names: I,
    pub has_user: bool,
    pub has_session: bool,
}

/// Open batches, one per pipeline.
#[derive(Debug)]
pub struct Batcher {
    settings: BatchSettings,
    open: HashMap<BatchKey, OpenBatch>,
    num_rows: usize,
}

impl Batcher {
    pub fn new(settings: BatchSettings) -> Self {
        Batcher {
            settings,
            open: HashMap::new(),
            num_rows: 0,
        }
    }

    /// Rows waiting in open batches.
    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    /// Adds a row; returns the batches it made ready (the one it would have overfilled, and
    /// its own when that reached a limit).
    pub fn add<'n, I: IntoIterator<Item = &'n String>>(
        &mut self,
        row: RowToBatch<'_, I>,
        now: Instant,
        ready: &mut Vec<Batch>,
    ) {
        let row_bytes = row.row.get().len() + 1;
        let key = (row.pipeline_id.to_owned(), row.kind);
        if let Some(open) = self.open.get(&key)
            && !open.rows.is_empty()
            && open.bytes + row_bytes > self.settings.max_bytes
        {
            ready.extend(self.take(&key));
        }
        let open = self
            .open
            .entry(key.clone())
            .or_insert_with(|| OpenBatch::new(now));
        for name in row.input_names {
            if !open.input_names.contains(name) {
                open.input_names.insert(name.clone());
            }
        }
        open.has_user |= row.has_user;
        open.has_session |= row.has_session;
        open.bytes += row_bytes;
        open.rows.push(row.row);
        open.origins.push(row.origin);
        self.num_rows += 1;
        if open.rows.len() >= self.settings.max_rows || open.bytes >= self.settings.max_bytes {
            ready.extend(self.take(&key));
        }
    }

    fn take(&mut self, key: &BatchKey) -> Option<Batch> {
        let (key, open) = self.open.remove_entry(key)?;
        self.num_rows -= open.rows.len();
        Some(open.seal(key))
    }

    /// Batches that waited `linger` or longer.
    pub fn flush_due(&mut self, now: Instant, ready: &mut Vec<Batch>) {
        let due: Vec<BatchKey> = self
            .open
            .iter()
            .filter(|(_, open)| {
                now.saturating_duration_since(open.opened_at) >= self.settings.linger
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            ready.extend(self.take(&key));
        }
    }

    /// Every open batch (shutdown).
    pub fn flush_all(&mut self, ready: &mut Vec<Batch>) {
        let keys: Vec<BatchKey> = self.open.keys().cloned().collect();
        for key in keys {
            ready.extend(self.take(&key));
        }
    }

    /// Drops rows of partitions this instance no longer owns: their new owner redoes them.
    pub fn forget_partitions(&mut self, revoked: &[i32]) {
        for open in self.open.values_mut() {
            let mut index = 0;
            while index < open.origins.len() {
                if revoked.contains(&open.origins[index].partition) {
                    open.bytes -= open.rows[index].get().len() + 1;
                    open.origins.swap_remove(index);
                    open.rows.swap_remove(index);
                    self.num_rows -= 1;
                } else {
                    index += 1;
                }
            }
        }
        self.open.retain(|_, open| !open.rows.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BatchSettings {
        BatchSettings {
            max_rows: 3,
            max_bytes: 4096,
            linger: Duration::from_millis(500),
            max_in_flight_requests: 1,
            max_unacked_rows: 3,
        }
    }

    fn row(text: &str) -> RowJson {
        RowJson::try_from_text(format!("{{\"output\":\"{text}\"}}")).expect("json")
    }

    fn add(batcher: &mut Batcher, pipeline: &str, offset: i64, now: Instant) -> Vec<Batch> {
        let inputs = [format!("input_{}", offset % 2)];
        let mut ready = Vec::new();
        batcher.add(
            RowToBatch {
                pipeline_id: pipeline,
                row: row(&offset.to_string()),
                origin: Origin {
                    partition: (offset % 2) as i32,
                    sequence: offset,
                    read_at: Position {
                        partition: (offset % 2) as i32,
                        offset,
                    },
                    kafka_timestamp_ms: None,
                },
                kind: RowKind::Trace,
                input_names: inputs.iter(),
                has_user: true,
                has_session: offset > 0,
            },
            now,
            &mut ready,
        );
        ready
    }

    #[test]
    fn flushes_at_max_rows_per_pipeline() {
        let mut batcher = Batcher::new(settings());
        let now = Instant::now();
        assert!(add(&mut batcher, "a", 0, now).is_empty());
        assert!(add(&mut batcher, "b", 1, now).is_empty());
        assert!(add(&mut batcher, "a", 2, now).is_empty());
        let ready = add(&mut batcher, "a", 3, now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].pipeline_id, "a");
        let offsets: Vec<i64> = ready[0]
            .origins
            .iter()
            .map(|origin| origin.sequence)
            .collect();
        assert_eq!(offsets, [0, 2, 3]);
        assert_eq!(
            ready[0].config["inputVariableNames"],
            serde_json::json!(["input_0", "input_1"])
        );
        assert_eq!(ready[0].config["sessionIdColumnName"], "session_id");
        assert_eq!(batcher.num_rows(), 1);
    }

    #[test]
    fn flushes_before_a_row_would_pass_max_bytes() {
        let mut batcher = Batcher::new(BatchSettings {
            max_bytes: ENVELOPE_BYTES + 20,
            linger: Duration::from_secs(1),
            ..settings()
        });
        let now = Instant::now();
        assert!(add(&mut batcher, "a", 10, now).is_empty());
        let ready = add(&mut batcher, "a", 11, now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].rows.len(), 1);
        assert_eq!(batcher.num_rows(), 1);
    }

    #[test]
    fn flushes_lingering_batches() {
        let mut batcher = Batcher::new(settings());
        let start = Instant::now();
        add(&mut batcher, "a", 0, start);
        let mut ready = Vec::new();
        batcher.flush_due(start + Duration::from_millis(499), &mut ready);
        assert!(ready.is_empty());
        batcher.flush_due(start + Duration::from_millis(500), &mut ready);
        assert_eq!(ready.len(), 1);
        assert_eq!(batcher.num_rows(), 0);
    }

    #[test]
    fn forgets_rows_of_revoked_partitions() {
        let mut batcher = Batcher::new(settings());
        let now = Instant::now();
        add(&mut batcher, "a", 0, now);
        add(&mut batcher, "a", 1, now);
        batcher.forget_partitions(&[1]);
        let mut ready = Vec::new();
        batcher.flush_all(&mut ready);
        assert_eq!(ready.len(), 1);
        assert!(ready[0].origins.iter().all(|origin| origin.partition == 0));
        assert_eq!(batcher.num_rows(), 0);
    }
}
