#!/usr/bin/env bash
# Side-by-side capacity run: tunneld and ocserv on the same namespaces, the same certificate, the
# same users file, pool, routes and MTU, measured with the same harness (tunnel-bench) and with the
# real openconnect + iperf3; then docs/benchmarks.md is written from the medians (report.py).
#
#   sudo benches/anchor/run.sh                 # everything (about 15 minutes on 2 cores)
#   REPS=1 SCALE="1000" sudo benches/anchor/run.sh   # a quick pass
#
# Environment (defaults in brackets):
#   REPS [3]          repetitions of each harness scenario per server (a fresh server each time)
#   USERS [1000]      users in the shared users file; sessions spread over them
#   N_IDLE [1000]     sessions for the connect scenario (setup rate, memory per idle session)
#   CONC [64]         setups in flight at once
#   N_TPUT [100]      sessions pushing in the throughput scenario; TPUT_SECS [10] its duration
#   N_STORM [1000]    sessions dropped and brought back at once: by cookie reconnect after a TCP
#                     reset (storm-*.json), and by logout and full login (reauth-*.json)
#   SCALE ["1000 10000 19900"]  tunneld-only connect runs for memory per session at larger N
#   SCALE_MT ["64000"]  tunneld-only connect runs with 4 data-plane threads with private file tables
#   HOLD_SECS [90]    then those sessions are held this long with only keepalives and DPD (the
#                     hold scenario, no probes): whether all stay up, and the server's idle CPU
#   SKIP_COMPARE [0]  1: skip the side-by-side part (add scale runs to an existing OUT)
#   IPERF_SECS [10]   openconnect + iperf3 duration per direction
#   OUT [target/anchor/<time>]  where the JSON results and logs go
#   PERF [1]          profile tunneld (perf, system-wide) during a connect of 4 x N_IDLE sessions:
#                     where its setup CPU goes (perf-setup.txt); skipped when perf is missing
#   MICRO [1]         also run the criterion micro-benchmarks (short measurement) into micro.txt
#   WRITE_DOCS [1]    regenerate docs/benchmarks.md from the results
#   DTLS_TPUT [1]     also run the harness throughput scenario with --dtls (DTLS 1.2 PSK, as
#                     openconnect uses by default) against both servers (throughput-dtls-*.json)
#   UDP_TPUT [1]      also run the harness throughput scenario (CSTP and, with DTLS_TPUT, DTLS)
#                     with UDP probes to a plain UDP echo service on the corp host
#                     (`tunnel-bench echo`, one datagram per call, a thread per CPU), beside the ICMP echo runs:
#                     flows of datagrams, as applications send them (throughput-udp[-dtls]-*.json)
#   CERT_LOGINS [1]   also measure certificate logins: a device CA issues bench0.. certificates
#                     (DEVICE_KEY [rsa:2048], the key Intune's SCEP/PKCS profiles issue); tunneld
#                     auth.method = "certificate", ocserv auth = "certificate" with
#                     cert-user-oid = 2.5.4.3; the connect scenario REPS times per server
#                     (certconnect-*.json)
#   CERT_N [3000]     then tunneld alone, REPS times, CERT_N certificate logins (certgoal-*.json):
#                     a certificate login costs it about 0.3 ms, so N_IDLE=1000 of them are only
#                     ~35 ticks of the 10 ms CPU clock; 3,000 measure its setups per CPU-second
#                     (the goal) three times finer. Not side by side: ocserv's cost per login grows
#                     with the sessions it holds (126 per CPU-second at 3,000 in one trial run,
#                     662-893 at 1,000), so its ratio is taken at N_IDLE
#
# Everything runs inside network namespaces this script creates (tba<pid>-dev, -gw, -corp) and
# removes on exit; traffic goes only between them. Needs root, /dev/net/tun, ocserv, openconnect,
# iperf3 (scripts/test.sh installs them; this script installs ocserv if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/benches/anchor"
REPS="${REPS:-3}"
N_IDLE="${N_IDLE:-1000}"
CONC="${CONC:-64}"
N_TPUT="${N_TPUT:-100}"
TPUT_SECS="${TPUT_SECS:-10}"
N_STORM="${N_STORM:-1000}"
SCALE="${SCALE-1000 10000 19900}"
SCALE_MT="${SCALE_MT-64000}"
SKIP_COMPARE="${SKIP_COMPARE:-0}"
HOLD_SECS="${HOLD_SECS:-90}"
IPERF_SECS="${IPERF_SECS:-10}"
OUT="${OUT:-$ROOT/target/anchor/$(date -u +%Y%m%dT%H%M%SZ)}"
WRITE_DOCS="${WRITE_DOCS:-1}"
MICRO="${MICRO:-1}"
PERF="${PERF:-1}"
DTLS_TPUT="${DTLS_TPUT:-1}"
UDP_TPUT="${UDP_TPUT:-1}"
CERT_LOGINS="${CERT_LOGINS:-1}"
CERT_N="${CERT_N:-3000}"
DEVICE_KEY="${DEVICE_KEY:-rsa:2048}"
# Which login the servers are configured for right now (write_*_config read it).
AUTH=password
CERT_DIR=

