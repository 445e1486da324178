"""python scripts/bench_distill_batching.py per_chunk round (prints JSON).

A/B: answer the same 128 GSM8K-train prompts (96 new tokens, batch 32) as 4 separate
batches (the batch drains between chunks) vs one continuous batch of 4 chunks."""
import json
import sys
import time
from pathlib import Path

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx)
from medusa_mlx.load import load_backbone
from medusa_mlx.training.distill import answer_chunks
from medusa_mlx.training.prompt_sets import read_prompt_file
from medusa_mlx.blas import blas_info
model, tok, _ = load_backbone("smollm2")
prompts = read_prompt_file(str(Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "gsm8k_train.jsonl"))[4000:4128]
chunks = [prompts[i:i + 32] for i in range(0, 128, 32)]
answer_chunks(model, tok, [prompts[:8]], 8, 8, lambda k, r: None)  # warm-up
out = {"blas": blas_info()["library"]}
for mode in sys.argv[1:]:
    t = time.perf_counter(); tokens = 0
    if mode == "per_chunk":
        for c in chunks:
            tokens += answer_chunks(model, tok, [c], 96, 32, lambda k, r: None)["tokens"]
    else:
        tokens = answer_chunks(model, tok, chunks, 96, 32, lambda k, r: None)["tokens"]
    s = time.perf_counter() - t
    out[mode] = {"tokens": tokens, "seconds": round(s, 1), "tokens_per_s": round(tokens / s, 1)}
    print(json.dumps(out), flush=True)
