#!/usr/bin/env bash
# Every CPU timing of docs/PERFORMANCE.md that names its CPU, in one background command, for a session on a CPU
# whose figures are missing (the development machine changes between an Intel Xeon with AMX and an AMD EPYC
# without). From the repository root, with nothing else running, writing to $OUT (default cpu-out/):
#   nohup bash bench/cpu_session.sh > /dev/null 2>&1 &     (15 minutes on the Intel Xeon with AMX)
# Refuses (exit 2) an $OUT that exists. Each script prints its CPU, threads, torch and commit first; the
# tables go into PERFORMANCE's sections.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-cpu-out}
if ! mkdir "$OUT" 2>/dev/null; then  # never over another session's figures, nor beside a second process
  echo "bench/cpu_session.sh: $OUT exists (figures of an earlier session?); move it away or set OUT=NEW" >&2
  exit 2
fi
lscpu > "$OUT/lscpu.txt"
{ echo "# $(date -u '+%F %T') $(git rev-parse --short HEAD 2>/dev/null)"; } > "$OUT/started.txt"
"$PY" bench/step_cost.py --tokens 4096 --repeats 5 > "$OUT/step_cost.txt" 2>&1              # the step ratio
"$PY" bench/eval_cost.py --tokens 4096 --repeats 7 \
  --tiles 1024x8192 4096x2048 2048x4096 256x49152 > "$OUT/eval_cost.txt" 2>&1               # the tile shape
"$PY" bench/dtype_accuracy.py > "$OUT/dtype_accuracy.txt" 2>&1                               # bf16 against fp32
"$PY" bench/harden_cost.py --tokens 2048 --repeats 3 > "$OUT/harden_cost.txt" 2>&1           # --harden
"$PY" bench/relearn_cost.py --repeats 3 > "$OUT/relearn_cost.txt" 2>&1                       # an attack
"$PY" bench/unlearn_cost.py --repeats 3 > "$OUT/unlearn_cost.txt" 2>&1                       # each method
run="$OUT/inspect-run"                                                                       # an inspection
rm -rf "$run"
"$PY" -m selprune.cli run --preset demo --steps 3 --fraction 0.02 --score-tokens 4096 --eval-tokens 4096 \
  --forget code --retain prose -o "$run" > "$OUT/inspect_run.txt" 2>&1
/usr/bin/time -v "$PY" -m selprune.cli inspect "$run" --step 2 3 > "$OUT/inspect.txt" 2>&1
echo "# $(date -u '+%F %T') done" >> "$OUT/started.txt"
