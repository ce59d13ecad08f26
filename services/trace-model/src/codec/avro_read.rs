//! Direct Avro binary reader for datums of the current `TraceEvent` schema, the sessionizer's
//! hot path (`benches/decode_row.rs` in the sessionizer: apache-avro's serde reader was a
//! third of decode plus row).
//!
//! It reads fields in schema order straight into the wire structs, as `avro_write` writes
//! them. It runs after the bounds check (`avro_scan`), which limits nesting and lengths, so
//! its recursion is bounded; it still checks every read and never panics. Records of earlier
//! schemas go through apache-avro's schema resolution instead. The tests compare it with
//! apache-avro's reader on records apache-avro wrote.

use super::avro::{WireStep, WireTraceEvent};
use std::collections::HashMap;

/// Why a datum could not be read (the bounds check lets few of these through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    Truncated,
    Malformed(&'static str),
}

struct Cursor<'a> {
    input: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], ReadError> {
        if len > self.input.len() {
            return Err(ReadError::Truncated);
        }
        let (taken, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(taken)
    }

    /// Zig-zag varint.
    fn long(&mut self) -> Result<i64, ReadError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let [byte] = *self.take(1)? else {
                return Err(ReadError::Truncated);
            };
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(ReadError::Malformed("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, ReadError> {
        i32::try_from(self.long()?).map_err(|_| ReadError::Malformed("int out of range"))
    }

    fn double(&mut self) -> Result<f64, ReadError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| ReadError::Truncated)?;
        Ok(f64::from_le_bytes(bytes))
    }

    fn length(&mut self) -> Result<usize, ReadError> {
        usize::try_from(self.long()?).map_err(|_| ReadError::Malformed("negative length"))
    }

    fn string(&mut self) -> Result<String, ReadError> {
        self.str().map(str::to_owned)
    }

    fn str(&mut self) -> Result<&'a str, ReadError> {
        let len = self.length()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| ReadError::Malformed("string is not valid utf-8"))
    }

    /// `["null", T]`: branch 0 is null, branch 1 the value.
    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, ReadError>,
    ) -> Result<Option<T>, ReadError> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(ReadError::Malformed("union branch out of range")),
        }
    }

    /// The item count of the next block of an array or map (0 at the end); a negative count
    /// is followed by the block's size in bytes, which is not needed here.
    fn block(&mut self) -> Result<usize, ReadError> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        usize::try_from(count.unsigned_abs())
            .map_err(|_| ReadError::Malformed("block count out of range"))
    }

    fn string_map(&mut self) -> Result<HashMap<String, String>, ReadError> {
        let mut map = HashMap::new();
        loop {
            let count = self.block()?;
            if count == 0 {
                return Ok(map);
            }
            // The count came from the datum: reserve no more than its bytes could hold.
            map.reserve(count.min(self.input.len()));
            for _ in 0..count {
                let key = self.string()?;
                let value = self.string()?;
                map.insert(key, value);
            }
        }
    }

    fn steps(&mut self) -> Result<Vec<WireStep>, ReadError> {
        let mut steps = Vec::new();
        loop {
            let count = self.block()?;
            if count == 0 {
                return Ok(steps);
            }
            steps.reserve(count.min(self.input.len()));
            for _ in 0..count {
                steps.push(self.step()?);
            }
        }
    }

    fn step(&mut self) -> Result<WireStep, ReadError> {
        Ok(WireStep {
            id: self.string()?,
            name: self.string()?,
            step_type: self.string()?,
            inputs: self.string_map()?,
            output: self.optional(Self::string)?,
            start_time_ms: self.long()?,
            end_time_ms: self.long()?,
            latency_ms: self.double()?,
            tokens: self.optional(Self::long)?,
            prompt_tokens: self.optional(Self::long)?,
            completion_tokens: self.optional(Self::long)?,
            cost: self.optional(Self::double)?,
            model: self.optional(Self::string)?,
            metadata: self.string_map()?,
            steps: self.steps()?,
            documents: self.optional(Self::string)?,
            provider: self.optional(Self::string)?,
            model_parameters: self.optional(Self::string)?,
            raw_output: self.optional(Self::string)?,
        })
    }

    fn trace(&mut self) -> Result<WireTraceEvent, ReadError> {
        Ok(WireTraceEvent {
            schema_version: self.int()?,
            inference_id: self.optional(Self::string)?,
            pipeline_id: self.optional(Self::string)?,
            user_id: self.optional(Self::string)?,
            session_id: self.optional(Self::string)?,
            kind: self.string()?,
            timestamp_ms: self.long()?,
            name: self.string()?,
            inputs: self.string_map()?,
            output: self.optional(Self::string)?,
            latency_ms: self.optional(Self::double)?,
            tokens: self.optional(Self::long)?,
            prompt_tokens: self.optional(Self::long)?,
            completion_tokens: self.optional(Self::long)?,
            cost: self.optional(Self::double)?,
            model: self.optional(Self::string)?,
            metadata: self.string_map()?,
            steps: self.steps()?,
            row: self.optional(Self::string)?,
            row_config: self.optional(Self::string)?,
        })
    }
}