ID="tba$$"
DEV="$ID-dev"
GW="$ID-gw"
CORP="$ID-corp"
GW_ADDR=198.18.1.1
CORP_ADDR=198.18.2.10
POOL=198.19.0.0/16
SOURCES=198.18.1.10-198.18.1.17
USERS="${USERS:-1000}"
USER_NAME=bench
PASSWORD=bench-pw
SERVER_PID=""
IPERF_PIDFILE=""

mkdir -p "$OUT"
LOG="$OUT/run.log"
log() { echo "anchor: $*" | tee -a "$LOG" >&2; }

command -v ocserv >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends ocserv; }
for tool in openconnect iperf3 ip openssl python3; do
    command -v "$tool" >/dev/null || { echo "anchor: $tool is missing (scripts/test.sh installs it)" >&2; exit 1; }
done

log "building release binaries"
(cd "$ROOT" && cargo build --release -p tunneld -p tunnel-bench) >>"$LOG" 2>&1
TUNNELD="$ROOT/target/release/tunneld"
BENCH="$ROOT/target/release/tunnel-bench"

cleanup() {
    stop_server
    if [ -n "$IPERF_PIDFILE" ] && [ -s "$IPERF_PIDFILE" ]; then kill "$(cat "$IPERF_PIDFILE")" 2>/dev/null || true; fi
    for ns in "$DEV" "$GW" "$CORP"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

topology() {
    for ns in "$DEV" "$GW" "$CORP"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$GW" link add d0 type veth peer name eth0 netns "$DEV"
    ip -n "$GW" addr add "$GW_ADDR/24" dev d0
    ip -n "$GW" link set d0 up
    ip -n "$DEV" addr add 198.18.1.2/24 dev eth0
    for i in $(seq 10 17); do ip -n "$DEV" addr add "198.18.1.$i/24" dev eth0; done
    ip -n "$DEV" link set eth0 up
    ip -n "$GW" link add c0 type veth peer name eth0 netns "$CORP"
    ip -n "$GW" addr add 198.18.2.1/24 dev c0
    ip -n "$GW" link set c0 up
    ip -n "$CORP" addr add "$CORP_ADDR/24" dev eth0
    ip -n "$CORP" link set eth0 up
    ip -n "$CORP" route add "$POOL" via 198.18.2.1
    ip -n "$CORP" route add 198.18.1.0/24 via 198.18.2.1
    in_ns "$GW" sysctl -q -w net.ipv4.ip_forward=1 net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535
    in_ns "$DEV" sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
}

make_credentials() {
    openssl ecparam -name prime256v1 -genkey -noout -out "$OUT/key.pem" 2>/dev/null
    openssl req -new -x509 -key "$OUT/key.pem" -out "$OUT/cert.pem" -days 30 -subj "/CN=$GW_ADDR" 2>/dev/null
    PIN="pin-sha256:$(openssl x509 -in "$OUT/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)"
    # One users file for both servers, in ocpasswd's format (user:group:crypt hash, SHA-512 crypt):
    # USERS users bench0.. (one hash, same password); sessions are spread over them, as devices of
    # many users would be (ocserv remembers a returning address per user, not per session).
    local hash
    hash="$(openssl passwd -6 -salt anchorsalt "$PASSWORD")"
    seq 0 $((USERS - 1)) | sed "s|^|$USER_NAME|; s|\$|::$hash|" > "$OUT/users"
}

