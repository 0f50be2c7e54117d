#!/usr/bin/env bash
# Start a dask scheduler and workers for mriflow on this machine, bound to 127.0.0.1 only.
#   cluster/local.sh [N_WORKERS] [MEMORY_PER_WORKER]       (Ctrl-C stops everything)
# then, in another shell:
#   MRIFLOW_SCHEDULER=tcp://127.0.0.1:8786 mriflow demo
set -euo pipefail
workers="${1:-2}"
memory="${2:-4GiB}"
port="${MRIFLOW_SCHEDULER_PORT:-8786}"
dashboard="${MRIFLOW_DASHBOARD_PORT:-8787}"

dask scheduler --host 127.0.0.1 --port "$port" --dashboard-address "127.0.0.1:$dashboard" &
scheduler=$!
trap 'kill $scheduler ${worker:-} 2>/dev/null; wait' EXIT INT TERM
sleep 2
dask worker "tcp://127.0.0.1:$port" --host 127.0.0.1 --nworkers "$workers" --nthreads 1 \
  --memory-limit "$memory" --dashboard-address 127.0.0.1:0 &
worker=$!
echo "scheduler tcp://127.0.0.1:$port, dashboard http://127.0.0.1:$dashboard/status"
wait
