//! The one place that decides how keys and values become bytes.
//!
//! State is encoded with a self-describing format (MessagePack with field names) so that tools such as
//! `weir savepoint dump` can print it without the job's Rust types. Everything that encodes state goes
//! through [`Codec`], so switching the format is a change to this module only.

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

/// An encoding for state keys and values.
///
/// Implementations must be deterministic (equal values give equal bytes, because key bytes are
/// hashed to key groups) and self-delimiting (encodings can be concatenated and read back one by one,
/// because list state appends elements with a merge operator).
pub trait Codec {
    /// Appends the encoding of `value` to `buf`.
    fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()>;
    /// Decodes one value from the front of `bytes`, advancing the slice past it.
    fn decode_from<T: DeserializeOwned>(bytes: &mut &[u8]) -> Result<T>;
    /// Decodes the value at the front of `bytes` when nothing after it is needed.
    fn decode<T: DeserializeOwned>(mut bytes: &[u8]) -> Result<T> {
        Self::decode_from(&mut bytes)
    }
    /// Decodes one value to a JSON value without knowing its Rust type.
    fn decode_json(bytes: &mut &[u8]) -> Result<serde_json::Value>;
}

/// MessagePack with struct field names: compact, self-describing, self-delimiting.
pub struct MsgPack;

impl Codec for MsgPack {
    fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
        let mut ser = rmp_serde::Serializer::new(buf).with_struct_map();
        value.serialize(&mut ser).context("encoding state with MessagePack")?;
        Ok(())
    }

    fn decode_from<T: DeserializeOwned>(bytes: &mut &[u8]) -> Result<T> {
        let mut de = rmp_serde::Deserializer::new(bytes);
        serde::Deserialize::deserialize(&mut de).context("decoding state with MessagePack")
    }

    // Reads strings and byte arrays straight from the slice: decode_from's reader (which must
    // report how far it got) copies each one into a scratch buffer first.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
        rmp_serde::from_slice(bytes).context("decoding state with MessagePack")
    }

    fn decode_json(bytes: &mut &[u8]) -> Result<serde_json::Value> {
        Self::decode_from::<serde_json::Value>(bytes)
    }
}

/// The codec weir uses for state.
pub type DefaultCodec = MsgPack;

/// Encodes `value` into a fresh buffer with the default codec.
///
/// ```
/// let bytes = weir_state::codec::encode(&("auction", 7u64)).unwrap();
/// let back: (String, u64) = weir_state::codec::decode(&bytes).unwrap();
/// assert_eq!(back, ("auction".to_string(), 7));
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    DefaultCodec::encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decodes a whole buffer with the default codec.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    DefaultCodec::decode(bytes)
}

/// Appends `value` to `buf` with the default codec.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    DefaultCodec::encode_into(value, buf)
}

/// Decodes one value from the front of `bytes` with the default codec, advancing the slice.
pub fn decode_from<T: DeserializeOwned>(bytes: &mut &[u8]) -> Result<T> {
    DefaultCodec::decode_from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Acc {
        count: u64,
        max_price: u64,
    }

    #[test]
    fn concatenated_values_decode_one_by_one() {
        let mut buf = Vec::new();
        encode_into(&Acc { count: 1, max_price: 5 }, &mut buf).unwrap();
        encode_into(&Acc { count: 2, max_price: 9 }, &mut buf).unwrap();
        let mut slice = &buf[..];
        let a: Acc = decode_from(&mut slice).unwrap();
        let b: Acc = decode_from(&mut slice).unwrap();
        assert_eq!(a, Acc { count: 1, max_price: 5 });
        assert_eq!(b, Acc { count: 2, max_price: 9 });
        assert!(slice.is_empty());
    }

    #[test]
    fn values_decode_to_json_with_field_names() {
        let bytes = encode(&Acc { count: 3, max_price: 4 }).unwrap();
        let json = DefaultCodec::decode_json(&mut &bytes[..]).unwrap();
        assert_eq!(json, serde_json::json!({"count": 3, "max_price": 4}));
    }

    #[test]
    fn string_keys_are_prefix_free() {
        let ab = encode("ab").unwrap();
        let abc = encode("abc").unwrap();
        assert!(!abc.starts_with(&ab));
    }
}