make_device_certs() {
    # A device CA and one client certificate per user (CN = username), as an Intune PKI would
    # issue them: DEVICE_KEY (RSA 2048 by default), extendedKeyUsage clientAuth.
    # DEVICE_CERTS/<user>.pem and .key for tunnel-bench.
    CERT_DIR="$OUT/device-certs"
    mkdir -p "$CERT_DIR"
    cat > "$OUT/device-ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
    local key
    read -r -a key <<< "$DEVICE_KEY"  # e.g. "ec -pkeyopt ec_paramgen_curve:prime256v1"
    openssl req -x509 -config "$OUT/device-ca.cnf" -extensions ca_ext -newkey "${key[@]}" \
        -nodes -keyout "$OUT/device-ca.key" -out "$OUT/device-ca.pem" -days 30 -subj "/CN=Anchor Device CA" 2>/dev/null
    log "issuing $USERS device certificates"
    seq 0 $((USERS - 1)) | xargs -P "$(nproc)" -I{} openssl req -x509 -config "$OUT/device-ca.cnf" -extensions client_ext \
        -newkey "${key[@]}" -nodes -keyout "$CERT_DIR/$USER_NAME{}.key" \
        -out "$CERT_DIR/$USER_NAME{}.pem" -days 30 -subj "/CN=$USER_NAME{}" \
        -CA "$OUT/device-ca.pem" -CAkey "$OUT/device-ca.key" 2>/dev/null
}

write_tunneld_config() {
    # $1: threads with private file tables (0: the default, one thread per CPU, one file table)
    mkdir -p "$OUT/tunneld-state"
    local threads="threads = 0"
    [ "${1:-0}" -gt 0 ] && threads="threads = $1
private_file_tables = true"
    cat > "$OUT/tunneld.toml" <<CONF
[server]
listen = "$GW_ADDR:443"
state_dir = "$OUT/tunneld-state"
max_sessions = 70000
max_sessions_per_user = 0
max_unauthenticated_per_source = 0
$threads
[tls]
cert = "$OUT/cert.pem"
key = "$OUT/key.pem"
min_version = "1.2"
[network]
ipv4_pool = "$POOL"
split_include = ["198.18.2.0/24"]
mtu = 1400
link_mtu = 1500
tun_name = "tg0"
nat = false
[timers]
dpd_secs = 90
keepalive_secs = 32
cookie_timeout_secs = 300
auth_timeout_secs = 30
[auth]
users_file = "$OUT/users"
[metrics]
[control]
socket = "$OUT/control.sock"
CONF
    if [ "$AUTH" = certificate ]; then
        # The users file stays (it only locks users out and gives groups in this mode).
        sed -i "s|^users_file = .*|&\nmethod = \"certificate\"\nca_file = \"$OUT/device-ca.pem\"\ncert_username = \"cn\"|" "$OUT/tunneld.toml"
    fi
}

write_ocserv_config() {
    # Equivalent to the tunneld config: same address, certificate, users, pool, route, MTU and
    # timers; DTLS on UDP 443 as tunneld offers it by default (a client that asks for no DTLS, like
    # the harness without --dtls or openconnect --no-dtls, gets CSTP over TLS only); no per-source
    # connection rate limit or ban score (ocserv's defaults would throttle the harness, which opens
    # many sessions from few addresses); no session or client caps; the cipher order of tunneld's
    # tls.cipher_suites default (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; server's order wins),
    # where GnuTLS's NORMAL would pick AES-256-GCM.
    # MTU: tunneld's `mtu = 1400` is the tunnel MTU over both transports. ocserv's `mtu` is the
    # link MTU it takes its overheads from: it announces mtu - 28 over TLS and mtu - 66 with DTLS
    # (IP, UDP, DTLS record, CSTP header), checked with openconnect here. OCSERV_MTU [1466] gives
    # ocserv's DTLS sessions 1400 and its TLS-only sessions 1438, so the harness's 1400-byte
    # packets fit both transports; the openconnect runs over TLS use 1428 (1400 over TLS), so
    # iperf3's TCP segments are the same size through both servers. (With ocserv at 1400 its
    # sessions got 1372 / 1334, and 1400-byte probe replies were fragmented on their way in.)
    cat > "$OUT/ocserv.conf" <<CONF
auth = "plain[passwd=$OUT/users]"
listen-host = $GW_ADDR
tcp-port = 443
run-as-user = nobody
run-as-group = nogroup
socket-file = $OUT/ocserv-socket
server-cert = $OUT/cert.pem
server-key = $OUT/key.pem
isolate-workers = false
max-clients = 0
max-same-clients = 0
rate-limit-ms = 0
max-ban-score = 0
server-stats-reset-time = 604800
keepalive = 32
dpd = 90
mobile-dpd = 90
try-mtu-discovery = false
tls-priorities = "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
auth-timeout = 30
min-reauth-time = 0
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
use-occtl = false
use-utmp = false
pid-file = $OUT/ocserv.pid
log-level = 0
device = vpns
predictable-ips = true
ipv4-network = 198.19.0.0
ipv4-netmask = 255.255.0.0
route = 198.18.2.0/255.255.255.0
mtu = ${OCSERV_MTU:-1466}
ping-leases = false
cisco-client-compat = true
dtls-legacy = false
CONF
    if [ "$AUTH" = certificate ]; then
        sed -i "s|^auth = .*|auth = \"certificate\"\nca-cert = $OUT/device-ca.pem\ncert-user-oid = 2.5.4.3|" "$OUT/ocserv.conf"
    fi
    printf 'udp-port = 443\ndtls-psk = true\n' >> "$OUT/ocserv.conf"
}

