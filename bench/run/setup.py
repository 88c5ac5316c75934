"""Setting a run up: the accelerator, the task order, the method attached to the stage-0 model, and
the one line a run prints before any work. Shared by a fresh run, a resumed run and a restored one."""
from __future__ import annotations

import os
import random

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, is_bf16_available

import methods
import tasks as task_registry
from bench.train import sharding
from bench.config import RunConfig
from methods.base import MethodContext


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """The run's accelerator: devices, processes, mixed precision and gradient accumulation."""
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


def attach_method(cfg: RunConfig, backbone, model, task_list: list, accelerator, method=None):
    """Build (unless given) the configured method and attach it to the stage-0 model; switch on the
    projector when the config trains it. Shared by ``bench.run.protocol.run`` and
    ``bench.run.restore.load_after_task``.
    Returns (method, projector parameters)."""
    method = method if method is not None else methods.build(cfg.method, cfg.method_set)
    ctx = MethodContext(num_tasks=len(task_list), steps_per_task=cfg.steps_per_task, device=accelerator.device,
                        image_token_id=backbone.image_token_id, run_seed=cfg.seed)
    method.attach(model, ctx)
    # CoIN's LoRA recipe may also train the projector (--train-projector); frozen by default, as in CoIN.
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
