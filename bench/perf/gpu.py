"""The GPU check: one command, one table, under 8 minutes on one GPU.

    python -m bench perf gpu [--dry-run] [--only coin,dispatch,steps,decode] [--steps 10]

Sections, each in its own process (a failure or an out-of-memory in one is a row of the table, and
every section starts from an empty GPU, so its peak memory is its own):

* ``coin``     the default coin-mini run of cmoe on CUDA with bf16 autocast
               (``python -m bench run --method cmoe --tasks coin --mixed-precision bf16``, shipped base):
               wall time, training / evaluation seconds, Last and MFT;
* ``dispatch`` the MoE dispatch benchmark's large shape (4096 tokens, d=512, d_ff=1376, top-2) on CUDA,
               bf16: the harness's fast sorted dispatch (``bench.moe.MoEFFN``, the whole layer) vs the expert
               FFNs alone through torch's CUDA grouped GEMM (``torch.nn.functional.grouped_mm`` on the
               expert-sorted buffer, the routing of the fast layer) vs one dense FFN of the same activated
               width, forward + backward, E = 8 and 64;
* ``steps``    training steps/s and peak GPU memory of the LLaVA-1.5-7B-class config (random bf16 weights)
               for seq-ft, cmoe and moe-llava with gradient checkpointing
               (``python -m bench perf steps --model-config 7b --method M --gradient-checkpointing``);
* ``decode``   batched greedy decoding with the KV cache (``bench.decode.generate.generate``) on the 7B-class config:
               32 prompts of 624 tokens (576 image), 32 new tokens each, tokens/s and peak memory.

``--dry-run`` prints the plan and, computed on the meta device, the memory every method needs at 7B; it
needs no GPU. Without a GPU and without ``--dry-run`` it prints the plan and exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import LlavaForConditionalGeneration
from accelerate import Accelerator
import torch
import torch.nn.functional as F

from bench.perf.steps import llava_config, synthetic_batch
from methods.base import MethodContext
from bench.moe import SwiGLUExpert
from bench.perf.moe_dispatch import SHAPES, build_moe
from bench.decode.generate import generate
import methods
import tasks

SECTIONS = {
    "coin": ("default coin-mini run of cmoe, CUDA, bf16", 240),
    "dispatch": ("MoE dispatch, large shape: fast dispatch vs CUDA grouped GEMM vs dense, E=8/64", 30),
    "steps": ("7B-class steps/s + peak memory, gradient checkpointing: seq-ft, cmoe, moe-llava", 150),
    "decode": ("7B-class batched greedy decoding with KV cache: tokens/s", 40),
}
STEP_METHODS = ("seq-ft", "cmoe", "moe-llava")
MEMORY_METHODS = ("seq-ft", "moelora", "naive-expansion", "cmoe", "evomoe", "moe-llava")


def plan_text(steps: int) -> str:
    lines = ["GPU check plan (one GPU; each section in its own process):"]
    for name, (what, seconds) in SECTIONS.items():
        lines.append(f"  {name:9s} {what}  (~{seconds} s on an H100-class GPU, estimated)")
    total = sum(s for _, s in SECTIONS.values())
    lines.append(f"  estimated total ~{total / 60:.1f} min (model builds included); steps per 7B timing: {steps}")
    return "\n".join(lines)


def memory_table(gpus: int = 8) -> str:
    """Per method at 7B (first task's trained set, the method's defaults), computed from parameter counts
    on the meta device: frozen weights bf16 (2 B), trained parameters fp32 with fp32 gradients and AdamW
    moments (16 B); activations, the CUDA context and FSDP's gather buffers not included."""
    config = llava_config("7b")
    rows = [f"| method | parameters | trained | 1 GPU or {gpus}-GPU DDP, GB/GPU | {gpus}-GPU FSDP2, GB/GPU | "
            f"{gpus}-GPU ZeRO-2, GB/GPU |", "|---|---:|---:|---:|---:|---:|"]
    for name in MEMORY_METHODS:
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
            for p in model.parameters():
                p.requires_grad_(False)
            method = methods.build(name, {})
            method.attach(model, MethodContext(num_tasks=8, steps_per_task=1000, device=torch.device("meta"),
                                               image_token_id=config.image_token_id))
            task = tasks.get("scienceqa")
            method.begin_task(0, task, [])
            phase = next(method.training_phases(0, task, [], 1000))
        total = sum(p.numel() for p in model.parameters())
        trained = sum(p.numel() for p in {id(p): p for p in phase.parameters}.values())
        frozen = total - trained
        one = 2 * frozen + 16 * trained
        # bench.train.sharding: whole model resident on every GPU between phases (frozen bf16, trained fp32);
        # during a phase FSDP's shards of everything plus the trained part's gradients and AdamW moments
        fsdp = 2 * frozen + 4 * trained + (2 * frozen + 16 * trained) / gpus
        zero2 = 2 * frozen + 4 * trained + 12 * trained / gpus
        rows.append(f"| {name} | {total / 1e9:.2f} B | {trained / 1e6:,.0f} M | {one / 1e9:.1f} | {fsdp / 1e9:.1f} | "
                    f"{zero2 / 1e9:.1f} |")
    return "\n".join(rows)


# --- sections (each runs in its own process) -------------------------------------------------------

def _coin(out: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "bench", "run", "--method", "cmoe", "--tasks", "coin",
                              "--mixed-precision", "bf16", "--out", tmp], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if res.returncode:
            raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}")
        record = json.loads(next(Path(tmp, "runs").glob("*.json")).read_text())
    w = record["wall_time"]
    return {"result": f"Last {record['metrics']['last']:.2f}, MFT {record['metrics'].get('mft', float('nan')):.2f}; "
                      f"training {w.get('training', 0):.0f} s, evaluation {w.get('evaluation', 0):.0f} s, "
                      f"method {w.get('method', 0):.0f} s", "seconds": wall}


