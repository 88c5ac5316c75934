"""The ContinualMethod interface.

The harness calls, for a run over tasks 1..T:

    method = registry.get(name)(hparams)          # hparams: the method's dataclass, from --set
    method.attach(model, ctx)                     # once, on the stage-0 base model
    for t, task in enumerate(tasks):
        method.begin_task(t, task, train_loader)  # expand / freeze
        for phase in method.training_phases(t, task, train_loader, steps):   # default: one phase
            train(phase.parameters, phase.steps, loss = LM + method.auxiliary_loss())
        method.end_task(t, task, train_loader)    # fit statistics, ...
        evaluate every task (task-agnostic: no task id reaches the model)

``train_loader`` yields model-ready batches (dicts of tensors: input_ids, attention_mask, pixel_values,
labels, ...) that a method may iterate for probing or for fitting a task locator; a method must not
keep those batches after ``end_task`` returns (no replay unless the method is a replay method).
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

from bench.analysis.metrics import count_parameters
from methods.state import checkpoint_state, restore as restore_state


@dataclass
class MethodContext:
    """What the harness hands a method at attach time (never a task id at test time)."""

    num_tasks: int
    steps_per_task: int
    device: torch.device
    image_token_id: int | None = None  # lets a method build an image-token mask from input_ids
    run_seed: int = 0


@dataclass
class TrainingPhase:
    """One stretch of a task's training, run by the shared trainer (``bench.train.trainer.train_steps``) with
    its own AdamW and its own warm-up + cosine schedule over ``steps``.

    A task trained in phases (LLaVA-CMoE's probing, EvoMoE's evolution then router phase) yields one
    per phase from ``training_phases``; the method sets up the phase's structure and routing before
    it yields, and the code after a ``yield`` runs once the phase's steps are done.
    ``parameters``: what the phase's optimiser updates. ``evolving``: parameters it changes without
    gradient (``after_optimizer_step``). ``loader``: None = the task's loader. ``lr``: None = the run's.
    ``counts_as_trained``: False for work that is discarded (probes), so the record's per-task
    trained-parameter count describes what the task keeps."""

    name: str
    parameters: list
    steps: int
    loader: Any = None
    lr: float | None = None
    evolving: list = field(default_factory=list)
    counts_as_trained: bool = True


@dataclass
class MethodHParams:
    """Base class of every method's hyper-parameter dataclass: ``--set key=value`` fills its fields.

    ``lr_scale``: the method's peak learning rate as a multiple of the budget's ``--lr``. The budget
    (steps, batch, lr) is shared by every method of a comparison; a parameterisation whose effective
    step differs from a plain LoRA's (a dense mixture of N low-rank experts moves each expert's
    contribution by about 1/N per AdamW step) declares its multiple here, measured by training loss on
    the training stream, never by test accuracy. A phase with its own ``lr`` is not scaled."""

    lr_scale: float = 1.0
    # The grid ``bench tune`` draws trials from (``search_space`` merges it along the class hierarchy):
    # the learning-rate multiple always; subclasses add their own knobs.
    search: ClassVar[dict[str, tuple]] = {"lr_scale": (0.5, 1.0, 2.0)}

    def validate(self) -> None:
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {self.lr_scale}")


def search_space(hp_cls: type[MethodHParams]) -> dict[str, tuple]:
    """The tuning grid of a hyper-parameter class: every ``search`` along its class hierarchy, a
    subclass's entry replacing its base's for the same knob."""
    space: dict[str, tuple] = {}
    for cls in reversed(hp_cls.__mro__):
        space.update(cls.__dict__.get("search", {}))
    return space


class ContinualMethod:
    """Base class: a method owns the layers it installs and decides which parameters train."""

    name: ClassVar[str] = ""
    HParams: ClassVar[type[MethodHParams]] = MethodHParams
    # True for reference points that see all tasks at once (multitask); the protocol then trains one
    # stage on the union and evaluates once. Every other method sees tasks one at a time.
    joint_training: ClassVar[bool] = False
    # True when an ablation gives the model privileged information (oracle task id); recorded.
    oracle: ClassVar[bool] = False

    def __init__(self, hparams: MethodHParams | None = None):
        self.hp = hparams if hparams is not None else self.HParams()
        self.model: nn.Module | None = None
        self.ctx: MethodContext | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: MethodContext) -> None:
        self.model, self.ctx = model, ctx
        for p in model.parameters():
            p.requires_grad_(False)
        # The base model's tensors, by identity: a checkpoint references them instead of copying them.
        # Weak references, so a tensor a method replaces (e.g. an FFN turned into experts) can be freed.
        self._base_tensors = {id(t): weakref.ref(t) for t in model.state_dict(keep_vars=True).values()}
        self._noted: set[int] = set()

    def begin_task(self, task_index: int, task, train_loader) -> None:
        pass

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_phases(self, task_index: int, task, train_loader, steps: int) -> Iterator[TrainingPhase]:
        """The task's training as phases the harness runs one after the other (default: one phase of
        ``steps`` on ``trainable_parameters()``)."""
        yield TrainingPhase("task", list(self.trainable_parameters()), steps,
                            evolving=list(self.evolving_parameters()))

    def evolving_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the current task changes WITHOUT gradient (never in the optimizer), e.g. EvoMoE's
        experts 2..N moved by EMA in after_optimizer_step. They count as trained in the record."""
        return []

    def auxiliary_loss(self) -> torch.Tensor | None:
        return None

    def end_task(self, task_index: int, task, train_loader) -> None:
        pass

    def before_forward(self, batch: dict[str, torch.Tensor], phase: str) -> None:
        """Called with every batch before the model runs. ``phase`` is ``"train"``, ``"prefill"`` (the
        prompt at evaluation) or ``"decode"`` (one generated token per sample, KV cache in use).
        Lets a method see input-level information such as the image-token mask or pick a router
        (PTL) from the prompt; the model itself never receives a task id."""

    def select_rows(self, rows: torch.Tensor | None) -> None:
        """Evaluation only: the next forwards run on rows ``rows`` (long, ascending) of the batch last
        given to ``before_forward(batch, "prefill")`` (a prefill chunk, or the samples still decoding);
        None: on all of it. A method that keeps per-sample state from the prompt must index it here."""

    def rows_independent_at_eval(self) -> bool:
        """Whether each sample's evaluation output depends on that sample alone, so that the evaluator
        may split a prompt batch (``bench.train.trainer.generate``). False for anything that couples the
        rows of a forward, such as MoE capacity with token dropping."""
        return True

    def set_eval_task(self, task_index: int | None) -> None:
        """Oracle ablations only (``oracle = True``): the harness announces the true task index before
        evaluating that task's test set, and None afterwards. Never called for other methods."""

    def evaluation_report(self, task_name: str) -> dict[str, Any]:
        """Called after a task's test answers exist (so routing never saw the name): diagnostics for
        that evaluation, e.g. PTL's predicted-task histogram = one row of the confusion matrix."""
        return {}

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (e.g. EvoMoE's EMA evolution of experts 2..N)."""

    # --- reporting -------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """total / trained (this task) / activated per token (see bench.analysis.metrics.count_parameters)."""
        return count_parameters(self.model, self)

    def inactive_parameters_per_token(self) -> int:
        """Parameters the model holds that one text token does not pass through at inference (experts
        outside its top-k, other tasks' routers); 0 for a dense model."""
        return 0

    def task_report(self) -> dict[str, Any]:
        """Per-task diagnostics written into the run record (expert utilisation, probe statistics,
        task-identification confusion, ...)."""
        return {}

    def hparams_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.hp)

    # --- resume ----------------------------------------------------------------------------------
    # One mechanism for every method, so that any run can resume after a task (bench/io/checkpoint.py
    # writes it): ``checkpoint_state`` returns the tensors the
    # method owns or trained plus JSON metadata, ``restore`` re-grows the structure from the metadata
    # and loads the tensors. The generic part lives here; a method only adds, through the two hooks
    # ``state_dict`` / ``load_state_dict``, what the model's own parameters cannot tell: its structure
    # (experts per layer, per-task routers), Python-side state (task counters, phases) and tensors kept
    # outside the model (PTL's VAEs, EvoMoE's beta generator).
    def state_dict(self) -> dict[str, Any]:
        """The method-specific part of a checkpoint: a JSON-able dict that may hold tensors anywhere in
        it (they are stored in safetensors). Default: nothing beyond the model's tensors."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-grow the structure ``state_dict`` described on a freshly attached method (and load any
        tensors kept outside the model). The model's tensors are loaded afterwards by ``restore``."""

    def note_trained(self, params: Iterable[nn.Parameter]) -> None:
        """The harness reports every parameter it trains (or evolves) before a task's training, so a
        base-model tensor trained in place (e.g. the projector, MoE-LLaVA's dense FFNs) is saved too."""
        self._noted.update(id(p) for p in params)

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, meta) for ``bench.io.checkpoint``: every model tensor that is not an untouched tensor
        of the base model (LoRA, experts, routers, row masks, base tensors trained in place) under
        ``model.<name>``, the tensors inside ``state_dict()`` under ``method.<path>``, and JSON metadata
        (method name, hyper-parameters, which parameters were trainable, the method's own state)."""
        return checkpoint_state(self)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of ``checkpoint_state`` on a freshly attached method: re-grow, load, set flags.
        Raises ``methods.state.StateError`` when the checkpoint does not fit this method and model."""
        restore_state(self, tensors, meta)
