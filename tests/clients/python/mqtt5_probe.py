"""MQTT 5 scenarios with paho-mqtt 2.x, for the broker conformance tests (tests/it/conformance.rs).

Usage: mqtt5_probe.py <host> <port> <scenario> <prefix>

Each scenario drives real paho clients through one rule of MQTT 5 and prints what the broker did
as JSON lines ({"what": ..., ...}); the Rust test asserts on them, against Mosquitto and mqtt2es
alike. A scenario never waits on a fixed sleep for a message: "nothing arrived" is known by a
marker published after it on the same connection (MQTT keeps order per topic and connection),
and the only sleeps are the expiry intervals under test running out.
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = sys.argv[1]
PORT = int(sys.argv[2])
SCENARIO = sys.argv[3]
PREFIX = sys.argv[4]
WAIT = 20.0


def say(what, **fields):
    print(json.dumps({"what": what, **fields}), flush=True)


class Client:
    """A paho MQTT 5 client whose CONNACK, SUBACK and messages can be waited for."""

    def __init__(self, client_id, clean_start=True, expiry=None, will=None):
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.cond = threading.Condition()
        self.messages = []
        self.connack = None
        self.subacks = {}
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        if will is not None:
            topic, payload, properties = will
            self.client.will_set(topic, payload, qos=1, properties=properties)
        properties = Properties(PacketTypes.CONNECT)
        if expiry is not None:
            properties.SessionExpiryInterval = expiry
        self.client.connect(HOST, PORT, keepalive=30, clean_start=clean_start, properties=properties)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = {"session_present": bool(flags.session_present), "code": reason_code.value}
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [code.value for code in reason_codes]
            self.cond.notify_all()

    def _on_message(self, client, userdata, message):
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _wait(self, done, what):
        with self.cond:
            if not self.cond.wait_for(done, timeout=WAIT):
                raise SystemExit(f"timed out waiting for {what}")

    def subscribe(self, topic, qos=1, retain_as_published=False, identifier=None):
        properties = None
        if identifier is not None:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = identifier
        options = SubscribeOptions(qos=qos, retainAsPublished=retain_as_published)
        _, mid = self.client.subscribe(topic, options=options, properties=properties)
        self._wait(lambda: mid in self.subacks, "SUBACK")
        return self.subacks[mid]

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)

    def until(self, topic):
        """Messages received up to and including the first on `topic`."""
        self._wait(lambda: any(m.topic == topic for m in self.messages), f"a message on {topic}")
        with self.cond:
            index = next(i for i, m in enumerate(self.messages) if m.topic == topic)
            received, self.messages = self.messages[: index + 1], self.messages[index + 1 :]
        return received

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def described(message):
    props = getattr(message, "properties", None)
    names = {
        "PayloadFormatIndicator": "payload_format",
        "MessageExpiryInterval": "message_expiry",
        "ContentType": "content_type",
        "ResponseTopic": "response_topic",
        "CorrelationData": "correlation_data",
        "UserProperty": "user_properties",
        "SubscriptionIdentifier": "subscription_ids",
    }
    fields = {}
    for name, key in names.items():
        value = getattr(props, name, None) if props is not None else None
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.hex()
        if isinstance(value, list):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        fields[key] = value
    return {
        "topic": message.topic,
        "payload": message.payload.decode("utf-8", "replace"),
        "retain": bool(message.retain),
        "properties": fields,
    }


def marker(client, subscriber, topic):
    """What `subscriber` got before a marker `client` publishes on `topic` after the rest."""
    client.publish(topic, "marker")
    return [described(m) for m in subscriber.until(topic) if m.topic != topic]


def expired_session():
    sub = Client(f"{PREFIX}-sub", clean_start=False, expiry=1)
    sub.subscribe(f"{PREFIX}/cmd")
    sub.close()
    time.sleep(2.5)  # the session expiry interval (1 s) runs out
    pub = Client(f"{PREFIX}-pub")
    pub.publish(f"{PREFIX}/cmd", "after the expiry")
    sub = Client(f"{PREFIX}-sub", clean_start=False, expiry=1)
    say("connack", **sub.connack)
    sub.subscribe(f"{PREFIX}/marker")
    say("received", messages=marker(pub, sub, f"{PREFIX}/marker"))


def properties():
    sub = Client(f"{PREFIX}-sub")
    sub.subscribe(f"{PREFIX}/req")
    pub = Client(f"{PREFIX}-pub")
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 60
    props.ContentType = "application/json"
    props.ResponseTopic = f"{PREFIX}/resp"
    props.CorrelationData = b"\x01\x02\xff"
    props.UserProperty = ("unit", "C")
    pub.publish(f"{PREFIX}/req", '{"t": 21.5}', properties=props)
    say("received", messages=[described(m) for m in sub.until(f"{PREFIX}/req")])


def message_expiry():
    sub = Client(f"{PREFIX}-sub", clean_start=False, expiry=300)
    sub.subscribe(f"{PREFIX}/q")
    sub.close()
    pub = Client(f"{PREFIX}-pub")
    for payload, expiry, retain, topic in [
        ("short", 1, False, "q"),
        ("long", 300, False, "q"),
        ("retained short", 1, True, "r"),
    ]:
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = expiry
        pub.publish(f"{PREFIX}/{topic}", payload, retain=retain, properties=props)
    time.sleep(2.5)  # the short expiry interval (1 s) runs out
    sub = Client(f"{PREFIX}-sub", clean_start=False, expiry=300)
    sub.subscribe(f"{PREFIX}/r")
    sub.subscribe(f"{PREFIX}/marker")
    say("received", messages=marker(pub, sub, f"{PREFIX}/marker"))
    sub.close()
    Client(f"{PREFIX}-sub", clean_start=True).close()


def retain_as_published():
    sub = Client(f"{PREFIX}-sub")
    sub.subscribe(f"{PREFIX}/rap", retain_as_published=True)
    sub.subscribe(f"{PREFIX}/plain")
    pub = Client(f"{PREFIX}-pub")
    pub.publish(f"{PREFIX}/rap", "kept", retain=True)
    pub.publish(f"{PREFIX}/plain", "kept", retain=True)
    received = [described(m) for m in sub.until(f"{PREFIX}/rap") + sub.until(f"{PREFIX}/plain")]
    say("received", messages=received)
    pub.publish(f"{PREFIX}/rap", "", retain=True)
    pub.publish(f"{PREFIX}/plain", "", retain=True)


def subscription_ids():
    sub = Client(f"{PREFIX}-sub")
    sub.subscribe(f"{PREFIX}/ids/#", identifier=5)
    sub.subscribe(f"{PREFIX}/none")
    pub = Client(f"{PREFIX}-pub")
    pub.publish(f"{PREFIX}/ids/a", "with an id")
    pub.publish(f"{PREFIX}/none", "without")
    received = sub.until(f"{PREFIX}/ids/a") + sub.until(f"{PREFIX}/none")
    say("received", messages=[described(m) for m in received])


def will_on_clean_takeover():
    watcher = Client(f"{PREFIX}-watcher")
    watcher.subscribe(f"{PREFIX}/will")
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 60
    device = Client(
        f"{PREFIX}-device",
        clean_start=False,
        expiry=300,
        will=(f"{PREFIX}/will", "device gone", props),
    )
    start = time.monotonic()
    # The same client id with Clean Start: the old session ends, so its will is due now.
    taker = Client(f"{PREFIX}-device", clean_start=True)
    received = [described(m) for m in watcher.until(f"{PREFIX}/will")]
    say("received", messages=received, seconds=round(time.monotonic() - start, 1))
    taker.close()
    device.client.loop_stop()


SCENARIOS = {
    "expired-session": expired_session,
    "properties": properties,
    "message-expiry": message_expiry,
    "retain-as-published": retain_as_published,
    "subscription-ids": subscription_ids,
    "will-on-clean-takeover": will_on_clean_takeover,
}

if __name__ == "__main__":
    SCENARIOS[SCENARIO]()
    say("done")
