"""Performance benchmarks, one module each: ``python -m bench perf NAME [flags]``.

    trainer  bench.train.trainer.train_steps vs a hand-written PyTorch loop (overhead ratio)
    eval     batched greedy decoding with KV cache vs model.generate one sample at a time
    steps    training steps/s on the tiny preset or a 7B-class config (--model-config 7b)
    syncs    host reads of tensor values (GPU synchronisation points) per training step, per method
    lora-ffn LoRA-FFN experts: per-expert slices vs stacked-and-masked factors vs one dense LoRA
    gpu      the GPU check: a coin-mini cmoe run, MoE dispatch, 7B steps/s and decoding, one table (--dry-run: plan)

``python -m bench.perf.moe_dispatch`` is the MoE dispatch benchmark.
"""
from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"trainer": "bench.perf.trainer", "eval": "bench.perf.eval", "steps": "bench.perf.steps",
              "syncs": "bench.perf.syncs", "gpu": "bench.perf.gpu",
              "moe-dispatch": "bench.perf.moe_dispatch", "lora-ffn": "bench.perf.lora_ffn"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        asked = not argv or argv[0] in ("-h", "--help")
        print(__doc__.strip(), file=sys.stdout if asked else sys.stderr)
        if not asked:
            print(f"error: unknown benchmark {argv[0]!r}; one of {', '.join(BENCHMARKS)}.", file=sys.stderr)
            return 2
        return 0
    return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)
