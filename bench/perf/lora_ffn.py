"""LoRA-FFN expert benchmark: a training step of the expert set vs one LoRA on a dense FFN, on CPU.

    python -m bench perf lora-ffn                  # tiny preset: 2048 routed rows, d=128, d_ff=344, r=32

A step is forward + backward of ``LoRAFFNExperts.forward_grouped`` over an expert-sorted buffer with
``E`` live experts sharing the rows equally, two of them trainable and the rest frozen (a continual
method's layer late in the stream). Compared, per E:

* ``segment`` — the shipped path: the frozen FFN once over the buffer, each expert's low-rank terms
  on its own slice (cost per row independent of E);
* ``stacked`` — the reference it replaced: every live expert's factors stacked, each row masked to its
  own expert's r columns (cost per row grows as E · r);
* ``dense``   — one FFN with one rank-r LoRA on gate, up and down over the same rows (seq-ft's FFN).

Targets: segment(E_max) <= 1.5x segment(E_min), segment <= 2x dense at every E. Process CPU time,
one thread, median of interleaved rounds (load from other processes does not inflate it).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.moe.experts import SwiGLUExpert
from bench.moe.lora_ffn_experts import LoRAFFNExperts


def stacked(experts: LoRAFFNExperts, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """The masked formulation: ``H = X [A_1; ...; A_L]^T``, rows keep their own expert's columns."""
    live = [e for e, c in enumerate(counts) if c]
    owner = torch.repeat_interleave(torch.arange(len(live)), torch.tensor([counts[e] for e in live]))
    keep = F.one_hot(owner, len(live)).to(x.dtype).unsqueeze(-1)

    def lora(h: torch.Tensor, proj: str) -> torch.Tensor:
        mods = [getattr(experts.experts[e], proj) for e in live]
        a, b = torch.cat([m.lora_A for m in mods]), torch.cat([m.lora_B for m in mods], dim=1)
        z = (F.linear(h, a).view(-1, len(mods), experts.r) * keep).view(-1, len(mods) * experts.r)
        return F.linear(z, b) * mods[0].scaling

    base = experts.base
    g = base.gate_proj(x) + lora(x, "gate_proj")
    u = base.up_proj(x) + lora(x, "up_proj")
    h = base.act_fn(g) * u
    return base.down_proj(h) + lora(h, "down_proj")


def run(rows: int, d: int, d_ff: int, r: int, experts: list[int], warmup: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(rows, d, requires_grad=True)
    grad = torch.randn(rows, d)
    dense = LoRAFFNExperts(SwiGLUExpert(d, d_ff), 1, r, 2.0 * r)
    sets = {}
    for E in experts:
        s = LoRAFFNExperts(SwiGLUExpert(d, d_ff), E, r, 2.0 * r)
        with torch.no_grad():
            for ex in s.experts:  # trained-looking factors (B = 0 would make the LoRA terms trivial)
                for m in (ex.gate_proj, ex.up_proj, ex.down_proj):
                    m.lora_B.normal_(0, 0.02)
        s.freeze(range(E - 2))  # all but the last two: the earlier tasks' experts
        sets[E] = s
    counts = {E: [rows // E] * (E - 1) + [rows - (rows // E) * (E - 1)] for E in experts}
    variants = {("dense", 0): lambda: dense.forward_grouped(x, [rows])}
    for E in experts:
        variants[("segment", E)] = lambda E=E: sets[E].forward_grouped(x, counts[E])
        variants[("stacked", E)] = lambda E=E: stacked(sets[E], x, counts[E])
    times: dict = {k: [] for k in variants}
    for i in range(warmup + repeats):
        for key, fn in variants.items():
            x.grad = None
            t0 = time.process_time()
            fn().backward(grad)
            if i >= warmup:
                times[key].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [dict(E=E, dense=med[("dense", 0)], segment=med[("segment", E)], stacked=med[("stacked", E)])
            for E in experts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench perf lora-ffn", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2048, help="routed rows (tokens x top-k)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-ff", type=int, default=344)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--experts", default="2,4,8,16", help="comma-separated numbers of live experts")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    experts = [int(e) for e in args.experts.split(",")]
    rows = run(args.rows, args.d_model, args.d_ff, args.rank, experts, args.warmup, args.repeats)
    print(f"# LoRA-FFN experts, CPU, torch {torch.__version__}, 1 thread: {args.rows} rows, d={args.d_model}, "
          f"d_ff={args.d_ff}, r={args.rank}; fwd+bwd, median of {args.repeats}, process CPU time")
    print("|  E | dense ms | segment ms | stacked ms | segment/dense | stacked/segment |")
    print("|---:|---------:|-----------:|-----------:|--------------:|----------------:|")
    for r in rows:
        print(f"| {r['E']:2d} | {r['dense'] * 1e3:8.1f} | {r['segment'] * 1e3:10.1f} | {r['stacked'] * 1e3:10.1f} "
              f"| {r['segment'] / r['dense']:13.2f} | {r['stacked'] / r['segment']:15.2f} |")
    growth = rows[-1]["segment"] / rows[0]["segment"]
    worst = max(r["segment"] / r["dense"] for r in rows)
    print(f"\nsegment time(E={rows[-1]['E']}) / time(E={rows[0]['E']}) = {growth:.2f}  (target <= 1.5)")
    print(f"worst segment/dense = {worst:.2f}  (target <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
