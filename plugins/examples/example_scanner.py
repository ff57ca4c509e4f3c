#!/usr/bin/python3
"""A Moat scanner plugin in plain Python (python3-zmq): the protocol of plugins/PROTOCOL.md
without any Moat code, to show that it is language-neutral.

It refuses messages that contain the EICAR test string, adds a header to the others, and answers
hello. For tests it can also misbehave: --mode silent (never answers), garbage (answers bytes
that are not the protocol), slow (answers after --delay seconds).

usage: example_scanner.py --endpoint ipc:///tmp/x.sock [--name example] [--log FILE]
                          [--mode normal|silent|garbage|slow] [--delay 5]
"""
import argparse
import os
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

TAG = b"MOAT/1"
EICAR = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
KEY_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def parse_header(frame):
    """key=value lines -> list of (key, value); raises ValueError when malformed."""
    lines = []
    for n, raw in enumerate(frame.decode("utf-8", "replace").split("\n"), 1):
        raw = raw.rstrip("\r")
        if not raw:
            continue
        key, eq, value = raw.partition("=")
        if not eq or not key or not set(key) <= KEY_CHARS:
            raise ValueError(f"malformed header line {n}")
        lines.append((key, value))
    return lines


def encode_header(lines):
    return "".join(f"{k}={str(v).replace(chr(13), ' ').replace(chr(10), ' ')}\n"
                   for k, v in lines).encode()


def last(lines, key, default=""):
    for k, v in reversed(lines):
        if k == key:
            return v
    return default


def handle(frames, name):
    """One request (frames after the delimiter) -> reply frames."""
    if len(frames) < 2 or frames[0] != TAG:
        return [TAG, encode_header([("type", "error"), ("id", ""),
                                    ("error", "unsupported version or too few frames")])]
    try:
        fields = parse_header(frames[1])
    except ValueError as e:
        return [TAG, encode_header([("type", "error"), ("id", ""), ("error", str(e))])]
    rtype, rid = last(fields, "type"), last(fields, "id")
    if rtype == "hello":
        return [TAG, encode_header([("type", "hello"), ("id", rid), ("name", name),
                                    ("version", "1.0"), ("capabilities", "eicar"),
                                    ("stages", "data")])]
    if rtype not in ("scan", "event"):
        return [TAG, encode_header([("type", "error"), ("id", rid),
                                    ("error", f"unknown type {rtype}")])]
    message = frames[2] if len(frames) > 2 else b""
    reply = [("type", "result"), ("id", rid)]
    if EICAR in message:
        reply += [("action", "reject"),
                  ("reply", "Virus found: Eicar-Test-Signature"),
                  ("finding", "av.eicar-test-signature 20 Eicar-Test-Signature")]
    else:
        reply += [("header", f"X-Example-Scanner: {name} pid={os.getpid()}")]
    return [TAG, encode_header(reply)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--name", default="example")
    ap.add_argument("--log", default="")
    ap.add_argument("--mode", default="normal", choices=["normal", "silent", "garbage", "slow"])
    ap.add_argument("--delay", type=float, default=5.0)
    args = ap.parse_args()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)  # REP strips and restores the delimiter frame for us
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
    sock.connect(args.endpoint)
    log = open(args.log, "a", buffering=1) if args.log else None

    def note(text):
        if log:
            log.write(text + "\n")

    # Tell a test when the connection is up (Moat binds, so it may start before or after us).
    if monitor.poll(5000):
        recv_monitor_message(monitor)
        time.sleep(0.1)  # the ZMTP handshake follows the TCP/ipc connect
        note("ready")
    while True:
        frames = sock.recv_multipart()
        fields = []
        try:
            fields = parse_header(frames[1]) if len(frames) > 1 else []
        except ValueError:
            pass
        note(f"request id={last(fields, 'id')} qid={last(fields, 'qid')}")
        if args.mode == "silent":
            continue_silently = True
            while continue_silently:  # never answer: the REP socket stays busy forever
                time.sleep(3600)
        if args.mode == "garbage":
            sock.send_multipart([b"\xff\x00not the protocol", b"type result"])
            continue
        if args.mode == "slow":
            time.sleep(args.delay)
        sock.send_multipart(handle(frames, args.name))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
