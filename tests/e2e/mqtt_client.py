#!/usr/bin/env python3
"""A minimal MQTT 3.1.1 client for the end-to-end tests (no Debian package has one in Python
here, and mosquitto-clients is not needed elsewhere):

  mqtt_client.py pub PORT TOPIC PAYLOAD [QOS]   publish; with QoS 1, wait for the PUBACK
  mqtt_client.py sub PORT TOPIC COUNT SECONDS   print COUNT payloads received on TOPIC, one a
                                                line (exit 1 if fewer came in time);
                                                touches $READY once subscribed
"""
import os
import socket
import struct
import sys
import time


def packet(kind, body):
    n, enc = len(body), b""
    while True:
        d, n = n % 128, n // 128
        enc += bytes([d | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + enc + body


def text(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def read_packet(c):
    head = c.recv(1)
    if not head:
        raise EOFError
    n, mult = 0, 1
    while True:
        d = c.recv(1)[0]
        n += (d & 127) * mult
        mult *= 128
        if not d & 128:
            break
    body = b""
    while len(body) < n:
        chunk = c.recv(n - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return head[0], body


def connect(port, cid):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(packet(0x10, text("MQTT") + bytes([4, 2]) + struct.pack(">H", 30) + text(cid)))
    kind, body = read_packet(c)
    if kind != 0x20 or body[1] != 0:
        raise SystemExit("connect refused")
    return c


def pub(port, topic, payload, qos):
    c = connect(port, "e2e-pub-%d" % time.time_ns())
    if qos:
        c.sendall(packet(0x32, text(topic) + struct.pack(">H", 1) + payload.encode()))
        kind, _ = read_packet(c)
        if kind != 0x40:
            raise SystemExit("no PUBACK")
    else:
        c.sendall(packet(0x30, text(topic) + payload.encode()))
    c.sendall(packet(0xE0, b""))
    c.close()


def sub(port, topic, count, seconds):
    c = connect(port, "e2e-sub-%d" % time.time_ns())
    c.sendall(packet(0x82, struct.pack(">H", 1) + text(topic) + b"\x01"))
    while read_packet(c)[0] != 0x90:                  # the SUBACK: the subscription is in place
        pass
    if os.environ.get("READY"):
        open(os.environ["READY"], "w").close()
    got, end = 0, time.time() + seconds
    c.settimeout(1)
    while got < count and time.time() < end:
        try:
            kind, body = read_packet(c)
        except socket.timeout:
            continue
        if kind & 0xF0 != 0x30:
            continue
        tl = struct.unpack(">H", body[:2])[0]
        at = 2 + tl
        if kind & 0x06:                  # QoS 1: a packet id, and our PUBACK
            mid = body[at:at + 2]
            at += 2
            c.sendall(packet(0x40, mid))
        print(body[at:].decode(errors="replace"), flush=True)
        got += 1
    sys.exit(0 if got >= count else 1)


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "pub":
        pub(int(a[2]), a[3], a[4], int(a[5]) if len(a) > 5 else 1)
    else:
        sub(int(a[2]), a[3], int(a[4]), float(a[5]))
