//! What MQTT forbids in a CONNECT and rumqttc's decoder lets through: a set reserved flag, a
//! 3.1.1 password without a user name, will flags without a will, bytes after the payload,
//! U+0000 or invalid UTF-8 in a string, a will topic that is not a topic name.
//!
//! The third exception to "nothing here parses MQTT by hand" (see the module doc): a walk over
//! the fields of the whole packet, before rumqttc decodes it, checking only what rumqttc does
//! not. It needs no more than the field lengths, so it allocates nothing.

use std::fmt;

/// How the broker answers a CONNECT that breaks a rule (MQTT 5 CONNACK reason; 3.1.1 closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 0x81: the packet is not well formed.
    Malformed,
    /// 0x82: well formed, but against the protocol.
    ProtocolError,
    /// 0x90: the will topic is not a topic name.
    TopicNameInvalid,
    /// 0x95: larger than a CONNECT may be (`MAX_CONNECT_BYTES`).
    PacketTooLarge,
}

/// A rule of MQTT that a CONNECT broke, with the spec's number where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub answer: Answer,
    pub reason: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

fn malformed(reason: impl Into<String>) -> Fault {
    Fault {
        answer: Answer::Malformed,
        reason: reason.into(),
    }
}

/// Checks `packet`, one whole CONNECT (fixed header included) of protocol `level` 4 or 5.
pub fn check_connect(packet: &[u8], level: u8) -> Result<(), Fault> {
    if packet[0] != 0x10 {
        return Err(malformed(format!(
            "CONNECT with fixed header flags {:#x}; they must be 0 [MQTT-2.2.2-2]",
            packet[0] & 0x0F
        )));
    }
    let mut fields = Fields {
        bytes: packet,
        at: 1,
    };
    let remaining = fields.varint("remaining length")?;
    if fields.at + remaining != packet.len() {
        return Err(malformed(
            "CONNECT length does not match its remaining length",
        ));
    }
    let name = fields.string("protocol name")?;
    if name != "MQTT" {
        return Err(Fault {
            answer: Answer::ProtocolError,
            reason: format!("protocol name {name:?}; expected \"MQTT\" [MQTT-3.1.2-1]"),
        });
    }
    fields.skip(1, "protocol level")?;
    let flags = fields.byte("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(malformed(
            "CONNECT reserved flag is set; it must be 0 [MQTT-3.1.2-3]",
        ));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password = flags & 0x40 != 0;
    let username = flags & 0x80 != 0;
    if will_qos == 3 {
        return Err(malformed("will QoS 3 [MQTT-3.1.2-14]"));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(malformed(
            "will QoS or will retain set without the will flag [MQTT-3.1.2-11, -13, -15]",
        ));
    }
    if level == 4 && password && !username {
        return Err(malformed(
            "password flag set without the user name flag [MQTT-3.1.2-22]",
        ));
    }
    fields.skip(2, "keep alive")?;
    if level == 5 {
        let properties = fields.varint("property length")?;
        fields.skip(properties, "properties")?;
    }
    fields.text("client id")?;
    if will {
        if level == 5 {
            let properties = fields.varint("will property length")?;
            fields.skip(properties, "will properties")?;
        }
        let topic = fields.text("will topic")?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(Fault {
                answer: Answer::TopicNameInvalid,
                reason: format!(
                    "will topic {topic:?} is not a topic name (empty or with a wildcard) \
                     [MQTT-3.1.3-11, MQTT-4.7.3-1]"
                ),
            });
        }
        fields.binary("will payload")?;
    }
    if username {
        fields.text("user name")?;
    }
    if password {
        fields.binary("password")?;
    }
    if fields.at != packet.len() {
        return Err(malformed(format!(
            "{} bytes after the end of the CONNECT payload",
            packet.len() - fields.at
        )));
    }
    Ok(())
}

