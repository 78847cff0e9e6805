#!/usr/bin/env python3
"""The Python publish component of seeds/001 (`python3 mqtt_publish.py -t "test/topic" -m
"Hello world!"`) on paho-mqtt 2.x, with mosquitto_pub's -h/-p/-q/-u/-P/-r/-i flags.

With -n N it publishes N numbered messages ({"seq": i}) on one connection and waits for every
acknowledgement, printing one line per message as it is acknowledged. With -c (clean session
off) it keeps its session and, when the connection drops, reconnects and resends what was not
acknowledged, as a device would. With -d it prints paho's packet log, as mosquitto_pub -d does.
--interval S spaces the messages as a sensor would; --keepalive S sets MQTT's keep-alive.
Each connection and each loss of one is printed ("connected: ...", "disconnected: ...").
"""
import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--help", action="help")
    p.add_argument("-h", "--host", default="localhost")
    p.add_argument("-p", "--port", type=int, default=1883)
    p.add_argument("-t", "--topic", default="test/topic")
    p.add_argument("-m", "--message", default="Hello world!")
    p.add_argument("-q", "--qos", type=int, default=1)
    p.add_argument("-r", "--retain", action="store_true")
    p.add_argument("-u", "--username")
    p.add_argument("-P", "--password")
    p.add_argument("-i", "--id", default="")
    p.add_argument("-c", "--persistent", action="store_true", help="clean session off")
    p.add_argument("-n", "--count", type=int, default=0, help="publish N numbered messages")
    p.add_argument("-d", "--debug", action="store_true", help="print paho's packet log")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between messages")
    args = p.parse_args()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.id,
        clean_session=not args.persistent,
    )
    if args.username:
        client.username_pw_set(args.username, args.password)
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    acked = threading.Semaphore(0)

    def on_connect(_c, _u, _flags, reason, _props):
        print(f"connected: {reason} session_present={_flags.session_present}", flush=True)

    def on_publish(_c, _u, mid, _reason, _props):
        print(f"acked: {mid}", flush=True)
        acked.release()

    def on_disconnect(_c, _u, _flags, reason, _props):
        print(f"disconnected: {reason}", flush=True)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    if args.debug:
        # As mosquitto_pub -d: one line per packet ("Sending PUBLISH (d1, q1, ...)" for a resend).
        client.on_log = lambda _c, _u, _level, line: print(line, flush=True)
    client.connect(args.host, args.port, keepalive=args.keepalive)
    client.loop_start()
    messages = (
        [json.dumps({"seq": i}) for i in range(args.count)] if args.count else [args.message]
    )
    for payload in messages:
        client.publish(args.topic, payload, qos=args.qos, retain=args.retain)
        if args.interval:
            time.sleep(args.interval)
    if args.qos > 0:
        for _ in messages:
            if not acked.acquire(timeout=args.timeout):
                print("timed out waiting for acknowledgements", file=sys.stderr)
                sys.exit(1)
    print("published", flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
