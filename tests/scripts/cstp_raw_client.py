#!/usr/bin/env python3
"""A hand-driven AnyConnect (CSTP) client for the end-to-end tests.

It is a real TLS client (python's ssl module) that speaks the protocol the way openconnect 9.01
does -- POST / (XML init), POST <form action> (auth-reply), CONNECT /CSCOSSLC/tunnel -- and then
sends CSTP frames the test crafts: packets with a forged source address, or broken frames. Each
frame goes out in its own TLS record (one sendall per frame). It also plays misbehaving HTTP
clients (an oversized header block, a client that sends nothing).

Every scenario ends by printing one line {"result": {...}} on stdout; progress lines are JSON too.
Exit status: 0 when the scenario ran to its end (whatever it observed), 2 when login or CONNECT was
refused (the result says how), 1 on any other error.
"""
import argparse
import ipaddress
import json
import re
import socket
import ssl
import struct
import sys
import time
from xml.sax.saxutils import escape

UA = "Open AnyConnect VPN Agent v9.01-3"
T_DATA, T_DPD_REQ, T_DPD_RESP, T_DISCONNECT, T_KEEPALIVE, T_TERMINATE = 0, 3, 4, 5, 7, 9


def say(**kw):
    print(json.dumps(kw), flush=True)


def finish(code=0, **result):
    print(json.dumps({"result": result}), flush=True)
    sys.exit(code)


class Closed(Exception):
    """The server closed the connection (EOF, reset, or a TLS error)."""


class Conn:
    """One TLS connection with a read buffer."""

    def __init__(self, host, port, timeout, tls=True, tls_handshake=True):
        self.host, self.port = host, port
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = raw
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(raw, do_handshake_on_connect=tls_handshake)
        self.buf = b""

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            raise Closed(f"send: {e!r}") from e

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise
        except (OSError, ssl.SSLError) as e:
            raise Closed(f"recv: {e!r}") from e
        if not chunk:
            raise Closed("eof")
        self.buf += chunk

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, marker, limit=1 << 20):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise Closed("header block too long")
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_to_eof(self):
        try:
            while True:
                self._fill()
        except Closed:
            pass
        out, self.buf = self.buf, b""
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    m = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
    status = int(m.group(1)) if m else 0
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return status, status_line, headers


def header(headers, name):
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def read_response(conn):
    status, status_line, headers = parse_head(conn.read_until(b"\r\n\r\n")[:-4])
    length = header(headers, "Content-Length")
    if length is not None:
        body = conn.read_exact(int(length))
    elif (header(headers, "Transfer-Encoding") or "").lower() == "chunked":
        body = b""
        while True:
            size = int(conn.read_until(b"\r\n")[:-2].split(b";")[0], 16)
            if size == 0:
                conn.read_until(b"\r\n")
                break
            body += conn.read_exact(size)
            conn.read_exact(2)
    else:
        body = conn.read_to_eof()
    return status, status_line, headers, body.decode("utf-8", "replace")


