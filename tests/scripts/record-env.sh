#!/bin/sh
# openconnect --script for the end-to-end tests (never the default vpnc-script: it rewrites routes
# and resolv.conf). On connect/reconnect it configures the TUN minimally: link up with the pushed MTU,
# the pushed IPv4 (/32) and IPv6 (/128) addresses, and one route per split-include (IPv4 and IPv6).
# Nothing else. Then, for every reason, it records the whole environment NUL-separated into
# "$E2E_ENV_DIR/NNNN-<reason>.env" (written to a temp name and renamed, so a reader never sees half a
# file). The test waits for a "connect" record, so the TUN is configured by the time it sees one.
set -u

: "${E2E_ENV_DIR:?E2E_ENV_DIR must name the directory for environment records}"
reason="${reason:-none}"
setup_errors=""

note() { setup_errors="${setup_errors}$*;"; }

add_split_routes() {
    # $1: variable prefix (CISCO_SPLIT_INC or CISCO_IPV6_SPLIT_INC); $2: ip family flag (-4/-6)
    count=0
    eval "count=\${$1:-0}"
    i=0
    while [ "$i" -lt "$count" ]; do
        addr="" len=""
        eval "addr=\${$1_${i}_ADDR:-}"
        eval "len=\${$1_${i}_MASKLEN:-}"
        if [ -n "$addr" ] && [ -n "$len" ]; then
            ip "$2" route replace "$addr/$len" dev "$TUNDEV" || note "route $addr/$len"
        fi
        i=$((i + 1))
    done
}

case "$reason" in
connect | reconnect)
    ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1400}" || note "link up"
    if [ -n "${INTERNAL_IP4_ADDRESS:-}" ]; then
        ip addr replace "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV" || note "ipv4 address"
    fi
    if [ -n "${INTERNAL_IP6_ADDRESS:-}" ]; then
        ip -6 addr replace "$INTERNAL_IP6_ADDRESS/128" dev "$TUNDEV" nodad || note "ipv6 address"
    fi
    add_split_routes CISCO_SPLIT_INC -4
    add_split_routes CISCO_IPV6_SPLIT_INC -6
    ;;
esac

E2E_SETUP_ERRORS="$setup_errors"
export E2E_SETUP_ERRORS
n=$(find "$E2E_ENV_DIR" -maxdepth 1 -name '*.env' | wc -l)
file="$E2E_ENV_DIR/$(printf '%04d' "$n")-$reason.env"
env -0 > "$file.tmp" && mv "$file.tmp" "$file"
exit 0
