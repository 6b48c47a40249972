//! How stream elements travel between processes: one element per data frame, records in
//! MessagePack with field names (as keyed state stores values), so a record type that skips or
//! defaults fields decodes the same on the other side.
//!
//! ```text
//! batch      0x00 ‖ [[ts|nil, value], ...]
//! watermark  0x01 ‖ i64 LE
//! idle       0x02
//! barrier    0x03 ‖ id u64 LE ‖ timestamp i64 LE ‖ flags u8 (1 savepoint, 2 terminal)
//! end        0x04
//! ```

use std::fmt;

use anyhow::{bail, Context, Result};
use serde::de::{DeserializeOwned, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serialize, Serializer};

use crate::element::{CheckpointBarrier, Record, StreamElement};

const BATCH: u8 = 0;
const WATERMARK: u8 = 1;
const IDLE: u8 = 2;
const BARRIER: u8 = 3;
const END: u8 = 4;

/// A record on the wire: the pair `[ts, value]`.
struct WireRecord<'a, T>(&'a Record<T>);

impl<T: Serialize> Serialize for WireRecord<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0.ts)?;
        t.serialize_element(&self.0.value)?;
        t.end()
    }
}

/// A batch on the wire: the sequence of its records, without collecting them first.
struct WireRecords<'a, T>(&'a [Record<T>]);

impl<T: Serialize> Serialize for WireRecords<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(WireRecord))
    }
}

/// Appends the encoding of `el` to `buf`.
pub(crate) fn encode<T: Serialize>(el: &StreamElement<T>, buf: &mut Vec<u8>) -> Result<()> {
    match el {
        StreamElement::Batch(records) => {
            buf.push(BATCH);
            rmp_serde::encode::write_named(buf, &WireRecords(records))
                .context("encoding records for another process")?;
        }
        StreamElement::Watermark(w) => {
            buf.push(WATERMARK);
            buf.extend_from_slice(&w.to_le_bytes());
        }
        StreamElement::Idle => buf.push(IDLE),
        StreamElement::Barrier(b) => {
            buf.push(BARRIER);
            buf.extend_from_slice(&b.id.to_le_bytes());
            buf.extend_from_slice(&b.timestamp.to_le_bytes());
            buf.push(u8::from(b.savepoint) | (u8::from(b.terminal) << 1));
        }
        StreamElement::EndOfInput => buf.push(END),
    }
    Ok(())
}

/// Decodes one element encoded by [`encode`]. A batch's records go into `spare` (emptied
/// first), so a receiving task that hands its emptied batches back decodes without allocating
/// the batch's vector each time.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], mut spare: Vec<Record<T>>) -> Result<StreamElement<T>> {
    let Some((&tag, rest)) = bytes.split_first() else { bail!("an empty element from another process") };
    Ok(match tag {
        BATCH => {
            spare.clear();
            let mut de = rmp_serde::Deserializer::from_read_ref(rest);
            Records(&mut spare).deserialize(&mut de).context("decoding records from another process")?;
            StreamElement::Batch(spare)
        }
        WATERMARK => StreamElement::Watermark(i64::from_le_bytes(fixed(rest, 0)?)),
        IDLE => StreamElement::Idle,
        BARRIER => {
            let flags = *rest.get(16).context("a truncated barrier from another process")?;
            StreamElement::Barrier(CheckpointBarrier {
                id: u64::from_le_bytes(fixed(rest, 0)?),
                timestamp: i64::from_le_bytes(fixed(rest, 8)?),
                savepoint: flags & 1 != 0,
                terminal: flags & 2 != 0,
            })
        }
        END => StreamElement::EndOfInput,
        other => bail!("an element of unknown kind {other} from another process"),
    })
}

fn fixed(b: &[u8], at: usize) -> Result<[u8; 8]> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).context("a truncated element from another process")
}

/// Decodes a batch straight into a vector of records (no intermediate vector of pairs).
struct Records<'a, T>(&'a mut Vec<Record<T>>);

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Records<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Records<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of [ts, value] pairs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.reserve(seq.size_hint().unwrap_or(0));
        while let Some((ts, value)) = seq.next_element::<(Option<i64>, T)>()? {
            self.0.push(Record { ts, value });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Bid {
        auction: u64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        note: Option<String>,
    }

    fn round_trip(el: StreamElement<Bid>) -> StreamElement<Bid> {
        let mut buf = Vec::new();
        encode(&el, &mut buf).unwrap();
        decode(&buf, Vec::new()).unwrap()
    }

    #[test]
    fn every_element_kind_survives_the_wire() {
        let records = vec![
            Record::new(Some(-5), Bid { auction: 1, note: None }),
            Record::new(None, Bid { auction: u64::MAX, note: Some("ü".into()) }),
        ];
        match round_trip(StreamElement::Batch(records.clone())) {
            StreamElement::Batch(got) => assert_eq!(got, records),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(round_trip(StreamElement::Watermark(i64::MIN + 1)), StreamElement::Watermark(w) if w == i64::MIN + 1)
        );
        assert!(matches!(round_trip(StreamElement::Idle), StreamElement::Idle));
        assert!(matches!(round_trip(StreamElement::EndOfInput), StreamElement::EndOfInput));
        let b = CheckpointBarrier { id: 7, timestamp: 1_700_000_000_000, savepoint: false, terminal: true };
        assert!(matches!(round_trip(StreamElement::Barrier(b)), StreamElement::Barrier(got) if got == b));
        let b = CheckpointBarrier { savepoint: true, terminal: false, ..b };
        assert!(matches!(round_trip(StreamElement::Barrier(b)), StreamElement::Barrier(got) if got == b));
    }

    #[test]
    fn a_batch_decoded_into_a_used_vector_holds_only_its_own_records() {
        let records = vec![Record::new(Some(1), Bid { auction: 9, note: None })];
        let mut buf = Vec::new();
        encode(&StreamElement::Batch(records.clone()), &mut buf).unwrap();
        let mut spare = Vec::with_capacity(64);
        spare.push(Record::new(None, Bid { auction: 1, note: Some("stale".into()) }));
        match decode(&buf, spare).unwrap() {
            StreamElement::Batch(got) => {
                assert_eq!(got, records);
                assert!(got.capacity() >= 64, "the spare vector was used");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<Bid>(&[], Vec::new()).is_err());
        assert!(decode::<Bid>(&[9], Vec::new()).is_err());
        assert!(decode::<Bid>(&[WATERMARK, 1, 2], Vec::new()).is_err());
        assert!(decode::<Bid>(&[BARRIER, 0, 0, 0, 0, 0, 0, 0, 0], Vec::new()).is_err());
        assert!(decode::<Bid>(&[BATCH, 0xc1], Vec::new()).is_err());
    }
}
