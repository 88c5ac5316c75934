"""A task's training: the method's phases, each run by the shared trainer.

``ContinualMethod.training_phases`` yields ``TrainingPhase``s; every phase gets its own AdamW and its
own warm-up + cosine schedule over its own steps (``bench.train.trainer.train_steps``), its own data and
learning rate where the method sets them, and the method's hooks (``before_forward``,
``auxiliary_loss``, ``after_optimizer_step``). Work the method does between phases (deciding an
expansion after a probe, switching an EvoMoE layer from dense to routed) runs inside the generator and
is timed as method time, not training.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from torch import nn

from bench.train.trainer import TrainStats, train_steps
from methods.state import note_trained


@dataclass
class TaskTraining:
    """What one task's phases did: per phase (name, steps, lr, stats); the parameters the task keeps
    trained (unique, over the phases that count) and evolved; seconds in training and in method work."""

    phases: list[tuple[str, float, TrainStats]] = field(default_factory=list)
    trained_parameters: int = 0
    evolved_parameters: int = 0
    training_seconds: float = 0.0
    method_seconds: float = 0.0

    def log_entry(self) -> dict[str, Any]:
        """The record's ``training`` entry for the task: totals, the last phase's loss curve (the task's
        own training) and, for several phases, each phase's steps, lr, seconds and curve."""
        last = self.phases[-1][2]
        entry: dict[str, Any] = {"steps": sum(s.steps for _, _, s in self.phases),
                                 "seconds": round(self.training_seconds, 3), "loss_curve": last.loss_curve}
        if len(self.phases) > 1:
            entry["phases"] = [{"name": n, "steps": s.steps, "lr": lr, "seconds": round(s.seconds, 3),
                                "loss_curve": s.loss_curve} for n, lr, s in self.phases]
        return entry


def train_task(model: nn.Module, method, task_index: int, task, loader, steps: int, *, accelerator, lr: float,
               warmup_ratio: float = 0.03, weight_decay: float = 0.0, extra_parameters: Iterable[nn.Parameter] = (),
               desc: str = "train", compile: bool = False,
               around_phase: tuple[Callable[[Any], None], Callable[[Any], None]] | None = None) -> TaskTraining:
    """Run every phase ``method.training_phases(task_index, task, loader, steps)`` yields.

    ``extra_parameters`` (e.g. the projector with ``--train-projector``) train in every phase.
    ``around_phase``: (before, after) observers called with the ``TrainingPhase`` around its steps (tests)."""
    extra = list(extra_parameters)
    out = TaskTraining()
    trained: dict[int, int] = {}
    evolved: dict[int, int] = {}
    phases = method.training_phases(task_index, task, loader, steps)
    while True:
        t = time.perf_counter()
        phase = next(phases, None)
        out.method_seconds += time.perf_counter() - t
        if phase is None:
            break
        if phase.steps < 1:  # e.g. EvoMoE with evolution_fraction 0 or 1: the phase has no steps
            continue
        params = [p for p in [*phase.parameters, *extra] if p.requires_grad]
        note_trained(method, [*params, *phase.evolving])
        if phase.counts_as_trained:
            trained.update((id(p), p.numel()) for p in params)
            evolved.update((id(p), p.numel()) for p in phase.evolving)
        phase_lr = lr * method.hp.lr_scale if phase.lr is None else phase.lr
        if around_phase:
            around_phase[0](phase)
        stats = train_steps(model, params, phase.loader if phase.loader is not None else loader, phase.steps,
                            accelerator=accelerator, lr=phase_lr, warmup_ratio=warmup_ratio,
                            weight_decay=weight_decay, aux_loss=method.auxiliary_loss,
                            before_forward=method.before_forward, after_step=method.after_optimizer_step,
                            desc=desc if phase.name == "task" else f"{desc} {phase.name}", compile=compile)
        if around_phase:
            around_phase[1](phase)
        out.phases.append((phase.name, phase_lr, stats))
        out.training_seconds += stats.seconds
    if not out.phases:
        raise RuntimeError(f"{desc}: the method yielded no training phase")
    evolved = {k: v for k, v in evolved.items() if k not in trained}
    out.trained_parameters = sum(trained.values())
    out.evolved_parameters = sum(evolved.values())
    return out
