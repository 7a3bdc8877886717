#!/usr/bin/env python3
"""UDP datagrams a DTLS gateway must drop, for the end-to-end tests (tests/tests/dtls.rs).

Runs only inside the test's network namespaces, towards the gateway address the test gives it.
Every loop is bounded by --count; nothing runs forever except `capture`, which the test kills.

  flood    --dst IP:PORT --count N --app-id HEX [--expired HEX] [--sockets K]
           N datagrams, round robin over K source ports: random bytes (never a handshake record),
           ClientHellos naming the live App-ID truncated at random points, ClientHellos naming
           random unknown App-IDs, and (with --expired) ClientHellos naming an expired App-ID.
           Prints one JSON line with how many of each were sent.
  hello    --dst IP:PORT --app-id HEX [--then N]
           One well-formed ClientHello (openconnect's shape, protocol doc 7.3) naming the App-ID,
           then N application-data-looking datagrams from the same socket. JSON summary.
  replay   --dst IP:PORT --file F
           Sends every captured datagram (hex, one per line) in F from one new socket, in order.
  capture  --iface IF --dst IP --dport PORT
           Prints (hex, one per line, flushed) the UDP payload of every handshake or
           change-cipher-spec datagram this namespace sends to IP:PORT (AF_PACKET, outgoing).
"""
import argparse
import json
import os
import random
import socket
import struct
import sys
import time

SIGALGS = bytes([8, 4, 4, 3, 8, 7, 4, 1, 8, 5, 5, 3, 5, 1, 8, 6, 6, 3, 6, 1,
                 8, 8, 8, 9, 8, 10, 8, 11, 2, 1, 2, 3])
SUITES = [0x00A9, 0xCCAB, 0xC0A5, 0x008D, 0x00A8, 0xC0A4, 0x008C, 0x00AE]


def client_hello(app_id: bytes) -> bytes:
    """The 168-byte ClientHello openconnect 9.01 sends (protocol doc 7.3), naming app_id."""
    body = b"\xfe\xfd" + os.urandom(32) + bytes([len(app_id)]) + app_id + b"\x00"
    body += struct.pack(">H", 2 * len(SUITES)) + b"".join(struct.pack(">H", s) for s in SUITES)
    body += b"\x01\x00"
    ext = bytes([0, 0x0D, 0, 0x22, 0, 0x20]) + SIGALGS
    ext += bytes([0, 0x23, 0, 0]) + bytes([0xFF, 1, 0, 1, 0]) + bytes([0, 0x1C, 0, 2, 0x40, 0])
    body += struct.pack(">H", len(ext)) + ext
    n = struct.pack(">I", len(body))[1:]
    hs = b"\x01" + n + b"\x00\x00" + b"\x00\x00\x00" + n + body
    return b"\x16\xfe\xff" + b"\x00" * 8 + struct.pack(">H", len(hs)) + hs


def dst(s: str):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def sender_sockets(k: int):
    socks = []
    for _ in range(k):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        socks.append(s)
    return socks


def paced_send(sock, data, addr, i):
    # ~100k datagrams/s at most, so the gateway's receive buffer is not what is being tested.
    while True:
        try:
            sock.sendto(data, addr)
            break
        except (BlockingIOError, ConnectionRefusedError):
            time.sleep(0.001)
    if i % 500 == 499:
        time.sleep(0.005)


def flood(a):
    addr = dst(a.dst)
    live = bytes.fromhex(a.app_id)
    expired = bytes.fromhex(a.expired) if a.expired else None
    socks = sender_sockets(a.sockets)
    rng = random.Random(a.seed)
    kinds = ["random", "truncated", "unknown"] + (["expired"] if expired else [])
    sent = {k: 0 for k in kinds}
    full = client_hello(live)
    for i in range(a.count):
        kind = kinds[i % len(kinds)]
        if kind == "random":
            n = rng.randint(1, 1400)
            d = bytearray(rng.getrandbits(8) for _ in range(min(n, 64))) + bytes(max(0, n - 64))
            if d[0] == 0x16:
                d[0] = 0x17 if rng.random() < 0.5 else 0x00
            d = bytes(d)
        elif kind == "truncated":
            d = full[: rng.randint(60, len(full) - 1)]
        elif kind == "unknown":
            d = client_hello(bytes(rng.getrandbits(8) for _ in range(32)))
        else:
            d = client_hello(expired)
        paced_send(socks[i % len(socks)], d, addr, i)
        sent[kind] += 1
    print(json.dumps({"sent": sent, "total": a.count}), flush=True)


def hello(a):
    addr = dst(a.dst)
    s = sender_sockets(1)[0]
    s.sendto(client_hello(bytes.fromhex(a.app_id)), addr)
    rng = random.Random(a.seed)
    for i in range(a.then):
        body = bytes(rng.getrandbits(8) for _ in range(40))
        d = b"\x17\xfe\xfd\x00\x01" + struct.pack(">Q", i + 1)[2:] + struct.pack(">H", 40) + body
        paced_send(s, d, addr, i)
    print(json.dumps({"hello": 1, "then": a.then, "port": s.getsockname()[1]}), flush=True)


def replay(a):
    addr = dst(a.dst)
    s = sender_sockets(1)[0]
    n = 0
    with open(a.file) as f:
        for line in f:
            line = line.strip()
            if line:
                s.sendto(bytes.fromhex(line), addr)
                n += 1
    print(json.dumps({"replayed": n}), flush=True)


def capture(a):
    want_ip = socket.inet_aton(a.dst)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((a.iface, 0))
    print("capturing", flush=True)
    while True:
        pkt, meta = s.recvfrom(65535)
        if meta[2] != socket.PACKET_OUTGOING or len(pkt) < 14 + 20 + 8:
            continue
        if pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or ip[16:20] != want_ip:
            continue
        udp = ip[ihl:]
        if struct.unpack(">H", udp[2:4])[0] != a.dport:
            continue
        payload = udp[8:struct.unpack(">H", udp[4:6])[0]]
        if payload[:1] in (b"\x14", b"\x16"):
            print(payload.hex(), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--dst", required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--app-id", required=True)
    f.add_argument("--expired")
    f.add_argument("--sockets", type=int, default=16)
    f.add_argument("--seed", type=int, default=1)
    h = sub.add_parser("hello")
    h.add_argument("--dst", required=True)
    h.add_argument("--app-id", required=True)
    h.add_argument("--then", type=int, default=0)
    h.add_argument("--seed", type=int, default=2)
    r = sub.add_parser("replay")
    r.add_argument("--dst", required=True)
    r.add_argument("--file", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--iface", required=True)
    c.add_argument("--dst", required=True)
    c.add_argument("--dport", type=int, required=True)
    a = p.parse_args()
    {"flood": flood, "hello": hello, "replay": replay, "capture": capture}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
