"""``python -m bench check``: the CI regression check.

For every registered method (or ``--methods``) it reruns one small fixed configuration — the ``smoke``
preset on ``CHECK_TASKS``, records written to a temporary folder, never to ``results/runs`` — and
compares the run with ``results/baselines/<method>.json``:

* the resolved config must be the one the baseline was made with (otherwise the baseline is stale);
* parameter counts after every stage (total, trained, evolved, activated per token) exactly;
* every cell of the accuracy matrix within ``TOLERANCE`` accuracy points (absolute);
* the training loss curve of every stage (mean loss per logging interval) within ``LOSS_RTOL``
  (relative). At the smoke budget several methods still answer few test records right, so accuracy
  alone would let a change that alters training but not yet the answers through; the loss cannot.
  Cross-machine float noise over a 20-step stage moves it by about 1e-5 relative; 1e-3 is far above
  that and far below what a changed method, trainer or data generator does.

Why ``TOLERANCE = 2.0`` points: on CPU a run is bit-for-bit deterministic (seeded RNGs, fixed data,
private data-loader generators; the check pins torch to ``CHECK_THREADS`` intra-op threads so the
reduction order does not depend on the core count), so on the machine that wrote the baselines the
expected difference is exactly 0. The tolerance exists only for cross-machine float noise (another CPU
takes other SIMD kernels, a patch release of torch reorders a sum), which can flip a greedy argmax
that sits on a near tie. The smoke preset evaluates ``mini_test = 50`` records per task, so one answer
is 2 points: the tolerance admits one flipped answer per cell and no more, while a real behaviour
change (a broken method, a changed trainer or data generator) moves many answers in many cells.

It also verifies that ``results/LEADERBOARD.md`` and ``results/leaderboard.csv`` are byte-identical to
what ``bench.analysis.leaderboard`` regenerates from ``results/runs/``, and gates learnability on those records
(``bench.analysis.learnability``): every default configuration (every record run
without ``--set``; oracle rows included) of a checked method must score above chance +
``LEARNABILITY_MARGIN`` points on every task right after training on it (the accuracy-matrix diagonal,
mean over seeds; joint training, which has no diagonal: its Last row).
``--update`` rewrites the baselines deliberately (one command; rerun it whenever the trainer, the data
generators or a method change on purpose). Exit code 1 on any failure, with a per-method PASS/FAIL table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.config import RunConfig, build_config
from bench.run.protocol import run
from bench.io.records import RecordError, atomic_write_text, read_record
from bench.analysis.leaderboard import build_groups, generate, load_records
from bench.analysis.learnability import LEARNABILITY_MARGIN, gate
from bench.sweeps.sweep import resolve_methods

CHECK_PRESET = "smoke"
CHECK_TASKS = "imagenet,gqa,vqav2"  # three tasks the tiny backbone learns above chance within the smoke budget
# Their answers are at most 2 tokens of the coin-mini tokenizer (grounding's boxes, up to 17, are not among
# them), so 10 new tokens leave every correct answer intact while cutting the decoding of degenerate output.
CHECK_OVERRIDES = {"tasks": CHECK_TASKS, "max_new_tokens": 10}
TOLERANCE = 2.0  # accuracy points per matrix cell; see the module docstring
LOSS_RTOL = 1e-3  # relative, per logged training-loss point; see the module docstring
CHECK_THREADS = 1
BASELINE_DIR = Path("results/baselines")
PARAMETER_KEYS = ("after", "total", "trained", "evolved", "activated_per_token")


@dataclass
class MethodResult:
    """The outcome for one method: PASS, FAIL or UPDATED, with the reasons for a failure."""

    method: str
    status: str
    problems: list[str] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0


def check_config(method: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The fixed configuration the check runs for ``method`` (tests pass smaller ``overrides``)."""
    values = {**CHECK_OVERRIDES, **(overrides or {})}
    return build_config(CHECK_PRESET, method=method, **values)


