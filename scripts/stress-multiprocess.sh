#!/usr/bin/env bash
# Rounds of the multi-process tests (DDP, torchrun, pool, submitit executors, loggers across
# processes), each a fresh pytest process, to catch flakes that only a busy machine shows.
# Run it beside a CPU-heavy job (the slow suite, another stream, or `python3 -c "while 1: pass"`).
#
#   scripts/stress-multiprocess.sh default 20   # the default suite's multi-process tests
#   scripts/stress-multiprocess.sh slow 20      # the slow ones
#
# One line per round goes to $OUT/summary.txt (OUT defaults to ./stress-logs), one log per round
# beside it; a failed round does not stop the rounds after it.
set -u
which=${1:?default or slow}; rounds=${2:-20}
case $which in
  default) mark="not slow and not slurm and not benchmark" ;;
  slow) mark="slow and not slurm and not benchmark" ;;
  *) echo "usage: $0 default|slow [ROUNDS]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/stress-logs}; mkdir -p "$out"
export HARNESS_STORE="$out/store-$which"
for i in $(seq 1 "$rounds"); do
  start=$(date +%s)
  .venv/bin/python -m pytest -p no:cacheprovider -q --durations=12 -m "$mark" \
    tests/test_distributed_loss.py tests/test_unfreeze_ddp.py tests/test_ddp.py tests/test_ddp_sharding.py \
    tests/test_loop_ddp.py tests/test_nproc.py tests/test_executor_pool.py tests/test_executor_submitit.py \
    tests/test_executors.py tests/test_pool_worker.py tests/test_loggers_executors.py \
    > "$out/${which}_round$i.log" 2>&1
  rc=$?
  echo "$which round $i rc=$rc $(( $(date +%s) - start ))s load=$(cut -d' ' -f1 /proc/loadavg)" \
       "$(tail -1 "$out/${which}_round$i.log")" >> "$out/summary.txt"
done
