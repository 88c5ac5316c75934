"""The continual protocol:

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
from bench import checkpoint, records, sharding
from bench.config import RunConfig
from bench.data import ConcatEncoded, EncodedSplit, encode_split, eval_loader, train_loader
from bench.metrics import summarize
from bench.phases import train_task
from bench.rng import rng_state, set_rng_state
from bench.trainer import enable_gradient_checkpointing, generate, method_hooks

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """Observation points for tests and tools (never used to change behaviour): called around every
    training phase of stage ``t`` (one per stage for most methods)."""

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

    import os

    # Several processes without CUDA (``accelerate launch --multi_gpu --num_processes N`` on a CPU
    # machine starts them with torchrun) must initialise as MULTI_CPU (gloo), which accelerate only
    # does when asked for the CPU; left alone each process would think it runs alone.
    cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
           or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()))
    precision = cfg.mixed_precision
    if precision == "auto":
        # bf16 autocast pays off on accelerators; on CPU it is slower than fp32, so stay in fp32 there.
        precision = "bf16" if PartialState(cpu=cpu).device.type != "cpu" and is_bf16_available() else "no"
    # find_unused_parameters: experts outside a batch's top-k receive no gradient in that step.
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if cpu and sharding.fsdp_requested():
        sharding.enable_cpu_fsdp(accelerator)  # accelerate turns FSDP on for accelerator devices only
    sharding.check_accelerator(accelerator)
    return accelerator


def ordered_tasks(cfg: RunConfig) -> list:
    task_list = task_registry.resolve(cfg.tasks)
    if cfg.task_order_seed is not None:
        random.Random(cfg.task_order_seed).shuffle(task_list)
    return task_list


def evaluate_all(model, method, backbone, test_sets: dict[str, tuple[Any, EncodedSplit]], cfg: RunConfig,
                 accelerator) -> dict[str, dict[str, Any]]:
    """Greedy answers for every test record of every task, scored by the task's official rule.

    With several processes each rank decodes its own shard of every test set and the predictions are
    gathered on every rank before scoring, so all ranks score the same full set. Each task's entry holds
    the accuracy, the denominator ``n``, three example answers and every test record's score in the
    test split's order (``per_sample``, packed by ``bench.records.encode_scores``)."""
    out = {}
    for index, (name, (task, encoded)) in enumerate(test_sets.items()):
        loader = eval_loader(backbone, encoded, cfg.eval_batch_size, indices=_shard(len(encoded), accelerator))
        if method.oracle:  # upper-bound ablations only; the record marks them (oracle_task_id)
            method.set_eval_task(index)
        ids = generate(model, loader, eos_id=backbone.eos_id, max_new_tokens=cfg.max_new_tokens,
                       accelerator=accelerator, **method_hooks(method))
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            ids = {i: seq for part in gather_object([ids]) for i, seq in part.items()}
        if method.oracle:
            method.set_eval_task(None)
        predictions = [backbone.decode(ids[i]) for i in range(len(encoded))]
        result = task.score(predictions, encoded.split, mode=cfg.scoring_mode)
        out[name] = {"accuracy": result.accuracy, "n": result.n, "examples": predictions[:3],
                     "per_sample": records.encode_scores(result.per_sample, result.counted)}
        report = method.evaluation_report(name)
        if report:
            out[name]["method"] = report
    return out


def encode_test_sets(cfg: RunConfig, task_list: list, backbone) -> dict[str, tuple[Any, EncodedSplit]]:
    """The test split of every task, encoded for ``evaluate_all`` (the same data a run evaluates on)."""
    spec = cfg.data_spec()
    return {t.name: (t, encode_split(backbone, t.load("test", spec))) for t in task_list}


def warm_eval_batches(test_sets: dict[str, tuple[Any, EncodedSplit]], backbone, cfg: RunConfig, accelerator) -> None:
    """Collate every test split's evaluation batches now, without touching the global RNG.

    A DataLoader draws its base seed from torch's global RNG each time it is iterated, and the eval
    batches are collated once (at row 0) and replayed afterwards. A process that restores a run's RNG
    state mid-stream (``--resume``, ``checkpoint.evaluate_loaded``) must not draw again when it first
    evaluates, or every later draw (router noise, new experts) would differ from the uninterrupted
    run's; warming the cache here, inside a forked RNG, makes its evaluations draw-free too."""
    with torch.random.fork_rng(devices=[]):
        for _, encoded in test_sets.values():
            for _ in eval_loader(backbone, encoded, cfg.eval_batch_size, indices=_shard(len(encoded), accelerator)):
                pass