def make_baseline(record: dict[str, Any]) -> dict[str, Any]:
    """What a baseline file keeps from a run record: only deterministic content (no run id, times,
    commit), so ``--update`` twice on one machine writes identical files."""
    return {
        "generated_by": "python -m bench check --update",
        "method": record["method"],
        "tolerance_points": TOLERANCE,
        "torch_threads": CHECK_THREADS,
        "config": json.loads(json.dumps(record["config"])),
        "tasks": record["tasks"],
        "matrix_rows": record["matrix_rows"],
        "accuracy_matrix": record["accuracy_matrix"],
        "parameters": [{k: p.get(k) for k in PARAMETER_KEYS} for p in record["parameters"]],
        "metrics": record["metrics"],
        "loss_curves": [t["loss_curve"] for t in record["training"]],
        "backbone_config_hash": record["backbone"]["config_hash"],
        "stage0_key": record["backbone"]["stage0"].get("key"),
        "versions": {k: v for k, v in record["versions"].items() if k in ("python", "torch", "transformers")},
    }


def compare(baseline: dict[str, Any], current: dict[str, Any], tolerance: float = TOLERANCE) -> list[str]:
    """Every way ``current`` (a ``make_baseline`` of a fresh run) differs from ``baseline`` beyond what
    is allowed; empty when the check passes."""
    # a config field added after the baseline was written counts as its default (as in bench.sweeps.sweep)
    defaults = RunConfig().to_dict()
    made_for, now = {**defaults, **baseline["config"]}, {**defaults, **current["config"]}
    if made_for != now:
        keys = sorted(k for k in set(made_for) | set(now) if made_for.get(k) != now.get(k))
        return [f"the baseline was made for another configuration (differs in: {', '.join(keys)}); "
                "the smoke preset or the config fields changed: rerun `python -m bench check --update`"]
    if (baseline["tasks"], baseline["matrix_rows"]) != (current["tasks"], current["matrix_rows"]):
        return [f"task order / matrix rows {current['matrix_rows']} differ from the baseline's {baseline['matrix_rows']}"]
    problems = []
    if baseline["parameters"] != current["parameters"]:
        for old, new in zip(baseline["parameters"], current["parameters"]):
            diff = {k: (old.get(k), new.get(k)) for k in PARAMETER_KEYS if old.get(k) != new.get(k)}
            if diff:
                problems.append(f"parameters after {new.get('after')}: " +
                                ", ".join(f"{k} {b} (baseline {a})" for k, (a, b) in diff.items()))
        if len(baseline["parameters"]) != len(current["parameters"]):
            problems.append(f"{len(current['parameters'])} parameter entries, baseline has {len(baseline['parameters'])}")
    for i, (old_row, new_row) in enumerate(zip(baseline["accuracy_matrix"], current["accuracy_matrix"])):
        for j, (a, b) in enumerate(zip(old_row, new_row)):
            if abs(a - b) > tolerance + 1e-9:
                problems.append(f"accuracy after {current['matrix_rows'][i]} on {current['tasks'][j]}: {b:.1f} "
                                f"(baseline {a:.1f}, |diff| {abs(a - b):.1f} > {tolerance:g})")
    for stage, old_curve, new_curve in zip(current["matrix_rows"][1:], baseline.get("loss_curves", []),
                                           current["loss_curves"]):
        for (step, a), (_, b) in zip(old_curve, new_curve):
            if abs(a - b) > LOSS_RTOL * abs(a):
                problems.append(f"training loss of {stage} at step {step}: {b:.5f} (baseline {a:.5f}, "
                                f"relative diff {abs(a - b) / abs(a):.1e} > {LOSS_RTOL:g})")
                break
    if problems and baseline.get("stage0_key") != current.get("stage0_key"):
        problems.append("note: the stage-0 weights / data changed since the baseline (stage-0 key "
                        f"{current.get('stage0_key')} vs {baseline.get('stage0_key')})")
    return problems


def max_accuracy_diff(baseline: dict[str, Any], current: dict[str, Any]) -> float:
    return max((abs(a - b) for ra, rb in zip(baseline["accuracy_matrix"], current["accuracy_matrix"])
                for a, b in zip(ra, rb)), default=0.0)


