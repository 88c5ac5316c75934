"""Evaluation speed: the harness's batched greedy decoding with a KV cache (``bench.decode.generate.generate``
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
from dataclasses import dataclass
from typing import Any

import torch

from bench.perf.common import header, interleaved, median, tiny_backbone
from bench.config import build_config
from bench.train.data import encode_split, eval_loader
from bench.run.protocol import make_accelerator, ordered_tasks
from bench.decode.generate import generate, method_hooks
from methods.base import MethodContext
import methods


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


@dataclass
class _Bench:
    """What both decoders run on: the tiny model with the method attached and the test records."""

    backbone: Any
    model: Any
    method: Any
    accelerator: Any
    sets: list[tuple[str, Any, list[int]]]  # (task, encoded test split, record indices)
    batch_size: int
    max_new: int

    @property
    def records(self) -> int:
        return sum(len(ix) for _, _, ix in self.sets)

    def decode(self, loader) -> dict[int, list[int]]:
        return generate(self.model, loader, eos_id=self.backbone.eos_id, max_new_tokens=self.max_new,
                        accelerator=self.accelerator, **method_hooks(self.method))


def _parser() -> argparse.ArgumentParser:
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
    return p


def _setup(args: argparse.Namespace) -> tuple[_Bench, str]:
    """The tiny preset with ``args.method`` attached as at the start of a run, and the first
    ``args.records`` test records of every task; plus where the weights came from."""
    cfg = build_config("tiny", method=args.method, tasks=args.tasks, mixed_precision="no")
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
    return _Bench(backbone=backbone, model=model, method=method, accelerator=accelerator, sets=sets,
                  batch_size=args.batch_size or cfg.eval_batch_size,
                  max_new=args.max_new_tokens or cfg.max_new_tokens), weights


def _harness_vs_generate(b: _Bench, args: argparse.Namespace) -> tuple[dict[str, dict], float, bool]:
    """Both decoders, interleaved round by round; prints the table. Returns the harness's predictions,
    its median seconds and whether any record's tokens differ."""
    results: dict[str, dict] = {}

    def harness() -> float:
        t = time.perf_counter()
        results["harness"] = {name: b.decode(eval_loader(b.backbone, encoded, b.batch_size, indices=ix))
                              for name, encoded, ix in b.sets}
        return time.perf_counter() - t

    def one_by_one() -> float:
        t = time.perf_counter()
        results["hf"] = {name: hf_generate_one_by_one(b.model, b.backbone, encoded, ix, b.max_new)
                         for name, encoded, ix in b.sets}
        return time.perf_counter() - t

    n = b.records
    times = interleaved({"harness": harness, "model.generate": one_by_one}, args.repeats, args.warmup)
    mismatched = [(name, i) for name, _, ix in b.sets for i in ix if results["harness"][name][i] != results["hf"][name][i]]
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
    return results["harness"], h, bool(mismatched)


def _cached_vs_uncached_rows(b: _Bench, args: argparse.Namespace) -> bool:
    """``args.rows`` evaluation rows as a run decodes them vs collating and encoding images every row;
    prints both times. Returns whether any row's predictions differ."""
    outputs: dict[str, list] = {"cached": [], "uncached": []}

    def rows(cached: bool) -> float:
        t = time.perf_counter()
        for _ in range(args.rows):
            row = {}
            for name, encoded, ix in b.sets:
                batches = eval_loader(b.backbone, encoded, b.batch_size, indices=ix)
                row[name] = b.decode(batches if cached else batches.loader)
            outputs["cached" if cached else "uncached"].append(row)
        return time.perf_counter() - t

    rt = interleaved({"uncached": lambda: rows(False), "cached": lambda: rows(True)}, args.repeats, 0)
    same = all(r == outputs["uncached"][0] for r in outputs["cached"] + outputs["uncached"])
    u, c = median(rt["uncached"]), median(rt["cached"])
    print(f"{args.rows} evaluation rows: every row collates + runs the vision tower {u:.2f} s, "
          f"batches and image features reused {c:.2f} s -> {u / c:.2f}x; predictions identical: {same}")
    return not same


def _compare_batch(b: _Bench, batch: int, harness: dict[str, dict], harness_seconds: float) -> None:
    """One row decoded with eval batch ``batch``: its time and how many predictions change."""
    t = time.perf_counter()
    other = {name: b.decode(eval_loader(b.backbone, encoded, batch, indices=ix).loader)
             for name, encoded, ix in b.sets}
    tb = time.perf_counter() - t
    diff = sum(other[name][i] != harness[name][i] for name, _, ix in b.sets for i in ix)
    print(f"eval batch {batch}: one row {tb:.2f} s (batch {b.batch_size}, cached: "
          f"{harness_seconds:.2f} s); predictions differing from batch {b.batch_size}: {diff}/{b.records}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    b, weights = _setup(args)
    print(header(f"evaluation: {b.records} test records ({', '.join(t for t, _, _ in b.sets)}), {args.method} on "
                 f"the tiny preset ({weights}), greedy, max {b.max_new} new tokens; harness batch {b.batch_size} vs "
                 f"model.generate per record; median of {args.repeats} interleaved rounds"))
    harness, harness_seconds, bad = _harness_vs_generate(b, args)
    if args.rows >= 2:
        bad |= _cached_vs_uncached_rows(b, args)
    if args.compare_batch:
        _compare_batch(b, args.compare_batch, harness, harness_seconds)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
