#!/usr/bin/env bash
# Builds the container image from a locally built static binary and checks it
# end to end. The checks: both endpoints against the simulated upstream, the
# HEALTHCHECK command, upstream name resolution inside the image, TLS
# verification against the image's CA bundle path, and a clean stop on
# SIGTERM in under a second. Prints the image size.
#
# Needs root to install buildah, podman and runc with apt-get when they are
# missing. Skips with exit status 0 only when containers cannot run here at
# all; every other problem fails the check.
#
# All containers and images live in a private storage directory that is
# deleted on exit, and every server binds to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly TARGET=x86_64-unknown-linux-gnu
readonly IMAGE=localhost/fanout:container-check
readonly CONTEXT=target/container
# podman stop must end the container within this many milliseconds.
readonly MAX_STOP_MS=1000

say() { echo "container-check: $*"; }
fail() {
    say "FAILED: $*" >&2
    if [[ -s ${podman_log:-} ]]; then
        say "podman's messages:" >&2
        tail -n 20 "$podman_log" >&2
    fi
    local name
    for name in $(podman "${storage[@]}" ps --all --format '{{.Names}}' 2>/dev/null); do
        say "last lines of container $name:" >&2
        podman "${storage[@]}" logs --tail 10 "$name" >&2 || true
    done
    exit 1
}
skip() {
    say "SKIPPED: containers cannot run here as uid $(id -u): $*"
    exit 0
}

