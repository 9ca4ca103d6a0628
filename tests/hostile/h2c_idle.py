#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge) client that makes one request and then goes quiet, answering keel's PINGs
(so it looks alive) but starting nothing new, for keel's tests: reports the request's status, whether and when
(seconds after the response) keel sent a GOAWAY, and whether it closed the connection. One JSON line.
"""
import argparse
import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", required=True)
    parser.add_argument("--authority", required=True)
    parser.add_argument("--wait", type=float, required=True, help="seconds to stay after the response")
    args = parser.parse_args()
    result = {"status": None, "goaway": False, "goaway_after_s": None, "closed": False, "closed_after_s": None, "error": None}
    host, port = args.to.rsplit(":", 1)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    answered_at = None
    try:
        sock = socket.create_connection((host, int(port)), timeout=10)
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", args.authority)], end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if answered_at is not None and time.monotonic() - answered_at > args.wait:
                break
            sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            now = time.monotonic()
            if not data:
                result["closed"] = True
                result["closed_after_s"] = None if answered_at is None else round(now - answered_at, 2)
                break
            if result["goaway"]:
                continue  # python-h2 refuses frames after a GOAWAY (hyper follows it with a PING); wait for the close
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # A GOAWAY and the PING hyper sends after it arrived together: h2 took the GOAWAY (its state is
                # CLOSED now) and refused the PING, losing the events.
                if conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                    raise
                events = [h2.events.ConnectionTerminated()]
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    result["status"] = int(dict(event.headers)[b":status"])
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    answered_at = now
                    deadline = now + args.wait
                if isinstance(event, h2.events.ConnectionTerminated):
                    result["goaway"] = True
                    result["goaway_after_s"] = None if answered_at is None else round(now - answered_at, 2)
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            outgoing = conn.data_to_send()
            if outgoing:
                sock.sendall(outgoing)
    except OSError as e:
        result["closed"] = True
        result["error"] = str(e)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