/// The fields of a datum of the current schema up to its timestamp, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireHead<'a> {
    pub(crate) pipeline_id: Option<&'a str>,
    pub(crate) user_id: Option<&'a str>,
    pub(crate) session_id: Option<&'a str>,
    pub(crate) kind: &'a str,
    pub(crate) timestamp_ms: i64,
}

/// Reads the leading fields of a datum of the current schema, and nothing after them.
pub(crate) fn read_head(datum: &[u8]) -> Result<WireHead<'_>, ReadError> {
    let mut cursor = Cursor { input: datum };
    cursor.int()?;
    cursor.optional(Cursor::str)?;
    Ok(WireHead {
        pipeline_id: cursor.optional(Cursor::str)?,
        user_id: cursor.optional(Cursor::str)?,
        session_id: cursor.optional(Cursor::str)?,
        kind: cursor.str()?,
        timestamp_ms: cursor.long()?,
    })
}

/// Reads a whole datum of the current schema; bytes after it are an error.
pub(crate) fn read_trace(datum: &[u8]) -> Result<WireTraceEvent, ReadError> {
    let mut cursor = Cursor { input: datum };
    let trace = cursor.trace()?;
    if !cursor.input.is_empty() {
        return Err(ReadError::Malformed("bytes after the datum"));
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro::trace_event_schema;
    use apache_avro::reader::datum::SpecificDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9 _-]{1,12}", any::<String>(),]
    }

    fn texts() -> impl Strategy<Value = HashMap<String, String>> {
        proptest::collection::hash_map(text(), text(), 0..4)
    }

    /// NaN aside (never equal to itself); both readers copy the bits alike.
    fn float() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("not NaN", |value| !value.is_nan())
    }

    fn number() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(0),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>(),
            0..1000i64
        ]
    }

    fn step() -> impl Strategy<Value = WireStep> {
        let leaf = (
            (
                text(),
                text(),
                text(),
                texts(),
                proptest::option::of(text()),
            ),
            (number(), number(), float(), proptest::option::of(number())),
            (
                proptest::option::of(number()),
                proptest::option::of(number()),
                proptest::option::of(float()),
                proptest::option::of(text()),
                texts(),
            ),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
        )
            .prop_map(
                |(
                    (id, name, step_type, inputs, output),
                    (start_time_ms, end_time_ms, latency_ms, tokens),
                    (prompt_tokens, completion_tokens, cost, model, metadata),
                    (documents, provider, model_parameters, raw_output),
                )| WireStep {
                    id,
                    name,
                    step_type,
                    inputs,
                    output,
                    start_time_ms,
                    end_time_ms,
                    latency_ms,
                    tokens,
                    prompt_tokens,
                    completion_tokens,
                    cost,
                    model,
                    metadata,
                    steps: Vec::new(),
                    documents,
                    provider,
                    model_parameters,
                    raw_output,
                },
            );
        leaf.prop_recursive(3, 12, 3, |inner| {
            (inner.clone(), proptest::collection::vec(inner, 0..3)).prop_map(|(mut step, steps)| {
                step.steps = steps;
                step
            })
        })
    }

    fn trace() -> impl Strategy<Value = WireTraceEvent> {
        (
            (
                any::<i32>(),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                text(),
                number(),
            ),
            (
                text(),
                texts(),
                proptest::option::of(text()),
                proptest::option::of(float()),
                proptest::option::of(number()),
                proptest::option::of(number()),
                proptest::option::of(number()),
            ),
            (
                proptest::option::of(float()),
                proptest::option::of(text()),
                texts(),
                proptest::collection::vec(step(), 0..4),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
        )
            .prop_map(
                |(
                    (
                        schema_version,
                        inference_id,
                        pipeline_id,
                        user_id,
                        session_id,
                        kind,
                        timestamp_ms,
                    ),
                    (name, inputs, output, latency_ms, tokens, prompt_tokens, completion_tokens),
                    (cost, model, metadata, steps, row, row_config),
                )| WireTraceEvent {
                    schema_version,
                    inference_id,
                    pipeline_id,
                    user_id,
                    session_id,
                    kind,
                    timestamp_ms,
                    name,
                    inputs,
                    output,
                    latency_ms,
                    tokens,
                    prompt_tokens,
                    completion_tokens,
                    cost,
                    model,
                    metadata,
                    steps,
                    row,
                    row_config,
                },
            )
    }

    /// The datum apache-avro writes for `wire` with the current schema.
    fn written_by_apache_avro(wire: &WireTraceEvent) -> Vec<u8> {
        let writer = GenericDatumWriter::builder(trace_event_schema())
            .build()
            .expect("a writer");
        let mut datum = Vec::new();
        writer.write_ser(&mut datum, wire).expect("writes");
        datum
    }

    proptest! {
        /// Records apache-avro writes with the current schema read the same through both.
        #[test]
        fn reads_what_apache_avro_writes_as_apache_avro_reads_it(wire in trace()) {
            let datum = written_by_apache_avro(&wire);
            let ours = read_trace(&datum).expect("reads");
            let reader: SpecificDatumReader<WireTraceEvent> =
                SpecificDatumReader::builder().build().expect("reader");
            let theirs = reader.read(&mut &datum[..]).expect("apache-avro reads");
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(ours, wire);
        }

        /// Any prefix of a datum is refused, never read as something else.
        #[test]
        fn a_cut_datum_is_refused(wire in trace(), cut in any::<proptest::sample::Index>()) {
            let datum = written_by_apache_avro(&wire);
            let cut = cut.index(datum.len());
            prop_assert!(read_trace(&datum[..cut]).is_err());
        }
    }

    #[test]
    fn negative_block_counts_with_sizes_are_read() {
        // A map of one entry written as a block of -1 items and its size, as Java's
        // blocking encoder writes it, then the end block.
        let mut cursor = Cursor {
            input: &[0x01, 0x08, 0x02, b'k', 0x02, b'v', 0x00],
        };
        let map = cursor.string_map().expect("reads");
        assert_eq!(map.get("k").map(String::as_str), Some("v"));
        assert!(cursor.input.is_empty());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(read_trace(&[]), Err(ReadError::Truncated));
        let mut cursor = Cursor { input: &[0x04] };
        assert_eq!(
            cursor.optional(Cursor::long),
            Err(ReadError::Malformed("union branch out of range"))
        );
        let mut cursor = Cursor { input: &[0xff; 11] };
        assert!(matches!(cursor.long(), Err(ReadError::Malformed(_))));
        let mut cursor = Cursor {
            input: &[0x04, 0xff, 0xfe],
        };
        assert!(matches!(cursor.string(), Err(ReadError::Malformed(_))));
    }
}
