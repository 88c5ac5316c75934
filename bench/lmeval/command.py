"""``python -m bench lmeval``: score a run's checkpoint after task K with lm-eval tasks, offline.

    python -m bench lmeval --run results/runs/<run_id> --after-task 3 --tasks coin_textvqa,retention

prints lm-eval's results table and writes the results as JSON (default
``<out>/lmeval/<run_id>-after-task-KK.json`` next to ``<out>/runs/``). Tasks: the shipped folder
(``coin`` group, ``coin_<task>``, ``retention``, ``retention_copy``), ``--include`` folders, and lm-eval's
built-in tasks only with ``--builtin``. CoIN tasks read the run's own test split unless ``--data-root``
(or ``CMB_DATA_ROOT``) points at the real CoIN files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lm_eval.utils import handle_non_serializable

from bench.config import ConfigError, default_cache_dir
from bench.io.checkpoint import finished_tasks
from bench.lmeval.model import CMBLM
from bench.lmeval.evaluate import evaluate, table, task_manager
from bench.io.records import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench lmeval", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run directory <out>/runs/<run_id>/ (holds config.json, task-XX/)")
    p.add_argument("--after-task", type=int, help="stage index k (0-based); default: the last finished one")
    p.add_argument("--tasks", default="coin", help="comma-separated lm-eval task or group names (default: coin)")
    p.add_argument("--include", action="append", default=[], metavar="DIR", help="another lm-eval task folder")
    p.add_argument("--builtin", action="store_true", help="also index lm-eval's built-in tasks (their data must be local)")
    p.add_argument("--limit", type=int, help="first N documents of each task")
    p.add_argument("--batch-size", type=int, help="default: the run's eval batch size (the harness's batching)")
    p.add_argument("--max-gen-toks", type=int, help="default: the run's max_new_tokens (tasks may set their own)")
    p.add_argument("--no-template", action="store_true",
                   help="loglikelihood contexts as raw text instead of the backbone's conversation turn")
    p.add_argument("--data-root", help="real CoIN files for the coin tasks (default: the run's own data)")
    p.add_argument("--cache-dir", help="the stage-0 / coin-mini cache (default: CMB_CACHE or ~/.cache/continual-moe-bench)")
    p.add_argument("--log-samples", action="store_true", help="also write every document's response into the JSON")
    p.add_argument("--output", help="results JSON path")
    return p


def _check_tasks(manager, names: list[str]) -> None:
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        known = ", ".join(sorted(n for n in manager.all_tasks if not n.startswith("_")))
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}; available: {known}. Add a task folder "
                          "with --include DIR, or --builtin for lm-eval's own tasks.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for folder in args.include:
        if not Path(folder).is_dir():
            raise ConfigError(f"--include {folder!r} is not a directory of lm-eval task configs.")
    cache_dir = args.cache_dir or default_cache_dir()
    metadata: dict[str, Any] = {"run": str(run_dir), "cache_dir": cache_dir}
    if args.data_root:
        metadata["data_root"] = args.data_root
    manager = task_manager(args.include, builtin=args.builtin, metadata=metadata)
    _check_tasks(manager, names)
    done = finished_tasks(run_dir)
    after = args.after_task if args.after_task is not None else (done[-1] if done else 0)
    lm = CMBLM(run=str(run_dir), after_task=after, cache_dir=cache_dir, batch_size=args.batch_size,
               max_gen_toks=args.max_gen_toks, template=not args.no_template)
    results = evaluate(lm, names, manager=manager, limit=args.limit, log_samples=args.log_samples)
    print(table(results))
    out = Path(args.output) if args.output else \
        run_dir.parent.parent / "lmeval" / f"{run_dir.name}-after-task-{after:02d}.json"
    _write(out, {"run": str(run_dir), "after_task": after, "tasks": names, **_jsonable(results)})
    print(f"results: {out}")
    return 0


def _jsonable(results: dict[str, Any]) -> dict[str, Any]:
    keep = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples", "samples")
    return {k: results[k] for k in keep if k in results}


def _write(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=handle_non_serializable, ensure_ascii=False) + "\n")


if __name__ == "__main__":  # the package's import has set the offline environment
    raise SystemExit(main())
