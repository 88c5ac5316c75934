"""The continual protocol:

    row 0 = the base model on every task
    for each task t: begin_task -> train -> end_task -> evaluate every task -> row t of the matrix

Evaluation is task-agnostic: the model sees only the prompt and the image. The harness never branches
on a method's name; joint-training reference methods (``joint_training = True``) train one stage on
the union of all tasks with the same total budget and contribute a single row after row 0.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from accelerate.utils import broadcast_object_list, set_seed

import methods
from bench.io import checkpoint
from bench.io import records
from bench.train import sharding
from bench.model.base_model import load_base, plan_base
from bench.config import ConfigError, RunConfig
from bench.train.data import ConcatEncoded, EncodedSplit, encode_split, train_loader
from bench.run.evaluation import encode_test_sets, evaluate_all, warm_eval_batches
from bench.train.phases import train_task
from bench.run.rng import rng_state, set_rng_state
from bench.run.setup import attach_method, make_accelerator, ordered_tasks, plan_line
from bench.train.trainer import enable_gradient_checkpointing
from methods.base import hparams_dict
from bench.analysis.metrics import count_parameters, summarize
from bench.run.timing import PhaseTimer, time_split
from bench.run.tracking import Tracker, check_trackers, track_row

# the set-up and evaluation steps are part of the protocol's public face (tools and tests call them here)
__all__ = ["Hooks", "attach_method", "encode_test_sets", "evaluate_all", "make_accelerator", "ordered_tasks",
           "plan_line", "run", "warm_eval_batches"]

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """Observation points for tests and tools (never used to change behaviour): called around every
    training phase of stage ``t`` (one per stage for most methods) with that ``TrainingPhase``."""

    before_train: Callable[[int, Any, Any, Any], None] = lambda t, method, model, phase: None
    after_train: Callable[[int, Any, Any, Any], None] = lambda t, method, model, phase: None


def _resume_point(run_dir: Path, out_dir: Path) -> checkpoint.TaskCheckpoint:
    """The last finished task's checkpoint of an interrupted run."""
    record = out_dir / "runs" / f"{run_dir.name}.json"
    if record.exists():
        raise checkpoint.CheckpointError(f"run {run_dir.name} already finished: its record is {record}; "
                                         "nothing to resume.")
    done = checkpoint.finished_tasks(run_dir)
    if not done:
        raise checkpoint.CheckpointError(f"{run_dir} holds no finished task to resume from; start the run again.")
    return checkpoint.load_task_checkpoint(run_dir, done[-1])


