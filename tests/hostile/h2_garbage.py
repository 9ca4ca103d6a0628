#!/usr/bin/env python3
"""A hostile HBONE client for keel's tests: completes mutual TLS with a valid workload certificate, sends the
HTTP/2 preface, then frames that break the protocol (a HEADERS frame on stream 0 with a garbage header block,
then a frame of an absurd length), and reports what keel did: whether it sent a GOAWAY (and its error code),
and whether it closed the connection. One JSON line.
"""
import argparse
import json
import socket
import ssl
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    result = {"goaway": False, "goaway_error": None, "closed": False, "error": None}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    host, port = args.connect.rsplit(":", 1)
    try:
        tls = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=None)
        tls.sendall(PREFACE + frame(0x4, 0, 0, b""))  # an empty SETTINGS
        tls.sendall(frame(0x1, 0x4, 0, b"\xff\xfe\xfd garbage header block"))  # HEADERS on stream 0
        tls.sendall(frame(0x0, 0, 1, b"x" * 64) + b"\xff\xff\xff\x00\x00")  # DATA on an idle stream, then junk
        buffer = b""
        while True:
            data = tls.recv(65536)
            if not data:
                result["closed"] = True
                break
            buffer += data
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, payload = buffer[3], buffer[9 : 9 + length]
                if kind == 0x7 and len(payload) >= 8:
                    result["goaway"] = True
                    result["goaway_error"] = struct.unpack(">I", payload[4:8])[0]
                buffer = buffer[9 + length :]
    except (OSError, ssl.SSLError) as e:
        result["closed"] = True
        result["error"] = str(e)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
