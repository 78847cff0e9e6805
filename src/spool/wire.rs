//! How a message is written in the spool: everything the pipelines and the sink read from a
//! `Message`, including what was assigned to it (reading id, receive time), so that a record
//! shipped again after a restart is the same reading (see `reading`).
//!
//! A fixed little layout of our own, versioned by its first byte: lengths are u32 little-endian,
//! times nanoseconds since the epoch. A few dozen lines of code did not warrant a serialisation crate,
//! and the frame around it (`log`) checks it with a CRC before it is decoded.

use std::sync::Arc;

use chrono::DateTime;
use thiserror::Error;

use crate::reading::ReadingId;
use crate::record::{Message, QoS};

const VERSION: u8 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("spool record of version {0}, this mqtt2es reads version {VERSION}")]
    Version(u8),
    #[error("spool record ends early")]
    Short,
    #[error("spool record holds text that is not UTF-8")]
    NotUtf8,
    #[error("spool record has QoS {0}")]
    QoS(u8),
}

/// Appends `message` to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(message.qos.level());
    out.push(u8::from(message.retain));
    out.extend_from_slice(&message.reading.as_u128().to_le_bytes());
    // Receive times are clock readings (1677-2262), always within i64 nanoseconds.
    let nanos = message
        .received_at
        .timestamp_nanos_opt()
        .unwrap_or_default();
    out.extend_from_slice(&nanos.to_le_bytes());
    put_bytes(out, message.topic.as_bytes());
    put_bytes(out, &message.payload);
    put_len(out, message.user_properties.len());
    for (key, value) in &message.user_properties {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut input = Input(bytes);
    let version = input.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let level = input.u8()?;
    let qos = QoS::from_level(level).ok_or(DecodeError::QoS(level))?;
    let retain = input.u8()? != 0;
    let reading = ReadingId::from_u128(u128::from_le_bytes(input.array()?));
    let received_at = DateTime::from_timestamp_nanos(i64::from_le_bytes(input.array()?));
    let topic = input.text()?;
    let payload = Arc::from(input.bytes()?);
    let count = input.len()?;
    let mut user_properties = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        user_properties.push((input.text()?, input.text()?));
    }
    Ok(Message {
        topic,
        payload,
        qos,
        retain,
        reading,
        received_at,
        user_properties,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // MQTT bounds every field (a packet is at most 256 MiB), so a length always fits.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Short)
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.len()?;
        self.take(len)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            topic: "sensors/lab/pi-01/telemetry".into(),
            payload: Arc::from(&b"{\"temp_c\":21.4}\xff"[..]),
            qos: QoS::ExactlyOnce,
            retain: true,
            reading: ReadingId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            received_at: DateTime::from_timestamp_nanos(1_764_680_000_123_456_789),
            user_properties: vec![("unit".into(), "°C".into()), ("".into(), "".into())],
        }
    }

    #[test]
    fn a_message_comes_back_as_it_was_written_with_its_reading_and_receive_time() {
        let mut bytes = Vec::new();
        encode(&message(), &mut bytes);
        let back = decode(&bytes).expect("decodes");
        let original = message();
        assert_eq!(back.topic, original.topic);
        assert_eq!(&back.payload[..], &original.payload[..]);
        assert_eq!(back.qos, original.qos);
        assert_eq!(back.retain, original.retain);
        assert_eq!(back.reading, original.reading);
        assert_eq!(back.received_at, original.received_at);
        assert_eq!(back.user_properties, original.user_properties);
    }

    #[test]
    fn a_record_cut_short_anywhere_is_an_error_not_a_panic() {
        let mut bytes = Vec::new();
        encode(&message(), &mut bytes);
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut bytes = Vec::new();
        encode(&message(), &mut bytes);
        bytes[0] = 9;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::Version(9));
    }
}