def _timed(fn, warmup: int = 5, repeats: int = 20) -> float:
    times = []
    for i in range(warmup + repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _dispatch(out: Path) -> dict:
    shape = SHAPES["large"]
    n, d, d_ff, k = shape["tokens"], shape["d_model"], shape["d_ff"], 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(1, n, d, device=dev, requires_grad=True)
    g_out = torch.randn(1, n, d, device=dev)
    dense = SwiGLUExpert(d, k * d_ff).to(dev)

    def step(module):
        def run():
            module.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = module(x)
            y.backward(g_out)
        return run

    parts = [f"dense {_timed(step(dense)):.2f} ms"]
    for E in (8, 64):
        fast = build_moe(E, d, d_ff, k, "fast").to(dev)
        fast_ms = _timed(step(fast))
        counts = fast.last_output.expert_counts.to(torch.int32)
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        rows = int(offs[-1])
        w = [torch.randn(E, o, i, device=dev, dtype=torch.bfloat16, requires_grad=True) * 0.02
             for o, i in ((d_ff, d), (d_ff, d), (d, d_ff))]
        w = [t.detach().requires_grad_(True) for t in w]
        xs = torch.randn(rows, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        gy = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)

        def grouped():
            for t in (*w, xs):
                t.grad = None
            g = F.grouped_mm(xs, w[0].transpose(-2, -1), offs=offs)
            u = F.grouped_mm(xs, w[1].transpose(-2, -1), offs=offs)
            y = F.grouped_mm(F.silu(g) * u, w[2].transpose(-2, -1), offs=offs)
            y.backward(gy)

        try:
            grouped_ms = f"{_timed(grouped):.2f} ms"
        except Exception as e:  # a torch build or GPU without the kernel
            grouped_ms = f"failed ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
        parts.append(f"E={E}: fast {fast_ms:.2f} ms, grouped GEMM {grouped_ms}")
    return {"result": "; ".join(parts)}


def _decode(out: Path) -> dict:
    config = llava_config("7b")
    accelerator = Accelerator(mixed_precision="bf16")
    torch.manual_seed(0)
    with torch.device(accelerator.device):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.eval()
    B, new = 32, 32
    batch = synthetic_batch(config, B, 48, 0, accelerator.device)
    batch.pop("labels")
    batch["index"] = torch.arange(B)
    run = dict(eos_id=-1, max_new_tokens=new, accelerator=accelerator)  # random weights: no eos, all 32 tokens
    generate(model, [batch], **run)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    generate(model, [batch], **run)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {"result": f"{B * new / seconds:,.0f} new tokens/s ({B} prompts x {batch['input_ids'].shape[1]} tokens, "
                      f"{new} new), peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", "seconds": seconds}


def _child(section: str, out: Path, steps: int) -> list[tuple[str, str, float | None]]:
    """Run one section in its own process; rows (check, result, seconds)."""
    if section == "steps":
        rows = []
        for method in STEP_METHODS:
            path = out / f"steps-{method}.json"
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "bench", "perf", "steps", "--model-config", "7b",
                                  "--method", method, "--gradient-checkpointing", "--steps", str(steps),
                                  "--warmup", "2", "--json", str(path)], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if res.returncode or not path.exists():
                rows.append((f"7B steps {method}", f"failed: {_last_line(res.stderr)}", wall))
                continue
            r = json.loads(path.read_text())
            rows.append((f"7B steps {method}", f"{r['steps_per_s']:.2f} steps/s ({r['tokens_per_s']:,.0f} tokens/s, "
                         f"batch {r['batch']} x {r['seq']}), peak {r['peak_gib']:.1f} GiB, "
                         f"{r['trained'] / 1e6:,.0f} M of {r['parameters'] / 1e9:.2f} B trained", wall))
        return rows
    path = out / f"{section}.json"
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "bench", "perf", "gpu", "--section", section, "--json", str(path)],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode or not path.exists():
        return [(section, f"failed: {_last_line(res.stderr)}", wall)]
    r = json.loads(path.read_text())
    return [(SECTIONS[section][0], r["result"], r.get("seconds", wall))]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench perf gpu", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and the computed 7B memory table")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--steps", type=int, default=10, help="timed steps per 7B method")
    p.add_argument("--section", choices=[s for s in SECTIONS if s != "steps"], help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.section:  # a child process: one section, its figures as JSON
        result = {"coin": _coin, "dispatch": _dispatch, "decode": _decode}[args.section](Path(args.json).parent)
        Path(args.json).write_text(json.dumps(result))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    print(plan_text(args.steps), flush=True)
    if args.dry_run:
        print("\nMemory per GPU at 7B (computed from parameter counts on the meta device, not measured):", flush=True)
        print(memory_table(), flush=True)
        print("\ndry run: nothing measured" + ("" if torch.cuda.is_available() else " (no CUDA device here)"))
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA device: the GPU check measures only on a GPU (--dry-run prints the plan).", file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(tempfile.mkdtemp(prefix="bench-perf-gpu-"))
    start = time.perf_counter()
    rows = []
    for section in only:
        rows += _child(section, out, args.steps)
        print(f"  done: {section} ({time.perf_counter() - start:.0f} s so far)", flush=True)
    print(f"\n# GPU check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}: "
          f"{time.perf_counter() - start:.0f} s in all")
    print("| check | result | seconds |\n|---|---|---:|")
    for name, result, seconds in rows:
        print(f"| {name} | {result} | {'' if seconds is None else f'{seconds:.1f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
