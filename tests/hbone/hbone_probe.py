#!/usr/bin/env python3
"""An HBONE client written from the wire reference alone (not from keel's code), to prove keel's HBONE server
speaks the protocol: TLS 1.3 with ALPN h2, no SNI, a workload client certificate, then an HTTP/2 CONNECT
request whose :authority is the destination IP:port; with a 200 the stream carries raw bytes both ways and
END_STREAM is the half-close.

With --http-request 'METHOD PATH' the tunnel carries one HTTP/1.1 request (Connection: close) instead of the
echo payload, without END_STREAM: the server ends the stream after its answer, whose status is "http_status".

Prints one JSON line: {"status", "echo_ok", "received", "server_identity", "alpn", "tls_version", "error"}.
"""
import argparse
import json
import socket
import struct
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def tls_connect(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # HBONE checks the URI SAN, never a host name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.ca)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    host, port = args.connect.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=args.timeout)
    # server_hostname=None: no SNI (an IP is not a valid SNI name, and HBONE sends none).
    return ctx.wrap_socket(raw, server_hostname=None)


def uri_sans(cert):
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


def exchange(tls, args, result):
    # python-h2 insists on :path for every request; an RFC 7540 §8.3 CONNECT carries none, so its outbound
    # header check is off (the bytes we send are exactly the reference's).
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    headers = [(":method", args.method), (":authority", args.authority)]
    if args.method != "CONNECT":
        headers += [(":scheme", "https"), (":path", "/")]
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, headers, end_stream=args.method != "CONNECT")
    tls.sendall(conn.data_to_send())
    payload = args.payload.encode()
    received = b""
    frames = FrameScanner()
    while True:
        data = tls.recv(65536)
        if not data:
            result.setdefault("error", "connection closed")
            closed_while_held(result)
            return received
        frames.feed(data, result)
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # python-h2 treats any GOAWAY as the end of the connection and then refuses the frames that follow
            # it (a graceful shutdown's PING): the scanner saw the GOAWAY itself.
            if "goaway_error" not in result:
                raise
            result["error"] = f"GOAWAY: {result['goaway_error']}"
            closed_while_held(result)
            return received
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                result["status"] = int(dict(event.headers)[":status"])
                if result["status"] == 200 and args.hold:
                    # Keep the tunnel open, sending nothing, to see whether (and when) the server ends it.
                    result["held_from"] = time.monotonic()
                    tls.settimeout(args.hold)
                elif result["status"] == 200 and args.http_request:
                    # The request inside the tunnel; the answer ends the stream (Connection: close).
                    conn.send_data(stream, payload, end_stream=False)
                elif result["status"] == 200:
                    conn.send_data(stream, payload, end_stream=True)  # END_STREAM: our half-close
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                received += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                return received
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                result["error"] = f"stream reset: {event.error_code}"
                return received
            elif isinstance(event, h2.events.ConnectionTerminated):
                result["error"] = f"GOAWAY: {event.error_code}"
                closed_while_held(result)
                return received
        tls.sendall(conn.data_to_send())


class FrameScanner:
    """Reads frame headers off the decrypted byte stream, only to note a GOAWAY and its error code."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data, result):
        self.buffer += data
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, payload = self.buffer[3], self.buffer[9 : 9 + length]
            if kind == 0x7 and len(payload) >= 8 and "goaway_error" not in result:
                result["goaway_error"] = int.from_bytes(payload[4:8], "big")
            self.buffer = self.buffer[9 + length :]


def closed_while_held(result):
    held_from = result.pop("held_from", None)
    if held_from is not None:
        result["closed_after_s"] = round(time.monotonic() - held_from, 2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--connect", required=True, help="IP:port to dial (the workload's HBONE port)")
    p.add_argument("--authority", required=True, help=":authority (the original destination IP:port)")
    p.add_argument("--method", default="CONNECT")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--payload", default="hello over hbone\n")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--hold", type=float, default=0.0, help="after a 200, hold the tunnel open this long, idle")
    p.add_argument("--reset", action="store_true", help="at the end, reset the TCP connection (RST) instead of closing it")
    p.add_argument("--http-request", help="'METHOD PATH': send this HTTP/1.1 request through the tunnel")
    args = p.parse_args()
    if args.http_request:
        method, path = args.http_request.split(" ", 1)
        args.payload = f"{method} {path} HTTP/1.1\r\nHost: {args.authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    result = {"status": None, "echo_ok": False}
    try:
        tls = tls_connect(args)
        result["alpn"] = tls.selected_alpn_protocol()
        result["tls_version"] = tls.version()
        result["server_identity"] = (uri_sans(tls.getpeercert()) or [None])[0]
        received = exchange(tls, args, result)
        result["received"] = received.decode(errors="replace")
        result["echo_ok"] = result["status"] == 200 and received == args.payload.encode()
        if args.http_request and received.startswith(b"HTTP/1.1 "):
            result["http_status"] = int(received.split(b" ", 2)[1])
        if args.reset:
            # SO_LINGER with a zero timeout: close() sends RST, as a crashed or killed client's kernel would.
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()
    except (OSError, ssl.SSLError, h2.exceptions.ProtocolError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result.pop("held_from", None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
