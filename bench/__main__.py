"""Command line: ``python -m bench {run,list,leaderboard,sweep,check,base,score,export,lmeval,perf}``.

Every user error (unknown name, bad value, malformed data, unwritable folder) is printed as one
paragraph on stderr with exit code 2; nothing is written in that case.
"""
from __future__ import annotations

import argparse
import sys


def _user_errors() -> tuple[type[BaseException], ...]:
    from bench.config import ConfigError
    from bench.io.records import RecordError
    from methods import MethodError
    from tasks import TaskError

    return ConfigError, MethodError, TaskError, RecordError


def _parse_set(pairs: list[str]) -> dict[str, str]:
    from bench.config import ConfigError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}.")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _resume(args: argparse.Namespace) -> int:
    """``run --resume RUN_DIR``: the run's own config; flags given explicitly must agree with it."""
    from bench.io.checkpoint import resume_config
    from bench.run.protocol import run

    defaults = vars(build_parser().parse_args(["run"]))
    renamed = {"set": "method_set"}
    given = {renamed.get(k, k): (_parse_set(v) if k == "set" else v) for k, v in vars(args).items()
             if k not in ("func", "resume", "command") and v != defaults.get(k)}
    cfg = resume_config(args.resume, given)
    path = run(cfg, resume=args.resume)
    print(f"record: {path}")
    print(plots_hint(cfg.out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import build_config
    from bench.run.protocol import run

    if args.resume:
        return _resume(args)
    from bench.sweeps.sweep import overrides_from_args

    cfg = build_config(args.preset, method=args.method, seed=args.seed, method_set=_parse_set(args.set),
                       track=args.track, lmeval_include=args.lmeval_include, track_limit=args.track_limit,
                       **overrides_from_args(args))
    path = run(cfg)
    print(f"record: {path}")
    print(plots_hint(cfg.out))
    return 0


def plots_hint(out: str) -> str:
    """Where the plots come from: a run writes none; the leaderboard renders them from every record."""
    from pathlib import Path

    if Path(out) == Path("results"):
        return "plots: python -m bench leaderboard writes results/LEADERBOARD.md and results/plots/ from every record"
    return (f"plots: python -m bench leaderboard --runs {Path(out) / 'runs'} --out {out} writes "
            f"{Path(out) / 'LEADERBOARD.md'} and {Path(out) / 'plots'}/ from every record there")


def cmd_list(args: argparse.Namespace) -> int:
    import dataclasses

    import methods
    import tasks
    from bench.config import PRESETS

    print("methods:")
    for name in methods.names():
        cls = methods.get(name)
        hp = ", ".join(f"{f.name}={getattr(cls.HParams(), f.name)!r}" for f in dataclasses.fields(cls.HParams))
        doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"  {name:18s} {doc}\n  {'':18s} hparams: {hp or '-'}")
    print("tasks:")
    for name in tasks.names():
        t = tasks.get(name)
        print(f"  {name:18s} CoIN folder {t.coin_dir}/ ({t.test_file}); suffix: {t.instruction.splitlines()[-1]!r}")
    print("suites:")
    for name, members in tasks.SUITES.items():
        print(f"  {name:18s} {', '.join(members)}")
    print(f"presets: {', '.join(PRESETS)}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.analysis.leaderboard import generate

    res = generate(Path(args.runs), Path(args.out), plots=not args.no_plots)
    print(f"{res['records']} record(s) in {len(res['groups'])} group(s)")
    for gkey, rows in res["groups"]:
        print(f"  {' / '.join(str(k) for k in gkey)}: {', '.join(row.label for row in rows)}")
    print(f"wrote {res['markdown']}, {res['csv']} and {len(res['plots'])} plot(s) under {Path(args.out) / 'plots'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="continual-moe-bench: continual MoE methods on CoIN")
    sub = p.add_subparsers(dest="command", required=True)

    from bench.sweeps.sweep import BUDGET_FLAGS

    r = sub.add_parser("run", help="train one method through a task sequence and write a run record")
    r.add_argument("--method", default="seq-ft")
    r.add_argument("--seed", type=int)
    for flag, kwargs in BUDGET_FLAGS:  # the flags `sweep` shares, defined once
        r.add_argument(flag, **kwargs)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method hyper-parameter")
    r.add_argument("--track", action="append", default=[], metavar="lmeval:TASK",
                   help="an lm-eval task or group evaluated after row 0 and every task (record: tracked)")
    r.add_argument("--lmeval-include", action="append", default=[], metavar="DIR",
                   help="another lm-eval task folder for --track (the shipped bench/lmeval/tasks is always there)")
    r.add_argument("--track-limit", type=int, help="first N documents of each tracked task")
    r.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last finished task (OUT/runs/<run_id>/)")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list methods, tasks, suites and presets")
    ls.set_defaults(func=cmd_list)

    lb = sub.add_parser("leaderboard", help="render results/runs/*.json into LEADERBOARD.md, leaderboard.csv and plots")
    lb.add_argument("--runs", default="results/runs", help="folder of run records")
    lb.add_argument("--out", default="results", help="where LEADERBOARD.md, leaderboard.csv and plots/ go")
    lb.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    lb.set_defaults(func=cmd_leaderboard)

    from bench.model import base_cmd

    from bench.analysis import check

    from bench.sweeps import sweep, tune

    sweep.add_parser(sub)
    tune.add_parser(sub)
    check.add_parser(sub)
    base_cmd.add_parser(sub)

    sc = sub.add_parser("score", help="score a CoIN prediction JSONL as the official scripts do", add_help=False)
    sc.set_defaults(func=lambda a: __import__("tasks.score_cli", fromlist=["main"]).main(a.rest))
    ex = sub.add_parser("export", help="write coin-mini in the real CoIN file layout", add_help=False)
    ex.set_defaults(func=lambda a: __import__("tasks.export", fromlist=["main"]).main(a.rest))
    lm = sub.add_parser("lmeval", help="score a run's checkpoint after task K with lm-eval tasks", add_help=False)
    lm.set_defaults(func=lambda a: __import__("bench.lmeval.command", fromlist=["main"]).main(a.rest))
    pf = sub.add_parser("perf", help="performance benchmarks: trainer, eval, steps (bench/perf/)", add_help=False)
    pf.set_defaults(func=lambda a: __import__("bench.perf", fromlist=["main"]).main(a.rest))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # score/export/lmeval own their flags: hand everything after the sub-command to them unparsed.
    if argv and argv[0] in ("score", "export", "lmeval", "perf"):
        args = argparse.Namespace(rest=argv[1:], func=parser.parse_args(argv[:1]).func)
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
