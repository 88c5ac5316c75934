"""The continual protocol (design.md, methods.md Part A):

    row 0 = the base model on every task
    for each task t: begin_task -> train -> end_task -> evaluate every task -> row t of the matrix

Evaluation is task-agnostic: the model sees only the prompt and the image. The harness never branches
on a method's name; joint-training reference methods (``joint_training = True``) train one stage on
the union of all tasks with the same total budget and contribute a single row after row 0.
"""
from __future__ import annotations

import logging
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import methods
import tasks as task_registry
from bench import records
from bench.config import RunConfig
from bench.data import ConcatEncoded, EncodedSplit, encode_split, eval_loader, train_loader
from bench.metrics import summarize
from bench.trainer import generate, train_steps

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """Observation points for tests and tools (never used to change behaviour)."""

    before_train: Callable[[int, Any, Any], None] = lambda t, method, model: None
    after_train: Callable[[int, Any, Any], None] = lambda t, method, model: None


@dataclass
class PhaseTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, since: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - since


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedDataParallelKwargs, is_bf16_available

    precision = cfg.mixed_precision
    if precision == "auto":
        # bf16 autocast pays off on accelerators; on CPU it is slower than fp32, so stay in fp32 there.
        precision = "bf16" if PartialState().device.type != "cpu" and is_bf16_available() else "no"
    # find_unused_parameters: experts outside a batch's top-k receive no gradient in that step.
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def ordered_tasks(cfg: RunConfig) -> list:
    task_list = task_registry.resolve(cfg.tasks)
    if cfg.task_order_seed is not None:
        random.Random(cfg.task_order_seed).shuffle(task_list)
    return task_list


def evaluate_all(model, method, backbone, test_sets: dict[str, tuple[Any, EncodedSplit]], cfg: RunConfig,
                 accelerator) -> dict[str, dict[str, Any]]:
    """Greedy answers for every test record of every task, scored by the task's official rule."""
    out = {}
    for index, (name, (task, encoded)) in enumerate(test_sets.items()):
        loader = eval_loader(backbone, encoded, cfg.eval_batch_size)
        if method.oracle:  # upper-bound ablations only; the record marks them (oracle_task_id)
            method.set_eval_task(index)
        ids = generate(model, loader, eos_id=backbone.eos_id, max_new_tokens=cfg.max_new_tokens,
                       accelerator=accelerator, before_forward=method.before_forward)
        if method.oracle:
            method.set_eval_task(None)
        predictions = [backbone.decode(ids[i]) for i in range(len(encoded))]
        result = task.score(predictions, encoded.split, mode=cfg.scoring_mode)
        out[name] = {"accuracy": result.accuracy, "n": result.n, "examples": predictions[:3]}
        report = method.evaluation_report(name)
        if report:
            out[name]["method"] = report
    return out


