#!/usr/bin/env python3
"""Bulk TCP transfer with verification, for the end-to-end tests.

Modes (one connection each, then exit; every result is one JSON line on stdout):
  serve --listen HOST:PORT --file F   accept one client, send F, close      -> {"sent": N}
  sink  --listen HOST:PORT            accept one client, read to EOF         -> {"received": N, "sha256": HEX}
  fetch --connect HOST:PORT           connect, read to EOF                   -> {"received": N, "sha256": HEX}
  push  --connect HOST:PORT --file F  connect, send F, half-close, wait EOF  -> {"sent": N}
Listeners print {"listening": "HOST:PORT"} once they accept connections.
"""
import argparse
import hashlib
import json
import socket
import sys

CHUNK = 256 * 1024


def split_hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def say(obj):
    print(json.dumps(obj), flush=True)


def listen(hostport, timeout):
    host, port = split_hostport(hostport)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(1)
    srv.settimeout(timeout)
    say({"listening": hostport})
    conn, peer = srv.accept()
    srv.close()
    conn.settimeout(timeout)
    return conn, peer


def connect(hostport, timeout):
    host, port = split_hostport(hostport)
    return socket.create_connection((host, port), timeout=timeout)


def send_file(conn, path):
    sent = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            conn.sendall(block)
            sent += len(block)
    return sent


def read_all(conn):
    h = hashlib.sha256()
    n = 0
    while True:
        block = conn.recv(CHUNK)
        if not block:
            break
        h.update(block)
        n += len(block)
    return n, h.hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "sink", "fetch", "push"])
    p.add_argument("--listen")
    p.add_argument("--connect")
    p.add_argument("--file")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    if a.mode == "serve":
        conn, peer = listen(a.listen, a.timeout)
        n = send_file(conn, a.file)
        conn.shutdown(socket.SHUT_WR)
        read_all(conn)
        conn.close()
        say({"sent": n, "peer": peer[0]})
    elif a.mode == "sink":
        conn, peer = listen(a.listen, a.timeout)
        n, digest = read_all(conn)
        conn.close()
        say({"received": n, "sha256": digest, "peer": peer[0]})
    elif a.mode == "fetch":
        conn = connect(a.connect, a.timeout)
        n, digest = read_all(conn)
        conn.close()
        say({"received": n, "sha256": digest})
    else:
        conn = connect(a.connect, a.timeout)
        n = send_file(conn, a.file)
        conn.shutdown(socket.SHUT_WR)
        read_all(conn)
        conn.close()
        say({"sent": n})
    return 0


if __name__ == "__main__":
    sys.exit(main())
