#!/usr/bin/env bash
# Load test of fanout on loopback: throughput against nginx, 5,000 requests
# in flight against the simulated upstream, deadline precision against a
# hanging upstream, and overload when fanout has an in-flight cap.
#
# Builds the release binary, installs wrk and nginx from the
# distribution's packages when missing, starts every server on
# 127.0.0.1, stops everything it started on exit, and prints one table of
# medians over interleaved rounds. Every wrk run has a fixed duration.
#
# Usage: scripts/loadtest.sh [--quick] [--rounds N] [--upstream nginx|simulate]
#                            [--fanout-threads N]
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/loadtest.sh [OPTIONS]

  --quick               smoke run: 1 round, 1 s per throughput row, 3 s at 500
                        connections (about 30 s); numbers not comparable
  --rounds N            rounds, interleaved, medians reported (default 3)
  --upstream KIND       instant upstream of the throughput rows: nginx (default)
                        or simulate (fanout simulate with no latency); the
                        nginx rows are measured in both cases
  --fanout-threads N    executor threads of fanout (default: its own default,
                        the number of CPUs available)
  -h, --help            print this help
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LUA_DIR="$ROOT/scripts/loadtest"

ROUNDS=3
QUICK=0
UPSTREAM_KIND=nginx
FANOUT_THREADS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --upstream) UPSTREAM_KIND=$2; shift ;;
        --fanout-threads) FANOUT_THREADS=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "loadtest: unknown argument $1; see --help" >&2; exit 2 ;;
    esac
    shift
done
case "$UPSTREAM_KIND" in
    nginx | simulate) ;;
    *) echo "loadtest: invalid --upstream $UPSTREAM_KIND: expected nginx or simulate" >&2; exit 2 ;;
esac

# Durations in seconds, and the connection counts of each section.
THROUGHPUT_SECONDS=5
# Concurrency runs as CONNECTIONSxSECONDS: the 5,000 of the targets, and
# 2,000, which leaves this kind of 2-CPU machine some idle time.
SOAK_RUNS="5000x30 2000x20"
DEADLINE_SECONDS=5
# 100 shows the precision with the machine mostly idle; 1,000 and 5,000 are
# the targets' loads.
DEADLINE_CONNECTIONS="100 1000 5000"
OVERLOAD_CAP=1000
OVERLOAD_SECONDS=10
if [ "$QUICK" = 1 ]; then
    ROUNDS=1
    THROUGHPUT_SECONDS=1
    SOAK_RUNS="500x3"
    DEADLINE_SECONDS=2
    DEADLINE_CONNECTIONS="100 500"
    OVERLOAD_CAP=200
    OVERLOAD_SECONDS=3
fi

# ---------------------------------------------------------------- setup

log() { echo "loadtest: $*" >&2; }

install_packages() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} with apt-get"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
}

