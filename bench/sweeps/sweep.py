"""``python -m bench sweep``: every (method, seed) of one budget, sequentially in one process, or one
submitit job per run (``--launcher local|slurm``, bench/sweeps/jobs.py), or one part of it (``--shard K/N``).

Each run is exactly a standalone ``python -m bench run``: ``bench.run.protocol.run`` builds a fresh base
model from the stage-0 cache for every run (methods mutate the model they are attached to, so nothing
is carried from one run to the next), and seeds every RNG itself. What one process saves is the
imports and the stage-0 / coin-mini caches being warm after the first run.

A run is skipped when a record under ``OUT/runs/*.json`` (top level only: sub-folders belong to run
directories with checkpoints) has the same resolved config — ``RunConfig.to_dict()``, which holds the
method, its ``--set`` values, the seed and the whole budget, and leaves out the machine-local
``cache_dir`` and ``out``. A run that has no record but an interrupted run directory
``OUT/runs/<run_id>/`` with the same ``config.json`` and at least one finished task is resumed from it
(``bench.run.protocol.run(..., resume=...)``: its record equals an uninterrupted run's). After the sweep
the leaderboard is regenerated from ``OUT/runs/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.io.checkpoint import config_key, existing_records, resumable_runs
from bench.config import ConfigError, RunConfig, build_config

# The `run` flags a sweep shares (everything but --method, --seed, --set and the lm-eval tracking
# flags, which are per run); `python -m bench run` registers these same definitions.
BUDGET_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--tasks", {"default": "coin", "help": "a suite name or comma-separated task names"}),
    ("--preset", {"default": "tiny"}),
    ("--steps-per-task", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--grad-accum", {"type": int}),
    ("--lr", {"type": float}),
    ("--data-seed", {"type": int}),
    ("--task-order-seed", {"type": int}),
    ("--data-root", {}),
    ("--instructions", {"choices": ["Original", "Diverse", "10Type"]}),
    ("--limit-train", {"type": int}),
    ("--limit-test", {"type": int}),
    ("--model", {"help": "a local llava-hf checkpoint folder (default: the tiny preset backbone)"}),
    ("--mixed-precision", {"choices": ["auto", "no", "bf16", "fp16"]}),
    ("--train-projector", {"action": "store_true", "default": None,
                           "help": "also train the vision-language projector in every task (CoIN's LoRA recipe option)"}),
    ("--compile", {"action": "store_true", "default": None,
                   "help": "train through torch.compile (off by default; meant for GPUs, needs a C++ compiler on CPU)"}),
    ("--gradient-checkpointing", {"action": "store_true", "default": None,
                                  "help": "recompute decoder activations in the backward pass (less memory, ~30% more compute)"}),
    ("--out", {"default": "results", "help": "results folder (records go to OUT/runs/)"}),
)


@dataclass
class PlannedRun:
    """One (method, seed) of the sweep; ``existing`` is the record that makes it a skip, ``resume`` an
    interrupted run directory of the same config to continue."""

    method: str
    seed: int
    config: RunConfig
    existing: Path | None = None
    resume: Path | None = None


def resolve_methods(spec: str) -> list[str]:
    """``all`` → every registered method (sorted); otherwise a comma list, each name checked (an
    unknown name raises MethodError listing the valid ones). Order kept, duplicates dropped."""
    import methods

    if spec.strip() == "all":
        return methods.names()
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise ConfigError(f"--methods expects 'all' or a comma-separated list of methods, got {spec!r}.")
    for name in names:
        methods.get(name)
    return names


def parse_seeds(spec: str) -> list[int]:
    """``0,1,2`` → [0, 1, 2] (order kept, duplicates dropped)."""
    try:
        seeds = list(dict.fromkeys(int(s) for s in spec.split(",") if s.strip()))
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers such as 0,1,2, got {spec!r}.") from None
    if not seeds:
        raise ConfigError(f"--seeds expects comma-separated integers such as 0,1,2, got {spec!r}.")
    return seeds


def plan(method_names: list[str], seeds: list[int], preset: str, overrides: dict[str, Any],
         method_sets: dict[str, dict[str, str]] | None = None) -> list[PlannedRun]:
    """Every (method, seed) in method-major order, with its resolved config (``method_sets``: a
    method's ``--set`` values, e.g. the configurations ``bench tune`` chose), the record it would
    duplicate (if any) under ``<out>/runs`` and otherwise the interrupted run it would resume (if any)."""
    planned = []
    for method in method_names:
        for seed in seeds:
            settings = dict((method_sets or {}).get(method, {}))
            cfg = build_config(preset, method=method, seed=seed, method_set=settings, **overrides)
            planned.append(PlannedRun(method, seed, cfg))
    index_plan(planned)
    return planned


def index_plan(planned: list[PlannedRun]) -> None:
    """Fill in each planned run's existing record (same config key) or interrupted run to resume."""
    if not planned:
        return
    runs_dir = Path(planned[0].config.out) / "runs"
    index, interrupted = existing_records(runs_dir), resumable_runs(runs_dir)
    for p in planned:
        key = config_key(p.config.to_dict())
        p.existing = index.get(key)
        p.resume = None if p.existing else interrupted.get(key)


def tuned_sets(path: str | Path) -> dict[str, dict[str, str]]:
    """method -> the ``--set`` values ``bench tune`` chose (its ``chosen.json``)."""
    try:
        chosen = json.loads(Path(path).read_text())
        return {method: {k: str(v) for k, v in entry["set"].items()} for method, entry in chosen.items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise ConfigError(f"--tuned {path}: not a chosen.json written by python -m bench tune ({e}).") from None


def describe_plan(planned: list[PlannedRun]) -> str:
    """The dry-run listing: one line per run, ``run``, ``resume`` (with the run directory) or ``skip``
    (with the record that exists)."""
    lines = []
    for p in planned:
        if p.existing:
            lines.append(f"skip  {p.method} seed {p.seed}  (record {p.existing.name})")
        elif p.resume:
            lines.append(f"resume {p.method} seed {p.seed}  (run directory {p.resume.name})")
        else:
            lines.append(f"run   {p.method} seed {p.seed}")
    todo = sum(p.existing is None for p in planned)
    lines.append(f"{todo} to run, {len(planned) - todo} to skip")
    return "\n".join(lines)


def execute(planned: list[PlannedRun], *, runner: Callable[..., Path] | None = None,
            progress: bool = True) -> list[Path]:
    """Run every planned run without a record, one after the other, under one progress bar (runs done
    / total, current method and seed, ETA). Returns the new record paths in order."""
    from tqdm.auto import tqdm

    if runner is None:
        from bench.run.protocol import run as runner
    todo = [p for p in planned if p.existing is None]
    written: list[Path] = []
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress or not todo, position=0,
               dynamic_ncols=True, file=sys.stderr)
    for p in todo:
        bar.set_postfix_str(f"{p.method} seed {p.seed}")
        path = runner(p.config, resume=p.resume) if p.resume else runner(p.config)
        written.append(path)
        bar.update(1)
    bar.close()
    return written


# --- command line ----------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``sweep`` on the CLI's sub-parsers."""
    sw = sub.add_parser("sweep", help="run several methods x seeds (skipping existing records), then the leaderboard")
    sw.add_argument("--methods", default=None, help="'all' (default) or comma-separated method names")
    sw.add_argument("--tuned", metavar="CHOSEN_JSON",
                    help="run the configurations python -m bench tune chose (default methods: those it tuned)")
    sw.add_argument("--seeds", default="0", help="comma-separated run seeds, e.g. 0,1,2")
    for flag, kwargs in BUDGET_FLAGS:
        sw.add_argument(flag, **kwargs)
    sw.add_argument("--dry-run", action="store_true", help="list what would run and what would be skipped")
    sw.add_argument("--no-plots", action="store_true", help="regenerate the leaderboard without the PNGs")
    sw.add_argument("--shard", metavar="K/N", help="run only the K-th of N interleaved parts of the sweep (any scheduler)")
    cl = sw.add_argument_group("cluster (submitit; bench/sweeps/jobs.py)")
    cl.add_argument("--launcher", choices=["none", "local", "slurm"], default="none",
                    help="none: every run in this process; local: one submitit job at a time on this machine; "
                         "slurm: one SLURM job per run (a job array), requeued and resumed after preemption")
    cl.add_argument("--gpus-per-run", type=int, default=None, help="GPUs (processes) per run; default 1 on slurm, 0 local")
    cl.add_argument("--accelerate-config", metavar="FILE",
                    help="accelerate config each job launches its run with (e.g. bench/configs/fsdp-8gpu.yaml)")
    cl.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per job in minutes")
    cl.add_argument("--partition", help="SLURM partition")
    cl.add_argument("--account", help="SLURM account")
    cl.add_argument("--qos", help="SLURM QOS")
    cl.add_argument("--cpus-per-run", type=int, help="CPUs per job")
    cl.add_argument("--mem-gb", type=int, help="memory per job in GB")
    cl.add_argument("--array-parallelism", type=int, help="at most this many of the array's jobs at once")
    cl.add_argument("--log-dir", help="submitit's job files and logs (default OUT/submitit)")
    cl.add_argument("--wait", action="store_true", help="slurm: wait for every job, then regenerate the leaderboard")
    sw.set_defaults(func=command)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The budget flags as ``build_config`` keyword arguments (None = the preset's value)."""
    return {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
            for flag, _ in BUDGET_FLAGS if flag != "--preset"}


def run_sweep(planned: list[PlannedRun], out_dir: Path, *, plots: bool = True, progress: bool = True,
              runner: Callable[..., Path] | None = None) -> tuple[list[Path], dict[str, Any]]:
    """Execute the plan, then regenerate the leaderboard from ``out_dir/runs``; returns the new record
    paths and ``bench.analysis.leaderboard.generate``'s result."""
    from bench.analysis.leaderboard import generate

    written = execute(planned, runner=runner, progress=progress)
    return written, generate(Path(out_dir) / "runs", Path(out_dir), plots=plots)


def command(args: argparse.Namespace) -> int:
    from bench.sweeps.jobs import parse_shard, shard, submit  # jobs imports the run loop (torch, accelerate)

    part = parse_shard(args.shard)
    sets = tuned_sets(args.tuned) if args.tuned else None
    names = resolve_methods(args.methods or ("all" if sets is None else ",".join(sets)))
    planned = shard(plan(names, parse_seeds(args.seeds), args.preset, overrides_from_args(args), sets), part)
    if part:
        print(f"shard {part[0]}/{part[1]}: {len(planned)} run(s) of the sweep", flush=True)
    print(describe_plan(planned), flush=True)
    if args.dry_run:
        return 0
    out = Path(args.out)
    merge = ("python -m bench leaderboard" if out == Path("results") else
             f"python -m bench leaderboard --runs {out / 'runs'} --out {out}")
    start = time.perf_counter()
    if args.launcher == "none":
        if part:  # other shards may still be running: the leaderboard is rendered once they are all done
            written = execute(planned)
            print(f"sweep: {len(written)} run(s) in {time.perf_counter() - start:.1f} s; records in {out / 'runs'}; "
                  f"when every shard is done: {merge}")
            return 0
        written, board = run_sweep(planned, out, plots=not args.no_plots)
    else:
        gpus = args.gpus_per_run if args.gpus_per_run is not None else (1 if args.launcher == "slurm" else 0)
        folder = Path(args.log_dir) if args.log_dir else out / "submitit"
        jobs, written = submit(planned, args.launcher, folder, processes=max(1, gpus),
                               accelerate_config=args.accelerate_config, wait=args.wait or args.launcher == "local",
                               gpus_per_run=gpus, timeout_min=args.timeout_min, partition=args.partition,
                               cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb,
                               array_parallelism=args.array_parallelism, account=args.account, qos=args.qos)
        if part or (args.launcher == "slurm" and not args.wait):
            print(f"sweep: {len(jobs)} job(s) submitted (submitit files in {folder}); records land in {out / 'runs'}; "
                  f"when every job is done: {merge}")
            return 0
        from bench.analysis.leaderboard import generate

        board = generate(out / "runs", out, plots=not args.no_plots)
    print(f"sweep: {len(written)} run(s) in {time.perf_counter() - start:.1f} s")
    print(f"leaderboard: {board['records']} record(s) -> {board['markdown']}, {board['csv']}")
    return 0
