#!/usr/bin/env bash
# The multi-host code path on one machine: N processes on localhost, each with its own devices,
# coordinated by jax.distributed exactly as on a cluster.
#   launch/multiprocess_local.sh 2 configs/ern.py:tiny workdir/mp [overrides...]
set -euo pipefail
n=${1:?usage: $0 NUM_PROCESSES CONFIG WORKDIR [overrides...]}
config=${2:?}; workdir=${3:?}; shift 3
port=${ERNJAX_COORDINATOR_PORT:-12355}
pids=()
for ((i = 0; i < n; i++)); do
  python -m ernjax.main --distributed --coordinator_address="localhost:$port" \
    --num_processes="$n" --process_id="$i" --config="$config" --workdir="$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
