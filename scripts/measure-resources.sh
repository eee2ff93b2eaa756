#!/usr/bin/env bash
# Measures what one gateway process costs on this machine, against a
# simulated upstream on loopback that never fails:
#
#   1. memory and file descriptors per in-flight request: wrk holds N
#      connections open while the upstream takes 4 s per answer, and the
#      gateway's RSS and open descriptors are sampled while all N wait,
#      together with the kernel's TCP buffer memory of the whole host
#      (/proc/net/sockstat), which a container's memory cgroup is also
#      charged for;
#   2. CPU per request and throughput: wrk with 64 connections for 10 s
#      against an upstream that answers at once, with 1 and 2 executor threads.
#
# Each measurement runs ROUNDS times (default 3) and the median is printed.
# Every load run is bounded by wrk's duration; all processes bind to
# 127.0.0.1 and are stopped on exit. Takes about 5 minutes.
#
# Usage: scripts/measure-resources.sh [IN_FLIGHT...]   (default: 1000 2000 4000 6000)
set -euo pipefail
cd "$(dirname "$0")/.."

readonly ROUNDS=${ROUNDS:-3}
readonly HOLD_MS=4000
levels=("$@")
[[ ${#levels[@]} -gt 0 ]] || levels=(1000 2000 4000 6000)

if ! command -v wrk >/dev/null || ! command -v python3 >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk python3 >/dev/null
fi
cargo build --release --locked --quiet
readonly BIN=target/release/fanout

report_file=$(mktemp)
pids=()
stop_processes() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap 'stop_processes; rm -f "$report_file"' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
    local attempt
    for attempt in $(seq 100); do
        (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null && return
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    exit 1
}

# Starts the simulator, passing on the arguments after $1, and the gateway
# with $1 executor threads. Sets $gateway_pid and $gateway_port.
start_pair() {
    local threads=$1
    shift
    local upstream_port
    upstream_port=$(free_port)
    "$BIN" simulate --listen "127.0.0.1:$upstream_port" --failure-rate 0 "$@" 2>/dev/null &
    pids+=($!)
    wait_port "$upstream_port"
    gateway_port=$(free_port)
    "$BIN" --listen "127.0.0.1:$gateway_port" --threads "$threads" \
        --upstream "http://127.0.0.1:$upstream_port/api/work" 2>/dev/null &
    gateway_pid=$!
    pids+=("$gateway_pid")
    wait_port "$gateway_port"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Memory of all TCP socket buffers on the host, in KiB.
tcp_buffer_kib() { awk -v page="$(getconf PAGESIZE)" '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) * page / 1024 }' /proc/net/sockstat; }
fd_count() { ls "/proc/$1/fd" | wc -l; }
# User plus system CPU time of process $1, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Converts a wrk latency such as 950.00us, 1.20ms or 1.05s to milliseconds.
to_ms() {
    awk -v value="$1" 'BEGIN {
        unit = value; sub(/^[0-9.]+/, "", unit); number = value + 0
        if (unit == "us") number /= 1000; else if (unit == "s") number *= 1000
        printf "%.2f\n", number
    }'
}

echo "# fanout resource measurements"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs; $(uname -r); fanout $("$BIN" --version | cut -d' ' -f2)"
echo "fan-out 2 (default), simulated upstream with failure rate 0; medians of $ROUNDS rounds"
echo

echo "## Memory and descriptors per in-flight request (upstream answers after $HOLD_MS ms)"
echo "| in flight | gateway RSS idle (KiB) | RSS with all in flight (KiB) | RSS KiB per request | descriptors per request | host TCP buffer KiB per request | failed responses |"
echo "|---|---|---|---|---|---|---|"
for level in "${levels[@]}"; do
    per_kib=() per_fd=() idles=() peaks=() per_tcp=() failures=()
    for round in $(seq "$ROUNDS"); do
        start_pair 2 --min-latency "$HOLD_MS" --max-latency "$HOLD_MS"
        idle_rss=$(rss_kib "$gateway_pid")
        idle_fds=$(fd_count "$gateway_pid")
        idle_tcp=$(tcp_buffer_kib)
        # Every wrk connection sends its first request at once; 3 s later all
        # of them still wait for the 4 s upstream, so N requests are in flight.
        wrk -t2 -c"$level" -d6s --timeout 10s \
            "http://127.0.0.1:$gateway_port/api/all?timeout=$((HOLD_MS + 2000))" \
            >"$report_file" 2>&1 &
        wrk_pid=$!
        sleep 3
        peak_rss=$(rss_kib "$gateway_pid")
        peak_fds=$(fd_count "$gateway_pid")
        peak_tcp=$(tcp_buffer_kib)
        wait "$wrk_pid" || true
        # Responses other than 200 plus connections wrk could not complete.
        failures+=("$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$report_file")")
        stop_processes
        idles+=("$idle_rss")
        peaks+=("$peak_rss")
        per_kib+=("$(python3 -c "print(round(($peak_rss - $idle_rss) / $level, 2))")")
        per_fd+=("$(python3 -c "print(round(($peak_fds - $idle_fds) / $level, 2))")")
        per_tcp+=("$(python3 -c "print(round(($peak_tcp - $idle_tcp) / $level, 2))")")
    done
    echo "| $level | $(printf '%s\n' "${idles[@]}" | median) | $(printf '%s\n' "${peaks[@]}" | median) | $(printf '%s\n' "${per_kib[@]}" | median) | $(printf '%s\n' "${per_fd[@]}" | median) | $(printf '%s\n' "${per_tcp[@]}" | median) | $(printf '%s\n' "${failures[@]}" | median) |"
done
echo

echo "## Throughput and CPU per request (upstream answers at once, wrk -t1 -c64 -d10s)"
echo "| gateway threads | requests/s | gateway CPU per request (µs) | p50 latency (ms) | p99 latency (ms) |"
echo "|---|---|---|---|---|"
ticks_per_second=$(getconf CLK_TCK)
for threads in 1 2; do
    rates=() cpus=() p50s=() p99s=()
    for round in $(seq "$ROUNDS"); do
        start_pair "$threads" --min-latency 0 --max-latency 0
        before=$(cpu_ticks "$gateway_pid")
        report=$(wrk -t1 -c64 -d10s --latency "http://127.0.0.1:$gateway_port/api/all?timeout=1000")
        after=$(cpu_ticks "$gateway_pid")
        stop_processes
        requests=$(awk '/requests in/ { print $1 }' <<<"$report")
        rates+=("$(awk '/^Requests\/sec/ { printf "%d", $2 }' <<<"$report")")
        cpus+=("$(python3 -c "print(round(($after - $before) / $ticks_per_second / $requests * 1e6))")")
        p50s+=("$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$report")")")
        p99s+=("$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$report")")")
        if grep -q "Non-2xx" <<<"$report"; then
            echo "warning: some responses were not 200: $(grep Non-2xx <<<"$report")" >&2
        fi
    done
    echo "| $threads | $(printf '%s\n' "${rates[@]}" | median) | $(printf '%s\n' "${cpus[@]}" | median) | $(printf '%s\n' "${p50s[@]}" | median) | $(printf '%s\n' "${p99s[@]}" | median) |"
done