def _shard(n: int, accelerator) -> list[int] | None:
    """This rank's record indices of an n-record test set (None = all, single process)."""
    if accelerator.num_processes == 1:
        return None
    with accelerator.split_between_processes(list(range(n))) as part:
        return list(part)


def attach_method(cfg: RunConfig, backbone, model, task_list: list, accelerator, method=None):
    """Build (unless given) the configured method and attach it to the stage-0 model; switch on the
    projector when the config trains it. Shared by ``run`` and ``bench.checkpoint.load_after_task``.
    Returns (method, projector parameters)."""
    from methods.base import MethodContext

    method = method if method is not None else methods.build(cfg.method, cfg.method_set)
    ctx = MethodContext(num_tasks=len(task_list), steps_per_task=cfg.steps_per_task, device=accelerator.device,
                        image_token_id=backbone.image_token_id, run_seed=cfg.seed)
    method.attach(model, ctx)
    # CoIN's LoRA recipe may also train the projector (--train-projector); frozen by default (spec).
    projector = list(model.model.multi_modal_projector.parameters()) if cfg.train_projector else []
    for p in projector:
        p.requires_grad_(True)
    return method, projector


def plan_line(cfg: RunConfig, method, task_list: list, plan, processes: int, run_id: str,
              resumed_after: int | None = None) -> str:
    """The one line a run prints before any work: method, tasks, budget, seed and where the base
    model comes from (shipped / cached / training and why)."""
    names = [t.name for t in task_list]
    budget = f"{cfg.steps_per_task} steps x batch {cfg.batch_size}"
    if cfg.grad_accum > 1:
        budget += f" x accum {cfg.grad_accum}"
    if processes > 1:
        budget += f" x {processes} processes"
    unit = f"per task ({len(names)} tasks in one joint stage)" if method.joint_training else "per task"
    resume = "" if resumed_after is None else f", resuming after task {resumed_after}"
    return (f"run {run_id}: {method.name} on {cfg.tasks} ({', '.join(names)}), {budget} {unit}, seed {cfg.seed}, "
            f"preset {cfg.preset}{resume}; base: {plan.describe(cfg)}")


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


