#!/usr/bin/env python3
"""Writes docs/benchmarks.md (to stdout) from one benches/anchor/run.sh result directory.

Every number is the median over the run's repetitions; ratios are tunneld / ocserv. Nothing here is
typed in by hand: re-running run.sh regenerates the whole page.
"""

import glob
import json
import os
import statistics
import sys
import tomllib


def load(path):
    with open(path) as f:
        return json.load(f)


def runs(out, server, kind):
    """The harness reports <server>-<kind>-<rep>.json, in repetition order."""
    files = sorted(glob.glob(os.path.join(out, f"{server}-{kind}-[0-9]*.json")))
    return [load(f) for f in files]


def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d


def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def iperf(out, server, direction):
    path = os.path.join(out, f"{server}-iperf-{direction}.json")
    if not os.path.exists(path):
        return None, None
    r = load(path)
    bps = get(r, "end", "sum_received", "bits_per_second")
    secs = get(r, "end", "sum_received", "seconds")
    try:
        before = load(os.path.join(out, f"{server}-iperf-{direction}-cpu-before.json"))
        after = load(os.path.join(out, f"{server}-iperf-{direction}-cpu-after.json"))
        cores = (after["cpu_s"] - before["cpu_s"]) / secs if secs else None
    except (OSError, KeyError, ValueError):
        cores = None
    mbit = bps / 1e6 if bps else None
    cores_per_gbit = cores / (mbit / 1000) if cores and mbit else None
    return mbit, cores_per_gbit


def mean_size(reports):
    """Mean IP packet size the harness carried (bytes both ways over probes both ways)."""
    sizes = []
    for r in reports:
        a = r.get("action") or {}
        n = (a.get("probes_sent") or 0) + (a.get("probes_received") or 0)
        if n:
            sizes.append(((a.get("bytes_sent") or 0) + (a.get("bytes_received") or 0)) / n)
    return med(sizes)


def iperf_retransmits(out, server, direction):
    """TCP segments the iperf3 sender retransmitted (the corp host's, with -R)."""
    path = os.path.join(out, f"{server}-iperf-{direction}.json")
    if not os.path.exists(path):
        return None
    return get(load(path), "end", "sum_sent", "retransmits")


def ping_median(out, server, kind):
    path = os.path.join(out, f"{server}-ping-{kind}.txt")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        vals = [float(x) for x in f.read().split() if x]
    return statistics.median(vals) if vals else None


def server_metrics(out, server):
    m = {}
    conn = runs(out, server, "connect")
    m["reps"] = len(conn)
    m["n_idle"] = med([get(r, "connect", "attempted") for r in conn])
    m["up_all"] = all(get(r, "connect", "up") == get(r, "connect", "attempted") for r in conn) if conn else None
    m["setup_rate"] = med([get(r, "connect", "setups_per_s") for r in conn])
    m["setups_per_cpu"] = med([get(r, "server", "setups_per_cpu_s") for r in conn])
    m["setup_p50"] = med([get(r, "connect", "setup_ms", "p50_ms") for r in conn])
    m["setup_p99"] = med([get(r, "connect", "setup_ms", "p99_ms") for r in conn])
    m["pss_session"] = med([get(r, "server", "pss_per_session_kib") for r in conn])
    m["rss_session"] = med([get(r, "server", "rss_per_session_kib") for r in conn])
    m["procs"] = med([get(r, "server", "after_connect", "processes") for r in conn])
    cc = runs(out, server, "certconnect")
    m["cert_up_all"] = all(get(r, "connect", "up") == get(r, "connect", "attempted") for r in cc) if cc else None
    m["cert_setup_rate"] = med([get(r, "connect", "setups_per_s") for r in cc])
    cg = runs(out, server, "certgoal")
    m["certgoal_n"] = med([get(r, "connect", "attempted") for r in cg])
    m["certgoal_per_cpu"] = med([get(r, "server", "setups_per_cpu_s") for r in cg])
    m["certgoal_all"] = sorted(get(r, "server", "setups_per_cpu_s") for r in cg)
    m["certgoal_up_all"] = all(get(r, "connect", "up") == get(r, "connect", "attempted") for r in cg) if cg else None
    m["cert_setups_per_cpu"] = med([get(r, "server", "setups_per_cpu_s") for r in cc])
    m["cert_setup_p50"] = med([get(r, "connect", "setup_ms", "p50_ms") for r in cc])
    td = runs(out, server, "throughput-dtls")
    m["dtls_tput_up_all"] = all(get(r, "connect", "dtls_up") == get(r, "connect", "up") for r in td) if td else None
    m["dtls_tput_mbit"] = med([get(r, "action", "mbit_per_s") for r in td])
    m["dtls_tput_cores_per_gbit"] = med([get(r, "server", "cores_per_gbit") for r in td])
    m["dtls_tput_rtt_p50"] = med([get(r, "action", "rtt_ms", "p50_ms") for r in td])
    m["dtls_tput_unanswered"] = sum(get(r, "action", "probes_unanswered") or 0 for r in td)
    tp = runs(out, server, "throughput")
    m["tput_sessions"] = med([get(r, "action", "sessions") for r in tp])
    m["tput_mbit"] = med([get(r, "action", "mbit_per_s") for r in tp])
    m["tput_pps"] = med([get(r, "action", "packets_per_s") for r in tp])
    m["tput_mean_size"] = mean_size(tp)
    m["dtls_tput_mean_size"] = mean_size(td)
    for kind, prefix in (("throughput-udp", "udp_"), ("throughput-udp-dtls", "udp_dtls_")):
        ur = runs(out, server, kind)
        m[f"{prefix}tput_mbit"] = med([get(r, "action", "mbit_per_s") for r in ur])
        m[f"{prefix}tput_cores_per_gbit"] = med([get(r, "server", "cores_per_gbit") for r in ur])
        m[f"{prefix}tput_rtt_p50"] = med([get(r, "action", "rtt_ms", "p50_ms") for r in ur])
        m[f"{prefix}tput_unanswered"] = sum(get(r, "action", "probes_unanswered") or 0 for r in ur)
        m[f"{prefix}tput_up_all"] = all(get(r, "connect", "up") == get(r, "connect", "attempted") for r in ur) if ur else None
    m["tput_cores_per_gbit"] = med([get(r, "server", "cores_per_gbit") for r in tp])
    m["tput_cores"] = med([get(r, "server", "action_cores") for r in tp])
    m["tput_rtt_p50"] = med([get(r, "action", "rtt_ms", "p50_ms") for r in tp])
    m["tput_rtt_p99"] = med([get(r, "action", "rtt_ms", "p99_ms") for r in tp])
    m["tput_fair"] = med([get(r, "action", "fairness") for r in tp])
    m["tput_unanswered"] = sum(get(r, "action", "probes_unanswered") or 0 for r in tp)
    st = runs(out, server, "storm")
    m["storm_n"] = med([get(r, "connect", "up") for r in st])
    m["storm_recovered"] = med([get(r, "action", "recovered") for r in st])
    m["storm_all_s"] = med([(get(r, "action", "recovery_ms", "max_ms") or 0) / 1000 for r in st])
    m["storm_p50"] = med([get(r, "action", "recovery_ms", "p50_ms") for r in st])
    m["storm_moved"] = med([get(r, "action", "address_changed") for r in st])
    ra = runs(out, server, "reauth")
    m["reauth_n"] = med([get(r, "connect", "up") for r in ra])
    m["reauth_all_s"] = med([(get(r, "action", "recovery_ms", "max_ms") or 0) / 1000 for r in ra])
    m["reauth_recovered_all"] = all(get(r, "action", "recovered") == get(r, "connect", "up") for r in ra) if ra else None
    m["iperf_up"], m["iperf_up_cpg"] = iperf(out, server, "up")
    direct = ping_median(out, server, "direct")
    m["iperf_down"], m["iperf_down_cpg"] = iperf(out, server, "down")
    m["dtls_iperf_up"], m["dtls_iperf_up_cpg"] = iperf(out, f"{server}-dtls", "up")
    m["dtls_iperf_down"], m["dtls_iperf_down_cpg"] = iperf(out, f"{server}-dtls", "down")
    for tag, prefix in ((server, ""), (f"{server}-dtls", "dtls_")):
        for direction in ("up", "down"):
            m[f"{prefix}iperf_{direction}_retrans"] = iperf_retransmits(out, tag, direction)
    dtls_tunnel = ping_median(out, f"{server}-dtls", "tunnel")
    m["dtls_added_latency"] = dtls_tunnel - direct if dtls_tunnel is not None and direct is not None else None
    tunnel = ping_median(out, server, "tunnel")
    m["ping_direct"] = direct
    m["ping_tunnel"] = tunnel
    m["added_latency"] = tunnel - direct if tunnel is not None and direct is not None else None
    m["problems"] = sorted({p for r in conn + cc + tp + td + st + ra for p in (r.get("problems") or [])})
    return m


