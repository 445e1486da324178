#!/usr/bin/env bash
# Regenerate the heads shipped in medusa_mlx/shipped_heads/ (CPU, Linux: preload OpenBLAS).
# Usage: scripts/train_shipped_heads.sh [stories260K|smollm2|stories260K-context|smollm2-context]
#        (default: all four; smollm2-answers: the Medusa heads trained on the distilled answers,
#        measured in the README but not shipped). Each target resumes: cached answers and backbone features are
#        reused from $CACHE, so a stopped run repeats no backbone work when started again.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MEDUSA_SHARED:-../shared}
export LD_PRELOAD=${LD_PRELOAD:-/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0}
CACHE=${MEDUSA_TRAIN_CACHE:-out/cache}
# Answers the model wrote (python -m medusa_mlx distill; README "Self-distillation data"):
# the repository's chunks. Backbone features are cached in $CACHE in parts, shared by the
# Medusa and the context trainers, so an interrupted run (or the other kind) resumes them.
ANSWERS=(data/distilled/smollm2)
which=${1:-all}

if [[ $which == all || $which == stories260K ]]; then
  python -m medusa_mlx.train --model "$SHARED/data/stories260K.bin" \
    --data "$SHARED/data/tinystories_val.txt" --mode generate --prompt-tokens 16 \
    --max-new-tokens 240 --max-records 2000 --held-out 0.05 --gen-batch-size 64 \
    --num-heads 4 --num-layers 1 --steps 1500 --batch-size 512 --learning-rate 3e-3 \
    --warmup-steps 50 --checkpoint-every 500 --seed 0 --cache-dir "$CACHE" \
    --out medusa_mlx/shipped_heads/stories260K
  rm -rf medusa_mlx/shipped_heads/stories260K/checkpoints   # training state, not part of the package
fi

if [[ $which == all || $which == smollm2 ]]; then
  # Template chat prompts (scripts/make_chat_prompts.py, no MT-bench), answered by the model
  # itself: chat_prompts.jsonl gives the held-out split, chat_prompts_extra.jsonl trains only.
  # ~90 min of answers on 2 CPU cores (batch 128, ~42 answers/min), cached one by one (an interrupted run resumes).
  # --head-vocab: the heads score only the 4096 most frequent training targets; accuracy and
  # the auto tree are measured on exactly what is saved (3 float16 heads, that vocabulary).
  python -m medusa_mlx.train --model smollm2 --data data/chat_prompts.jsonl \
    --extra-data data/chat_prompts_extra.jsonl \
    --max-new-tokens 192 --held-out 0.05 --gen-batch-size 128 \
    --num-heads 3 --num-layers 1 --shared-lm-head --sequential-heads --loss-vocab observed \
    --head-vocab 4096 --steps 4000 --batch-size 256 --learning-rate 1e-3 --warmup-steps 100 \
    --checkpoint-every 500 --seed 0 --dtype float16 --cache-dir "$CACHE" \
    --out medusa_mlx/shipped_heads/smollm2-135m-instruct
  rm -rf medusa_mlx/shipped_heads/smollm2-135m-instruct/checkpoints
fi

if [[ $which == smollm2-answers ]]; then   # not shipped yet (README: "Heads on real prompts")
  # SmolLM2's own greedy answers to real and self-written prompts (data/distilled/smollm2:
  # OASST, GSM8K train, self-instruct, HumanEval, Magpie, follow-ups, templates), held-out ids
  # never trained. 3 sequential heads on the shared lm_head, scoring a 4096-token head
  # vocabulary; the tree is measured on the held-out answers and this machine's costs.
  python -m medusa_mlx.train --model smollm2 --answers "${ANSWERS[@]}" \
    --max-seq-len 1024 --num-heads 3 --num-layers 1 --shared-lm-head --sequential-heads \
    --loss-vocab observed --head-vocab 4096 --steps 1500 --batch-size 256 --learning-rate 1e-3 \
    --warmup-steps 100 --checkpoint-every 250 --seed 0 --dtype float16 --cache-dir "$CACHE" \
    --out out/smollm2-answers
fi

if [[ $which == all || $which == smollm2-context ]]; then
  # The context drafter on the same answers (the same cached backbone features).
  python -m medusa_mlx.train --kind context --model smollm2 --answers "${ANSWERS[@]}" \
    --max-seq-len 1024 --num-heads 5 --steps 1200 --batch-size 8 --window 128 --unroll 2 \
    --learning-rate 1e-3 --warmup-steps 50 --head-vocab 4096 --max-tree-nodes 32 \
    --checkpoint-every 200 --seed 0 --dtype float16 --cache-dir "$CACHE" \
    --out medusa_mlx/shipped_heads/smollm2-context
  rm -rf medusa_mlx/shipped_heads/smollm2-context/checkpoints
fi

if [[ $which == all || $which == stories260K-context ]]; then
  # The stories the Medusa heads train on, continued by the model (the same answer cache).
  python -m medusa_mlx.train --kind context --model "$SHARED/data/stories260K.bin" \
    --data "$SHARED/data/tinystories_val.txt" --mode generate --prompt-tokens 16 \
    --max-new-tokens 240 --max-records 2000 --held-out 0.05 --gen-batch-size 64 \
    --num-heads 5 --steps 600 --batch-size 16 --window 256 --unroll 2 --learning-rate 3e-3 \
    --warmup-steps 50 --checkpoint-every 200 --seed 0 --cache-dir "$CACHE" --dtype float16 \
    --out medusa_mlx/shipped_heads/stories260K-context
  rm -rf medusa_mlx/shipped_heads/stories260K-context/checkpoints
fi