wait_tls() {
    local i
    for i in $(seq 1 150); do
        if in_ns "$DEV" bash -c "exec 3<>/dev/tcp/$GW_ADDR/443" 2>/dev/null; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "server exited during start-up"; return 1; fi
        sleep 0.2
    done
    log "server did not listen within 30 s"
    return 1
}

start_server() {
    case "$1" in
    tunneld)
        RUST_LOG=warn ip netns exec "$GW" "$TUNNELD" --config "$OUT/tunneld.toml" >>"$OUT/tunneld.log" 2>&1 &
        ;;
    ocserv)
        ip netns exec "$GW" ocserv -f -c "$OUT/ocserv.conf" >>"$OUT/ocserv.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    wait_tls
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    # ocserv's per-client workers and sec-mod may outlive the main process for a moment.
    for pid in $(ip netns pids "$GW" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    sleep 0.5
}

bench() {
    # bench <server> <tag> <scenario> [args...]
    local server="$1" tag="$2" scenario="$3"
    shift 3
    log "$server $tag: tunnel-bench $scenario $*"
    local certs=()
    [ "$AUTH" = certificate ] && certs=(--cert-dir "$CERT_DIR")
    TUNNEL_BENCH_PASSWORD="$PASSWORD" in_ns "$DEV" "$BENCH" "$scenario" \
        --server "$GW_ADDR:443" --pin "$PIN" --user "$USER_NAME" --user-count "$USERS" --target "$CORP_ADDR" \
        --source "$SOURCES" --server-pid "$SERVER_PID" --label "$server" --quiet \
        --json "$OUT/$server-$tag.json" "${certs[@]}" "$@" | tee -a "$LOG"
}

ping_ms() {
    # ping_ms <file> <count>: round-trip times in ms, one per line, from the device to corp.
    in_ns "$DEV" ping -n -c "$2" -i 0.01 -W 2 "$CORP_ADDR" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' > "$1"
}