def run(cfg: RunConfig, hooks: Hooks | None = None, *, resume: str | Path | None = None) -> Path:
    """Run one method through the task sequence and write its record; returns the record's path.

    After every stage k the run directory ``<out>/runs/<run_id>/`` gets ``task-<k:02d>/`` (method
    tensors + state + record pieces, ``bench.checkpoint``). ``resume`` = such a run directory: the run
    continues after its last finished stage with the RNG state it had there, so the final record
    equals an uninterrupted run's (``cfg`` must be that run's config, ``checkpoint.read_run_config``)."""
    from accelerate.utils import set_seed

    hooks = hooks or Hooks()
    wall_start = time.perf_counter()
    timer = PhaseTimer()
    task_list = ordered_tasks(cfg)
    method = methods.build(cfg.method, cfg.method_set)  # bad names / --set values fail before any work
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
        from accelerate.utils import broadcast_object_list

        run_id = broadcast_object_list([run_id])[0]
        run_dir = checkpoint.run_dir_for(out_dir, run_id)
    set_seed(cfg.seed)
    from bench.base_model import load_base, plan_base

    plan = plan_base(cfg, task_list)  # decides only: nothing is trained or rendered here
    if accelerator.is_main_process:
        print(plan_line(cfg, method, task_list, plan, accelerator.num_processes, run_id,
                        None if resumed is None else resumed.index), flush=True)

    # Read (and validate) every split before stage 0, so malformed data or a missing image fails in
    # seconds, before any training; images stay lazy until a batch needs them.
    t0 = time.perf_counter()
    spec = cfg.data_spec()
    splits = {task.name: (task.load("train", spec), task.load("test", spec)) for task in task_list}
    timer.add("data", t0)

    t0 = time.perf_counter()
    backbone, stage0 = load_base(cfg, task_list, accelerator, plan)
    timer.add("stage0", t0)
    model = backbone.model.to(accelerator.device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    t0 = time.perf_counter()
    train_sets: dict[str, EncodedSplit] = {}
    test_sets: dict[str, tuple[Any, EncodedSplit]] = {}
    sources: dict[str, Any] = {}
    for task in task_list:
        train_split, test_split = splits[task.name]
        train_sets[task.name] = encode_split(backbone, train_split)
        test_sets[task.name] = (task, encode_split(backbone, test_split))
        sources[task.name] = {"train": train_split.source, "test": test_split.source}
    timer.add("data", t0)

    method, projector = attach_method(cfg, backbone, model, task_list, accelerator, method)
    base = checkpoint.base_identity(backbone, stage0)

    def evaluate_row() -> dict[str, dict[str, Any]]:
        t = time.perf_counter()
        row = evaluate_all(model, method, backbone, test_sets, cfg, accelerator)
        timer.add("evaluation", t)
        if cfg.track:  # lm-eval tasks next to the CoIN accuracies (--track lmeval:TASK)
            from bench.lmeval_eval import track_row

            t = time.perf_counter()
            row.update(track_row(cfg, model, method, backbone, accelerator))
            timer.add("tracking", t)
        return row

    stages = [("joint", task_list)] if method.joint_training else [(t.name, [t]) for t in task_list]
    if resumed is None:
        rows = [evaluate_row()]
        parameters, reports, train_log = [], [], []
        start = 0
    else:
        checkpoint.check_base(resumed, base)
        checkpoint.restore_method(method, resumed)
        progress = resumed.state["progress"]
        rows, parameters = progress["rows"], progress["parameters"]
        reports, train_log = progress["method_reports"], progress["training"]
        for phase, seconds in progress["wall_time"].items():
            timer.seconds[phase] = timer.seconds.get(phase, 0.0) + seconds
        wall_start -= progress["elapsed"]
        start = resumed.index + 1
        warm_eval_batches(test_sets, backbone, cfg, accelerator)  # row 0 collated them in the original run
        set_rng_state(resumed.state["rng"])  # last: nothing above may draw after this
    for index, (stage_name, stage_tasks) in enumerate(stages):
        if index < start:
            continue
        encoded = train_sets[stage_name] if len(stage_tasks) == 1 and not method.joint_training else \
            ConcatEncoded([train_sets[t.name] for t in stage_tasks])
        loader = train_loader(backbone, encoded, cfg.batch_size, seed=cfg.seed * 1000 + index)
        stage_task = stage_tasks[0] if len(stage_tasks) == 1 else stage_tasks
        steps = cfg.steps_per_task * len(stage_tasks)
        t = time.perf_counter()
        method.begin_task(index, stage_task, loader)
        timer.add("method", t)
        done = train_task(model, method, index, stage_task, loader, steps, accelerator=accelerator, lr=cfg.lr,
                          warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, extra_parameters=projector,
                          desc=f"{method.name} {stage_name}", compile=cfg.compile,
                          around_phase=(lambda: hooks.before_train(index, method, model),
                                        lambda: hooks.after_train(index, method, model)))
        timer.seconds["training"] = timer.seconds.get("training", 0.0) + done.training_seconds
        timer.seconds["method"] = timer.seconds.get("method", 0.0) + done.method_seconds
        counts = method.parameter_counts()
        t = time.perf_counter()
        method.end_task(index, stage_task, loader)
        timer.add("method", t)
        counts["trained"] = done.trained_parameters + done.evolved_parameters
        counts["evolved"] = done.evolved_parameters
        parameters.append({"after": stage_name, **counts})
        reports.append({"after": stage_name, **method.task_report()})
        train_log.append({"after": stage_name, **done.log_entry()})
        rng_before_eval = rng_state()
        rows.append(evaluate_row())
        if accelerator.is_main_process:
            accs = " ".join(f"{n}={rows[-1][n]['accuracy']:.1f}" for n in test_sets)
            print(f"[{method.name}] after {stage_name}: {accs}", flush=True)
            progress = {"rows": rows, "parameters": parameters, "method_reports": reports, "training": train_log,
                        "wall_time": timer.seconds, "elapsed": time.perf_counter() - wall_start}
            if index == 0:
                checkpoint.write_run_config(run_dir, cfg)
            checkpoint.save_task_checkpoint(run_dir, index, method, progress, base=base, rng=rng_state(),
                                            rng_before_eval=rng_before_eval)
        accelerator.wait_for_everyone()

    names = [t.name for t in task_list]
    matrix = [[round(r[n]["accuracy"], 4) for n in names] for r in rows]
    timer.seconds["total"] = time.perf_counter() - wall_start
    record = {
        "record_version": records.RECORD_VERSION,
        "run_id": run_id,
        "run_dir": f"runs/{run_id}",  # per-task checkpoints (bench.checkpoint); git-ignored
        "resumed_after_task": None if resumed is None else resumed.index,
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
                   "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                   "sharding": sharding.describe(accelerator)},
        "scoring_mode": cfg.scoring_mode,
        "accuracy_matrix": matrix,
        "matrix_rows": ["base"] + [s for s, _ in stages],
        "scores": [{n: r[n] for n in names} for r in rows],
        "tracked": {k: [r[k] for r in rows] for k in cfg.track},  # one entry per matrix row
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
        from bench.perf.report import time_split

        print(time_split(record["wall_time"], record["peak_rss_mb"]), flush=True)
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
