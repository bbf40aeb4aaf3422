#!/usr/bin/env bash
# Train on every GPU of this machine: one process, the batch sharded over all local devices.
#   launch/local_gpus.sh configs/ern.py workdir/ern [--config.train.batch_size=64 ...]
# Check first that JAX sees the GPUs:  python -c "import jax; print(jax.devices())"
set -euo pipefail
config=${1:?usage: $0 CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: $0 CONFIG WORKDIR [overrides...]}
shift 2
# Let XLA take GPU memory as it needs it instead of 75% up front (several jobs can share a card).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec python -m ernjax.main --config="$config" --workdir="$workdir" "$@"
