#!/usr/bin/env bash
# Removal that holds? (docs/RESULTS.md): for one forget/retain pair whose sweeps/unlearning.sh folders exist,
# the three ways of changing the weights that survive pruning, each at <= 10% retain drop, then the same
# 64-step forget attack at two learning rates as in that comparison, added to its relearn folder:
#   heal4      selprune run --heal 4: 4 retain fine-tuning steps after each pruning step, pruned units at zero
#   prune-npo  NPO started from the pruning run one step before its kept one, matched to its retain drop
#   distill-A  UNDO: the healed model's noised copy (--noise A) distilled from it on retain data, A = 0.1, 0.05
# About 1 h 45 min on 2 CPU cores for each pair. Every command resumes, or is skipped when finished.
#
#   bash sweeps/holds.sh code prose "--fraction 0.02" 2 1e-4 4
#   bash sweeps/holds.sh python code "--fraction 0.01" 2 3e-5 2
#   .venv/bin/python scripts/relearn_table.py runs/compare/code-vs-prose/prune/relearn-compare   # the table
set -euo pipefail
forget=$1 retain=$2 heal_fraction=$3 npo_from_step=$4 npo_lr=$5 npo_every=$6
selprune=${SELPRUNE:-.venv/bin/selprune}
P=runs/compare/$forget-vs-$retain
data="--forget $forget --retain $retain --score-tokens 8192 --eval-tokens 8192"

finished() { [ -f "$1/state/result.json" ] || [ -f "$1/summary.json" ]; }
again() { if [ -d "$1" ]; then echo --resume; fi; }

finished $P/heal4 || $selprune run $data --steps 8 $heal_fraction --max-retain-drop 10 --heal 4 -o $P/heal4 $(again $P/heal4)
# NPO from the pruned model crosses the budget far sooner than from the original (code vs prose at 3e-4: 22.7%
# retain drop after 5 steps), so it runs at a third of the rate that suited the original, checkpointed often
finished $P/prune-npo || $selprune unlearn --from $P/prune:$npo_from_step --method npo --lr $npo_lr --steps 20 \
  --eval-every $npo_every $data --match $P/prune -o $P/prune-npo $(again $P/prune-npo)
# UNDO's student must come back within the budget: from the plain pruned model (9.8% retain drop on code vs
# prose) a 0.1-noised student stayed at 13% after 12 steps, so the teacher is the healed model, which has room
# below 10%. DISTILL lists NOISE:TOKENS pairs; noisier students did not come back within the budget (code vs
# prose, 131,072 tokens: 0.2 ended at 17% retain drop, 0.3 stayed at 86%), so the second level is below 0.1.
DISTILL=${DISTILL:-"0.1:98304 0.05:98304"}
students=()
for pair in $DISTILL; do
  noise=${pair%:*} tokens=${pair#*:} students+=($P/distill-$noise)
  finished $P/distill-$noise || $selprune unlearn --from $P/heal4 --method distill --noise $noise --lr 3e-4 \
    --distill-tokens $tokens --eval-every 8 $data --max-retain-drop 10 -o $P/distill-$noise $(again $P/distill-$noise)
done
# --resume attacks the controls added after the saved ones, which must come after them, in the order they were added
$selprune relearn $P/prune --attack forget --lr 1e-4 3e-4 --max-steps 64 --relearn-tokens 65536 --eval-tokens 2048 \
  --control $P/graddiff $P/ga $P/npo $P/rmu ${students[0]} $P/heal4 $P/prune-npo "${students[@]:1}" --name compare \
  $(again $P/prune/relearn-compare)
