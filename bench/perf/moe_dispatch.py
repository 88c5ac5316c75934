"""MoE dispatch benchmark: forward + backward of a top-k MoE layer vs a dense FFN, on CPU.

    python -m bench.perf.moe_dispatch                    # tiny preset: 1024 tokens, d=128, d_ff=344
    python -m bench.perf.moe_dispatch --shape large      # 4096 tokens, d=512, d_ff=1376

Shapes: ``tiny`` is one training batch of the harness's tiny preset (batch 8 x 128 tokens, d_model 128,
FFN hidden 344); ``large`` shows how the ratios scale with bigger matmuls. ``--tokens``, ``--d-model``
and ``--d-ff`` override the shape.

Compared, per number of experts E (each expert a SwiGLU FFN of width d_ff, top-k routing, dropless):

* ``fast``  — ``MoEFFN(dispatch="fast")``: router + gating + sorted dispatch, the whole layer;
* ``eager`` — the same layer with the reference dispatch (per-expert mask scan);
* ``dense`` — one SwiGLU FFN of width ``k · d_ff`` on every token. A top-k token activates k experts,
  i.e. ``k · 3 · d · d_ff`` weights and the same FLOPs as this FFN; one wide FFN (rather than k
  separate ones) gives the dense side its largest, most efficient matmuls, so it is the strict bar;
* ``stream`` — no compute: read every expert weight twice (``_foreach_norm``) and write a fresh
  gradient for each (``_foreach_zero_``). A training step of an E-expert layer has to move at least
  this much memory (the forward reads every routed expert's weights, the backward reads them again
  for the input gradient and writes their weight gradients; E · 3 · d · d_ff floats each way), so it
  is the part of the cost that grows with E whatever the dispatch does;
* ``gemm``  — the fast step's matmuls and nothing else: per expert, with the rows the router gave it,
  the 3 forward and 6 backward products (``X W_g^T``, ``X W_u^T``, ``H W_d^T``; ``dY^T H``, ``dY W_d``,
  ``dG^T X``, ``dU^T X``, ``dG W_g``, ``dU W_u``) into preallocated outputs on the experts' own weights:
  no routing, no gather or scatter, no elementwise work, no allocation. It is the floor of any dispatch
  that runs one GEMM chain per expert with this BLAS, and it shows how much of the growth with E is the
  BLAS's efficiency on few rows per expert (plus cold weights) rather than the dispatch.

Each timing is the median of ``--repeats`` steps after ``--warmup`` steps, all variants interleaved
round by round with the same input and output gradient (the routing of a variant is the same in every
round); a step is ``zero_grad`` (to None, as a trainer does), forward, backward. Input gradients are
kept on, as inside a model. Targets: fast <= 1.5x dense at every E, and time(E_max) <= 1.25x
time(E_min). Defaults are for a shared machine: one thread (two OpenMP threads stall at every parallel
region whenever one of them is descheduled, which punishes the many small per-expert matmuls far more
than the dense FFN) and process CPU time, which other processes' load does not inflate. ``eager`` runs
on a deep copy of the fast layer: same weights, same routing.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import time

import torch
from torch import nn

from bench.moe import FFNExperts, LinearRouter, MoEFFN, SwiGLUExpert


def retain_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse instead of returning it to the OS.

    With E=64 experts a step allocates ~0.5 GB of fresh weight gradients (the trainer's
    ``zero_grad(set_to_none=True)`` frees them); by default glibc trims the freed heap, so the next
    step page-faults all of it again (~137k minor faults per step here). The setting is process-wide,
    the same remedy as running with jemalloc/tcmalloc, and is off unless asked for.
    Returns False where it is unavailable (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # from <malloc.h>
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def build_moe(num_experts: int, d_model: int, d_ff: int, top_k: int, dispatch: str) -> MoEFFN:
    experts = FFNExperts([SwiGLUExpert(d_model, d_ff) for _ in range(num_experts)])
    return MoEFFN(experts, LinearRouter(d_model, num_experts), top_k=top_k, dispatch=dispatch)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
SHAPES = {"tiny": dict(tokens=1024, d_model=128, d_ff=344),      # a tiny-preset training batch
          "large": dict(tokens=4096, d_model=512, d_ff=1376)}


def step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, clock=time.perf_counter) -> float:
    """Seconds of one training step of the layer: zero_grad (to None), forward, backward."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    t0 = clock()
    module(x).backward(grad_out)
    return clock() - t0