WORK=$(mktemp -d /tmp/fanout-loadtest.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a command in the background, remembering its pid in $STARTED.
start() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Sets $PORT to a TCP port on 127.0.0.1 that nothing listens on, below the
# ephemeral range. It runs in this shell, not a subshell, so that
# $NEXT_PORT advances.
NEXT_PORT=$((20000 + RANDOM % 5000))
free_port() {
    while ss -Htln "sport = :$NEXT_PORT" | grep -q .; do
        NEXT_PORT=$((NEXT_PORT + 1))
    done
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

wait_listening() {
    local port=$1 tries=0
    until ss -Htln "sport = :$port" | grep -q .; do
        tries=$((tries + 1))
        if [ $tries -gt 100 ]; then
            log "nothing listens on 127.0.0.1:$port after 10 s"
            exit 1
        fi
        sleep 0.1
    done
}

FANOUT="$ROOT/target/release/fanout"
THREAD_ARGS=()
[ -n "$FANOUT_THREADS" ] && THREAD_ARGS=(--threads "$FANOUT_THREADS")

# Starts fanout on a new port with extra options; sets $STARTED and $PORT.
start_fanout() {
    free_port
    start "$WORK/fanout-$PORT.log" "$FANOUT" --listen "127.0.0.1:$PORT" "${THREAD_ARGS[@]}" "$@"
    wait_listening "$PORT"
}

# Starts `fanout simulate` on a new port; sets $STARTED and $PORT.
start_simulator() {
    free_port
    start "$WORK/simulate-$PORT.log" "$FANOUT" simulate --listen "127.0.0.1:$PORT" --seed 1 "$@"
    wait_listening "$PORT"
}

# Runs wrk for $1 seconds with $2 connections and $3 threads against $4,
# with Lua script $5; prints wrk's RESULT line. LATE_MS is passed through.
run_wrk() {
    local seconds=$1 connections=$2 threads=$3 url=$4 script=$5
    # wrk stops itself after the duration; the timeout only guards a hang.
    timeout $((seconds + 60)) wrk -t"$threads" -c"$connections" -d"${seconds}s" \
        --timeout 5s -s "$LUA_DIR/$script" "$url" | grep '^RESULT' || echo "RESULT failed=1"
}

# Prints the value of key=value in a RESULT line, or 0 when it is missing.
field() {
    local value
    value=$(sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1")
    echo "${value:-0}"
}

# Prints the median of the numbers given as arguments, or n/a without any.
median() {
    printf '%s\n' "$@" | { grep -E '^-?[0-9]' || true; } | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

declare -A RESULTS
record() { RESULTS[$1]="${RESULTS[$1]:-} $2"; }

# Prints $1 / $2 with two decimals, or n/a.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "n/a") printf "%.2f", a / b; else print "n/a" }'; }

# Prints the CPU time, in clock ticks, that process $1 has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Prints the busy and total clock ticks of the whole machine so far.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }

# Prints how many CPUs' worth $1 clock ticks are over $2 seconds.
cpus_used() { awk -v t="$1" -v s="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz / s }'; }

# Writes "status timeout_ms duration_ms" for each /api/ request in fanout's
# access log, read on stdin, to file $1; timeout_ms is - when the request
# had none, as for a shed request.
api_requests() {
    awk '/"msg":"request"/ && /"path":"\/api\// {
        status = "-"; timeout = "-"; duration = "-"
        # The first status field is the response status; attempts come later.
        if (match($0, /"status":[0-9]+/)) status = substr($0, RSTART + 9, RLENGTH - 9)
        if (match($0, /"timeout_ms":[0-9]+/)) timeout = substr($0, RSTART + 13, RLENGTH - 13)
        if (match($0, /"duration_ms":[0-9.]+/)) duration = substr($0, RSTART + 14, RLENGTH - 14)
        print status, timeout, duration
    }' >"$1"
}

# Prints the p50, p99 and max of the numbers on stdin, or n/a.
quantiles() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a n/a n/a"; exit }
        i50 = int(NR * 0.50 + 0.999); i99 = int(NR * 0.99 + 0.999)
        printf "%.2f %.2f %.2f\n", v[i50 < 1 ? 1 : i50], v[i99 < 1 ? 1 : i99], v[NR] }'
}

# Prints fanout's /metrics, fetched from port $1 over HTTP/1.0 with bash's
# /dev/tcp, so no HTTP client has to be installed.
scrape_metrics() {
    local port=$1
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port
        printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        cat <&3" 2>/dev/null || true
}

# Prints the value of sample $2 (a metric name with its labels) in the
# metrics text $1, or 0.
sample() { awk -v name="$2" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }' <<<"$1"; }

# Prints the number of sockets in TIME_WAIT on this machine.
time_wait() { ss -Htan state time-wait 2>/dev/null | wc -l; }

write_nginx_config() {
    local conf=$1
    cat >"$conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 16000; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream instant { server 127.0.0.1:$INSTANT_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_HTTP_PORT;
        location /api/work { default_type application/json; return 200 '{"time": 0}'; }
    }
    server {
        listen 127.0.0.1:$NGINX_HTTPS_PORT ssl;
        ssl_certificate $WORK/upstream.pem;
        ssl_certificate_key $WORK/upstream.key;
        location /api/work { default_type application/json; return 200 '{"time": 0}'; }
    }
    server {
        listen 127.0.0.1:$NGINX_PROXY_PORT;
        location / {
            proxy_pass http://instant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# ---------------------------------------------------------------- start

install_packages
log "building the release binary"
(cd "$ROOT" && cargo build --release --locked --quiet)

log "working in $WORK"
# The in-flight cap option, when this build of fanout has one.
CAP_FLAG=$("$FANOUT" --help | grep -oE -- '--[a-z-]*in-?flight[a-z-]*' | head -n1 || true)
# An ECDSA P-256 certificate for 127.0.0.1, the key type most HTTPS sites use.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/upstream.key" -out "$WORK/upstream.pem" 2>/dev/null

free_port
NGINX_HTTP_PORT=$PORT
free_port
NGINX_HTTPS_PORT=$PORT
free_port
NGINX_PROXY_PORT=$PORT
if [ "$UPSTREAM_KIND" = simulate ]; then
    start_simulator --failure-rate 0 --min-latency 0 --max-latency 0
    INSTANT_PORT=$PORT
    INSTANT_URL="http://127.0.0.1:$PORT/api/work"
else
    INSTANT_PORT=$NGINX_HTTP_PORT
    INSTANT_URL="http://127.0.0.1:$NGINX_HTTP_PORT/api/work"
fi
write_nginx_config "$WORK/nginx.conf"
start "$WORK/nginx.log" nginx -c "$WORK/nginx.conf" -g 'daemon off;'
NGINX_PID=$STARTED
wait_listening "$NGINX_PROXY_PORT"
wait_listening "$NGINX_HTTPS_PORT"
HTTPS_URL="https://127.0.0.1:$NGINX_HTTPS_PORT/api/work"
CA=(--upstream-ca "$WORK/upstream.pem")

# ---------------------------------------------------------------- 1. throughput

# Each row: name|what wrk targets. fanout rows start their own process.
declare -A ROW_URL ROW_PID
THROUGHPUT_ROWS=(upstream proxy all_http all_http_1thread first_http first_http_finish
    all_https first_https first_https_finish all_https_nopool all_http_nopool)
ROW_URL[upstream]=$INSTANT_URL
ROW_URL[proxy]="http://127.0.0.1:$NGINX_PROXY_PORT/api/work"

start_fanout --upstream "$INSTANT_URL"
ROW_URL[all_http]="http://127.0.0.1:$PORT/api/all?timeout=1000"
ROW_PID[all_http]=$STARTED
sleep 0.2
FANOUT_START_LINE=$(grep -m1 'listening' "$WORK/fanout-$PORT.log" || true)
start_fanout --upstream "$INSTANT_URL" --threads 1
ROW_URL[all_http_1thread]="http://127.0.0.1:$PORT/api/all?timeout=1000"
ROW_PID[all_http_1thread]=$STARTED
start_fanout --upstream "$INSTANT_URL" --losers cancel
ROW_URL[first_http]="http://127.0.0.1:$PORT/api/first?timeout=1000"
ROW_PID[first_http]=$STARTED
start_fanout --upstream "$INSTANT_URL" --losers finish
ROW_URL[first_http_finish]="http://127.0.0.1:$PORT/api/first?timeout=1000"
ROW_PID[first_http_finish]=$STARTED
start_fanout --upstream "$HTTPS_URL" "${CA[@]}"
ROW_URL[all_https]="http://127.0.0.1:$PORT/api/all?timeout=1000"
ROW_PID[all_https]=$STARTED
start_fanout --upstream "$HTTPS_URL" "${CA[@]}" --losers cancel
ROW_URL[first_https]="http://127.0.0.1:$PORT/api/first?timeout=1000"
ROW_PID[first_https]=$STARTED
start_fanout --upstream "$HTTPS_URL" "${CA[@]}" --losers finish
ROW_URL[first_https_finish]="http://127.0.0.1:$PORT/api/first?timeout=1000"
ROW_PID[first_https_finish]=$STARTED
start_fanout --upstream "$HTTPS_URL" "${CA[@]}" --upstream-max-idle 0
ROW_URL[all_https_nopool]="http://127.0.0.1:$PORT/api/all?timeout=1000"
ROW_PID[all_https_nopool]=$STARTED
start_fanout --upstream "$INSTANT_URL" --upstream-max-idle 0
ROW_URL[all_http_nopool]="http://127.0.0.1:$PORT/api/all?timeout=1000"
ROW_PID[all_http_nopool]=$STARTED

# Prints the value of $1 recorded last, that is, in this round.
latest() { local values=${RESULTS[$1]:-}; echo "${values##* }"; }

HZ=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
    for row in "${THROUGHPUT_ROWS[@]}"; do
        log "throughput round $round: $row"
        pid=${ROW_PID[$row]:-}
        [ -n "$pid" ] && ticks_before=$(cpu_ticks "$pid")
        line=$(run_wrk "$THROUGHPUT_SECONDS" 64 1 "${ROW_URL[$row]}" throughput.lua)
        record "tp_$row" "$(field "$line" rps)"
        errors=$(($(field "$line" non2xx) + $(field "$line" connect) + $(field "$line" read) + $(field "$line" write) + $(field "$line" timeout)))
        record "tperr_$row" "$errors"
        # fanout's own CPU time per request, which the other processes on
        # these CPUs do not change the way they change the request rate.
        if [ -n "$pid" ]; then
            record "tpcpu_$row" "$(awk -v t=$(($(cpu_ticks "$pid") - ticks_before)) -v n="$(field "$line" requests)" -v hz="$HZ" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')"
        fi
    done
    # Ratios within the round compare rows measured a few seconds apart.
    record ratio_https_http "$(ratio "$(latest tp_all_https)" "$(latest tp_all_http)")"
    record ratio_http_proxy "$(ratio "$(latest tp_all_http)" "$(latest tp_proxy)")"
    record cpu_ratio_http_https "$(ratio "$(latest tpcpu_all_http)" "$(latest tpcpu_all_https)")"
done

# ---------------------------------------------------------------- 2. concurrency

# Samples the open descriptors of $1 every 0.2 s into $2 until killed.
sample_descriptors() {
    local pid=$1 out=$2 max=0 count
    while kill -0 "$pid" 2>/dev/null; do
        count=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        [ "$count" -gt "$max" ] && max=$count && echo "$max" >"$out"
        sleep 0.2
    done
}

# The attempt outcomes reported for each concurrency run.
OUTCOMES="ok http_status invalid_payload connect_error io_error timeout"
start_simulator --min-latency 100 --max-latency 600
SIM_PID=$STARTED
SIM_URL="http://127.0.0.1:$PORT/api/work"
for round in $(seq 1 "$ROUNDS"); do
    for soak in $SOAK_RUNS; do
        connections=${soak%x*}
        seconds=${soak#*x}
        log "concurrency round $round: $connections connections for $seconds s"
        # A cap at the connection count keeps fanout from shedding any of
        # the requests this section measures.
        cap_args=()
        [ -n "$CAP_FLAG" ] && cap_args=("$CAP_FLAG" "$connections")
        key="conc${connections}"
        record "${key}_timewait" "$(time_wait)"
        start_fanout --upstream "$SIM_URL" "${cap_args[@]}"
        fanout_pid=$STARTED
        sample_descriptors "$fanout_pid" "$WORK/fds" &
        sampler=$!
        fanout_before=$(cpu_ticks "$fanout_pid")
        upstream_before=$(cpu_ticks "$SIM_PID")
        read -r busy_before total_before < <(machine_ticks)
        line=$(LATE_MS=1020 run_wrk "$seconds" "$connections" 2 \
            "http://127.0.0.1:$PORT/api/all?timeout=1000" status.lua)
        read -r busy_after total_after < <(machine_ticks)
        record "${key}_cpu_fanout" "$(cpus_used $(($(cpu_ticks "$fanout_pid") - fanout_before)) "$seconds")"
        record "${key}_cpu_upstream" "$(cpus_used $(($(cpu_ticks "$SIM_PID") - upstream_before)) "$seconds")"
        record "${key}_busy" "$(awk -v b=$((busy_after - busy_before)) -v t=$((total_after - total_before)) 'BEGIN { printf "%.0f", t ? 100 * b / t : 0 }')"
        rss_kib=$(awk '/^VmHWM/ { print $2 }' "/proc/$fanout_pid/status")
        # What the upstream attempts did, in fanout's own counters.
        metrics=$(scrape_metrics "$PORT")
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        stop "$fanout_pid"
        declare -A outcome_count=()
        attempts=0
        for outcome in $OUTCOMES; do
            count=$(sample "$metrics" "fanout_upstream_attempts_total{outcome=\"$outcome\"}")
            outcome_count[$outcome]=${count%.*}
            attempts=$((attempts + ${count%.*}))
        done
        for outcome in $OUTCOMES; do
            record "${key}_attempt_$outcome" "$(awk -v n="${outcome_count[$outcome]}" -v d="$attempts" 'BEGIN { printf "%.1f", d ? 100 * n / d : 0 }')"
        done
        opened=$(sample "$metrics" fanout_upstream_connections_opened_total)
        record "${key}_new_per_attempt" "$(awk -v n="${opened%.*}" -v d="$attempts" 'BEGIN { printf "%.2f", d ? n / d : 0 }')"
        # fanout's own clock: from reading the request head to writing the
        # response, so the wait in socket buffers before fanout reads a
        # request is not in it.
        api_requests "$WORK/api" <"$WORK/fanout-$PORT.log"
        record "${key}_late_fanout" "$(awk '$2 != "-" && $3 > $2 + 20 { n++ } END { print n + 0 }' "$WORK/api")"
        requests=$(field "$line" requests)
        record "${key}_rps" "$(field "$line" rps)"
        for status in s200 s500 s503 other; do
            record "${key}_$status" "$(awk -v n="$(field "$line" $status)" -v d="$requests" 'BEGIN { printf "%.2f", d ? 100 * n / d : 0 }')"
        done
        record "${key}_errors" "$(($(field "$line" connect) + $(field "$line" read) + $(field "$line" write) + $(field "$line" timeout)))"
        record "${key}_late" "$(field "$line" late)"
        record "${key}_requests" "$requests"
        for p in p50 p99 max; do
            record "${key}_$p" "$(awk -v u="$(field "$line" ${p}_us)" 'BEGIN { printf "%.1f", u / 1000 }')"
        done
        record "${key}_rss" "$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')"
        record "${key}_fds" "$(cat "$WORK/fds" 2>/dev/null || echo 0)"
        rm -f "$WORK/fds"
        # The access log of a run at full load is large and no longer needed.
        rm -f "$WORK/fanout-$PORT.log" "$WORK/api"
    done
done
stop "$SIM_PID"

# ---------------------------------------------------------------- 3. deadline precision

# A latency of 10 minutes outlasts every request of this run. nginx's echo
# module (echo_sleep) is no substitute: it does not notice that fanout
# closed an abandoned request, so it runs out of connections in seconds.
start_simulator --failure-rate 0 --min-latency 600000 --max-latency 600000
HANG_PID=$STARTED
HANG_URL="http://127.0.0.1:$PORT/api/work"
# The largest connection count is the cap, so no request is shed.
MOST_DEADLINE_CONNECTIONS=$(printf '%s\n' $DEADLINE_CONNECTIONS | sort -n | tail -n1)
deadline_cap=()
[ -n "$CAP_FLAG" ] && deadline_cap=("$CAP_FLAG" "$MOST_DEADLINE_CONNECTIONS")
start_fanout --upstream "$HANG_URL" "${deadline_cap[@]}"
DEADLINE_FANOUT=$STARTED
DEADLINE_PORT=$PORT
DEADLINE_LOG="$WORK/fanout-$PORT.log"
for round in $(seq 1 "$ROUNDS"); do
    for connections in $DEADLINE_CONNECTIONS; do
        log "deadline round $round: $connections connections"
        log_start=$(stat -c %s "$DEADLINE_LOG")
        fanout_before=$(cpu_ticks "$DEADLINE_FANOUT")
        line=$(LATE_MS=220 run_wrk "$DEADLINE_SECONDS" "$connections" 2 \
            "http://127.0.0.1:$DEADLINE_PORT/api/first?timeout=200" status.lua)
        record "dl_${connections}_cpu_fanout" "$(cpus_used $(($(cpu_ticks "$DEADLINE_FANOUT") - fanout_before)) "$DEADLINE_SECONDS")"
        # Requests still open when wrk stopped end within their 200 ms.
        sleep 0.5
        tail -c +$((log_start + 1)) "$DEADLINE_LOG" | api_requests "$WORK/api"
        read -r own50 own99 ownmax < <(awk '$2 != "-" { print $3 - $2 }' "$WORK/api" | quantiles)
        record "dl_${connections}_own_p50" "$own50"
        record "dl_${connections}_own_p99" "$own99"
        record "dl_${connections}_own_max" "$ownmax"
        if [ "$(field "$line" requests)" -gt 0 ]; then
            for p in p50 p99 max; do
                record "dl_${connections}_$p" "$(awk -v u="$(field "$line" ${p}_us)" 'BEGIN { printf "%.2f", u / 1000 - 200 }')"
            done
        fi
        record "dl_${connections}_requests" "$(field "$line" requests)"
        record "dl_${connections}_non500" "$(($(field "$line" requests) - $(field "$line" s500)))"
        record "dl_${connections}_errors" "$(($(field "$line" connect) + $(field "$line" read) + $(field "$line" write) + $(field "$line" timeout)))"
    done
done
stop "$DEADLINE_FANOUT"
stop "$HANG_PID"
rm -f "$DEADLINE_LOG" "$WORK/api"

# ---------------------------------------------------------------- 4. overload

if [ -n "$CAP_FLAG" ]; then
    start_simulator --min-latency 100 --max-latency 600
    SIM_PID=$STARTED
    SIM_URL="http://127.0.0.1:$PORT/api/work"
    for round in $(seq 1 "$ROUNDS"); do
        log "overload round $round: $((2 * OVERLOAD_CAP)) connections, $CAP_FLAG $OVERLOAD_CAP"
        start_fanout --upstream "$SIM_URL" "$CAP_FLAG" "$OVERLOAD_CAP"
        fanout_pid=$STARTED
        line=$(LATE_MS=1020 run_wrk "$OVERLOAD_SECONDS" $((2 * OVERLOAD_CAP)) 2 \
            "http://127.0.0.1:$PORT/api/all?timeout=1000" status.lua)
        stop "$fanout_pid"
        api_requests "$WORK/api" <"$WORK/fanout-$PORT.log"
        rm -f "$WORK/fanout-$PORT.log"
        # Shed requests: fanout's time to respond 503. Admitted ones: those
        # whose response came later than their timeout + 20 ms by fanout's clock.
        read -r shed50 shed99 shedmax < <(awk '$1 == 503 { print $3 }' "$WORK/api" | quantiles)
        record ov_shed_p99 "$shed99"
        record ov_shed_max "$shedmax"
        record ov_admitted "$(awk '$1 != 503 { n++ } END { print n + 0 }' "$WORK/api")"
        record ov_late_fanout "$(awk '$1 != 503 && $2 != "-" && $3 > $2 + 20 { n++ } END { print n + 0 }' "$WORK/api")"
        rm -f "$WORK/api"
        requests=$(field "$line" requests)
        record ov_503 "$(awk -v n="$(field "$line" s503)" -v d="$requests" 'BEGIN { printf "%.2f", d ? 100 * n / d : 0 }')"
        record ov_late "$(field "$line" late)"
        record ov_p50 "$(awk -v u="$(field "$line" p50_us)" 'BEGIN { printf "%.1f", u / 1000 }')"
        record ov_max "$(awk -v u="$(field "$line" max_us)" 'BEGIN { printf "%.1f", u / 1000 }')"
        record ov_errors "$(($(field "$line" connect) + $(field "$line" read) + $(field "$line" write) + $(field "$line" timeout)))"
    done
    stop "$SIM_PID"
fi

# ---------------------------------------------------------------- report

m() { median ${RESULTS[$1]:-}; }

UPSTREAM_RPS=$(m tp_upstream)
PROXY_RPS=$(m tp_proxy)
BINARY_BYTES=$(stat -c %s "$FANOUT")
THREADS_USED=$(grep -oE 'threads[":= ]+[0-9]+' <<<"$FANOUT_START_LINE" | grep -oE '[0-9]+$' || true)

echo
echo "fanout load test, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $ROUNDS round(s), medians"
echo "fanout threads: ${THREADS_USED:-?}; nginx: 1 worker; wrk: 1 thread (throughput), 2 (others)"
echo "instant upstream: $UPSTREAM_KIND; release binary: $BINARY_BYTES bytes"
echo
echo "| measurement | median | ratio to upstream direct | ratio to nginx proxy | errors (median) | fanout CPU per request (µs) |"
echo "|---|---|---|---|---|---|"
declare -A LABEL=(
    [upstream]="$UPSTREAM_KIND serving the upstream response directly, one exchange (req/s)"
    [proxy]="nginx reverse proxy, keep-alive (req/s)"
    [all_http]="fanout /api/all, http upstream (req/s)"
    [all_http_1thread]="fanout /api/all, http upstream, --threads 1 (req/s)"
    [first_http]="fanout /api/first, http, --losers cancel (req/s)"
    [first_http_finish]="fanout /api/first, http, --losers finish (req/s)"
    [all_https]="fanout /api/all, https upstream (req/s)"
    [first_https]="fanout /api/first, https, --losers cancel (req/s)"
    [first_https_finish]="fanout /api/first, https, --losers finish (req/s)"
    [all_https_nopool]="fanout /api/all, https, pool off: new TLS connection per attempt (req/s)"
    [all_http_nopool]="fanout /api/all, http, pool off: new TCP connection per attempt (req/s)"
)
for row in "${THROUGHPUT_ROWS[@]}"; do
    value=$(m "tp_$row")
    cpu=$(m "tpcpu_$row")
    [ "$cpu" = n/a ] && cpu=""
    echo "| ${LABEL[$row]} | $value | $(ratio "$value" "$UPSTREAM_RPS") | $(ratio "$value" "$PROXY_RPS") | $(m "tperr_$row") | $cpu |"
done
echo
echo "| measurement | median |"
echo "|---|---|"
echo "| /api/all https ÷ /api/all http, per round (target >= 0.8) | $(m ratio_https_http) |"
echo "| /api/all http ÷ nginx proxy, per round (target >= 0.5) | $(m ratio_http_proxy) |"
echo "| fanout CPU per /api/all request, http ÷ https, per round | $(m cpu_ratio_http_https) |"
for soak in $SOAK_RUNS; do
    k="conc${soak%x*}"
    c="concurrency ${soak%x*} for ${soak#*x} s"
    echo "| $c: req/s (responses per round) | $(m "${k}_rps") ($(m "${k}_requests")) |"
    echo "| $c: share 200 / 500 / 503 / other (%) | $(m "${k}_s200") / $(m "${k}_s500") / $(m "${k}_s503") / $(m "${k}_other") |"
    echo "| $c: socket errors and wrk timeouts | $(m "${k}_errors") |"
    echo "| $c: latency p50 / p99 / max (ms) | $(m "${k}_p50") / $(m "${k}_p99") / $(m "${k}_max") |"
    echo "| $c: responses later than timeout + 20 ms, by wrk / by fanout's clock | $(m "${k}_late") / $(m "${k}_late_fanout") |"
    echo "| $c: CPUs used by fanout / by the upstream; whole machine busy (%) | $(m "${k}_cpu_fanout") / $(m "${k}_cpu_upstream") / $(m "${k}_busy") |"
    echo "| $c: attempts ok / http_status / invalid_payload / connect_error / io_error / timeout (%) | $(m "${k}_attempt_ok") / $(m "${k}_attempt_http_status") / $(m "${k}_attempt_invalid_payload") / $(m "${k}_attempt_connect_error") / $(m "${k}_attempt_io_error") / $(m "${k}_attempt_timeout") |"
    echo "| $c: new upstream connections per attempt | $(m "${k}_new_per_attempt") |"
    echo "| $c: sockets in TIME_WAIT before the run | $(m "${k}_timewait") |"
    echo "| $c: peak RSS of fanout (MiB) | $(m "${k}_rss") |"
    echo "| $c: peak open descriptors of fanout | $(m "${k}_fds") |"
done
for connections in $DEADLINE_CONNECTIONS; do
    echo "| deadline, $connections concurrent: overshoot p50 / p99 / max (ms) | $(m "dl_${connections}_p50") / $(m "dl_${connections}_p99") / $(m "dl_${connections}_max") |"
    echo "| deadline, $connections concurrent: overshoot by fanout's clock p50 / p99 / max (ms) | $(m "dl_${connections}_own_p50") / $(m "dl_${connections}_own_p99") / $(m "dl_${connections}_own_max") |"
    echo "| deadline, $connections concurrent: CPUs used by fanout | $(m "dl_${connections}_cpu_fanout") |"
    echo "| deadline, $connections concurrent: responses / other than 500 / socket errors | $(m "dl_${connections}_requests") / $(m "dl_${connections}_non500") / $(m "dl_${connections}_errors") |"
done
if [ -n "$CAP_FLAG" ]; then
    echo "| overload, $((2 * OVERLOAD_CAP)) connections at $CAP_FLAG $OVERLOAD_CAP: share 503 (%) | $(m ov_503) |"
    echo "| overload: latency p50 / max (ms) | $(m ov_p50) / $(m ov_max) |"
    echo "| overload: responses later than timeout + 20 ms, by wrk | $(m ov_late) |"
    echo "| overload: 503 answered within, by fanout's clock, p99 / max (ms) | $(m ov_shed_p99) / $(m ov_shed_max) |"
    echo "| overload: admitted requests / later than timeout + 20 ms by fanout's clock | $(m ov_admitted) / $(m ov_late_fanout) |"
    echo "| overload: socket errors and wrk timeouts | $(m ov_errors) |"
else
    echo "| overload | not available: fanout --help lists no in-flight cap |"
fi
echo
echo "per-round values:"
for key in $(printf '%s\n' "${!RESULTS[@]}" | sort); do
    echo "  $key:${RESULTS[$key]}"
done