def main():
    out = sys.argv[1]
    with open(os.path.join(out, "machine.txt")) as f:
        machine = f.read().strip()
    params = dict(line.split(": ", 1) for line in machine.splitlines() if ": " in line)
    ours = server_metrics(out, "tunneld")
    theirs = server_metrics(out, "ocserv")
    p = print

    p("# Benchmarks")
    p()
    p("Every number on this page was measured on the machine below by `benches/anchor/run.sh`, which")
    p("runs tunneld and ocserv one after the other on the same network namespaces, with the same")
    p("certificate (ECDSA P-256), users file (SHA-512 crypt), address pool, split route, tunnel MTU")
    p("(1400 over TLS and over DTLS: ocserv's `mtu` is the link MTU it subtracts its overheads from, so")
    p("run.sh sets it to get 1400; the harness never sends more than the MTU a session was given),")
    p("timers and TLS cipher order (the server's order: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305,")
    p("tunneld's `tls.cipher_suites` default; both agree on TLS_AES_128_GCM_SHA256 with every client")
    p("here), and measures both with the same harness (`tunnel-bench`, the Rust client of the")
    p("protocol, no TUN on the client side) and with the real openconnect 9.01 + iperf3. Numbers are")
    p("medians over the repetitions; ratios are **tunneld / ocserv**. The page is generated by")
    p("`benches/anchor/report.py` from the run's JSON; nothing is typed in by hand.")
    p()
    p("```text")
    p(machine)
    p("```")
    p()
    p("Sessions log in as USERS different users (`bench0`, `bench1`, ...; see the parameters above),")
    p("several devices per user at the larger N, as a fleet of devices would.")
    p()
    p("Both servers offer DTLS 1.2 (PSK) on UDP 443 next to CSTP over TLS on TCP 443, as deployed.")
    p("Rows without a mark carry packets in CSTP over TLS (the harness without --dtls, openconnect")
    p("with --no-dtls); rows marked DTLS ran the harness with --dtls, or openconnect as it runs by")
    p("default, and count only if DTLS came up. Logins check the password (SHA-512 crypt) unless")
    p("marked certificate: those log in with a device certificate (see DEVICE_KEY above) and no")
    p("password, as Microsoft Tunnel devices do (tunneld auth.method = \"certificate\", ocserv")
    p("auth = \"certificate\"). ocserv's")
    p("per-source rate limit and ban score are off (the harness opens many sessions from eight")
    p("source addresses). The client processes run on the same two cores as the server, so every")
    p("rate below is a lower bound for the server alone, and equally so for both.")
    p()
    p("## Side by side")
    p()
    p("| measure | tunneld | ocserv | ratio | better when |")
    p("|---|---:|---:|---:|---|")

    def row(name, key, better, digits=1):
        a, b = ours.get(key), theirs.get(key)
        r = ratio(a, b)
        p(f"| {name} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(r, 2) if r is not None else 'n/a'} | {better} |")

    n_idle = int(ours.get("n_idle") or 0)
    row(f"session setup rate, {n_idle} sessions (sessions/s)", "setup_rate", "higher")
    row("full setups per server CPU-second", "setups_per_cpu", "higher")
    row("setup latency p50 (ms)", "setup_p50", "lower", 2)
    row("setup latency p99 (ms)", "setup_p99", "lower", 2)
    row(f"certificate: session setup rate, {n_idle} sessions (sessions/s)", "cert_setup_rate", "higher")
    row("certificate: full setups per server CPU-second", "cert_setups_per_cpu", "higher")
    row("certificate: setup latency p50 (ms)", "cert_setup_p50", "lower", 2)
    row(f"server memory per idle session, PSS (KiB), {n_idle} sessions", "pss_session", "lower")
    row(f"server memory per idle session, RSS (KiB), {n_idle} sessions", "rss_session", "lower")
    nt = int(ours.get("tput_sessions") or 0)
    row(f"aggregate throughput, {nt} sessions, both ways (Mbit/s)", "tput_mbit", "higher")
    row(f"aggregate packets/s, {nt} sessions", "tput_pps", "higher")
    row("mean IP packet size in that run (bytes)", "tput_mean_size", "equal", 0)
    row("server cores per Gbit/s (harness throughput)", "tput_cores_per_gbit", "lower", 2)
    row("round trip under that load, p50 (ms)", "tput_rtt_p50", "lower", 2)
    row("round trip under that load, p99 (ms)", "tput_rtt_p99", "lower", 2)
    row("per-session fairness under load (Jain, 1 = equal)", "tput_fair", "higher", 3)
    row(f"DTLS: aggregate throughput, {nt} sessions, both ways (Mbit/s)", "dtls_tput_mbit", "higher")
    row("DTLS: server cores per Gbit/s (harness throughput)", "dtls_tput_cores_per_gbit", "lower", 2)
    row("DTLS: mean IP packet size in that run (bytes)", "dtls_tput_mean_size", "equal", 0)
    row("DTLS: round trip under that load, p50 (ms)", "dtls_tput_rtt_p50", "lower", 2)
    row(f"UDP echo: aggregate throughput, {nt} sessions, both ways (Mbit/s)", "udp_tput_mbit", "higher")
    row("UDP echo: server cores per Gbit/s (harness throughput)", "udp_tput_cores_per_gbit", "lower", 2)
    row("UDP echo: round trip under that load, p50 (ms)", "udp_tput_rtt_p50", "lower", 2)
    row(f"UDP echo, DTLS: aggregate throughput, {nt} sessions, both ways (Mbit/s)", "udp_dtls_tput_mbit", "higher")
    row("UDP echo, DTLS: server cores per Gbit/s (harness throughput)", "udp_dtls_tput_cores_per_gbit", "lower", 2)
    ns = int(ours.get("storm_n") or 0)
    row(f"storm: all {ns} sessions back by cookie reconnect (s)", "storm_all_s", "lower", 2)
    row("storm: sessions handed a different address on reconnect", "storm_moved", "lower (openconnect quits on a new address)", 0)
    if ours.get("reauth_n"):
        row(f"storm: all {int(ours['reauth_n'])} sessions back by logout and full password login (s)", "reauth_all_s", "lower", 2)
    row("openconnect + iperf3, upload (Mbit/s)", "iperf_up", "higher")
    row("openconnect + iperf3, download (Mbit/s)", "iperf_down", "higher")
    row("server cores per Gbit/s (iperf3 upload)", "iperf_up_cpg", "lower", 2)
    row("server cores per Gbit/s (iperf3 download)", "iperf_down_cpg", "lower", 2)
    row("added latency through the tunnel, ping median (ms)", "added_latency", "lower", 3)
    row("TCP segments iperf3 retransmitted, upload", "iperf_up_retrans", "lower", 0)
    row("TCP segments iperf3 retransmitted, download", "iperf_down_retrans", "lower", 0)
    row("DTLS: openconnect + iperf3, upload (Mbit/s)", "dtls_iperf_up", "higher")
    row("DTLS: openconnect + iperf3, download (Mbit/s)", "dtls_iperf_down", "higher")
    row("DTLS: server cores per Gbit/s (iperf3 upload)", "dtls_iperf_up_cpg", "lower", 2)
    row("DTLS: server cores per Gbit/s (iperf3 download)", "dtls_iperf_down_cpg", "lower", 2)
    row("DTLS: TCP segments iperf3 retransmitted, upload", "dtls_iperf_up_retrans", "lower", 0)
    row("DTLS: TCP segments iperf3 retransmitted, download", "dtls_iperf_down_retrans", "lower", 0)
    row("DTLS: added latency through the tunnel, ping median (ms)", "dtls_added_latency", "lower", 3)
    p()
    for name, m in (("tunneld", ours), ("ocserv", theirs)):
        if m["problems"] or m["tput_unanswered"] or m["dtls_tput_unanswered"]:
            p(f"Problems reported for {name}: {'; '.join(m['problems']) or 'none'}; "
              f"unanswered probes in throughput runs: {m['tput_unanswered']} (CSTP), {m['dtls_tput_unanswered']} (DTLS), "
              f"{m['udp_tput_unanswered']} (UDP echo), {m['udp_dtls_tput_unanswered']} (UDP echo, DTLS).")
            p()

    p("## How many sessions one tunneld process holds")
    p()
    p("| sessions asked | threads with private file tables | up | setup rate (sessions/s) | PSS per session (KiB) | RSS per session (KiB) | client processes |")
    p("|---:|---:|---:|---:|---:|---:|---:|")
    scale = []
    for pattern, threads in (("tunneld-scale-*.json", 0), ("tunneld-mtscale-*.json", 4)):
        for path in glob.glob(os.path.join(out, pattern)):
            r = load(path)
            r["_threads"] = threads
            scale.append(r)
    scale.sort(key=lambda r: (r["_threads"], r["sessions"]))
    for r in scale:
        p(f"| {r['sessions']:,} | {r['_threads'] or 'off (default)'} | {get(r, 'connect', 'up'):,} | {fmt(get(r, 'connect', 'setups_per_s'))} | "
          f"{fmt(get(r, 'server', 'pss_per_session_kib'))} | {fmt(get(r, 'server', 'rss_per_session_kib'))} | {r['processes']} |")
        if get(r, "connect", "failed"):
            p(f"|  | | failures: {get(r, 'connect', 'failed')} | | | | |")
    p()
    best = max((r for r in scale if get(r, "connect", "up") == r["sessions"]), key=lambda r: r["sessions"], default=None)
    if best:
        p(f"Largest N held with every session up: **{best['sessions']:,}** "
          f"({'default single file table' if not best['_threads'] else str(best['_threads']) + ' threads with private file tables'}).")
        p()
    timers = {}
    conf = os.path.join(out, "tunneld.toml")
    if os.path.exists(conf):
        with open(conf, "rb") as f:
            timers = tomllib.load(f).get("timers", {})
    for r in scale:
        a = r.get("action") or {}
        if r.get("scenario") != "hold" or not a:
            continue
        r["_keepalive"], r["_dpd"] = timers.get("keepalive_secs"), timers.get("dpd_secs")
        lost = sum((a.get("lost_sessions") or {}).values())
        p(f"Idle devices: the {get(r, 'connect', 'up'):,} sessions were then held {fmt(a.get('wall_s'), 0)} s with no traffic but the")
        p(f"keepalives and DPD the server asks for (every {fmt(r.get('_keepalive'), 0)} s and {fmt(r.get('_dpd'), 0)} s): {lost:,} lost,")
        p(f"{a.get('keepalives', 0):,} keepalives sent and {a.get('dpd_answered', 0):,} of {a.get('dpd_sent', 0):,} DPD requests answered. tunneld used")
        p(f"{fmt(get(r, 'server', 'action_cores'), 3)} cores on average meanwhile, and its PSS went from")
        p(f"{fmt(get(r, 'server', 'after_connect', 'pss_kib') / 1024, 0)} to {fmt(get(r, 'server', 'after_action', 'pss_kib') / 1024, 0)} MiB.")
        p()
    p("One TCP session is one open file in the server. This machine caps every process at 20,000")
    p("open files and the cap cannot be raised, so the default tunneld (one file table, as on a real")
    p("host with `LimitNOFILE=` raised in its unit) tops out just under 20,000 sessions here. With")
    p("`server.threads = 4` and `server.private_file_tables = true` each of four data-plane threads has")
    p("its own file table (`unshare(CLONE_FILES)`), which is how one process passes that limit; see")
    p("[architecture](architecture.md#open-files-one-table-by-default-private-tables-per-thread-as-an-opt-in).")
    p()

    p("## Goals")
    p()
    spc = ours.get("setups_per_cpu")
    cspc = ours.get("cert_setups_per_cpu")
    gspc = ours.get("certgoal_per_cpu")
    gn = int(ours.get("certgoal_n") or 0)
    pss_max = get(best, "server", "pss_per_session_kib") if best else ours.get("pss_session")
    cpg = ours.get("tput_cores_per_gbit")
    cpg_o = theirs.get("tput_cores_per_gbit")
    dcpg = ours.get("dtls_tput_cores_per_gbit")
    dcpg_o = theirs.get("dtls_tput_cores_per_gbit")
    tr = ratio(ours.get("tput_mbit"), theirs.get("tput_mbit"))
    dtr = ratio(ours.get("dtls_tput_mbit"), theirs.get("dtls_tput_mbit"))
    utr = ratio(ours.get("udp_tput_mbit"), theirs.get("udp_tput_mbit"))
    udtr = ratio(ours.get("udp_dtls_tput_mbit"), theirs.get("udp_dtls_tput_mbit"))
    cpg_keys = ("tput_cores_per_gbit", "dtls_tput_cores_per_gbit", "udp_tput_cores_per_gbit", "udp_dtls_tput_cores_per_gbit")

    def third(a, b):
        return a is not None and b is not None and a <= b / 3

    def cpg_pair(key):
        return f"{fmt(ours.get(key), 2)} vs {fmt(theirs.get(key), 2)}"

    all_up = bool(ours.get("up_all")) and ours.get("cert_up_all") is not False and ours.get("certgoal_up_all") is not False and ours.get(
        "udp_tput_up_all") is not False and ours.get("udp_dtls_tput_up_all") is not False and ours.get(
        "reauth_recovered_all") is not False and all(
        get(r, "connect", "up") == get(r, "connect", "attempted") for r in scale)
    goals = [
        (">= 3,000 full session setups per second per core",
         f"{fmt(spc)} per server CPU-second with a password check, {fmt(cspc)} with a device certificate"
         + (f" ({fmt(gspc)} over {gn:,} certificate logins, median of {len(ours.get('certgoal_all') or [])}: "
            f"{', '.join(fmt(x) for x in ours.get('certgoal_all') or [])})" if gspc is not None else ""),
         (spc is not None and spc >= 3000) or (gspc if gspc is not None else cspc or 0) >= 3000),
        ("<= 24 KiB server memory per idle session", f"{fmt(pss_max)} KiB (PSS, largest N measured)", pss_max is not None and pss_max <= 24),
        ("server CPU per Gbit/s at most a third of ocserv's",
         f"cores per Gbit/s, tunneld vs ocserv: harness ICMP echo {cpg_pair('tput_cores_per_gbit')} (DTLS {cpg_pair('dtls_tput_cores_per_gbit')}), "
         f"UDP echo {cpg_pair('udp_tput_cores_per_gbit')} (DTLS {cpg_pair('udp_dtls_tput_cores_per_gbit')}); "
         f"openconnect+iperf3 up {cpg_pair('iperf_up_cpg')}, down {cpg_pair('iperf_down_cpg')} "
         f"(DTLS up {cpg_pair('dtls_iperf_up_cpg')}, down {cpg_pair('dtls_iperf_down_cpg')}); met only if every harness run meets it",
         third(cpg, cpg_o) and all(ours.get(k) is None or third(ours.get(k), theirs.get(k)) for k in cpg_keys)),
        (">= 2x ocserv aggregate throughput",
         f"harness ICMP echo {fmt(tr, 2)}x (DTLS {fmt(dtr, 2)}x), UDP echo {fmt(utr, 2)}x (DTLS {fmt(udtr, 2)}x); met only if every one is",
         tr is not None and tr >= 2 and all(x is None or x >= 2 for x in (dtr, utr, udtr))),
        ("zero failed sessions below the limit", "every run: all sessions up" if all_up else "some sessions failed (see JSON)", all_up),
        ("64,000 sessions in one tunneld process", f"{best['sessions']:,}" if best else "n/a", bool(best) and best["sessions"] >= 64000),
    ]
    p("| goal | measured | met |")
    p("|---|---|---|")
    for g, v, ok in goals:
        p(f"| {g} | {v} | {'yes' if ok else '**no**'} |")
    p()

    p("## Reading these numbers")
    p()
    p("* **Setup rate.** Both servers verify the same SHA-512 crypt hash (5,000 rounds, what `ocpasswd`")
    p("  writes) on every full login, and the harness's own TLS handshakes run on the same two cores.")
    p(f"  tunneld sets up {fmt(ours.get('setups_per_cpu'))} sessions per server CPU-second, short of the")
    perf_path = os.path.join(out, "perf-setup.json")
    if os.path.exists(perf_path):
        pf = load(perf_path)
        p("  3,000 goal. A system-wide `perf` profile of tunneld during a connect run puts")
        p(f"  {fmt(pf.get('password_hash'))}% of its CPU in the SHA-512 crypt password check, {fmt(pf.get('tls_crypto'))}% in TLS")
        p(f"  cryptography (aws-lc: X25519, P-256, hashes), {fmt(pf.get('kernel'))}% in the kernel, {fmt(pf.get('libc'))}% in libc (copies, allocator),")
        p(f"  {fmt(pf.get('other'))}% elsewhere: the password check (the same one ocserv makes) is most of a login.")
    else:
        p("  3,000 goal; where that CPU goes has not been profiled in this run.")
    if cspc is not None:
        p(f"* **Certificate logins.** Without a password to check, a login is a TLS 1.3 handshake with a")
        p(f"  device certificate plus the CONNECT: tunneld makes {fmt(cspc)} per server CPU-second, ocserv")
        p(f"  {fmt(theirs.get('cert_setups_per_cpu'))} ({n_idle:,} logins each).")
        if gspc is not None:
            ticks = f"about {1000 / cspc * 100:.0f}" if cspc else "a few dozen"
            p(f"  Measured over {gn:,} logins (tunneld alone: 1,000 logins are only {ticks} ticks of the 10 ms")
            p(f"  CPU clock the harness reads), tunneld makes {fmt(gspc)}; this is the goal's figure. ocserv is")
            p("  not compared at that N: its cost per login grows with the sessions it already holds (126 per")
            p(f"  CPU-second over 3,000 logins in one trial run, against {fmt(theirs.get('cert_setups_per_cpu'))} over 1,000 in this run).")
        p("  A `perf` profile taken by hand (not part of this run; RSA 2048 device")
        p("  certificates, 3,000 logins) puts about 15% of such a login in checking the device certificate")
        p("  (two RSA signature checks and the chain), 12% in the X25519 exchange, 5% in the server's")
        p("  P-256 signature, 11% in TCP sends (most of it the client's receive work, counted to the")
        p("  server; see below), about 15% in the allocator and the rest spread thin. Moving to aws-lc-rs")
        p("  (X25519 1.8x faster than ring here), putting AES-128-GCM first (a TLS 1.3 AES-256 suite's")
        p("  SHA-384 key schedule took a tenth of a login: CPUs accelerate SHA-256 only) and sending no")
        p("  session tickets gained about 17% in alternating runs of 3,000 logins (by hand, old and new")
        p("  build). ocserv gains from the same cipher order: both now agree on AES-128-GCM.")
    side = "within" if pss_max is not None and pss_max <= 24 else "above"
    per_ocserv = ratio(theirs.get("pss_session"), ours.get("pss_session"))
    pss_small = ours.get("pss_session")
    p(f"* **Memory.** {fmt(pss_max)} KiB per idle session at the largest N, {side}")
    p(f"  the 24 KiB goal ({fmt(pss_small)} KiB at {n_idle:,} sessions, where the server's fixed memory weighs more);")
    p(f"  ocserv's forked worker per client costs about {fmt(per_ocserv, 0)} times more (PSS,")
    p("  which splits pages shared between its workers; its RSS sum is larger still).")
    p("  Since 2074931 a session's task takes 3,328 bytes instead of 7,808 (its HTTP phase and its")
    p("  tunnel no longer sit side by side in it, nor the TLS stream twice; see")
    p("  [architecture](architecture.md)); the anchor before it, at 2da75fa, measured 22.5 KiB at")
    p("  64,000 sessions.")
    p("* **Throughput.** The harness throughput runs are limited by the two cores shared between the")
    p("  client processes and the server, so the aggregate ratio may understate the servers' difference;")
    p("  cores per Gbit/s (server CPU only) is the steadier comparison.")
    p("* **The harness client's UDP.** Its DTLS sessions send with GSO and receive with `recvmmsg` and")
    p("  GRO, so the load generator leaves the servers more of the shared CPU (openconnect sends and")
    p("  receives one datagram per call). Both servers face the same client. A socket with GRO takes a")
    p("  GSO batch whole, so tunneld's GSO sends reach it unsplit; ocserv sends one datagram per call.")
    p("* **What \"server CPU\" includes.** The namespaces share one kernel, and a packet the server")
    p("  writes to its TUN or socket is forwarded, and received by the echo host or the client, in")
    p("  softirq inside that write: the forwarding and the far end's receive work are counted to the")
    p("  server's process. A `perf` profile of tunneld (taken by hand, not part of this run) in the harness throughput run puts about two")
    p("  fifths of its CPU there (the corp host's ICMP echo replies, forwarding both ways); in the")
    p("  openconnect DTLS download it is the corp iperf3 server's TCP work. Both servers are charged")
    p("  the same absolute amount per packet, which pulls every CPU ratio towards 1.")
    p("* **ICMP echo and UDP echo.** The ICMP runs are answered by the corp host's kernel inside the")
    p("  server's TUN write (see above), and no two ICMP packets can be merged, so every one is a TUN")
    p("  write of its own. The UDP runs send each session's probes as one flow to a user-space echo")
    p("  service (`tunnel-bench echo`, one datagram per call, as plain UDP services answer, on one")
    p("  thread per CPU with a socket each, so it is not the bottleneck): tunneld")
    p("  merges a flow's datagrams into one TUN write (UDP GSO on the TUN), and the echo's replies are")
    p("  forwarded in the echo's own process. Real traffic is flows (TCP, QUIC, media), not pings.")
    icmp_o = theirs.get("tput_cores_per_gbit")
    if icmp_o is not None:
        p("  A `perf` profile of tunneld in the ICMP run over TLS (by hand on the machine of this run, not")
        p("  part of it; 0.40 cores per Gbit/s) puts 64% of its CPU inside its TUN writes (softirq included:")
        p("  the forwarding and the corp host's ICMP replies, 23% alone) and 5% in its TUN reads: per-packet")
        p("  kernel work that ocserv's one TUN write and read per packet pays the same. That is about 0.27")
        p(f"  cores per Gbit/s, so against ocserv's {fmt(icmp_o, 2)} no user-space design that writes each ICMP packet to")
        p("  the TUN can reach a third in this workload; the UDP runs show what merging a flow's packets does.")
        p("  Counting the far end's work elsewhere does not change that: with threaded NAPI on the veth")
        p("  pairs (by hand, two runs each), the corp host's replies and the gateway's forwarding of them")
        p("  ran in kernel threads, and the server plus its side's NAPI threads came to 0.40 cores per")
        p("  Gbit/s against ocserv's 0.80 (0.5x), at lower throughput for both; the anchor keeps the")
        p("  plain veth pairs.")
    rt = [(k, ours.get(k), theirs.get(k)) for k in
          ("iperf_up_retrans", "iperf_down_retrans", "dtls_iperf_up_retrans", "dtls_iperf_down_retrans")]
    if any(a is not None and b is not None and a > b for _, a, b in rt):
        pairs = ", ".join(f"{name} {fmt(a, 0)} vs {fmt(b, 0)}" for name, (_, a, b) in
                          zip(("upload", "download", "DTLS upload", "DTLS download"), rt))
        p(f"* **TCP retransmits through the tunnel** (iperf3's count, tunneld vs ocserv: {pairs}).")
        p("  Retransmitted segments cost both servers CPU that the cores-per-Gbit/s rows do not count as")
        p("  moved. Found by hand (`nstat` in the namespaces, not part of this run):")
        (_, up, up_o), (_, down, down_o), (_, dup, dup_o), (_, ddown, ddown_o) = rt
        if ddown is not None and ddown_o is not None and ddown > ddown_o:
            p("  - DTLS download: datagrams are lost in openconnect's UDP socket (`UdpRcvbufErrors` in the")
            p("    device's namespace: about 15% of them with tunneld; 0.3-1.7% with ocserv).")
            p("    openconnect reads one datagram per call and writes each packet to its TUN, and tunneld")
            p("    delivers faster than that drains its default 208 KiB buffer; ocserv delivers slower")
            p("    (see the throughput rows). It is the rate, not the size of tunneld's GSO sends: capped by")
            p("    hand at 8 or 2 datagrams per send (instead of up to 45), the loss only fell from about")
            p("    200,000 to 154,000 and 114,000 datagrams in 10 s while the download fell from 1.35 to")
            p("    1.26 and 0.98 Gbit/s. A client with a larger socket buffer would lose less. This")
            p("    machine's TCP congestion control is BBR, which keeps its rate through loss: with")
            p("    `iperf3 -C cubic` (by hand, two alternating pairs, not part of this run) the loss fell")
            p("    from about 200,000 to 8,000 datagrams in 8 s and the download from 1.8 to 1.25 Gbit/s,")
            p("    while tunneld's cores per Gbit/s stayed at 0.30 (ocserv 0.69-0.71): the loss costs")
            p("    retransmits, not server CPU per Gbit/s moved.")
        if any(a is not None and b is not None and a > b for a, b in ((up, up_o), (dup, dup_o), (down, down_o))):
            p("  - Upload and CSTP download: while a session's task moved between runtime threads, segments")
            p("    reached the corp host out of order (the kernel queues a forwarded packet on the writing")
            p("    CPU's backlog): about 80,000 upload retransmits in 10 s (anchor at 64f1b22); sessions are")
            p("    now pinned to a thread. What remained in the upload were drops at the device's own TUN")
            p("    queue while openconnect, sharing the cores, fell behind (see receive coalescing below).")
    up, up_o = ours.get("iperf_up_retrans"), theirs.get("iperf_up_retrans")
    if up is not None and up_o is not None:
        p("* **Thread per core.** tunneld runs one data-plane thread per core, each with its own listener")
        p("  and TUN queue, and keeps a session on the thread that accepted it (`server.threads`; replies")
        p("  are steered to that thread by destination address). Before, a session's task moved between")
        p("  the threads of one work-stealing runtime, and the kernel queues a forwarded packet on the")
        p("  backlog of the CPU that wrote it, so a TCP flow left the gateway out of order: the anchor at")
        p(f"  64f1b22 counted 85,578 upload retransmits (ocserv 8,651); this run {fmt(up, 0)} (ocserv {fmt(up_o, 0)}).")
        p("  In the harness it moved ICMP echo more and, once the echo host stopped being the bottleneck,")
        p("  UDP echo too. Alternating runs by hand (old build 6a42128, new build e81a106, four pairs, not")
        p("  part of this run), medians: ICMP echo 3,188 Mbit/s before and 3,337 after (0.48 and 0.47")
        p("  cores per Gbit/s). UDP echo against a one-thread echo service, as the anchor ran it up to")
        p("  e81a106: 2,746 before and 2,527 after (0.30 and 0.31); that echo thread was the busiest")
        p("  process of the run (a third of the machine's CPU: its replies are forwarded to the TUN in its")
        p("  own sends), and it cost the pinned threads more. With the echo on one thread per CPU, as")
        p("  now: 2,678 and 2,760 before, 3,078 and 3,179 after (0.30-0.32 and 0.25-0.26); ocserv")
        p("  1,179 with the one-thread echo, 1,343 and 1,349 with two (0.92, 0.86). Letting a")
        p("  thread's sessions run after every TUN read, instead of draining up to 65 reads first, made")
        p("  it worse (by hand: 1,721-2,391 Mbit/s of UDP echo at 0.36-0.61 cores per Gbit/s).")
    d_icmp, d_udp = ours.get("dtls_tput_cores_per_gbit"), ours.get("udp_dtls_tput_cores_per_gbit")
    if d_icmp is not None and d_udp is not None:
        p("* **DTLS record layer.** OpenSSL runs each DTLS handshake; an established AES-GCM channel's")
        p("  records are then sealed and opened by tunneld itself (aws-lc, keys derived from OpenSSL's")
        p("  master secret), in place in its own buffers, where `SSL_read`/`SSL_write` and a BIO")
        p("  copied each datagram four times and paid OpenSSL 3's per-record lookups")
        p("  ([architecture](architecture.md)). Server cores per Gbit/s over DTLS, anchor at 43a8945")
        p(f"  (OpenSSL's record layer, one-thread UDP echo) against this run: ICMP echo 0.53 and {fmt(d_icmp, 2)},")
        p(f"  UDP echo 0.34 and {fmt(d_udp, 2)}. By hand, alternating builds, UDP echo over DTLS with the")
        p("  echo on two threads: 0.33 and 0.28 before, 0.26 and 0.23 after. Since 93c0a6c the harness's")
        p("  client uses the same record layer (the client's half of the keys), where it used OpenSSL's:")
        p("  its processes run on the same two cores as the server. By hand, UDP echo over DTLS, old")
        p("  client against new: tunneld 2,699 and 3,010 Mbit/s, ocserv 1,440 and 1,406.")
    t_icmp, t_udp = ours.get("tput_cores_per_gbit"), ours.get("udp_tput_cores_per_gbit")
    if t_icmp is not None and t_udp is not None:
        p("* **TLS reads.** A tunnel reads its TLS socket with one `recv` of up to 64 KiB and feeds")
        p("  rustls from memory (`tls_read.rs`, since b46af8d); through tokio-rustls each read was")
        p("  rustls's own, about 4 KiB (an openconnect upload made some 16,000 `recvfrom` calls a")
        p("  second, 83% of the tunnel's syscalls). Harness server cores per Gbit/s over TLS, anchor")
        p(f"  at 93c0a6c against this run: ICMP echo 0.47 and {fmt(t_icmp, 2)}, UDP echo 0.27 and {fmt(t_udp, 2)}.")
        p("  By hand, alternating builds, the openconnect upload did not change (0.54 and 0.57 cores")
        p("  per Gbit/s with either): it is not the reads that it pays for, but the wake-ups (below).")
    c_up, c_dup = ours.get("iperf_up_cpg"), ours.get("dtls_iperf_up_cpg")
    if c_up is not None and c_dup is not None:
        p("* **Receive coalescing.** openconnect sends every packet as its own record or datagram, and")
        p("  a data-plane thread was woken for each: `perf` showed one 1,430-byte record per `recv`, one")
        p("  TUN write per record (nothing for GRO to merge) and an `EAGAIN` `recv` after each. Since")
        p("  2975270 a thread woken again and again right after it parked, with little to do each time,")
        p("  sleeps `server.rx_coalesce_usecs` (100 µs) before it waits again and takes the batch in one")
        p("  pass, as a NIC's interrupt moderation does; pings and threads with long passes never sleep")
        p("  ([architecture](architecture.md#receive-coalescing)). openconnect upload, server cores per")
        p(f"  Gbit/s, anchor at 2074931 against this run: over TLS 0.62 and {fmt(c_up, 2)}, over DTLS 0.50 and")
        p(f"  {fmt(c_dup, 2)}. By hand, alternating builds: over TLS 0.53-0.59 and 0.27-0.28, over DTLS")
        p("  0.45-0.47 and 0.25, each moving more (1.1 against 1.3-1.45 Gbit/s over TLS): the client")
        p("  shares the cores. Ping medians did not move, and no sleep happened during them.")
        r_up, r_up_o = ours.get("iperf_up_retrans"), theirs.get("iperf_up_retrans")
        if r_up is not None and r_up_o is not None:
            p("  The upload's TCP retransmits went with it, and they were not what earlier versions of")
            p("  this page said (reordering in the gateway): they are drops at the device's own TUN queue,")
            p("  where iperf3's segments wait for openconnect, which falls behind when the server takes more")
            p("  of the cores it shares (by hand, without coalescing: 4,425 retransmits, and `ip -s link` in")
            p("  the device's namespace counted 4,425 TX drops on openconnect's TUN). By hand, alternating:")
            p("  1,551 and 6,962 retransmits without coalescing, 0 and 9 with; anchor at 2074931 29,846,")
            p(f"  this run {fmt(r_up, 0)} (ocserv {fmt(r_up_o, 0)}). A client on its own machine would not see them.")
    dl, dl_o = ours.get("dtls_added_latency"), theirs.get("dtls_added_latency")
    tl, tl_o = ours.get("added_latency"), theirs.get("added_latency")
    if dl is not None and dl_o is not None and tl is not None and tl_o is not None and (dl > dl_o or tl > tl_o):
        p(f"* **Idle latency.** 300 pings, 100 a second, through openconnect: tunneld adds {fmt(dl, 3)} ms over DTLS")
        p(f"  (ocserv {fmt(dl_o, 3)} ms) and {fmt(tl, 3)} ms over TLS (ocserv {fmt(tl_o, 3)} ms). Measured by hand over TLS,")
        p("  the same rate, three alternating rounds (not part of this run): with tcpdump in the")
        p("  gateway's namespace, a request's TLS segment in to its ICMP packet out took 109-137 µs in")
        p("  tunneld against 76-85 µs in ocserv, and the reply's way back 23-36 µs against 14-15 µs. Both")
        p("  make one voluntary context switch per ping, and `server.threads = 1` changes nothing. The")
        p("  difference is CPU: over 1,000 pings tunneld used about 140 µs per ping, ocserv 90-110 µs")
        p("  (all its processes). A profile puts 43% of tunneld's time in its own code, spread thinly")
        p("  over tokio, rustls, tun-rs and the gateway (no function above 3 %): a longer code path run")
        p("  from cold caches after every wake-up, not one costly step. Under load the same path is")
        p("  amortised over batches, which is where tunneld's CPU per Gbit/s comes from. Not fixed.")
        p("  The gap is the wake-up from idle: over DTLS on the machine of this run (by hand, 1,000")
        p("  pings, two alternating pairs per rate), one ping every 2 ms averaged 0.074-0.089 ms")
        p("  through tunneld against 0.076-0.099 ms through ocserv, and used 40-50 µs of tunneld's")
        p("  CPU per ping (ocserv about 20); one every 10 ms averaged 0.32-0.35 against 0.24-0.25 ms, and CPU per")
        p("  ping rose to 160-180 µs for tunneld and about 100 µs for ocserv (all its processes).")
        p("  Not system calls: strace of a ping counts 7 for either server over TLS, and over DTLS 8")
        p("  for tunneld (since 3006ca4 a session's own UDP socket no longer wakes its thread for")
        p("  writability after each send) against 6 for ocserv; `perf stat` over 2,000 pings at one")
        p("  per 10 ms gave about 150 µs of task-clock per ping for tunneld and 95 µs for ocserv.")
        p("  These rows move between runs by more than the gap: by hand at 3903fdc (two alternating")
        p("  rounds of 300-500 pings at one per 10 ms), TLS medians were 0.217-0.388 ms for tunneld")
        p("  against 0.189-0.218 for ocserv, DTLS 0.259-0.266 against 0.238-0.258, and task-clock per")
        p("  ping 65-91 µs against 74-76 µs; the anchor at 3006ca4 had 0.285 against 0.149 ms over DTLS.")
    moved = theirs.get("storm_moved")
    if moved:
        p(f"* **ocserv and immediate reconnects.** In the storm, ocserv handed {fmt(moved, 0)} of {fmt(theirs.get('storm_n'), 0)} sessions a")
        p("  different address when they reconnected with their cookie right after a TCP reset (why was")
        p("  not investigated; a guess is that the old connection's worker still held the lease).")
        p("  openconnect would quit on a new address and log in again. tunneld returned every session's")
        p("  own address.")
    p()
    p("## Sizing guide")
    p()
    p("Derived from the tunneld numbers above (this machine's cores). Memory: sessions need")
    p(f"{fmt(pss_max)} KiB each (PSS at the largest N measured); the table reserves half of the RAM for")
    p("the system and buffers under load. CPU: a device averaging 100 kbit/s in the busy hour, with")
    p(f"{fmt(cpg, 2)} server cores per Gbit/s moved (harness throughput, both directions counted).")
    p("Re-login storms: at the measured rate a server re-admits all its devices in N / (cores x setups")
    p("per core-second) seconds: with a password check (SHA-512 crypt), or with device certificates")
    p("(no password; Microsoft Tunnel's devices log in so), at the certificate rate measured over the")
    p("most logins.")
    if ours.get("reauth_n"):
        rn = int(ours["reauth_n"])
        rule = rn / (2 * spc) if spc else None
        p(f"Measured against that rule: {rn:,} sessions logged out and back in by password took")
        p(f"{fmt(ours.get('reauth_all_s'), 2)} s here where it gives {fmt(rule, 2)} s for 2 cores (ocserv {fmt(theirs.get('reauth_all_s'), 2)} s; the storm rows")
        p("above). The harness's own logins share those two cores and the storm includes the logouts;")
        p("the rule counts the server's CPU alone.")
    p("The address pool used here (/16) holds 65,534 devices; without the")
    p("private file tables a process is also bound by its host's open-files limit. Only the first row's")
    p("cores were measured (this machine has 2 cores, 24 GiB); the other rows scale the measured")
    p("per-core and per-session costs linearly, which assumes the work spreads evenly over cores.")
    p()
    cert_spc = ours.get("certgoal_per_cpu") or ours.get("cert_setups_per_cpu")
    p("| cores | RAM | devices (memory bound) | devices (CPU bound, 100 kbit/s each) | full re-login of the smaller, password (s) | the same, device certificates (s) |")
    p("|---:|---:|---:|---:|---:|---:|")
    for cores, ram in ((2, 4), (4, 8), (8, 16), (16, 32)):
        mem_bound = int(ram * 1024 * 1024 * 0.5 / pss_max) if pss_max else None
        cpu_bound = int(cores / cpg * 1e6 / 100) if cpg else None
        n = min(x for x in (mem_bound, cpu_bound) if x is not None) if (mem_bound or cpu_bound) else None
        relogin = n / (cores * spc) if n and spc else None
        cert_relogin = n / (cores * cert_spc) if n and cert_spc else None
        p(f"| {cores} | {ram} GiB | {mem_bound:,} | {cpu_bound:,} | {fmt(relogin)} | {fmt(cert_relogin)} |" if mem_bound and cpu_bound else f"| {cores} | {ram} GiB | n/a | n/a | n/a | n/a |")
    p()

    micro = os.path.join(out, "micro.txt")
    if os.path.exists(micro):
        p("## Micro-benchmarks (criterion)")
        p()
        p("```text")
        with open(micro) as f:
            p(f.read().strip())
        p("```")
        p()
        p("`cargo bench -p tunnel-proto --bench cstp` and `cargo bench -p tunnel-gateway --bench hot_path`.")
        p()

    p("## Reproduce")
    p()
    p("```sh")
    p("sudo benches/anchor/run.sh   # its defaults are this run's parameters (above); writes this page")
    p("```")
    p()
    p("Single scenarios by hand (inside a device namespace, against either server):")
    p()
    p("```sh")
    p("tunnel-bench connect    --server 198.18.1.1:443 --pin pin-sha256:... --user bench -n 1000 -c 64 --server-pid PID")
    p("tunnel-bench hold       --server ... --user bench -n 10000 --duration 60 --trickle-ms 1000 --target 198.18.2.10")
    p("tunnel-bench throughput --server ... --user bench -n 100 --duration 10 --window 16 --size 1000 --target 198.18.2.10")
    p("tunnel-bench storm      --server ... --user bench -n 1000 --mode cookie   # or --mode reauth")
    p("tunnel-bench echo --listen 198.18.2.10:7   # on the corp host: the far end of throughput --udp-port 7")
    p("```")
    p()
    p("`tunnel-bench --help` lists every option; `--json FILE` writes the full report, `--check` exits")
    p("non-zero unless every session came up and every probe was answered (what CI's smoke test checks")
    p("at 200 sessions, never timing).")
    p()
    p("To size a fleet on your own hardware, run the harness from a separate load-generator host")
    p("(so that it does not share the server's cores) against a staging tunneld whose")
    p("`metrics.listen` it can reach, and read the server's CPU and memory from its `process_*`")
    p("metrics instead of /proc:")
    p()
    p("```sh")
    p("tunnel-bench connect    --server GW:443 --pin pin-sha256:... --user bench -n 10000 -c 64 \\")
    p("    --server-metrics http://GW:9477/metrics   # setups per server CPU-second, RSS per session")
    p("tunnel-bench throughput --server GW:443 ... -n 100 --duration 30 --target HOST \\")
    p("    --server-metrics http://GW:9477/metrics   # server cores per Gbit/s")
    p("tunnel-bench sample --metrics http://GW:9477/metrics   # one reading, e.g. around an iperf3 run")
    p("```")
    p()
    p("Then scale the sizing guide above with your numbers: sessions per GiB from the RSS per")
    p("session (RSS counts a little more than the PSS used here), devices per core from the cores")
    p("per Gbit/s and your devices' busy-hour traffic, re-login time from the setups per CPU-second.")


if __name__ == "__main__":
    main()