def stream(weights: list[torch.Tensor], clock=time.perf_counter) -> float:
    """Seconds to read every weight twice and write a fresh gradient for each (no compute): the
    memory traffic a training step of the expert set cannot avoid (see the module docstring)."""
    t0 = clock()
    torch._foreach_norm(weights)
    torch._foreach_norm(weights)
    grads = [torch.empty_like(w) for w in weights]
    torch._foreach_zero_(grads)
    t = clock() - t0
    del grads
    return t


def gemm_floor(weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], counts: list[int],
               d_model: int, d_ff: int, clock=time.perf_counter) -> float:
    """Seconds of the per-expert matmuls of one fast step (see ``gemm`` in the module docstring)."""
    m = sum(counts)
    x, dy, dx, y = (torch.randn(m, d_model) for _ in range(4))
    g, u, h, dh = (torch.randn(m, d_ff) for _ in range(4))
    grads = [tuple(torch.empty_like(w) for w in ws) for ws in weights]
    parts = [t.split(counts) for t in (x, dy, dx, y, g, u, h, dh)]
    t0 = clock()
    for e, c in enumerate(counts):
        if not c:
            continue
        (w_g, w_u, w_d), (gw_g, gw_u, gw_d) = weights[e], grads[e]
        xe, dye, dxe, ye, ge, ue, he, dhe = (p[e] for p in parts)
        torch.mm(xe, w_g.t(), out=ge)
        torch.mm(xe, w_u.t(), out=ue)
        torch.mm(he, w_d.t(), out=ye)
        torch.mm(dye.t(), he, out=gw_d)
        torch.mm(dye, w_d, out=dhe)
        torch.mm(dhe.t(), xe, out=gw_g)  # dG, dU have dH's shape: dH stands in for both
        torch.mm(dhe.t(), xe, out=gw_u)
        torch.mm(dhe, w_g, out=dxe)
        dxe.addmm_(dhe, w_u)
    return clock() - t0


