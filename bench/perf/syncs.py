"""Host reads of tensor values per training step, per method: the points where a GPU step would wait
for the device (a host-device synchronisation), counted on any machine.

    python -m bench perf syncs [--methods all|seq-ft,cmoe --steps 8]

Every registered method is attached to the tiny preset (stage-0 weights when cached) and trains
``--steps`` steps of the first task (all its phases, ``bench.train.phases.train_task``) under a ``TorchFunctionMode`` that records each
call which needs a tensor's value on the host: ``item``, ``tolist``, ``bool``/``int``/``float``/``index``
of a tensor, and the ops whose output shape depends on values (``nonzero``, ``unique``,
``masked_select``, ``argwhere``, one-argument ``where``). On a CPU these are free; on a GPU each one
stalls the host until the device has caught up. Reads of CPU tensors that never touch the device (a
``torch.Generator`` on the CPU, say) are counted too, so the figures are an upper bound. The trainer's
own loss logging (one read every ``log_every`` steps) is excluded by logging only once, at the end.
Prints reads per step and where they come from (the first frame in this project's code, and the
library file when the read happens inside a library).
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from bench.perf.common import header
from bench.perf.trainer import build
from bench.train.phases import train_task
import methods

HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique",
              "unique_consecutive", "masked_select", "argwhere"}
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()


class HostReadCounter(TorchFunctionMode):
    """Counts host reads of tensor values by the project frame they come from."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name == "where" and len(args) == 1 and not kwargs):
            self.sites[f"{name} at {_project_frame()}"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


def _project_frame() -> str:
    """``file:line (function)`` of the first frame in this project's code, prefixed with
    ``<library file> via`` when the read itself happens inside a library (the optimizer, transformers)."""
    stack = traceback.extract_stack()[:-2]
    origin = None
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        if path == HERE or "torch/overrides" in frame.filename:
            continue
        if origin is None:
            origin = path
        if ROOT in path.parents and "tests" not in path.parts:
            where = f"{path.relative_to(ROOT)}:{frame.lineno} ({frame.name})"
            if origin != path:
                lib = next((origin.parts[i + 1:] for i, part in enumerate(origin.parts)
                            if part == "site-packages"), origin.parts[-2:])
                where = f"{'/'.join(lib)} via {where}"
            return where
    return "outside the project"


def count(method_name: str, steps: int) -> tuple[HostReadCounter, object]:
    """(reads during ``steps`` training steps, the method) for one registered method."""
    _, accelerator, backbone, _, batches, _, attached = build(method_name, 8, 4)
    model = backbone.model
    method = attached(model)
    counter = HostReadCounter()
    with counter:  # every phase of the method's first task (EvoMoE: evolution, then router)
        done = train_task(model, method, 0, None, batches, steps, accelerator=accelerator, lr=1e-3,
                          desc=f"syncs {method_name}")
    # one loss log per phase, at its last step (fewer than 25 steps), is the trainer's by design
    counter.sites[f"item at bench/train/trainer.py:{_loss_log_line()} (train_steps)"] -= len(done.phases)
    counter.sites = +counter.sites
    return counter, method


def _loss_log_line() -> int:
    """The line of ``bench/train/trainer.py`` where ``train_steps`` reads the running loss for its log."""
    source = (ROOT / "bench" / "train" / "trainer.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if "running.item()" in line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench perf syncs", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="all")
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    names = methods.names() if args.methods == "all" else args.methods.split(",")
    print(header(f"host reads of tensor values per training step, tiny preset, {args.steps} steps"))
    print("| method | reads / step | where (reads / step) |")
    print("|---|---:|---|")
    for name in names:
        c, _ = count(name, args.steps)
        where = "; ".join(f"{site}: {n / args.steps:g}" for site, n in c.sites.most_common())
        print(f"| {name} | {c.total / args.steps:g} | {where or '-'} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