def run(cfg: RunConfig, hooks: Hooks | None = None) -> Path:
    """Run one method through the task sequence and write its record; returns the record's path."""
    from accelerate.utils import set_seed

    hooks = hooks or Hooks()
    wall_start = time.perf_counter()
    timer = PhaseTimer()
    task_list = ordered_tasks(cfg)
    method = methods.build(cfg.method, cfg.method_set)  # bad names / --set values fail before any work
    out_dir = Path(cfg.out)
    _check_writable(out_dir / "runs")
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)

    t0 = time.perf_counter()
    from bench.base_model import load_base

    backbone, stage0 = load_base(cfg, task_list, accelerator)
    timer.add("stage0", t0)
    model = backbone.model.to(accelerator.device)

    t0 = time.perf_counter()
    spec = cfg.data_spec()
    train_sets: dict[str, EncodedSplit] = {}
    test_sets: dict[str, tuple[Any, EncodedSplit]] = {}
    sources: dict[str, Any] = {}
    for task in task_list:
        train_split, test_split = task.load("train", spec), task.load("test", spec)
        train_sets[task.name] = encode_split(backbone, train_split)
        test_sets[task.name] = (task, encode_split(backbone, test_split))
        sources[task.name] = {"train": train_split.source, "test": test_split.source}
    timer.add("data", t0)

    from methods.base import MethodContext

    ctx = MethodContext(num_tasks=len(task_list), steps_per_task=cfg.steps_per_task, device=accelerator.device,
                        image_token_id=backbone.image_token_id, run_seed=cfg.seed,
                        extra={"accelerator": accelerator, "lr": cfg.lr})
    method.attach(model, ctx)

    def evaluate_row() -> dict[str, dict[str, Any]]:
        t = time.perf_counter()
        row = evaluate_all(model, method, backbone, test_sets, cfg, accelerator)
        timer.add("evaluation", t)
        return row

    # CoIN's LoRA recipe may also train the projector (--train-projector); frozen by default (spec).
    projector = list(model.model.multi_modal_projector.parameters()) if cfg.train_projector else []
    for p in projector:
        p.requires_grad_(True)

    rows = [evaluate_row()]
    parameters, reports, train_log = [], [], []
    stages = [("joint", task_list)] if method.joint_training else [(t.name, [t]) for t in task_list]
    for index, (stage_name, stage_tasks) in enumerate(stages):
        encoded = train_sets[stage_name] if len(stage_tasks) == 1 and not method.joint_training else \
            ConcatEncoded([train_sets[t.name] for t in stage_tasks])
        loader = train_loader(backbone, encoded, cfg.batch_size, seed=cfg.seed * 1000 + index)
        stage_task = stage_tasks[0] if len(stage_tasks) == 1 else stage_tasks
        steps = cfg.steps_per_task * len(stage_tasks)
        t = time.perf_counter()
        method.begin_task(index, stage_task, loader)
        timer.add("method", t)
        counts = method.parameter_counts()
        evolved = sum(p.numel() for p in method.evolving_parameters())
        hooks.before_train(index, method, model)
        stats = train_steps(model, [*method.trainable_parameters(), *projector], loader, steps,
                            accelerator=accelerator, lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                            aux_loss=method.auxiliary_loss, before_forward=method.before_forward,
                            after_step=method.after_optimizer_step, desc=f"{method.name} {stage_name}")
        timer.seconds["training"] = timer.seconds.get("training", 0.0) + stats.seconds
        hooks.after_train(index, method, model)
        t = time.perf_counter()
        method.end_task(index, stage_task, loader)
        timer.add("method", t)
        counts["trained"] = stats.trained_parameters + evolved
        counts["evolved"] = evolved
        parameters.append({"after": stage_name, **counts})
        reports.append({"after": stage_name, **method.task_report()})
        train_log.append({"after": stage_name, "steps": stats.steps, "seconds": round(stats.seconds, 3),
                          "loss_curve": stats.loss_curve})
        rows.append(evaluate_row())
        if accelerator.is_main_process:
            accs = " ".join(f"{n}={rows[-1][n]['accuracy']:.1f}" for n in test_sets)
            print(f"[{method.name}] after {stage_name}: {accs}", flush=True)

    names = [t.name for t in task_list]
    matrix = [[round(r[n]["accuracy"], 4) for n in names] for r in rows]
    timer.seconds["total"] = time.perf_counter() - wall_start
    record = {
        "record_version": records.RECORD_VERSION,
        "run_id": records.new_run_id(method.name, cfg.seed),
        "method": method.name,
        "hparams": method.hparams_dict(),
        "joint_training": method.joint_training,
        "oracle_task_id": method.oracle,
        "tasks": names,
        "suite": cfg.tasks,
        "data": {"source": spec.source, "data_seed": cfg.data_seed, "instructions": cfg.instructions,
                 "mini_train": cfg.mini_train if spec.source == "coin-mini" else None,
                 "mini_test": cfg.mini_test if spec.source == "coin-mini" else None,
                 "limit_train": cfg.limit_train, "limit_test": cfg.limit_test, "splits": sources},
        "backbone": {**backbone.description, "stage0": stage0},
        "seeds": {"run": cfg.seed, "data": cfg.data_seed, "task_order": cfg.task_order_seed},
        "budget": {"steps_per_task": cfg.steps_per_task, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                   "lr": cfg.lr, "warmup_ratio": cfg.warmup_ratio, "preset": cfg.preset,
                   "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision},
        "scoring_mode": cfg.scoring_mode,
        "accuracy_matrix": matrix,
        "matrix_rows": ["base"] + [s for s, _ in stages],
        "scores": [{n: r[n] for n in names} for r in rows],
        "metrics": summarize(matrix),
        "parameters": parameters,
        "method_reports": reports,
        "training": train_log,
        "wall_time": {k: round(v, 3) for k, v in timer.seconds.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": records.package_versions(),
        "git_commit": records.git_commit(),
        "config": cfg.to_dict(),
    }
    path = out_dir / "runs" / f"{record['run_id']}.json"
    if accelerator.is_main_process:
        path = records.write_record(record, out_dir)
    accelerator.wait_for_everyone()
    return path


def _check_writable(folder: Path) -> None:
    from bench.config import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write run records to {folder} ({e.strerror}); pass --out to a writable folder.") from None
