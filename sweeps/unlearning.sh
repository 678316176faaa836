#!/usr/bin/env bash
# Pruning against fine-tuning unlearning under one attack (docs/RESULTS.md, "Pruning against fine-tuning
# unlearning"), for one forget/retain pair: the pruning run stopped at <= 10% retain drop, each gradient method
# matched to its retain drop (--match), `selprune inspect` on every model, then the 64-step forget attack at
# two learning rates on all of them and the unpruned and random controls, on 65,536 relearn tokens (no
# document seen twice). About 2 h 15 min on 2 CPU cores for code vs prose. Every command resumes or is
# skipped when its folder is finished, so the script can be run again after an interruption.
#
#   bash sweeps/unlearning.sh code prose "--steps 3 --fraction 0.02"
#   bash sweeps/unlearning.sh python code "--steps 4 --fraction 0.01"
#   .venv/bin/python scripts/relearn_table.py runs/compare/code-vs-prose/prune/relearn-compare   # the tables
#   .venv/bin/python scripts/relearn_table.py runs/compare/code-vs-prose/rmu/relearn-compare
set -euo pipefail
forget=$1 retain=$2 pruning=${3:-"--steps 3 --fraction 0.02"}
selprune=${SELPRUNE:-.venv/bin/selprune}
P=runs/compare/$forget-vs-$retain
data="--forget $forget --retain $retain --score-tokens 8192 --eval-tokens 8192"

finished() { [ -f "$1/state/result.json" ] || [ -f "$1/summary.json" ]; }
again() { if [ -d "$1" ]; then echo --resume; fi; }

finished $P/prune || $selprune run $data $pruning --max-retain-drop 10 -o $P/prune $(again $P/prune)
unlearn() {  # method, its learning rates and steps
  local method=$1 steps=$2; shift 2
  finished $P/$method || $selprune unlearn --method $method --lr "$@" --steps $steps --eval-every 5 $data \
    --match $P/prune -o $P/$method $(again $P/$method)
}
unlearn ga 80 1e-4 3e-5
unlearn graddiff 80 5e-5
unlearn npo 40 1e-4
attack="--attack forget --lr 1e-4 3e-4 --max-steps 64 --relearn-tokens 65536 --eval-tokens 2048 --name compare"
$selprune relearn $P/prune $attack --control $P/graddiff $P/npo $P/ga $(again $P/prune/relearn-compare)
for folder in prune graddiff npo ga; do
  [ -f $P/$folder/inspect/checks.csv ] || $selprune inspect $P/$folder --no-lens
done
# RMU came last in the session that measured code vs prose, so it is attacked in a call of its own (beside its own
# run of the unpruned control, which repeats the one above: the attacks are seeded alike)
unlearn rmu 40 2e-4 5e-5
[ -f $P/rmu/inspect/checks.csv ] || $selprune inspect $P/rmu --no-lens
$selprune relearn $P/rmu $attack $(again $P/rmu/relearn-compare)
