#!/usr/bin/env bash
# Run the distributed voice chatbot on ONE host as it runs on two: a dora coordinator and two dora daemons
# (machine ids `edge` and `server`), everything on loopback with explicit zenoh endpoints and no multicast, then
# `dora start voice-chatbot-distributed.yml --attach`. Everything it started is torn down when the run ends,
# fails, or is interrupted (Ctrl-C).
#
#   bash examples/distributed/run-local-cluster.sh --input question.wav --output answer.wav --report timing.jsonl
#   AUDIO_INPUT=q.wav AUDIO_OUTPUT=a.wav TIMING_REPORT=t.jsonl bash examples/distributed/run-local-cluster.sh
#
# Options (each also read from the env var named):
#   --input PATH      AUDIO_INPUT     WAV replayed by the mic on edge (absent: the default microphone)
#   --output PATH     AUDIO_OUTPUT    WAV the speaker on edge writes (absent: the default output device)
#   --report PATH     TIMING_REPORT   the monitor's per-turn JSONL
#   --dataflow PATH   DATAFLOW        default: voice-chatbot-distributed.yml next to this script
#   --workdir DIR     CLUSTER_WORKDIR daemon working dirs and logs (default: a new folder under ${TMPDIR:-/tmp})
#   --timeout S       CLUSTER_TIMEOUT_S  stop the dataflow after S seconds (default 600)
# Ports (loopback only; change them when another cluster uses them):
#   DORA_COORDINATOR_PORT (16013), EDGE_LISTEN_PORT (16291), SERVER_LISTEN_PORT (16292) for dynamic nodes,
#   EDGE_ZENOH_PORT (17447), SERVER_ZENOH_PORT (17448) for daemon-to-daemon zenoh.
# Every other setting (LLM_MODEL, VAD_MIN_SILENCE_MS, ...) is passed from this shell to the nodes as with `dora run`.
# Needs the dora-voice venv active (or its bin folder on PATH): the daemons resolve the nodes' commands from it.
# Exit status: that of `dora start --attach` (0 when every node finished cleanly).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "run-local-cluster: error: $*" >&2; exit 2; }
log() { echo "[cluster] $*" >&2; }

DATAFLOW="${DATAFLOW:-$here/voice-chatbot-distributed.yml}"
WORKDIR="${CLUSTER_WORKDIR:-}"
TIMEOUT_S="${CLUSTER_TIMEOUT_S:-600}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --input) AUDIO_INPUT="$2"; shift 2 ;;
    --output) AUDIO_OUTPUT="$2"; shift 2 ;;
    --report) TIMING_REPORT="$2"; shift 2 ;;
    --dataflow) DATAFLOW="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --timeout) TIMEOUT_S="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

command -v dora >/dev/null || die "the dora CLI is not on PATH: activate the dora-voice venv (. .venv/bin/activate)"
command -v dora-voice-mic >/dev/null ||
  die "dora-voice-mic is not on PATH: the daemons could not start the nodes. Activate the venv dora-voice is installed in"
[[ -f "$DATAFLOW" ]] || die "no dataflow at $DATAFLOW"
[[ "$TIMEOUT_S" =~ ^[0-9]+$ ]] || die "--timeout: expected whole seconds, got $TIMEOUT_S"

