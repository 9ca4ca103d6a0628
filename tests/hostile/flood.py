#!/usr/bin/env python3
"""A hostile peer for keel's tests: opens COUNT TCP connections to HOST:PORT from this pod and holds them,
idle, after the first bytes of a TLS ClientHello (a handshake that never finishes), or trickling an HTTP/1.1
request head one byte every half second (slowloris). Reports, as one JSON
line, what became of them: refused at connect, reset or closed by the server soon after accept ("early",
within 0.5 s), closed later (with the latest time), or still open when HOLD seconds are over.
"""
import argparse
import json
import selectors
import socket
import time

# The first bytes of a TLS 1.2-framed ClientHello record announcing 512 bytes that never come.
PARTIAL_CLIENT_HELLO = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]) + bytes(16)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--hold", type=float, required=True)
    parser.add_argument("--partial-tls", action="store_true")
    parser.add_argument("--slow-http", action="store_true")
    args = parser.parse_args()
    host, port = args.to.rsplit(":", 1)
    selector = selectors.DefaultSelector()
    result = {"connected": 0, "refused": 0, "early": 0, "later": 0, "still_open": 0, "latest_close_s": 0.0}
    opened = []
    for _ in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((host, int(port)))
        except OSError:
            result["refused"] += 1
            s.close()
            continue
        result["connected"] += 1
        try:
            if args.partial_tls:
                s.sendall(PARTIAL_CLIENT_HELLO)
            elif args.slow_http:
                s.sendall(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        except OSError:
            pass
        s.setblocking(False)
        opened.append((s, time.monotonic()))
        selector.register(s, selectors.EVENT_READ, data=time.monotonic())
    deadline = time.monotonic() + args.hold
    remaining = len(opened)
    next_trickle = time.monotonic() + 0.5
    while remaining and time.monotonic() < deadline:
        if args.slow_http and time.monotonic() >= next_trickle:
            next_trickle += 0.5
            for key in list(selector.get_map().values()):
                try:
                    key.fileobj.send(b"X")
                except OSError:
                    pass
        for key, _ in selector.select(timeout=0.1):
            s, accepted_at = key.fileobj, key.data
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # a TLS alert or GOAWAY before the close: keep reading until it closes
            after = time.monotonic() - accepted_at
            result["early" if after < 0.5 else "later"] += 1
            result["latest_close_s"] = max(result["latest_close_s"], round(after, 3))
            selector.unregister(s)
            s.close()
            remaining -= 1
    result["still_open"] = remaining
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