def check_method(method: str, baseline_dir: Path, *, update: bool, overrides: dict[str, Any] | None,
                 runner: Callable[[RunConfig], Path], tolerance: float = TOLERANCE) -> MethodResult:
    """Run the check configuration for one method; compare with (or, with ``update``, write) its baseline."""
    start = time.perf_counter()
    path = Path(baseline_dir) / f"{method}.json"
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        cfg = check_config(method, {**(overrides or {}), "out": tmp})
        try:
            current = make_baseline(read_record(runner(cfg)))
        except Exception as e:  # a crashing method is a failed check, the others still run
            tb = traceback.extract_tb(e.__traceback__)[-1]
            return MethodResult(method, "FAIL", [f"the run raised {type(e).__name__}: {e} "
                                                 f"({tb.filename}:{tb.lineno})"],
                                seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if update:
        atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True) + "\n")
        return MethodResult(method, "UPDATED", detail=f"wrote {path}", seconds=seconds)
    if not path.is_file():
        return MethodResult(method, "FAIL", [f"no baseline {path}; create it with `python -m bench check --update`"],
                            seconds=seconds)
    baseline = json.loads(path.read_text())
    problems = compare(baseline, current, tolerance)
    if problems:
        return MethodResult(method, "FAIL", problems, seconds=seconds)
    detail = (f"max |acc diff| {max_accuracy_diff(baseline, current):.1f} <= {tolerance:g}; "
              f"parameters equal over {len(current['parameters'])} stage(s)")
    return MethodResult(method, "PASS", detail=detail, seconds=seconds)


def orphan_baselines(baseline_dir: Path, registered: list[str]) -> list[MethodResult]:
    """Baseline files of methods that are no longer registered (a renamed or deleted method)."""
    return [MethodResult(p.stem, "FAIL", [f"{p} belongs to no registered method; delete it or rerun "
                                          "`python -m bench check --update`"])
            for p in sorted(Path(baseline_dir).glob("*.json")) if p.stem not in registered]


def check_leaderboard(runs_dir: Path, results_dir: Path) -> MethodResult:
    """LEADERBOARD.md and leaderboard.csv must be byte-identical to a regeneration from the records."""
    results_dir = Path(results_dir)
    names = ("LEADERBOARD.md", "leaderboard.csv")
    with tempfile.TemporaryDirectory(prefix="bench-check-lb-") as tmp:
        try:
            generate(Path(runs_dir), Path(tmp), plots=False)
        except RecordError as e:
            if not any(Path(runs_dir).glob("*.json")) and not any((results_dir / n).exists() for n in names):
                return MethodResult("leaderboard", "PASS", detail=f"no records under {runs_dir} and no leaderboard")
            return MethodResult("leaderboard", "FAIL", [f"cannot regenerate the leaderboard: {e}"])
        stale = [str(results_dir / n) for n in names
                 if not (results_dir / n).is_file() or (results_dir / n).read_bytes() != (Path(tmp) / n).read_bytes()]
    if stale:
        return MethodResult("leaderboard", "FAIL", [f"{', '.join(stale)} not up to date with {runs_dir}; "
                                                    "run `python -m bench leaderboard` and commit the result"])
    return MethodResult("leaderboard", "PASS", detail=f"{' and '.join(names)} match {runs_dir}")


def check_learnability(runs_dir: Path, method_names: list[str] | None = None) -> MethodResult:
    """The learnability gate on the records under ``runs_dir`` for ``method_names`` (default: every
    registered method); see :func:`bench.analysis.learnability.gate`."""
    try:
        loaded = load_records(Path(runs_dir))
    except RecordError as e:
        if not any(Path(runs_dir).glob("*.json")):
            return MethodResult("learnability", "PASS", detail=f"no records under {runs_dir}")
        return MethodResult("learnability", "FAIL", [f"cannot read the records: {e}"])
    res = gate(build_groups([r for _p, r in loaded]), method_names)
    notes = "; ".join(res.notes)
    if res.problems:
        return MethodResult("learnability", "FAIL", res.problems + ([f"note: {notes}"] if notes else []))
    detail = (f"{res.judged} default configuration(s) above chance + {LEARNABILITY_MARGIN:g} on every task right "
              f"after training on it" + (f"; {notes}" if notes else ""))
    return MethodResult("learnability", "PASS", detail=detail)


# "fail": a default method that does not learn a task fails the check; "report": it is listed only.
# "report" while the committed records still hold default methods below the gate (see LEADERBOARD.md):
# a method that cannot learn a task at its defaults is a defect to fix, and the default becomes "fail"
# once every default method learns every task.
LEARNABILITY_MODE = "report"


