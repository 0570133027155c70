#!/usr/bin/env python3
"""A minimal NATS client for the end-to-end tests (the protocol is text; no client package is
needed):

  nats_client.py pub PORT SUBJECT PAYLOAD [CTYPE]  publish (with a Content-Type header when
                                                   CTYPE is given), then PING/PONG
  nats_client.py sub PORT SUBJECT COUNT SECONDS    print COUNT payloads, one a line (touches
                                                   $READY once subscribed)
  nats_client.py stream PORT NAME SUBJECT          create a JetStream stream (file storage)
  nats_client.py count PORT NAME                   print how many messages the stream holds
"""
import json
import os
import socket
import sys
import time


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.line()                                   # INFO
        self.s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\nPING\r\n')
        while self.line() != b"PONG":
            pass

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def take(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.s.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def msg(self):
        """The next message's payload (MSG or HMSG), answering PINGs."""
        while True:
            line = self.line()
            if line == b"PING":
                self.s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                return self.take(int(line.split()[-1]))
            elif line.startswith(b"HMSG "):
                parts = line.split()
                whole = self.take(int(parts[-1]))
                return whole[int(parts[-2]):]

    def request(self, subject, payload):
        self.s.sendall(b"SUB _e2e.reply 1\r\n")
        self.s.sendall(b"PUB %s _e2e.reply %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))
        return json.loads(self.msg())


def ready():
    """Touches $READY (when set) once the subscription is in place."""
    if os.environ.get("READY"):
        open(os.environ["READY"], "w").close()


def main(a):
    c = Conn(int(a[2]))
    if a[1] == "pub":
        p = a[4].encode()
        if len(a) > 5:
            h = b"NATS/1.0\r\nContent-Type: %s\r\n\r\n" % a[5].encode()
            c.s.sendall(b"HPUB %s %d %d\r\n%s%s\r\nPING\r\n" % (a[3].encode(), len(h), len(h) + len(p), h, p))
        else:
            c.s.sendall(b"PUB %s %d\r\n%s\r\nPING\r\n" % (a[3].encode(), len(p), p))
        while c.line() != b"PONG":
            pass
    elif a[1] == "sub":
        c.s.sendall(b"SUB %s 1\r\nPING\r\n" % a[3].encode())
        while c.line() != b"PONG":                    # the server has the subscription
            pass
        ready()
        c.s.settimeout(float(a[5]))
        for _ in range(int(a[4])):
            print(c.msg().decode(errors="replace"), flush=True)
    elif a[1] == "stream":
        cfg = {"name": a[3], "subjects": [a[4]], "storage": "file", "num_replicas": 1}
        r = c.request("$JS.API.STREAM.CREATE." + a[3], json.dumps(cfg).encode())
        if "error" in r and r["error"].get("err_code") != 10058:      # (exists already)
            sys.exit("stream: %s" % r["error"])
    elif a[1] == "count":
        r = c.request("$JS.API.STREAM.INFO." + a[3], b"")
        print(r.get("state", {}).get("messages", -1))


if __name__ == "__main__":
    main(sys.argv)
