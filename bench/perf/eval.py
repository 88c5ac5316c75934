"""Evaluation speed: the harness's batched greedy decoding with a KV cache (``bench.train.trainer.generate``
over ``bench.train.data.eval_loader``) vs ``model.generate`` one sample at a time, on the same test records.

    python -m bench perf eval [--tasks vqav2,gqa,grounding --records 64 --method seq-ft --repeats 3 --threads N]

Both decode greedily up to ``--max-new-tokens`` (the run default, 24) and stop a sample at its eos;
the generated token ids must be identical record by record (the command exits 1 otherwise). The model
is the tiny preset (stage-0 weights when cached or shipped, otherwise random init, said in the header)
with the method attached as at the start of a run. Per round both sides decode every record once, the two
alternate round by round and the medians are compared. Target: harness >= 5x faster on CPU.

``--rows R`` (R >= 2) also times what a run does: R evaluation rows over the same records, the
harness as it is (test batches collated once, image features reused while the vision tower and
projector are provably unchanged) vs the same decoding with every row collating its batches and
running the vision tower again (a plain DataLoader per row); ``--compare-batch
B`` additionally decodes one row with eval batch B and reports whether any prediction changes.
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.perf.common import header, interleaved, median, tiny_backbone


def hf_generate_one_by_one(model, backbone, encoded, indices, max_new_tokens: int) -> dict[int, list[int]]:
    """``model.generate`` per record: no padding, the record's own prompt and image."""
    out: dict[int, list[int]] = {}
    eos = backbone.eos_id
    with torch.no_grad():
        for i in indices:
            item = encoded[i]
            ids = torch.tensor([item["prompt_ids"]])
            kwargs = {"pixel_values": backbone.pixel_values([item["image"]])} if item["image"] is not None else {}
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=backbone.pad_id,
                                 **kwargs)
            seq = gen[0, ids.shape[1]:].tolist()
            out[i] = seq[: seq.index(eos)] if eos in seq else seq
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench perf eval", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="vqav2,gqa,grounding")
    p.add_argument("--records", type=int, default=64, help="test records per task (64 = one full eval batch)")
    p.add_argument("--method", default="seq-ft")
    p.add_argument("--batch-size", type=int, default=None, help="harness eval batch (default: the run's, 64)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=0, help="also time R evaluation rows, cached vs uncached")
    p.add_argument("--compare-batch", type=int, default=None, help="also check predictions at this eval batch")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import methods
    from bench.config import build_config
    from bench.train.data import encode_split, eval_loader
    from bench.run.protocol import make_accelerator, ordered_tasks
    from bench.train.trainer import generate, method_hooks
    from methods.base import MethodContext

    cfg = build_config("tiny", method=args.method, tasks=args.tasks, mixed_precision="no")
    batch_size = args.batch_size or cfg.eval_batch_size
    max_new = args.max_new_tokens or cfg.max_new_tokens
    accelerator = make_accelerator(cfg)
    task_list = ordered_tasks(cfg)
    backbone, weights = tiny_backbone(cfg, task_list)
    model = backbone.model.eval()
    method = methods.build(args.method, {})
    method.attach(model, MethodContext(num_tasks=len(task_list), steps_per_task=cfg.steps_per_task,
                                       device=accelerator.device, image_token_id=backbone.image_token_id,
                                       extra={"accelerator": accelerator, "lr": cfg.lr}))
    spec = cfg.data_spec()
    sets = []
    for task in task_list:
        encoded = encode_split(backbone, task.load("test", spec))
        sets.append((task.name, encoded, list(range(min(args.records, len(encoded))))))
    n = sum(len(ix) for _, _, ix in sets)
    print(header(f"evaluation: {n} test records ({', '.join(t for t, _, _ in sets)}), {args.method} on the tiny "
                 f"preset ({weights}), greedy, max {max_new} new tokens; harness batch {batch_size} vs "
                 f"model.generate per record; median of {args.repeats} interleaved rounds"))
    results: dict[str, dict] = {}

    def harness() -> float:
        t = time.perf_counter()
        res = {}
        for name, encoded, ix in sets:
            loader = eval_loader(backbone, encoded, batch_size, indices=ix)
            res[name] = generate(model, loader, eos_id=backbone.eos_id, max_new_tokens=max_new,
                                 accelerator=accelerator, **method_hooks(method))
        results["harness"] = res
        return time.perf_counter() - t

    def one_by_one() -> float:
        t = time.perf_counter()
        results["hf"] = {name: hf_generate_one_by_one(model, backbone, encoded, ix, max_new)
                         for name, encoded, ix in sets}
        return time.perf_counter() - t

    times = interleaved({"harness": harness, "model.generate": one_by_one}, args.repeats, args.warmup)
    mismatched = [(name, i) for name, _, ix in sets for i in ix if results["harness"][name][i] != results["hf"][name][i]]
    lengths = [len(v) for r in results["hf"].values() for v in r.values()]
    h, g = median(times["harness"]), median(times["model.generate"])
    print("| decoding | s (median) | ms / record | per-round s |")
    print("|---|---:|---:|---|")
    for label, key in (("harness: batched, KV cache", "harness"), ("model.generate, one at a time", "model.generate")):
        print(f"| {label} | {median(times[key]):.2f} | {median(times[key]) / n * 1e3:.1f} | "
              f"{' '.join(f'{x:.2f}' for x in times[key])} |")
    print(f"generated tokens per record: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
    print(f"outputs identical: {n - len(mismatched)}/{n} records" +
          (f"; DIFFER at {mismatched[:10]}" if mismatched else ""))
    print(f"model.generate / harness = {g / h:.2f}x  (target >= 5)")
    bad = bool(mismatched)
    if args.rows >= 2:
        outputs: dict[str, list] = {"cached": [], "uncached": []}

        def rows(cached: bool) -> float:
            t = time.perf_counter()
            for _ in range(args.rows):
                row = {}
                for name, encoded, ix in sets:
                    batches = eval_loader(backbone, encoded, batch_size, indices=ix)
                    row[name] = generate(model, batches if cached else batches.loader, eos_id=backbone.eos_id,
                                         max_new_tokens=max_new, accelerator=accelerator,
                                         **method_hooks(method))
                outputs["cached" if cached else "uncached"].append(row)
            return time.perf_counter() - t

        rt = interleaved({"uncached": lambda: rows(False), "cached": lambda: rows(True)}, args.repeats, 0)
        same = all(r == outputs["uncached"][0] for r in outputs["cached"] + outputs["uncached"])
        u, c = median(rt["uncached"]), median(rt["cached"])
        print(f"{args.rows} evaluation rows: every row collates + runs the vision tower {u:.2f} s, "
              f"batches and image features reused {c:.2f} s -> {u / c:.2f}x; predictions identical: {same}")
        bad |= not same
    if args.compare_batch:
        t = time.perf_counter()
        other = {name: generate(model, eval_loader(backbone, encoded, args.compare_batch, indices=ix).loader,
                                eos_id=backbone.eos_id, max_new_tokens=max_new, accelerator=accelerator,
                                **method_hooks(method)) for name, encoded, ix in sets}
        tb = time.perf_counter() - t
        diff = sum(other[name][i] != results["harness"][name][i] for name, _, ix in sets for i in ix)
        print(f"eval batch {args.compare_batch}: one row {tb:.2f} s (batch {batch_size}, cached: "
              f"{h:.2f} s); predictions differing from batch {batch_size}: {diff}/{n}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