# The nodes run in the daemons' working dirs, not here: make the file paths absolute.
abs() { python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1"; }
for var in AUDIO_INPUT AUDIO_OUTPUT TIMING_REPORT; do
  if [[ -n "${!var:-}" ]]; then export "$var=$(abs "${!var}")"; fi
done
[[ -z "${AUDIO_INPUT:-}" || -f "$AUDIO_INPUT" ]] || die "AUDIO_INPUT=$AUDIO_INPUT: no such file"
DATAFLOW="$(abs "$DATAFLOW")"

export DORA_COORDINATOR_ADDR=127.0.0.1
export DORA_COORDINATOR_PORT="${DORA_COORDINATOR_PORT:-16013}"
EDGE_LISTEN_PORT="${EDGE_LISTEN_PORT:-16291}"
SERVER_LISTEN_PORT="${SERVER_LISTEN_PORT:-16292}"
EDGE_ZENOH_PORT="${EDGE_ZENOH_PORT:-17447}"
SERVER_ZENOH_PORT="${SERVER_ZENOH_PORT:-17448}"
export DORA_ZENOH_MULTICAST=off RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
# A dora 1.1 dataflow whose nodes have all been silent for 120 s is stopped once no source node runs; the batch
# LLM can be silent that long. Same setting as the launcher's.
export DORA_FINISH_DRAIN_GRACE_SECS="${DORA_FINISH_DRAIN_GRACE_SECS:-$TIMEOUT_S}"

if [[ -z "$WORKDIR" ]]; then WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/dora-voice-cluster.XXXXXX")"; fi
mkdir -p "$WORKDIR/edge" "$WORKDIR/server"
WORKDIR="$(abs "$WORKDIR")"

pids=()
start_pid=""
cleaned=0
cleanup() {
  [[ "$cleaned" == 1 ]] && return
  cleaned=1
  if [[ ${#pids[@]} -gt 0 ]]; then
    # Stop the dataflow (its nodes are process-group leaders of their own: they must be stopped through dora; a node
    # that ignores the stop is killed after the grace period), then the daemons and the coordinator.
    timeout 20 dora stop --name dora-voice-distributed --grace-duration 5s >/dev/null 2>&1 || true
    timeout 20 dora destroy --force >/dev/null 2>&1 || true
    # The attached `dora start` (a background job): without this, the `wait` below waits for it until its timeout.
    if [[ -n "$start_pid" ]]; then kill -TERM "$start_pid" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ -n "$start_pid" ]]; then kill -KILL "$start_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
  fi
  log "stopped; logs in $WORKDIR"
}
trap cleanup EXIT
trap 'log "interrupted"; cleanup; exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$DORA_COORDINATOR_PORT" "$EDGE_LISTEN_PORT" "$SERVER_LISTEN_PORT" "$EDGE_ZENOH_PORT" "$SERVER_ZENOH_PORT"; do
  port_free "$port" || die "127.0.0.1:$port is in use (another cluster?): set the port variables (see --help)"
done

log "coordinator on 127.0.0.1:$DORA_COORDINATOR_PORT; logs in $WORKDIR"
(cd "$WORKDIR" && exec dora coordinator --interface 127.0.0.1 --port "$DORA_COORDINATOR_PORT" --store memory \
  >"$WORKDIR/coordinator.log" 2>&1) &
pids+=($!)
for _ in $(seq 100); do port_free "$DORA_COORDINATOR_PORT" || break; sleep 0.1; done
port_free "$DORA_COORDINATOR_PORT" && die "the coordinator did not start: $(tail -5 "$WORKDIR/coordinator.log")"

start_daemon() {  # machine-id listen-port zenoh-port peer-zenoh-port
  log "daemon $1: zenoh tcp/127.0.0.1:$3, dials tcp/127.0.0.1:$4"
  (cd "$WORKDIR/$1" && exec dora daemon --machine-id "$1" --coordinator-addr 127.0.0.1 \
    --coordinator-port "$DORA_COORDINATOR_PORT" --local-listen-port "$2" \
    --zenoh-listen "127.0.0.1:$3" --zenoh-connect "tcp/127.0.0.1:$4" --zenoh-no-multicast \
    >"$WORKDIR/daemon-$1.log" 2>&1) &
  pids+=($!)
}
start_daemon server "$SERVER_LISTEN_PORT" "$SERVER_ZENOH_PORT" "$EDGE_ZENOH_PORT"
start_daemon edge "$EDGE_LISTEN_PORT" "$EDGE_ZENOH_PORT" "$SERVER_ZENOH_PORT"

ready=0
for _ in $(seq 150); do
  status="$(dora cluster status 2>/dev/null || true)"
  if grep -qw edge <<<"$status" && grep -qw server <<<"$status"; then ready=1; break; fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a daemon exited: see $WORKDIR/*.log"; done
  sleep 0.2
done
[[ "$ready" == 1 ]] || die "the daemons did not register with the coordinator in 30 s: see $WORKDIR/*.log"

# dora start writes its session file into out/ next to the YAML: start a copy in the work dir so the checkout
# stays untouched (the nodes of a distributed dataflow run in the daemons' working dirs either way).
cp "$DATAFLOW" "$WORKDIR/$(basename "$DATAFLOW")"
DATAFLOW="$WORKDIR/$(basename "$DATAFLOW")"
log "dora start $(basename "$DATAFLOW") --attach"
set +e
# --stop-after exists only for `dora run`: the attached CLI is bounded here (exit 124), and the EXIT trap then
# stops the dataflow and the cluster.
timeout "$TIMEOUT_S" dora start "$DATAFLOW" --name dora-voice-distributed --attach \
  --coordinator-port "$DORA_COORDINATOR_PORT" &
start_pid=$!
wait "$start_pid"
rc=$?
set -e
[[ "$rc" == 124 ]] && log "timeout after $TIMEOUT_S s"
log "dataflow finished with exit status $rc"
exit "$rc"
