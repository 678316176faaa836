#!/usr/bin/env bash
# Pruning against fine-tuning unlearning under one attack (docs/RESULTS.md, "Pruning against fine-tuning
# unlearning"), for one forget/retain pair: the pruning run stopped at <= 10% retain drop, each gradient method
# matched to its retain drop (--match), `selprune inspect` on every model, then the 64-step forget attack at
# two learning rates on all of them and the unpruned and random controls, on 65,536 relearn tokens (no
# document seen twice). About 2 h 15 min on 2 CPU cores for each pair. Every command resumes or is
# skipped when its folder is finished, so the script can be run again after an interruption.
#
#   bash sweeps/unlearning.sh code prose "--steps 3 --fraction 0.02"
#   bash sweeps/unlearning.sh python code "--steps 4 --fraction 0.01"
#   .venv/bin/python scripts/relearn_table.py runs/compare/code-vs-prose/prune/relearn-compare   # the table
set -euo pipefail
forget=$1 retain=$2 pruning=${3:-"--steps 3 --fraction 0.02"}
selprune=${SELPRUNE:-.venv/bin/selprune}
P=runs/compare/$forget-vs-$retain
data="--forget $forget --retain $retain --score-tokens 8192 --eval-tokens 8192"

finished() { [ -f "$1/state/result.json" ] || [ -f "$1/summary.json" ]; }
again() { if [ -d "$1" ]; then echo --resume; fi; }

finished $P/prune || $selprune run $data $pruning --max-retain-drop 10 -o $P/prune $(again $P/prune)
# per method: steps, checkpoint spacing, learning rates (code vs prose's; python vs code passed the budget within
# 5 steps at these rates, so it checkpoints every 2 steps at the rates that cross it more slowly)
ga=(80 5 1e-4 3e-5) graddiff=(80 5 5e-5) npo=(40 5 3e-4) rmu=(40 5 3e-3 1e-3)
if [ "$forget-vs-$retain" = python-vs-code ]; then ga=(16 2 3e-5) graddiff=(20 2 5e-5) npo=(20 2 1e-4); fi
unlearn() {  # method, steps, checkpoint spacing, learning rates...
  local method=$1 steps=$2 every=$3 extra=""; shift 3
  # the WMDP code's RMU coefficient 20 forgot 1.2% on code vs prose: this model's residual stream at RMU's
  # layer is ~106 long, so the target must be longer than that (docs/RESULTS.md)
  if [ $method = rmu ]; then extra="--rmu-coefficient 300"; fi
  finished $P/$method || $selprune unlearn --method $method --lr "$@" --steps $steps --eval-every $every $data \
    $extra --match $P/prune -o $P/$method $(again $P/$method)
}
unlearn ga "${ga[@]}"
unlearn graddiff "${graddiff[@]}"
unlearn npo "${npo[@]}"
unlearn rmu "${rmu[@]}"
for folder in prune graddiff ga npo rmu; do
  [ -f $P/$folder/inspect/checks.csv ] || $selprune inspect $P/$folder --no-lens
done
# --resume attacks only what is missing, controls added after the saved ones included
$selprune relearn $P/prune --attack forget --lr 1e-4 3e-4 --max-steps 64 --relearn-tokens 65536 --eval-tokens 2048 \
  --control $P/graddiff $P/ga $P/npo $P/rmu --name compare $(again $P/prune/relearn-compare)
