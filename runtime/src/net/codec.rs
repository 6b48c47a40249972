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
use std::marker::PhantomData;

use anyhow::{bail, Context, Result};
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Appends the encoding of `el` to `buf`.
pub(crate) fn encode<T: Serialize>(el: &StreamElement<T>, buf: &mut Vec<u8>) -> Result<()> {
    match el {
        StreamElement::Batch(records) => {
            buf.push(BATCH);
            let wire: Vec<WireRecord<T>> = records.iter().map(WireRecord).collect();
            rmp_serde::encode::write_named(buf, &wire).context("encoding records for another process")?;
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

/// Decodes one element encoded by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<StreamElement<T>> {
    let Some((&tag, rest)) = bytes.split_first() else { bail!("an empty element from another process") };
    Ok(match tag {
        BATCH => {
            let WireBatch(records) = rmp_serde::from_slice(rest).context("decoding records from another process")?;
            StreamElement::Batch(records)
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

/// Decodes a batch straight into records (no intermediate vector of pairs).
struct WireBatch<T>(Vec<Record<T>>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for WireBatch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Records<T>(PhantomData<fn() -> T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for Records<T> {
            type Value = WireBatch<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of [ts, value] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some((ts, value)) = seq.next_element::<(Option<i64>, T)>()? {
                    out.push(Record { ts, value });
                }
                Ok(WireBatch(out))
            }
        }
        d.deserialize_seq(Records(PhantomData))
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
        decode(&buf).unwrap()
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
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<Bid>(&[]).is_err());
        assert!(decode::<Bid>(&[9]).is_err());
        assert!(decode::<Bid>(&[WATERMARK, 1, 2]).is_err());
        assert!(decode::<Bid>(&[BARRIER, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode::<Bid>(&[BATCH, 0xc1]).is_err());
    }
}
