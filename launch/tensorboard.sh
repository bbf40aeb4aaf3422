#!/usr/bin/env bash
# Review runs in TensorBoard (event files are under WORKDIR/tensorboard, written by tensorboardX).
#   launch/tensorboard.sh workdir [port]      (needs `pip install -e ".[tensorboard]"`; no TensorFlow)
set -euo pipefail
logdir=${1:-workdir}
exec tensorboard --logdir="$logdir" --port="${2:-6006}" --bind_all