class Session:
    """Login state: cookies and the current form action."""

    def __init__(self, args):
        self.args = args
        self.cookies = {}
        self.conn = None

    def connection(self):
        if self.conn is None:
            self.conn = Conn(self.args.host, self.args.port, self.args.timeout)
        return self.conn

    def request(self, method, path, body="", extra=()):
        conn = self.connection()
        host = self.args.host if self.args.port == 443 else f"{self.args.host}:{self.args.port}"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {UA}"]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        lines += ["Accept: */*", "Accept-Encoding: identity", "X-Transcend-Version: 1", "X-Aggregate-Auth: 1",
                  "X-Support-HTTP-Auth: true", "Content-Type: application/xml; charset=utf-8"]
        lines += list(extra)
        data = body.encode()
        lines.append(f"Content-Length: {len(data)}")
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        status, status_line, headers, text = read_response(conn)
        for k, v in headers:
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                value = rest.split(";", 1)[0]
                if value:
                    self.cookies[name.strip()] = value
                else:
                    self.cookies.pop(name.strip(), None)
        if (header(headers, "Connection") or "").lower() == "close":
            conn.close()
            self.conn = None
        return status, status_line, text

    def login(self):
        a = self.args
        init = ('<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="init" '
                'aggregate-auth-version="2"><version who="vpn">v9.01-3</version><device-id>linux-64</device-id>'
                f'<group-access>https://{a.host}/</group-access></config-auth>')
        status, status_line, text = self.request("POST", "/", init)
        action = "/"
        for _ in range(4):
            if status != 200:
                finish(2, stage="auth", status=status, status_line=status_line)
            token = re.search(r"<session-token>([^<]+)</session-token>", text)
            if re.search(r'<auth id="success"', text):
                if token:
                    self.cookies["webvpn"] = token.group(1)
                if "webvpn" not in self.cookies:
                    finish(1, stage="auth", error="success without a webvpn cookie")
                say(event="authenticated")
                return
            m = re.search(r'<form[^>]*action="([^"]*)"', text)
            action = m.group(1) if m else action
            fields = []
            for tag in re.findall(r"<input[^>]*>", text):
                typ = (re.search(r'type="([^"]*)"', tag) or [None, ""])[1]
                name = (re.search(r'name="([^"]*)"', tag) or [None, ""])[1]
                value = (re.search(r'value="([^"]*)"', tag) or [None, ""])[1]
                if typ == "password":
                    fields.append((name, a.password))
                elif typ == "text" and re.match(r"(?i)(user|uname)", name):
                    fields.append((name, a.user))
                elif typ == "hidden":
                    fields.append((name, value))
            if not fields:
                finish(2, stage="auth", error="form without inputs", body=text[:500])
            auth = "".join(f"<{n}>{escape(v)}</{n}>" for n, v in fields)
            reply = ('<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="auth-reply" '
                     'aggregate-auth-version="2"><version who="vpn">v9.01-3</version><device-id>linux-64</device-id>'
                     f"<auth>{auth}</auth></config-auth>")
            status, status_line, text = self.request("POST", action, reply)
        finish(2, stage="auth", error="too many forms")

    def connect(self):
        """CONNECT on a fresh TLS connection; returns (conn, info dict)."""
        a = self.args
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        conn = Conn(a.host, a.port, a.timeout)
        host = a.host if a.port == 443 else f"{a.host}:{a.port}"
        req = (f"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\n"
               f"Cookie: webvpn={self.cookies['webvpn']}\r\nX-CSTP-Version: 1\r\nX-CSTP-Hostname: e2e-raw\r\n"
               "X-CSTP-Base-MTU: 1500\r\nX-CSTP-MTU: 1400\r\nX-CSTP-Address-Type: IPv6,IPv4\r\n"
               "X-CSTP-Full-IPv6-Capability: true\r\n\r\n")
        conn.send(req.encode())
        status, status_line, headers = parse_head(conn.read_until(b"\r\n\r\n")[:-4])
        if status != 200:
            finish(2, stage="connect", status=status, status_line=status_line,
                   x_reason=header(headers, "X-Reason"))
        info = {"status_line": status_line, "address": None, "address6": None, "mtu": None}
        for k, v in headers:
            if k == "X-CSTP-Address":
                if ":" in v:
                    info["address6"] = v.split("/")[0]
                else:
                    info["address"] = v
            elif k == "X-CSTP-Address-IP6":
                info["address6"] = v.split("/")[0]
            elif k == "X-CSTP-MTU":
                info["mtu"] = int(v)
        say(event="connected", **info)
        return conn, info


def frame(ftype, payload=b"", magic=b"STF\x01", byte7=0, length=None):
    n = len(payload) if length is None else length
    return magic + struct.pack(">HBB", n, ftype, byte7) + payload


def read_frame(conn):
    head = conn.read_exact(8)
    if head[:4] != b"STF\x01":
        raise Closed(f"bad frame magic from server: {head!r}")
    n, ftype, _ = struct.unpack(">HBB", head[4:])
    return ftype, conn.read_exact(n)


def csum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def echo4(src, dst, ident, seq=1, payload=b"e2e-raw-client-echo"):
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + icmp


def echo6(src, dst, ident, seq=1, payload=b"e2e-raw-client-echo"):
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    icmp = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    pseudo = s + d + struct.pack("!I", len(icmp)) + b"\x00\x00\x00\x3a"
    icmp = icmp[:2] + struct.pack("!H", csum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB", 0x60000000, len(icmp), 58, 64) + s + d + icmp


def is_echo_reply(pkt, ident):
    if len(pkt) >= 28 and pkt[0] >> 4 == 4 and pkt[9] == 1:
        ihl = (pkt[0] & 0x0F) * 4
        return pkt[ihl] == 0 and struct.unpack("!H", pkt[ihl + 4:ihl + 6])[0] == ident
    if len(pkt) >= 48 and pkt[0] >> 4 == 6 and pkt[6] == 58:
        return pkt[40] == 129 and struct.unpack("!H", pkt[44:46])[0] == ident
    return False


def pump(conn, until, timeout):
    """Reads frames for up to `timeout` s, answering DPD requests. Returns (matched, closed, types seen).
    `until(ftype, payload)` returning True stops early with matched=True."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, None, seen
        conn.settimeout(left)
        try:
            ftype, payload = read_frame(conn)
        except socket.timeout:
            return False, None, seen
        except Closed as e:
            return False, str(e), seen
        seen.append(ftype)
        if ftype == T_DPD_REQ:
            conn.send(frame(T_DPD_RESP))
        if until(ftype, payload):
            return True, None, seen


def alive(conn):
    conn.send(frame(T_DPD_REQ))
    ok, closed, _ = pump(conn, lambda t, p: t == T_DPD_RESP, 5)
    return ok


def logout(conn):
    try:
        conn.send(frame(T_DISCONNECT, b"\xb0e2e raw client done"))
    except Closed:
        pass
    conn.close()


def wait_closed(conn, max_wait):
    """Waits until the server closes; returns (closed?, how, seconds, frame types received)."""
    start = time.monotonic()
    _, closed, seen = pump(conn, lambda t, p: False, max_wait)
    return closed is not None, closed, round(time.monotonic() - start, 3), seen


def scenario_login(a):
    s = Session(a)
    s.login()
    conn, info = s.connect()
    ok = alive(conn)
    logout(conn)
    finish(0, **info, dpd_answered=ok)


def scenario_spoof(a):
    s = Session(a)
    s.login()
    conn, info = s.connect()
    sent4 = sent6 = 0
    for i in range(a.count):
        conn.send(frame(T_DATA, echo4(a.spoof_src, a.dst, 0x5100 + i)))
        sent4 += 1
    if info["address6"] and a.spoof_src6 and a.dst6:
        for i in range(a.count):
            conn.send(frame(T_DATA, echo6(a.spoof_src6, a.dst6, 0x6100 + i)))
            sent6 += 1
    conn.send(frame(T_DATA, echo4(info["address"], a.dst, 0x4242)))
    legit4, closed, _ = pump(conn, lambda t, p: t == T_DATA and is_echo_reply(p, 0x4242), 10)
    legit6 = None
    if info["address6"] and a.dst6 and not closed:
        conn.send(frame(T_DATA, echo6(info["address6"], a.dst6, 0x4343)))
        legit6, closed, _ = pump(conn, lambda t, p: t == T_DATA and is_echo_reply(p, 0x4343), 10)
    still_alive = (not closed) and alive(conn)
    logout(conn)
    finish(0, **info, spoofed_v4_sent=sent4, spoofed_v6_sent=sent6, legit_reply_v4=legit4,
           legit_reply_v6=legit6, closed=closed, alive_after=still_alive)


def scenario_bad_frame(a):
    s = Session(a)
    s.login()
    conn, info = s.connect()
    before = alive(conn)
    legit = echo4(info["address"], a.dst, 0x7777)
    if a.kind == "magic":
        bad = frame(T_DATA, legit, magic=b"XTF\x01")
    elif a.kind == "byte7":
        bad = frame(T_DATA, legit, byte7=1)
    elif a.kind == "oversize":
        bad = frame(T_DATA, bytes(a.oversize))
    else:
        raise SystemExit(f"unknown kind {a.kind}")
    conn.send(bad)
    closed, how, secs, seen = wait_closed(conn, a.max_wait)
    finish(0, **info, alive_before=before, kind=a.kind, frame_len=len(bad), closed=closed, how=how,
           seconds=secs, frames_received=seen)


def scenario_header_flood(a):
    conn = Conn(a.host, a.port, a.timeout)
    head = f"POST / HTTP/1.1\r\nHost: {a.host}\r\nUser-Agent: {UA}\r\n".encode()
    sent, closed_early = 0, None
    try:
        conn.send(head)
        sent += len(head)
        i = 0
        while sent < a.size:
            line = f"X-Filler-{i}: {'a' * 200}\r\n".encode()
            conn.send(line)
            sent += len(line)
            i += 1
        conn.send(b"Content-Length: 0\r\n\r\n")
        sent += 21
    except Closed as e:
        closed_early = str(e)
    start = time.monotonic()
    conn.settimeout(a.max_wait)
    status_line, closed, how = None, False, closed_early
    try:
        data = conn.read_to_eof()
        closed = True
        how = how or "eof"
        if data:
            status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    except socket.timeout:
        closed = closed_early is not None
    finish(0, sent=sent, closed=closed, how=how, status_line=status_line,
           seconds=round(time.monotonic() - start, 3))


def scenario_silent(a):
    start = time.monotonic()
    conn = Conn(a.host, a.port, a.timeout, tls=(a.phase == "tls"))
    handshake = round(time.monotonic() - start, 3)
    conn.settimeout(a.max_wait)
    closed, how = False, None
    try:
        while True:
            chunk = conn.sock.recv(4096)
            if not chunk:
                closed, how = True, "eof"
                break
    except socket.timeout:
        pass
    except (OSError, ssl.SSLError) as e:
        closed, how = True, repr(e)
    finish(0, phase=a.phase, handshake_seconds=handshake, closed=closed, how=how,
           seconds=round(time.monotonic() - start, 3))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="198.18.1.1:443")
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--max-wait", type=float, default=10.0, help="how long to wait for the server to close")
    sub = p.add_subparsers(dest="scenario", required=True)
    sub.add_parser("login", help="log in, CONNECT, check DPD, log out")
    sp = sub.add_parser("spoof", help="send echo requests with a forged source, then a legitimate one")
    sp.add_argument("--spoof-src", required=True)
    sp.add_argument("--spoof-src6")
    sp.add_argument("--dst", required=True)
    sp.add_argument("--dst6")
    sp.add_argument("--count", type=int, default=3)
    bf = sub.add_parser("bad-frame", help="send one broken CSTP frame and wait for the server to close")
    bf.add_argument("--kind", choices=["magic", "byte7", "oversize"], required=True)
    bf.add_argument("--dst", default="198.18.2.10")
    bf.add_argument("--oversize", type=int, default=9000, help="payload length for --kind oversize")
    hf = sub.add_parser("header-flood", help="send an HTTP header block of --size bytes")
    hf.add_argument("--size", type=int, default=20000)
    si = sub.add_parser("silent", help="connect and send nothing")
    si.add_argument("--phase", choices=["tcp", "tls"], required=True)
    a = p.parse_args()
    host, _, port = a.server.rpartition(":")
    a.host, a.port = host, int(port)
    try:
        {"login": scenario_login, "spoof": scenario_spoof, "bad-frame": scenario_bad_frame,
         "header-flood": scenario_header_flood, "silent": scenario_silent}[a.scenario](a)
    except Closed as e:
        finish(1, error=f"connection closed unexpectedly: {e}")
    except (OSError, ssl.SSLError) as e:
        finish(1, error=repr(e))


if __name__ == "__main__":
    main()