openconnect_run() {
    # openconnect_run <server> <tls|dtls>: one real openconnect, ping and iperf3 both ways. "tls"
    # carries the packets in CSTP over TLS (--no-dtls); "dtls" lets openconnect bring up DTLS, as it
    # does by default, and the run only counts if it did. Files: <server>[-dtls]-iperf-*.json, ...
    local server="$1" transport="$2"
    local tag="$server" dtls_flag="--no-dtls"
    if [ "$transport" = dtls ]; then tag="$server-dtls"; dtls_flag=""; fi
    local envdir="$OUT/$tag-oc-env"
    mkdir -p "$envdir"
    if [ "$transport" = tls ]; then
        # Baseline: the same path without the tunnel (a plain route through the gateway).
        in_ns "$DEV" ip route add 198.18.2.0/24 via "$GW_ADDR"
        ping_ms "$OUT/$server-ping-direct.txt" 300
        in_ns "$DEV" ip route del 198.18.2.0/24 via "$GW_ADDR"
    fi
    log "$server: openconnect ($transport) + iperf3"
    # shellcheck disable=SC2086 # $dtls_flag is one word or none
    echo "$PASSWORD" | E2E_ENV_DIR="$envdir" ip netns exec "$DEV" openconnect --protocol=anyconnect \
        --user "${USER_NAME}0" --passwd-on-stdin --non-inter $dtls_flag --servercert "$PIN" \
        --script "$ROOT/tests/scripts/record-env.sh" "https://$GW_ADDR/" >"$OUT/$tag-openconnect.log" 2>&1 &
    local oc=$!
    local i
    for i in $(seq 1 150); do
        ls "$envdir"/*-connect.env >/dev/null 2>&1 && break
        sleep 0.2
    done
    ls "$envdir"/*-connect.env >/dev/null 2>&1 || { log "$server: openconnect did not connect"; kill "$oc"; return 1; }
    if [ "$transport" = dtls ]; then
        for i in $(seq 1 50); do
            grep -q "Established DTLS connection" "$OUT/$tag-openconnect.log" && break
            sleep 0.2
        done
        if ! grep -q "Established DTLS connection" "$OUT/$tag-openconnect.log"; then
            log "$server: openconnect did not bring DTLS up; no DTLS numbers"
            kill -INT "$oc" 2>/dev/null || true
            wait "$oc" 2>/dev/null || true
            return 0
        fi
    fi
    sleep 0.5
    ping_ms "$OUT/$tag-ping-tunnel.txt" 300
    IPERF_PIDFILE="$OUT/iperf3.pid"
    in_ns "$CORP" iperf3 -s -D -I "$IPERF_PIDFILE" -B "$CORP_ADDR"
    sleep 0.5
    for dir in up down; do
        local flag=""
        [ "$dir" = down ] && flag="-R"
        "$BENCH" sample --pid "$SERVER_PID" > "$OUT/$tag-iperf-$dir-cpu-before.json"
        in_ns "$DEV" iperf3 -c "$CORP_ADDR" -t "$IPERF_SECS" -J $flag > "$OUT/$tag-iperf-$dir.json"
        "$BENCH" sample --pid "$SERVER_PID" > "$OUT/$tag-iperf-$dir-cpu-after.json"
    done
    kill "$(cat "$IPERF_PIDFILE")" 2>/dev/null || true
    IPERF_PIDFILE=""
    kill -INT "$oc" 2>/dev/null || true
    wait "$oc" 2>/dev/null || true
}

topology
make_credentials
[ "$CERT_LOGINS" = 1 ] && make_device_certs
if [ "$UDP_TPUT" = 1 ]; then
    # The UDP echo service for --udp-port; cleanup kills it with everything in the namespaces.
    in_ns "$CORP" "$BENCH" echo --listen "$CORP_ADDR:7" >>"$LOG" 2>&1 &
fi
write_tunneld_config 0
write_ocserv_config

if [ "$SKIP_COMPARE" = 1 ]; then
    echo "params (added run): SKIP_COMPARE=1 SCALE=\"$SCALE\" SCALE_MT=\"$SCALE_MT\" PERF=$PERF MICRO=$MICRO" >> "$OUT/machine.txt"
else
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "ocserv: $(ocserv --version 2>&1 | head -1)"
    echo "openconnect: $(openconnect --version 2>&1 | head -1)"
    echo "params: USERS=$USERS REPS=$REPS N_IDLE=$N_IDLE CONC=$CONC N_TPUT=$N_TPUT TPUT_SECS=$TPUT_SECS N_STORM=$N_STORM SCALE=\"$SCALE\" SCALE_MT=\"$SCALE_MT\" HOLD_SECS=$HOLD_SECS IPERF_SECS=$IPERF_SECS DTLS_TPUT=$DTLS_TPUT UDP_TPUT=$UDP_TPUT CERT_LOGINS=$CERT_LOGINS CERT_N=$CERT_N DEVICE_KEY=$DEVICE_KEY"
} > "$OUT/machine.txt"
fi

# The servers take turns (tunneld, ocserv, tunneld, ...) rather than one after the other, so that
# a slow spell of this shared machine falls on both and not on one server's block of runs.
if [ "$SKIP_COMPARE" != 1 ]; then
    for rep in $(seq 1 "$REPS"); do
        for server in tunneld ocserv; do
            start_server "$server"
            bench "$server" "connect-$rep" connect -n "$N_IDLE" -c "$CONC"
            # Two client processes: one alone saturates its core before either server does.
            bench "$server" "throughput-$rep" throughput -n "$N_TPUT" -c "$CONC" --processes 2 --duration "$TPUT_SECS" --window 16 --size 1400
            if [ "$DTLS_TPUT" = 1 ]; then
                bench "$server" "throughput-dtls-$rep" throughput -n "$N_TPUT" -c "$CONC" --processes 2 --duration "$TPUT_SECS" --window 16 --size 1400 --dtls
            fi
            if [ "$UDP_TPUT" = 1 ]; then
                bench "$server" "throughput-udp-$rep" throughput -n "$N_TPUT" -c "$CONC" --processes 2 --duration "$TPUT_SECS" --window 16 --size 1400 --udp-port 7
                if [ "$DTLS_TPUT" = 1 ]; then
                    bench "$server" "throughput-udp-dtls-$rep" throughput -n "$N_TPUT" -c "$CONC" --processes 2 --duration "$TPUT_SECS" --window 16 --size 1400 --udp-port 7 --dtls
                fi
            fi
            bench "$server" "storm-$rep" storm -n "$N_STORM" -c "$CONC" --mode cookie
            # The same sessions logged out and logged in again from scratch (password check).
            bench "$server" "reauth-$rep" storm -n "$N_STORM" -c "$CONC" --mode reauth
            stop_server
        done
    done
    for mode in tls dtls; do
        # ocserv's tunnel MTU is 1400 over either transport (see write_ocserv_config).
        if [ "$mode" = tls ]; then OCSERV_MTU=1428; else OCSERV_MTU=1466; fi
        write_ocserv_config
        for server in tunneld ocserv; do
            start_server "$server"
            openconnect_run "$server" "$mode"
            stop_server
        done
    done
    unset OCSERV_MTU
    write_ocserv_config
    if [ "$CERT_LOGINS" = 1 ]; then
        AUTH=certificate
        write_tunneld_config 0
        write_ocserv_config
        for rep in $(seq 1 "$REPS"); do
            for server in tunneld ocserv; do
                start_server "$server"
                bench "$server" "certconnect-$rep" connect -n "$N_IDLE" -c "$CONC"
                stop_server
            done
        done
        for rep in $(seq 1 "$REPS"); do
            start_server tunneld
            bench tunneld "certgoal-$rep" connect -n "$CERT_N" -c "$CONC"
            stop_server
        done
        AUTH=password
        write_tunneld_config 0
        write_ocserv_config
    fi
fi

for n in $SCALE; do
    start_server tunneld
    bench tunneld "scale-$n" connect -n "$n" -c "$CONC" --per-process 8000 --setup-timeout 60
    stop_server
done

for n in $SCALE_MT; do
    write_tunneld_config 4
    start_server tunneld
    # Then held with no traffic but the keepalives and DPD the server asks for: what idle devices cost.
    bench tunneld "mtscale-$n" hold -n "$n" -c "$CONC" --per-process 8000 --setup-timeout 60 \
        --duration "$HOLD_SECS" --trickle-ms 0
    stop_server
    write_tunneld_config 0
done

if [ "$PERF" = 1 ] && command -v perf >/dev/null; then
    # System-wide, so the blocking-pool threads that verify passwords (started after any attach)
    # are sampled too; the report keeps tunneld's process (every thread of it: the data-plane
    # threads make the TLS handshakes, the blocking pool checks the passwords).
    start_server tunneld
    perf record -F 999 -a -o "$OUT/perf.data" -- sleep 8 >/dev/null 2>&1 &
    perf_pid=$!
    bench tunneld "perf" connect -n $((4 * N_IDLE)) -c "$CONC" --per-process 8000 >/dev/null
    wait "$perf_pid" || true
    perf_server="$SERVER_PID"
    stop_server
    perf report -i "$OUT/perf.data" --no-children --sort comm,dso,symbol --pid "$perf_server" --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | awk '{s=$1; sub("%","",s); t+=s;
            if ($0 ~ /sha2::sha512|sha_crypt|digest::/) h+=s;
            else if ($0 ~ /aws_lc|curve25519|ring_core|fiat|x25519|nistz|fe4_|fe_loose/) c+=s;
            else if ($0 ~ /\[k\]/) k+=s;
            else if ($0 ~ /libc/) l+=s }
            END { if (t > 0) printf "{\"password_hash\": %.1f, \"tls_crypto\": %.1f, \"kernel\": %.1f, \"libc\": %.1f, \"other\": %.1f}\n",
                100*h/t, 100*c/t, 100*k/t, 100*l/t, 100*(t-h-c-k-l)/t }' > "$OUT/perf-setup.json"
    rm -f "$OUT/perf.data"
fi

if [ "$MICRO" = 1 ]; then
    log "criterion micro-benchmarks"
    for b in tunnel-proto:cstp tunnel-gateway:hot_path; do
        (cd "$ROOT" && cargo bench -p "${b%%:*}" --bench "${b#*:}" -- --warm-up-time 1 --measurement-time 3 2>>"$LOG") |
            grep -E '^[a-z_]+/|time:|thrpt:' | grep -v '%' >> "$OUT/micro.txt"
    done
fi

if [ "$WRITE_DOCS" = 1 ]; then
    python3 "$HERE/report.py" "$OUT" > "$ROOT/docs/benchmarks.md"
    log "wrote docs/benchmarks.md from $OUT"
fi
log "results in $OUT"