install_tools() {
    local missing=()
    local tool
    for tool in buildah podman runc curl python3 file perl make openssl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
    [[ ${#missing[@]} -eq 0 ]] && return
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        skip "${missing[*]} missing, and installing needs root and apt-get"
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Prints a TCP port on 127.0.0.1 that is free at the time of the call.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

build_binary() {
    say "building the static binary"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --features vendored --target "$TARGET"
    local binary="target/$TARGET/release/fanout"
    # A dynamically linked binary would fail inside the image in a way that
    # looks like a broken container runtime, so check this first.
    file "$binary" | grep -q 'static-pie linked\|statically linked' \
        || fail "$binary is not statically linked: $(file "$binary")"
    "$binary" --version >/dev/null || fail "$binary does not run on the host"
    mkdir -p "$CONTEXT"
    cp "$binary" "$CONTEXT/fanout"
    cp /etc/ssl/certs/ca-certificates.crt "$CONTEXT/ca-certificates.crt"
}

work=""
storage=()
host_pids=()
cleanup() {
    local status=$?
    local pid
    for pid in "${host_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $work ]]; then
        podman "${storage[@]}" rm --all --force >/dev/null 2>&1 || true
        buildah "${storage[@]}" rm --all >/dev/null 2>&1 || true
        podman "${storage[@]}" rmi --all --force >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT

install_tools
if ! unshare --mount --pid --net --fork true 2>/dev/null; then
    skip "creating mount, PID and network namespaces is not permitted"
fi

build_binary

work=$(mktemp -d /tmp/fanout-container-check.XXXXXX)
storage=(--root "$work/root" --runroot "$work/runroot" --storage-driver vfs)
# Without systemd, podman logs an error for the health check timer on every
# run and stop. Those messages go here and are shown only if the check fails.
podman_log="$work/podman.log"
# crun, podman's default runtime, fails on some cgroup layouts, but runc works.
# The limits stay within the hard limits a container may inherit.
run=(podman "${storage[@]}" --runtime runc run --detach
    --ulimit nofile=20000:20000 --ulimit nproc=4096:4096
    --network host)

podman "${storage[@]}" info >/dev/null 2>&1 || skip "podman info failed"

say "building the image"
# The docker format keeps HEALTHCHECK, which the OCI format drops.
buildah "${storage[@]}" bud --quiet --isolation chroot --format docker \
    --build-arg FANOUT_BINARY=context -t "$IMAGE" -f Containerfile . >/dev/null

# A container that only prints the version separates a runtime that cannot
# run containers here from a problem in the gateway.
if ! probe=$(podman "${storage[@]}" --runtime runc run --rm --network host \
    --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 "$IMAGE" --version 2>&1); then
    skip "podman with runc cannot start a container: $probe"
fi

mount=$(podman "${storage[@]}" image mount "$IMAGE")
contents=$(cd "$mount" && find . -type f | sort | tr '\n' ' ')
podman "${storage[@]}" image unmount "$IMAGE" >/dev/null
[[ $contents == "./etc/ssl/certs/ca-certificates.crt ./fanout " ]] \
    || fail "the image holds more than the binary and the CA bundle: $contents"
user=$(podman "${storage[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || fail "the image runs as user '$user', not a numeric non-root uid"
size_bytes=$(podman "${storage[@]}" image inspect --format '{{.Size}}' "$IMAGE")

# Waits until the gateway on port $1 returns 200 for /healthz, for at most 10 s.
wait_ready() {
    local attempt
    for attempt in $(seq 100); do
        curl --silent --fail --max-time 1 "http://127.0.0.1:$1/healthz" >/dev/null && return
        sleep 0.1
    done
    fail "the gateway on 127.0.0.1:$1 did not answer /healthz within 10 s"
}

# Requests $2 from the gateway on port $1 and checks for status 200 and a body starting with $3.
expect_ok() {
    local body status
    body=$(curl --silent --max-time 5 --output - --write-out '\n%{http_code}' "http://127.0.0.1:$1$2")
    status=${body##*$'\n'}
    body=${body%$'\n'*}
    [[ $status == 200 ]] || fail "GET $2 returned status $status: $body"
    [[ $body == "$3"* ]] || fail "GET $2 returned an unexpected body: $body"
    say "GET $2 -> $status $body"
}

say "running the image with the simulated upstream"
port=$(free_port)
# With host networking the container shares this machine's interfaces, so
# the gateway listens on loopback only.
"${run[@]}" --name fanout-check-simulated --env "FANOUT_LISTEN=127.0.0.1:$port" \
    "$IMAGE" --simulate-upstream --simulate-failure-rate 0 >/dev/null 2>>"$podman_log"
wait_ready "$port"
expect_ok "$port" "/api/all?timeout=3000" '[{"time": '
expect_ok "$port" "/api/first?timeout=3000" '{"time": '

podman "${storage[@]}" --runtime runc healthcheck run fanout-check-simulated \
    >>"$podman_log" 2>&1 \
    || fail "the image's HEALTHCHECK did not pass"
say "HEALTHCHECK passed"

started=$(date +%s%N)
podman "${storage[@]}" --runtime runc stop --time 10 fanout-check-simulated \
    >/dev/null 2>>"$podman_log"
stop_ms=$((($(date +%s%N) - started) / 1000000))
exit_code=$(podman "${storage[@]}" inspect --format '{{.State.ExitCode}}' fanout-check-simulated)
[[ $exit_code == 0 ]] || fail "the gateway exited with status $exit_code after SIGTERM"
((stop_ms < MAX_STOP_MS)) || fail "podman stop took $stop_ms ms, over $MAX_STOP_MS ms"
say "podman stop took $stop_ms ms; exit status $exit_code"

# The static binary resolves names without the system's NSS libraries: an
# upstream named localhost must resolve through the /etc/hosts podman mounts.
say "running the image against an upstream named localhost"
upstream_port=$(free_port)
"$CONTEXT/fanout" simulate --listen "127.0.0.1:$upstream_port" --failure-rate 0 2>/dev/null &
host_pids+=($!)
port=$(free_port)
"${run[@]}" --name fanout-check-resolve --env "FANOUT_LISTEN=127.0.0.1:$port" \
    "$IMAGE" --upstream "http://localhost:$upstream_port/api/work" >/dev/null 2>>"$podman_log"
wait_ready "$port"
expect_ok "$port" "/api/first?timeout=3000" '{"time": '

# The static OpenSSL must find trusted roots at the path where the image keeps
# its CA bundle. A test CA mounted over that file must make an https upstream
# signed by it trusted, and the same upstream must fail without the mount.
say "running the image against an https upstream signed by a test CA"
tls="$work/tls"
mkdir -p "$tls/www/api"
printf '{"time": 7}' >"$tls/www/api/work"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=fanout check CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 1 -extfile <(echo "subjectAltName=DNS:localhost") \
    -out "$tls/server.pem" 2>/dev/null
tls_port=$(free_port)
# s_server -WWW serves files under its working directory over HTTPS.
(cd "$tls/www" && exec openssl s_server -quiet -WWW -accept "127.0.0.1:$tls_port" \
    -cert "$tls/server.pem" -key "$tls/server.key" >/dev/null 2>&1) &
host_pids+=($!)
upstream="https://localhost:$tls_port/api/work"
port=$(free_port)
"${run[@]}" --name fanout-check-tls-trusted --env "FANOUT_LISTEN=127.0.0.1:$port" \
    --volume "$tls/ca.pem:/etc/ssl/certs/ca-certificates.crt:ro" \
    "$IMAGE" --upstream "$upstream" >/dev/null 2>>"$podman_log"
wait_ready "$port"
expect_ok "$port" "/api/first?timeout=3000" '{"time": 7}'
port=$(free_port)
"${run[@]}" --name fanout-check-tls-untrusted --env "FANOUT_LISTEN=127.0.0.1:$port" \
    "$IMAGE" --upstream "$upstream" >/dev/null 2>>"$podman_log"
wait_ready "$port"
body=$(curl --silent --max-time 5 "http://127.0.0.1:$port/api/first?timeout=3000")
[[ $body == *tls_error* ]] || fail "an upstream signed by an unknown CA was not rejected: $body"
say "without the test CA: $body"

say "image size: $size_bytes bytes ($((size_bytes / 1000)) kB)"
say "passed"