def run(tokens: int, d_model: int, d_ff: int, top_k: int, experts: list[int], warmup: int,
        repeats: int, eager: bool, seed: int = 0, clock: str = "wall") -> list[dict]:
    """Median step times. All variants are built first and timed in interleaved rounds (dense, then
    every E fast, then every E eager, then every E stream, per round), so load from other processes
    on a shared machine spreads over all of them instead of skewing whichever ran during a busy spell."""
    torch.manual_seed(seed)
    x = torch.randn(1, tokens, d_model, requires_grad=True)
    grad_out = torch.randn(1, tokens, d_model)
    variants: dict[tuple[str, int], nn.Module] = {("dense", 0): SwiGLUExpert(d_model, top_k * d_ff)}
    for E in experts:
        variants[("fast", E)] = build_moe(E, d_model, d_ff, top_k, "fast")
    if eager:
        for E in experts:
            variants[("eager", E)] = copy.deepcopy(variants[("fast", E)])
            variants[("eager", E)].dispatch = "eager"
    weights = {E: [p.detach() for p in variants[("fast", E)].experts.parameters()] for E in experts}
    triples, routed = {}, {}
    for E in experts:
        fast = variants[("fast", E)]
        triples[E] = [(ex.gate_proj.weight.detach(), ex.up_proj.weight.detach(), ex.down_proj.weight.detach())
                      for ex in fast.experts.experts]
        with torch.no_grad():
            fast(x)
        routed[E] = fast.last_output.expert_counts.tolist()  # the same routing every round
    times: dict[tuple[str, int], list[float]] = {k: [] for k in variants}
    times.update({("stream", E): [] for E in experts})
    times.update({("gemm", E): [] for E in experts})
    for i in range(warmup + repeats):
        for key, module in variants.items():
            t = step(module, x, grad_out, CLOCKS[clock])
            if i >= warmup:
                times[key].append(t)
        for E in experts:
            t = stream(weights[E], CLOCKS[clock])
            if i >= warmup:
                times[("stream", E)].append(t)
        for E in experts:
            t = gemm_floor(triples[E], routed[E], d_model, d_ff, CLOCKS[clock])
            if i >= warmup:
                times[("gemm", E)].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for E in experts:
        counts = variants[("fast", E)].last_output.expert_counts
        rows.append(dict(E=E, dense=med[("dense", 0)], fast=med[("fast", E)],
                         eager=med.get(("eager", E)), stream=med[("stream", E)], gemm=med[("gemm", E)],
                         min_tok=int(counts.min()), max_tok=int(counts.max()),
                         weight_mb=sum(w.numel() * w.element_size() for w in weights[E]) / 2 ** 20))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["|  E | dense ms | fast ms | eager ms | fast/dense | eager/fast | tokens/expert min-max "
             "| expert weights MB | stream ms | gemm ms |",
             "|---:|---------:|--------:|---------:|-----------:|-----------:|:---------------------:"
             "|------------------:|----------:|--------:|"]
    for r in rows:
        eager = f"{r['eager'] * 1e3:8.1f}" if r["eager"] is not None else "       -"
        ef = f"{r['eager'] / r['fast']:10.2f}" if r["eager"] is not None else "         -"
        lines.append(f"| {r['E']:2d} | {r['dense'] * 1e3:8.1f} | {r['fast'] * 1e3:7.1f} | {eager} | "
                     f"{r['fast'] / r['dense']:10.2f} | {ef} | {r['min_tok']:>9d}-{r['max_tok']:<11d} "
                     f"| {r['weight_mb']:17.1f} | {r['stream'] * 1e3:9.1f} | {r['gemm'] * 1e3:7.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.moe_dispatch", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                   help="tiny: a tiny-preset training batch (1024 tokens, d=128, d_ff=344); "
                        "large: 4096 tokens, d=512, d_ff=1376")
    p.add_argument("--tokens", type=int, default=None, help="override the shape's token count")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--d-ff", type=int, default=None)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--experts", default="4,8,16,32,64", help="comma-separated numbers of experts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--no-eager", action="store_true", help="skip the eager reference")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="cpu: process CPU time, which other processes' load does not inflate (with one "
                        "thread); wall: perf_counter")
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="glibc: keep freed memory for reuse (no page faults on fresh gradients)")
    args = p.parse_args(argv)
    shape = dict(SHAPES[args.shape])
    for key in ("tokens", "d_model", "d_ff"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = "glibc default"
    if args.retain_freed_memory:
        allocator = "glibc, freed memory retained" if retain_freed_memory() else "default (mallopt n/a)"
    experts = [int(e) for e in args.experts.split(",")]
    print(f"# MoE dispatch, CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s): "
          f"{shape['tokens']} tokens, d_model={shape['d_model']}, d_ff={shape['d_ff']}, top-{args.top_k}, "
          f"dropless; dense = SwiGLU FFN of width {args.top_k}*d_ff; fwd+bwd, median of {args.repeats} "
          f"after {args.warmup} warm-up, interleaved; {args.clock} clock; allocator: {allocator}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.clock == "wall" and os.getloadavg()[0] > 0.5:
        print(f"# warning: load average {os.getloadavg()[0]:.1f} before starting: other processes share "
              f"this CPU, wall-clock ratios will be skewed; consider --threads 1 --clock cpu")
    rows = run(shape["tokens"], shape["d_model"], shape["d_ff"], args.top_k, experts, args.warmup,
               args.repeats, eager=not args.no_eager, clock=args.clock)
    print(format_table(rows))
    first, last = rows[0], rows[-1]
    growth = last["fast"] / first["fast"]
    worst = max(r["fast"] / r["dense"] for r in rows)
    print(f"\nfast time(E={last['E']}) / time(E={first['E']}) = {growth:.2f}  (target <= 1.25)")
    print(f"worst fast/dense = {worst:.2f}  (target <= 1.5)")
    floor = last["stream"] - first["stream"]
    print(f"memory floor: streaming the experts' weights (read twice, gradients written once) costs "
          f"{floor * 1e3:.1f} ms more at E={last['E']} than at E={first['E']}; the growth target allows "
          f"{0.25 * first['fast'] * 1e3:.1f} ms in all (fast time(E={last['E']}) - time(E={first['E']}) "
          f"= {(last['fast'] - first['fast']) * 1e3:.1f} ms)")
    print(f"gemm floor: the per-expert matmuls alone take {last['gemm'] / first['gemm']:.2f}x as long at "
          f"E={last['E']} as at E={first['E']} ({first['gemm'] * 1e3:.1f} -> {last['gemm'] * 1e3:.1f} ms); "
          f"fast time minus its matmuls: {(first['fast'] - first['gemm']) * 1e3:.1f} ms at E={first['E']}, "
          f"{(last['fast'] - last['gemm']) * 1e3:.1f} ms at E={last['E']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