@dataclass
class _Run:
    """What one run holds while it runs: set up by ``_start``, filled by ``_load``."""

    cfg: RunConfig
    method: Any
    task_list: list
    out_dir: Path
    run_id: str
    run_dir: Path
    resumed: checkpoint.TaskCheckpoint | None
    accelerator: Any
    plan: Any
    trackers: Sequence[Tracker] = ()
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    wall_start: float = field(default_factory=time.perf_counter)
    spec: Any = None
    backbone: Any = None
    stage0: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    train_sets: dict[str, EncodedSplit] = field(default_factory=dict)
    test_sets: dict[str, tuple[Any, EncodedSplit]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    projector: list = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Progress:
    """The record pieces so far (one entry per finished stage; ``rows`` has row 0 first)."""

    rows: list = field(default_factory=list)
    parameters: list = field(default_factory=list)
    reports: list = field(default_factory=list)
    train_log: list = field(default_factory=list)
    start: int = 0  # the first stage still to run

    def as_checkpoint(self, r: _Run) -> dict[str, Any]:
        return {"rows": self.rows, "parameters": self.parameters, "method_reports": self.reports,
                "training": self.train_log, "wall_time": r.timer.seconds,
                "elapsed": time.perf_counter() - r.wall_start}


def run(cfg: RunConfig, hooks: Hooks | None = None, *, resume: str | Path | None = None,
        trackers: Sequence[Tracker] = ()) -> Path:
    """Run one method through the task sequence and write its record; returns the record's path.

    After every stage k the run directory ``<out>/runs/<run_id>/`` gets ``task-<k:02d>/`` (method
    tensors + state + record pieces, ``bench.io.checkpoint``). ``resume`` = such a run directory: the run
    continues after its last finished stage with the RNG state it had there, so the final record
    equals an uninterrupted run's (``cfg`` must be that run's config, ``checkpoint.read_run_config``).
    ``trackers`` score ``cfg.track`` after every row (``bench.run.tracking``; one per tracked name)."""
    hooks = hooks or Hooks()
    r = _start(cfg, resume, trackers)
    _load(r)
    r.method, r.projector = attach_method(cfg, r.backbone, r.model, r.task_list, r.accelerator, r.method)
    r.base = checkpoint.base_identity(r.backbone, r.stage0)
    stages = [("joint", r.task_list)] if r.method.joint_training else [(t.name, [t]) for t in r.task_list]
    progress = _Progress(rows=[_evaluate_row(r)]) if r.resumed is None else _resume_progress(r)
    for index, (stage_name, stage_tasks) in enumerate(stages):
        if index < progress.start:
            continue
        _train_stage(r, index, stage_name, stage_tasks, progress, hooks)
        rng_before_eval = rng_state()
        progress.rows.append(_evaluate_row(r))
        if r.accelerator.is_main_process:
            accs = " ".join(f"{n}={progress.rows[-1][n]['accuracy']:.1f}" for n in r.test_sets)
            print(f"[{r.method.name}] after {stage_name}: {accs}", flush=True)
            if index == 0:
                checkpoint.write_run_config(r.run_dir, cfg)
            checkpoint.save_task_checkpoint(r.run_dir, index, r.method, progress.as_checkpoint(r), base=r.base,
                                            rng=rng_state(), rng_before_eval=rng_before_eval)
        r.accelerator.wait_for_everyone()
    return _write(r, _record(r, stages, progress))


def _start(cfg: RunConfig, resume: str | Path | None, trackers: Sequence[Tracker]) -> _Run:
    """Names, folders, accelerator and seed; prints the plan line. Bad names, ``--set`` values, trackers
    that do not match ``cfg.track`` and an unwritable output folder fail here, before any work."""
    wall_start = time.perf_counter()
    task_list = ordered_tasks(cfg)
    check_trackers(cfg.track, trackers)
    method = methods.build(cfg.method, cfg.method_set)
    out_dir = Path(cfg.out)
    _check_writable(out_dir / "runs")
    # The run id is fixed at the start: it names the run directory the checkpoints go to. The
    # directory itself appears with the first finished task, so a run that fails before leaves nothing.
    run_id = Path(resume).name if resume else records.new_run_id(method.name, cfg.seed)
    run_dir = checkpoint.run_dir_for(out_dir, run_id)
    resumed = _resume_point(run_dir, out_dir) if resume else None
    accelerator = make_accelerator(cfg)
    sharding.check_method(method, accelerator)
    if accelerator.num_processes > 1 and resume is None:  # every rank uses rank 0's run id and directory
        run_id = broadcast_object_list([run_id])[0]
        run_dir = checkpoint.run_dir_for(out_dir, run_id)
    set_seed(cfg.seed)
    plan = plan_base(cfg, task_list)  # decides only: nothing is trained or rendered here
    if accelerator.is_main_process:
        print(plan_line(cfg, method, task_list, plan, accelerator.num_processes, run_id,
                        None if resumed is None else resumed.index), flush=True)
    return _Run(cfg=cfg, method=method, task_list=task_list, out_dir=out_dir, run_id=run_id, run_dir=run_dir,
                resumed=resumed, accelerator=accelerator, plan=plan, trackers=tuple(trackers), wall_start=wall_start)


def _load(r: _Run) -> None:
    """Every split, the stage-0 base model and every split encoded for it."""
    # Read (and validate) every split before stage 0, so malformed data or a missing image fails in
    # seconds, before any training; images stay lazy until a batch needs them.
    t0 = time.perf_counter()
    r.spec = r.cfg.data_spec()
    splits = {task.name: (task.load("train", r.spec), task.load("test", r.spec)) for task in r.task_list}
    r.timer.add("data", t0)

    t0 = time.perf_counter()
    r.backbone, r.stage0 = load_base(r.cfg, r.task_list, r.accelerator, r.plan)
    r.timer.add("stage0", t0)
    r.model = r.backbone.model.to(r.accelerator.device)
    if r.cfg.gradient_checkpointing:
        enable_gradient_checkpointing(r.model)

    t0 = time.perf_counter()
    for task in r.task_list:
        train_split, test_split = splits[task.name]
        r.train_sets[task.name] = encode_split(r.backbone, train_split)
        r.test_sets[task.name] = (task, encode_split(r.backbone, test_split))
        r.sources[task.name] = {"train": train_split.source, "test": test_split.source}
    r.timer.add("data", t0)


def _evaluate_row(r: _Run) -> dict[str, dict[str, Any]]:
    """One row of the accuracy matrix (every task), plus the tracked lm-eval tasks (``--track``)."""
    t = time.perf_counter()
    row = evaluate_all(r.model, r.method, r.backbone, r.test_sets, r.cfg, r.accelerator)
    r.timer.add("evaluation", t)
    if r.trackers:
        t = time.perf_counter()
        row.update(track_row(r.trackers, r.model, r.method, r.backbone, r.accelerator))
        r.timer.add("tracking", t)
    return row


def _resume_progress(r: _Run) -> _Progress:
    """The record pieces of the interrupted run; the method and the generators as they were after its
    last finished stage."""
    checkpoint.check_base(r.resumed, r.base)
    checkpoint.restore_method(r.method, r.resumed)
    saved = r.resumed.state["progress"]
    for phase, seconds in saved["wall_time"].items():
        r.timer.seconds[phase] = r.timer.seconds.get(phase, 0.0) + seconds
    r.wall_start -= saved["elapsed"]
    progress = _Progress(rows=saved["rows"], parameters=saved["parameters"], reports=saved["method_reports"],
                         train_log=saved["training"], start=r.resumed.index + 1)
    warm_eval_batches(r.test_sets, r.backbone, r.cfg, r.accelerator)  # row 0 collated them in the original run
    set_rng_state(r.resumed.state["rng"])  # last: nothing above may draw after this
    return progress


def _train_stage(r: _Run, index: int, stage_name: str, stage_tasks: list, progress: _Progress, hooks: Hooks) -> None:
    """begin_task -> the method's training phases -> end_task for one stage; appends its record pieces."""
    method, timer = r.method, r.timer
    encoded = r.train_sets[stage_name] if len(stage_tasks) == 1 and not method.joint_training else \
        ConcatEncoded([r.train_sets[t.name] for t in stage_tasks])
    loader = train_loader(r.backbone, encoded, r.cfg.batch_size, seed=r.cfg.seed * 1000 + index)
    stage_task = stage_tasks[0] if len(stage_tasks) == 1 else stage_tasks
    steps = r.cfg.steps_per_task * len(stage_tasks)
    t = time.perf_counter()
    method.begin_task(index, stage_task, loader)
    timer.add("method", t)
    done = train_task(r.model, method, index, stage_task, loader, steps, accelerator=r.accelerator, lr=r.cfg.lr,
                      warmup_ratio=r.cfg.warmup_ratio, weight_decay=r.cfg.weight_decay,
                      extra_parameters=r.projector, desc=f"{method.name} {stage_name}", compile=r.cfg.compile,
                      around_phase=(lambda phase: hooks.before_train(index, method, r.model, phase),
                                    lambda phase: hooks.after_train(index, method, r.model, phase)))
    timer.add_seconds("training", done.training_seconds)
    timer.add_seconds("method", done.method_seconds)
    counts = count_parameters(method.model, method)
    t = time.perf_counter()
    method.end_task(index, stage_task, loader)
    timer.add("method", t)
    counts["trained"] = done.trained_parameters + done.evolved_parameters
    counts["evolved"] = done.evolved_parameters
    progress.parameters.append({"after": stage_name, **counts})
    progress.reports.append({"after": stage_name, **method.task_report()})
    progress.train_log.append({"after": stage_name, **done.log_entry()})


def _record(r: _Run, stages: list, progress: _Progress) -> dict[str, Any]:
    """The run record (``bench.io.records`` builds and validates it)."""
    cfg, accelerator, rows = r.cfg, r.accelerator, progress.rows
    names = [t.name for t in r.task_list]
    r.timer.seconds["total"] = time.perf_counter() - r.wall_start
    return records.build_record(
        run_id=r.run_id, resumed_after_task=None if r.resumed is None else r.resumed.index,
        method=r.method.name, hparams=hparams_dict(r.method), joint_training=r.method.joint_training,
        oracle_task_id=r.method.oracle, tasks=names, cfg=cfg, data_source=r.spec.source, splits=r.sources,
        backbone={**r.backbone.description, "stage0": r.stage0}, processes=accelerator.num_processes,
        mixed_precision=accelerator.mixed_precision, sharding=sharding.describe(accelerator),
        matrix_rows=["base"] + [s for s, _ in stages], rows=rows,
        metrics=summarize(records.accuracy_matrix(rows, names)), parameters=progress.parameters,
        method_reports=progress.reports, training=progress.train_log, wall_time=r.timer.seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _write(r: _Run, record: dict[str, Any]) -> Path:
    """Rank 0 writes the record and prints where the time went; every rank returns its path."""
    path = r.out_dir / "runs" / f"{record['run_id']}.json"
    if r.accelerator.is_main_process:
        path = records.write_record(record, r.out_dir)
        print(time_split(record["wall_time"], record["peak_rss_mb"]), flush=True)
    r.accelerator.wait_for_everyone()
    return path


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write run records to {folder} ({e.strerror}); pass --out to a writable folder.") from None