/// A cursor over a packet's fields.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], Fault> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| malformed(format!("CONNECT ends inside its {what}")))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn skip(&mut self, len: usize, what: &str) -> Result<(), Fault> {
        self.take(len, what).map(|_| ())
    }

    fn byte(&mut self, what: &str) -> Result<u8, Fault> {
        Ok(self.take(1, what)?[0])
    }

    /// A Variable Byte Integer (at most four bytes).
    fn varint(&mut self, what: &str) -> Result<usize, Fault> {
        let mut value = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = self.byte(what)?;
            value |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(format!("{what} longer than four bytes")))
    }

    /// Two-byte length, then that many bytes.
    fn binary(&mut self, what: &str) -> Result<&'a [u8], Fault> {
        let len = self.take(2, what)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.take(len, what)
    }

    fn string(&mut self, what: &str) -> Result<&'a str, Fault> {
        let bytes = self.binary(what)?;
        std::str::from_utf8(bytes)
            .map_err(|_| malformed(format!("{what} is not valid UTF-8 [MQTT-1.5.3-1]")))
    }

    /// A UTF-8 string that may not hold U+0000 (MQTT-1.5.3-2): what a client names.
    fn text(&mut self, what: &str) -> Result<&'a str, Fault> {
        let text = self.string(what)?;
        if text.contains('\0') {
            return Err(malformed(format!("{what} holds U+0000 [MQTT-1.5.3-2]")));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5;

    use super::*;

    fn v4_connect(client_id: &str, login: Option<(&str, &str)>, will: Option<&str>) -> Vec<u8> {
        let mut connect = v4::Connect::new(client_id);
        if let Some((user, password)) = login {
            connect.set_login(user, password);
        }
        connect.last_will =
            will.map(|topic| v4::LastWill::new(topic, "gone", rumqttc::QoS::AtLeastOnce, false));
        let mut buf = BytesMut::new();
        connect.write(&mut buf).expect("encode");
        buf.to_vec()
    }

    fn v5_connect(client_id: &str, will: Option<&str>) -> Vec<u8> {
        let connect = v5::Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties::new()),
        };
        let will = will.map(|topic| {
            v5::LastWill::new(
                topic,
                "gone",
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                false,
                None,
            )
        });
        let mut buf = BytesMut::new();
        connect.write(&will, &None, &mut buf).expect("encode");
        buf.to_vec()
    }

    fn answer(packet: &[u8], level: u8) -> Option<Answer> {
        check_connect(packet, level).err().map(|fault| fault.answer)
    }

    #[test]
    fn well_formed_connects_of_both_versions_pass() {
        assert_eq!(answer(&v4_connect("pi", None, None), 4), None);
        assert_eq!(
            answer(&v4_connect("pi", Some(("u", "p")), Some("t/w")), 4),
            None
        );
        assert_eq!(answer(&v5_connect("pi", Some("t/w")), 5), None);
    }

    #[test]
    fn a_set_reserved_flag_is_malformed() {
        let mut packet = v4_connect("pi", None, None);
        // Fixed header (2), protocol name (6), level (1): the flags byte.
        packet[9] |= 0x01;
        let fault = check_connect(&packet, 4).expect_err("refused");
        assert_eq!(fault.answer, Answer::Malformed);
        assert!(fault.reason.contains("MQTT-3.1.2-3"), "{fault}");
    }

    #[test]
    fn a_311_password_without_a_user_name_is_malformed_and_allowed_in_mqtt5() {
        let mut packet = v4_connect("pi", None, None);
        packet[9] |= 0x40;
        packet.extend_from_slice(&[0, 1, b'p']);
        packet[1] += 3;
        let fault = check_connect(&packet, 4).expect_err("refused");
        assert!(fault.reason.contains("MQTT-3.1.2-22"), "{fault}");

        let mut packet = v5_connect("pi", None);
        packet[9] |= 0x40;
        packet.extend_from_slice(&[0, 1, b'p']);
        packet[1] += 3;
        assert_eq!(answer(&packet, 5), None);
    }

    #[test]
    fn bytes_after_the_payload_are_malformed() {
        let mut packet = v4_connect("pi", None, None);
        packet.extend_from_slice(b"xyz");
        packet[1] += 3;
        let fault = check_connect(&packet, 4).expect_err("refused");
        assert_eq!(fault.reason, "3 bytes after the end of the CONNECT payload");
    }

    #[test]
    fn a_will_topic_with_a_wildcard_or_none_is_an_invalid_topic_name() {
        assert_eq!(
            answer(&v4_connect("pi", None, Some("t/#")), 4),
            Some(Answer::TopicNameInvalid)
        );
        assert_eq!(
            answer(&v5_connect("pi", Some("t/+/x")), 5),
            Some(Answer::TopicNameInvalid)
        );
        assert_eq!(
            answer(&v4_connect("pi", None, Some("")), 4),
            Some(Answer::TopicNameInvalid)
        );
    }

    #[test]
    fn a_client_id_with_u0000_or_invalid_utf8_is_malformed_and_says_which_field() {
        let fault = check_connect(&v4_connect("p\0i", None, None), 4).expect_err("refused");
        assert_eq!(fault.reason, "client id holds U+0000 [MQTT-1.5.3-2]");
        let mut packet = v4_connect("pi", None, None);
        // Fixed header (2), variable header (10), length (2): the client id's first byte.
        packet[14] = 0xFF;
        let fault = check_connect(&packet, 4).expect_err("refused");
        assert_eq!(fault.reason, "client id is not valid UTF-8 [MQTT-1.5.3-1]");
    }

    #[test]
    fn a_connect_cut_short_inside_a_field_is_malformed() {
        let mut packet = v4_connect("pi", Some(("user", "pw")), None);
        packet.truncate(packet.len() - 1);
        packet[1] -= 1;
        let fault = check_connect(&packet, 4).expect_err("refused");
        assert_eq!(fault.reason, "CONNECT ends inside its password");
    }
}
