"""``python -m bench tune``: every method gets the same number of trials over its declared search space,
scored on the validation protocol, never on a test record.

Equal tuning budget. A comparison in which one method was tuned by its authors and another ran at
defaults measures the tuning effort, not the method. Here every method gets ``--trials N`` runs:
trial 0 is the method's defaults, trials 1..N-1 are distinct configurations drawn uniformly, without
replacement, from the grid its hyper-parameter class declares (``methods.base.search_space``: the
learning-rate multiple ``lr_scale`` always, then the method's own knobs). The draw is seeded by
``--tune-seed`` and the method's name, so rerunning with the same seed repeats the same trials.

Validation protocol. Each trial is a full continual run on the same task stream, budget, seed and
stage-0 base as the test protocol, with ``RunConfig.validation``: every task's test split is replaced
by a held-out part of its training split (``tasks.validation``), which the trial does not train on;
the task's test split is never loaded. A trial's score is its validation Last (mean accuracy over the
tasks after the last one); the best trial wins, ties going to the earlier trial (defaults first).
The held-out records come from the test protocol's own data seed: on coin-mini another data seed
would also change the tokenizer corpus and with it the stage-0 base, and the configurations would
then be chosen for another model than the one they are run on.

Trials are run records under ``OUT/tune/runs/`` (finished trials are skipped, interrupted ones resumed,
as in a sweep). ``OUT/tune/chosen.json`` holds the test protocol the choices are for, the validation
budget, and per method every trial's settings and score and the choice. ``--val-steps-per-task`` and
``--val-limit`` shorten the trials (all methods alike) where the full budget does not fit.
``python -m bench sweep --tuned OUT/tune/chosen.json`` runs the chosen configurations on the test
protocol (a method whose defaults won reuses its default records), and the leaderboard lists the
records of the chosen configurations in its "Tuned with equal budget" section.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import methods
from bench.analysis.leaderboard import PER_RUN_KEYS
from bench.config import BUDGET_FLAGS, ConfigError, build_config, overrides_from_args
from bench.io.records import atomic_write_text, read_record
from bench.sweeps.sweep import PlannedRun, describe_plan, execute, index_plan, resolve_methods
from methods.base import search_space

CHOSEN_FILE = "chosen.json"


@dataclass
class Trial:
    """One trial of one method: its ``--set`` values (empty for the defaults) and its planned run."""

    method: str
    index: int
    settings: dict[str, str]
    run: PlannedRun


def trial_settings(method: str, trials: int, tune_seed: int) -> list[dict[str, str]]:
    """The method's ``trials`` configurations: the defaults, then distinct grid points other than the
    defaults, drawn without replacement (seed: ``tune_seed`` and the method name). Fewer when the grid
    has fewer points."""
    if trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials}.")
    hp_cls = methods.get(method).HParams
    defaults = hp_cls()
    space = search_space(hp_cls)
    names = sorted(space)
    grid = [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]
    others = [point for point in grid if any(getattr(defaults, k) != v for k, v in point.items())
              and _valid(dataclasses.replace(defaults, **point))]
    rng = random.Random(tune_seed * 1_000_003 + zlib.crc32(method.encode()))
    drawn = rng.sample(others, min(trials - 1, len(others)))
    # --set takes strings; only the values that differ from the defaults are set
    return [{}] + [{k: str(v) for k, v in point.items() if getattr(defaults, k) != v} for point in drawn]


def _valid(hp) -> bool:
    """Whether a grid point is a configuration the method accepts (knobs can constrain each other)."""
    try:
        hp.validate()
    except ValueError:
        return False
    return True


def validation_overrides(overrides: dict[str, Any], steps_per_task: int | None = None,
                         limit: int | None = None) -> dict[str, Any]:
    """The test protocol's budget turned into the validation protocol: trials go to ``OUT/tune``;
    ``steps_per_task`` / ``limit`` (held-out records scored per task) shorten it where given."""
    out = dict(overrides, validation=True, out=str(Path(overrides.get("out") or "results") / "tune"))
    if steps_per_task is not None:
        out["steps_per_task"] = steps_per_task
    if limit is not None:
        out["limit_test"] = limit
    return out


def protocol_config(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The test protocol's resolved config without what differs between its runs (method, ``--set``,
    seed): how the leaderboard finds the records of the chosen configurations."""
    cfg = build_config(preset, **overrides).to_dict()
    return {k: v for k, v in cfg.items() if k not in PER_RUN_KEYS}