def run_check(method_names: list[str], *, baseline_dir: Path = BASELINE_DIR, update: bool = False,
              runs_dir: Path | None = Path("results/runs"), results_dir: Path = Path("results"),
              overrides: dict[str, Any] | None = None, runner: Callable[[RunConfig], Path] | None = None,
              all_methods: bool = False, tolerance: float = TOLERANCE,
              on_result: Callable[[MethodResult], None] = lambda r: None) -> list[MethodResult]:
    """Check (or update) every method in order, then the leaderboard and the learnability of these methods'
    default configurations in the records (both skipped when ``runs_dir`` is None)."""
    runner = runner or run
    results = []
    for method in method_names:
        results.append(check_method(method, baseline_dir, update=update, overrides=overrides, runner=runner,
                                    tolerance=tolerance))
        on_result(results[-1])
    if all_methods and not update:
        results += orphan_baselines(baseline_dir, method_names)
    if runs_dir is not None:
        results.append(check_leaderboard(runs_dir, results_dir))
        results.append(check_learnability(runs_dir, method_names))
    return results


def format_table(results: list[MethodResult]) -> str:
    """The per-method PASS/FAIL table, failures with one indented line per problem."""
    width = max([len(r.method) for r in results] + [6])
    lines = [f"{'method':{width}s}  result   time s  detail"]
    for r in results:
        secs = f"{r.seconds:6.1f}" if r.seconds else f"{'':6s}"
        first = r.detail if r.status != "FAIL" else r.problems[0]
        lines.append(f"{r.method:{width}s}  {r.status:7s}  {secs}  {first}")
        lines += [f"{'':{width}s}  {'':7s}  {'':6s}  {p}" for p in (r.problems[1:] if r.status == "FAIL" else [])]
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------

def add_arguments(ck: argparse.ArgumentParser) -> None:
    """The ``check`` sub-command's flags (``bench.__main__`` registers the sub-command)."""
    ck.add_argument("--methods", default="all", help="'all' or comma-separated method names")
    ck.add_argument("--update", action="store_true", help="rewrite the baselines from fresh runs (deliberate)")
    ck.add_argument("--baselines", default=str(BASELINE_DIR), help="folder of <method>.json baselines")
    ck.add_argument("--runs", default="results/runs", help="run records the leaderboard is checked against")
    ck.add_argument("--results", default="results", help="folder holding LEADERBOARD.md and leaderboard.csv")
    ck.add_argument("--learnability", choices=("fail", "report"), default=LEARNABILITY_MODE,
                    help="whether a default method at or below chance + 5 on a committed diagonal fails the "
                         f"check or is only reported (default: {LEARNABILITY_MODE})")
    ck.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    torch.set_num_threads(CHECK_THREADS)  # part of what makes the numbers reproducible across machines
    names = resolve_methods(args.methods)
    start = time.perf_counter()
    results = run_check(names, baseline_dir=Path(args.baselines), update=args.update, runs_dir=Path(args.runs),
                        results_dir=Path(args.results), all_methods=args.methods.strip() == "all",
                        on_result=lambda r: print(f"check: {r.method} {r.status} ({r.seconds:.1f} s)", flush=True))
    print()
    print(format_table(results))
    failed = [r.method for r in results if r.status == "FAIL"]
    total = time.perf_counter() - start
    if args.learnability == "report" and "learnability" in failed:
        failed.remove("learnability")
        print("\nlearnability: reported, not fatal (--learnability report): default methods above are at or "
              "below chance + 5 right after training on a task; `--learnability fail` makes this fail the check.")
    if failed:
        print(f"\nbench check FAILED ({len(failed)} of {len(results)}: {', '.join(failed)}) in {total:.1f} s. "
              f"Accuracy tolerance {TOLERANCE:g} points per cell, parameter counts exact. If the change is "
              "intended, regenerate the baselines with `python -m bench check --update` and/or the leaderboard "
              "with `python -m bench leaderboard`, and commit them.")
        if "learnability" in failed:
            print("A learnability failure is no regression against a baseline: a method's committed records do "
                  "not learn a task above chance (see LEADERBOARD.md, 'Right after training (diagonal) vs "
                  "chance'); fix the method or the task, then regenerate the records.")
        return 1
    print(f"\nbench check passed ({len(results)} checks, {total:.1f} s)")
    return 0
