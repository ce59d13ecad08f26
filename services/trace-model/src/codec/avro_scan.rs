//! Bounds check of an Avro datum before the real decoder sees it.
//!
//! `Step` is recursive, and apache-avro decodes recursion on the call stack: a 1 MiB message
//! can nest tens of thousands of steps and overflow the stack, which aborts the process
//! instead of returning an error. Length prefixes can also claim far more bytes than the
//! message holds. This walk reads only lengths and union indexes, allocates nothing, and
//! refuses a datum that nests too deep, claims bytes it does not have, or asks for more
//! items than its size could encode.

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};
use std::collections::HashMap;

/// Why a datum failed the bounds check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    Truncated,
    TooDeep { limit: usize },
    Malformed(&'static str),
}

/// A writer schema prepared for scanning: named types resolved once.
#[derive(Debug, Clone)]
pub(crate) struct ScanPlan {
    root: Schema,
    names: HashMap<Name, Schema>,
}

impl ScanPlan {
    pub(crate) fn try_new(root: &Schema) -> Result<Self, apache_avro::Error> {
        let resolved = ResolvedSchema::try_from(root)?;
        let names = resolved
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        Ok(ScanPlan {
            root: root.clone(),
            names,
        })
    }

    /// Walks `datum` and returns how many bytes it occupies.
    pub(crate) fn scan(&self, datum: &[u8], max_record_depth: usize) -> Result<usize, ScanError> {
        let mut scanner = Scanner {
            input: datum,
            position: 0,
            // Every item costs at least one loop turn; a datum cannot honestly hold more
            // items than twice its length (zero-byte items aside), so this bounds the walk.
            budget: datum.len().saturating_mul(2).saturating_add(64),
            max_record_depth,
            names: &self.names,
        };
        scanner.walk(&self.root, 0)?;
        Ok(scanner.position)
    }
}

struct Scanner<'a> {
    input: &'a [u8],
    position: usize,
    budget: usize,
    max_record_depth: usize,
    names: &'a HashMap<Name, Schema>,
}

impl Scanner<'_> {
    fn take(&mut self, len: usize) -> Result<(), ScanError> {
        let end = self.position.checked_add(len).ok_or(ScanError::Truncated)?;
        if end > self.input.len() {
            return Err(ScanError::Truncated);
        }
        self.position = end;
        Ok(())
    }

    fn spend(&mut self) -> Result<(), ScanError> {
        self.budget = self
            .budget
            .checked_sub(1)
            .ok_or(ScanError::Malformed("more items than the message can hold"))?;
        Ok(())
    }

    /// Zig-zag varint as Avro writes int and long.
    fn long(&mut self) -> Result<i64, ScanError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.input.get(self.position).ok_or(ScanError::Truncated)?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                let signed = (value >> 1) as i64 ^ -((value & 1) as i64);
                return Ok(signed);
            }
        }
        Err(ScanError::Malformed("varint longer than 10 bytes"))
    }

    fn length(&mut self) -> Result<usize, ScanError> {
        let len = self.long()?;
        usize::try_from(len).map_err(|_| ScanError::Malformed("negative length"))
    }

    fn sized(&mut self) -> Result<(), ScanError> {
        let len = self.length()?;
        self.take(len)
    }

    /// Arrays and maps come in blocks: a count (negative: followed by a byte size), items,
    /// and a zero count at the end.
    fn blocks(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // Block byte size, only useful for skipping; read and ignore.
                self.long()?;
            }
            let num_items = count.unsigned_abs();
            for _ in 0..num_items {
                self.spend()?;
                item(self, depth)?;
            }
        }
    }

    fn walk(&mut self, schema: &Schema, depth: usize) -> Result<(), ScanError> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.take(1),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => self.long().map(drop),
            Schema::Float => self.take(4),
            Schema::Double => self.take(8),
            Schema::Bytes | Schema::String | Schema::BigDecimal => self.sized(),
            Schema::Fixed(fixed) | Schema::Duration(fixed) => self.take(fixed.size),
            Schema::Decimal(_) | Schema::Uuid(_) => Err(ScanError::Malformed(
                "logical types decimal and uuid are not used by trace schemas",
            )),
            Schema::Array(array) => {
                self.blocks(depth, |scanner, depth| scanner.walk(&array.items, depth))
            }
            Schema::Map(map) => self.blocks(depth, |scanner, depth| {
                scanner.sized()?;
                scanner.walk(&map.types, depth)
            }),
            Schema::Union(union) => {
                let index = usize::try_from(self.long()?)
                    .map_err(|_| ScanError::Malformed("negative union index"))?;
                let variant = union
                    .variants()
                    .get(index)
                    .ok_or(ScanError::Malformed("union index out of range"))?;
                self.walk(variant, depth)
            }
            Schema::Record(record) => {
                let record_depth = depth + 1;
                if record_depth > self.max_record_depth {
                    return Err(ScanError::TooDeep {
                        limit: self.max_record_depth,
                    });
                }
                for field in &record.fields {
                    self.walk(&field.schema, record_depth)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let names = self.names;
                let named = names
                    .get(name)
                    .ok_or(ScanError::Malformed("reference to an unknown named type"))?;
                self.walk(named, depth)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schema: &str) -> ScanPlan {
        ScanPlan::try_new(&Schema::parse_str(schema).expect("schema parses")).expect("plan")
    }

    const LIST: &str = r#"{"type":"record","name":"Node","fields":[
        {"name":"label","type":"string"},
        {"name":"children","type":{"type":"array","items":"Node"}}]}"#;

    /// A chain of `depth` nodes, each with a one-byte label.
    fn chain(depth: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..depth - 1 {
            bytes.extend([2, b'x', 2]); // label "x", array block of one item
        }
        bytes.extend([2, b'x', 0]); // last node: no children
        bytes.extend(std::iter::repeat_n(0, depth - 1)); // close every block
        bytes
    }

    #[test]
    fn measures_a_well_formed_datum() {
        let bytes = chain(3);
        assert_eq!(plan(LIST).scan(&bytes, 3), Ok(bytes.len()));
    }

    #[test]
    fn refuses_nesting_past_the_limit_without_recursing_into_it() {
        let bytes = chain(100_000);
        assert_eq!(
            plan(LIST).scan(&bytes, 40),
            Err(ScanError::TooDeep { limit: 40 })
        );
    }

    #[test]
    fn refuses_lengths_longer_than_the_input() {
        // label claims 60 bytes, 1 present
        assert_eq!(plan(LIST).scan(&[120, b'x'], 3), Err(ScanError::Truncated));
    }

    #[test]
    fn refuses_item_counts_the_input_cannot_hold() {
        let schema = r#"{"type":"array","items":"null"}"#;
        // zig-zag of 2^40 items, none of which take a byte
        let mut bytes = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        bytes.push(0);
        assert!(matches!(
            plan(schema).scan(&bytes, 3),
            Err(ScanError::Malformed(_))
        ));
    }
}