def plan_tuning(method_names: list[str], trials: int, tune_seed: int, preset: str, seed: int,
                overrides: dict[str, Any], val_steps: int | None = None, val_limit: int | None = None) -> list[Trial]:
    """Every method's trials, each with its validation-protocol config and any record it already has."""
    val = validation_overrides(overrides, val_steps, val_limit)
    planned = []
    for method in method_names:
        for i, settings in enumerate(trial_settings(method, trials, tune_seed)):
            cfg = build_config(preset, method=method, seed=seed, method_set=dict(settings), **val)
            planned.append(Trial(method, i, settings, PlannedRun(method, seed, cfg)))
    index_plan([t.run for t in planned])
    return planned


def choose(planned: list[Trial], records: dict[int, Path]) -> dict[str, Any]:
    """Per method: every trial's settings and validation Last, and the chosen (best) trial."""
    chosen: dict[str, Any] = {}
    for method in dict.fromkeys(t.method for t in planned):
        rows = []
        for t in (t for t in planned if t.method == method):
            record = read_record(records[id(t)])
            if not record["config"].get("validation"):
                raise ConfigError(f"{records[id(t)]} is not a validation-protocol record; tuning never reads test scores.")
            rows.append({"trial": t.index, "set": t.settings, "validation_last": record["metrics"]["last"],
                         "record": records[id(t)].name})
        best = max(rows, key=lambda r: (r["validation_last"], -r["trial"]))
        chosen[method] = {"set": best["set"], "trial": best["trial"], "validation_last": best["validation_last"],
                          "trials": rows}
    return chosen


def tune(planned: list[Trial], out_dir: Path, protocol: dict[str, Any], *, runner: Callable[..., Path] | None = None,
         progress: bool = True) -> Path:
    """Run every trial without a record, choose per method, write ``out_dir/tune/chosen.json``: the
    test protocol the choices are for, the validation budget, and per method every trial and the choice."""
    written = iter(execute([t.run for t in planned], runner=runner, progress=progress))
    records = {id(t): t.run.existing or next(written) for t in planned}
    val = planned[0].run.config if planned else None
    summary = {"protocol": protocol,
               "validation": {"steps_per_task": val.steps_per_task, "limit": val.limit_test} if val else {},
               "trials_per_method": max((t.index + 1 for t in planned), default=0),
               "methods": choose(planned, records)}
    path = Path(out_dir) / "tune" / CHOSEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return path


def add_arguments(tu: argparse.ArgumentParser) -> None:
    """The ``tune`` sub-command's flags (``bench.__main__`` registers the sub-command)."""
    tu.add_argument("--methods", default="all", help="'all' or comma-separated method names")
    tu.add_argument("--trials", type=int, default=4, help="trials per method (trial 0 = the defaults)")
    tu.add_argument("--tune-seed", type=int, default=0, help="seeds which grid points are drawn")
    tu.add_argument("--seed", type=int, default=0, help="the run seed of every trial")
    tu.add_argument("--val-steps-per-task", type=int, help="a shorter training budget per task for the trials")
    tu.add_argument("--val-limit", type=int, help="score each trial on the first N held-out records per task")
    tu.add_argument("--dry-run", action="store_true", help="list the trials and what would be skipped")
    for flag, kwargs in BUDGET_FLAGS:
        tu.add_argument(flag, **kwargs)
    tu.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    planned = plan_tuning(resolve_methods(args.methods), args.trials, args.tune_seed, args.preset, args.seed,
                          overrides, args.val_steps_per_task, args.val_limit)
    for t in planned:
        print(f"{t.method} trial {t.index}: {t.settings or 'defaults'}", flush=True)
    print(describe_plan([t.run for t in planned]), flush=True)
    if args.dry_run:
        return 0
    path = tune(planned, Path(args.out), protocol_config(args.preset, overrides))
    for method, c in json.loads(path.read_text())["methods"].items():
        print(f"{method}: trial {c['trial']} {c['set'] or 'defaults'} (validation Last {c['validation_last']:.2f})")
    print(f"wrote {path}; run the chosen configurations on the test protocol: python -m bench sweep --tuned {path}")
    return 0
