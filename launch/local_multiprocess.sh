#!/usr/bin/env bash
# Runs NUM_PROCESSES processes of `python -m bitseg_jax.main ... --multihost` on this machine,
# connected by jax.distributed over localhost (CPU devices, gloo collectives): a multi-host run
# without a cluster, for tests and debugging of the multi-process code paths.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=1 launch/local_multiprocess.sh \
#     --config=configs/base.py:tiny --workdir=/tmp/mp_run
#
# Environment: NUM_PROCESSES (default 2), DEVICES_PER_PROCESS (CPU devices per process,
# default 1), PORT (coordinator port on 127.0.0.1, default 12355), LOG_DIR (default: a new
# temporary folder; process i logs to $LOG_DIR/process_i.log), PYTHON (default python3).
# Every other argument goes to bitseg_jax.main. Exits non-zero if any process fails, after
# stopping the others.
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
PORT="${PORT:-12355}"
PYTHON="${PYTHON:-python3}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t bitseg_mp.XXXXXX)}"
mkdir -p "$LOG_DIR"
echo "local multi-process run: $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices," \
  "coordinator 127.0.0.1:$PORT, logs in $LOG_DIR" >&2

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap stop_all INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$DEVICES_PER_PROCESS" \
    "$PYTHON" -m bitseg_jax.main "$@" --multihost \
    --coordinator_address="127.0.0.1:$PORT" \
    --num_processes="$NUM_PROCESSES" --process_id="$i" \
    >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=("$!")
done

# Wait for whichever process ends first: one failure stops the others at once (they would
# otherwise block in a collective until jax.distributed's heartbeat timeout).
status=0
for ((n = 0; n < NUM_PROCESSES; n++)); do
  if ! wait -n "${pids[@]}"; then
    status=1
    stop_all
  fi
done
if ((status != 0)); then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    echo "--- last lines of $LOG_DIR/process_$i.log:" >&2
    tail -n 30 "$LOG_DIR/process_$i.log" >&2 || true
  done
fi
exit "$status"
