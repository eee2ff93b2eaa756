#!/usr/bin/env bash
# Measures what per-request logging costs: gateway throughput with
# --log-level info against --log-level off, under wrk, with an instant
# simulated upstream in a separate process. Everything runs on 127.0.0.1
# and stops by itself.
#
# Usage: scripts/bench-logging.sh [--smoke]
#   ROUNDS=5 DURATION=8 CONNECTIONS=32 GATEWAY_THREADS=1 UPSTREAM_THREADS=1
#   LOG_SINK=pipe: where the gateway's stderr goes: "pipe" (read by cat and
#   thrown away, as a container runtime or journald reads it), "file" (a
#   file on disk, deleted after each run) or "null" (/dev/null).
#   PIN=0: with PIN=1 the gateway runs on CPU 0 and the upstream and wrk on
#   CPU 1 (taskset), which keeps them from trading places between runs.
#   --smoke runs one 1-second round per mode, to check the script works.
#
# Besides requests per second it reports the gateway's CPU time per
# request (user + system, from /proc), which other load on a shared
# machine disturbs much less than throughput. Metrics are recorded in both
# modes, so the ratios are the cost of the access log line alone.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
GATEWAY_THREADS=${GATEWAY_THREADS:-1}
LOG_SINK=${LOG_SINK:-pipe}
PIN=${PIN:-0}
GATEWAY_CPU=()
OTHER_CPU=()
if ((PIN)); then
    GATEWAY_CPU=(taskset -c 0)
    OTHER_CPU=(taskset -c 1)
fi
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
if [[ "${1:-}" == "--smoke" ]]; then
    ROUNDS=1 DURATION=1 WARMUP=0
fi

if ! command -v wrk >/dev/null; then
    echo "wrk not found; installing it with apt-get" >&2
    apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

cargo build --release --locked --quiet
BIN=target/release/fanout
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Prints a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 5 s for URL $1 to respond.
wait_ready() {
    for _ in $(seq 100); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "no response from $1 within 5 s" >&2
    return 1
}

UPSTREAM_PORT=$(free_port)
"${OTHER_CPU[@]}" "$BIN" simulate --listen "127.0.0.1:$UPSTREAM_PORT" --min-latency 0 --max-latency 0 \
    --failure-rate 0 --threads "$UPSTREAM_THREADS" --log-level warn 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_ready "http://127.0.0.1:$UPSTREAM_PORT/api/work"

# Prints the user + system CPU time of process $1, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# Runs one measurement with log level $1 and prints "REQUESTS_PER_S CPU_US_PER_REQUEST".
measure() {
    local level=$1 port pid rate requests ticks_before ticks_after log="$WORK/gateway-$1.log"
    port=$(free_port)
    local gateway=("${GATEWAY_CPU[@]}" "$BIN" --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UPSTREAM_PORT/api/work"
        --threads "$GATEWAY_THREADS" --log-level "$level")
    case "$LOG_SINK" in
        file) "${gateway[@]}" 2>"$log" & ;;
        null) "${gateway[@]}" 2>/dev/null & ;;
        pipe) "${gateway[@]}" 2> >(wc -c >"$log") & ;;
        *) echo "unknown LOG_SINK $LOG_SINK: expected pipe, file or null" >&2; exit 2 ;;
    esac
    pid=$!
    PIDS+=("$pid")
    wait_ready "http://127.0.0.1:$port/healthz"
    local url="http://127.0.0.1:$port/api/all?timeout=1000"
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 10)) "${OTHER_CPU[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
    fi
    ticks_before=$(cpu_ticks "$pid")
    timeout $((DURATION + 10)) "${OTHER_CPU[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$url" >"$WORK/wrk.out"
    ticks_after=$(cpu_ticks "$pid")
    rate=$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.out")
    requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.out")
    local cpu_us
    cpu_us=$(awk -v t="$((ticks_after - ticks_before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    # Failed requests would make a mode look fast for the wrong reason.
    if grep -E 'Non-2xx|Socket errors' "$WORK/wrk.out" >&2; then
        echo "  WARNING: the $level run had errors; its rate is not comparable" >&2
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local bytes
    case "$LOG_SINK" in
        file) bytes=$(stat -c %s "$log") ;;
        pipe) sleep 0.2; bytes=$(cat "$log" 2>/dev/null || echo "?") ;;
        null) bytes="?" ;;
    esac
    rm -f "$log"
    echo "  $level: $rate requests/s, $cpu_us us of gateway CPU per request, $bytes bytes of log" >&2
    echo "$rate $cpu_us"
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "fanout logging cost: wrk -t1 -c$CONNECTIONS, ${DURATION}s per run, $ROUNDS rounds," >&2
echo "gateway --threads $GATEWAY_THREADS, upstream --threads $UPSTREAM_THREADS, instant upstream, fan-out 2," >&2
echo "gateway stderr to: $LOG_SINK, pinned to CPUs: $( ((PIN)) && echo yes || echo no)" >&2
INFO=()
OFF=()
for round in $(seq "$ROUNDS"); do
    echo "round $round" >&2
    # Alternating which mode goes first spreads slow drifts of the machine over both.
    if ((round % 2)); then
        INFO+=("$(measure info)")
        OFF+=("$(measure off)")
    else
        OFF+=("$(measure off)")
        INFO+=("$(measure info)")
    fi
done

# Column $1 of the "RATE CPU" results in the named array, one value a line.
column() {
    local -n results=$1
    printf '%s\n' "${results[@]}" | awk -v c="$2" '{ print $c }'
}

info_rate=$(column INFO 1 | median)
off_rate=$(column OFF 1 | median)
info_cpu=$(column INFO 2 | median)
off_cpu=$(column OFF 2 | median)
echo >&2
echo "medians of $ROUNDS interleaved rounds:"
echo "  --log-level info: $info_rate requests/s, $info_cpu us CPU per request"
echo "  --log-level off:  $off_rate requests/s, $off_cpu us CPU per request"
awk -v ir="$info_rate" -v or="$off_rate" -v ic="$info_cpu" -v oc="$off_cpu" 'BEGIN {
    printf "throughput info / off: %.3f (%+.1f%% with logging at info)\n", ir / or, (ir / or - 1) * 100
    printf "CPU per request info / off: %.3f (%+.1f%% with logging at info)\n", ic / oc, (ic / oc - 1) * 100
}'
echo "NOTE: this machine is shared and noisy (2 vCPUs, other jobs running); runs"
echo "move by 10-15% or more, so compare ratios from the same run, not absolute"
echo "numbers. When the gateway is not CPU-bound, requests/s follows latency and"
echo "scheduling more than work; CPU time per request is the steadier measure."
