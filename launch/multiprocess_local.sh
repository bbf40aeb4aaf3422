#!/usr/bin/env bash
# The multi-host code path on one machine: N processes on localhost, each with its own devices,
# coordinated by jax.distributed exactly as on a cluster.
#   launch/multiprocess_local.sh 2 configs/ern.py:tiny workdir/mp [overrides...]
# Each process's log (stderr) also goes to WORKDIR/logs/process_<i>.log: on the terminal the
# processes' lines interleave, and the first error of the one that failed is hard to attribute.
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES CONFIG WORKDIR [overrides...]}
config=${2:?}; workdir=${3:?}; shift 3
port=${ERNJAX_COORDINATOR_PORT:-12355}
mkdir -p "$workdir/logs"
pids=()
for ((i = 0; i < n; i++)); do
  # stdout stays stdout (fd 3); stderr goes through tee; pipefail gives the subshell python's status.
  ( python -m ernjax.main --distributed --coordinator_address="localhost:$port" \
      --num_processes="$n" --process_id="$i" --config="$config" --workdir="$workdir" "$@" \
      2>&1 1>&3 | tee "$workdir/logs/process_$i.log" >&2 ) 3>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
