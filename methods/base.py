"""The ContinualMethod interface: the hooks the harness calls, and nothing else.

The harness calls, for a run over tasks 1..T (``bench.run.protocol``):

    method = registry.get(name)(hparams)          # hparams: the method's dataclass, from --set
    method.attach(model, ctx)                     # once, on the stage-0 base model
    for t, task in enumerate(tasks):
        method.begin_task(t, task, train_loader)  # expand / freeze
        for phase in method.training_phases(t, task, train_loader, steps):   # default: one phase
            for every micro-batch:
                method.before_forward(batch, "train")
                loss = LM + method.auxiliary_loss()
                after every optimiser step: method.after_optimizer_step()
        parameter counts (inactive_parameters_per_token())
        method.end_task(t, task, train_loader)    # fit statistics, ...
        method.task_report()                      # into the record
        evaluate every task (task-agnostic: no task id reaches the model):
            before_forward(batch, "prefill" | "decode"), select_rows(rows), then evaluation_report(name)
    checkpoint after each task: state_dict(); on resume: load_state_dict(state)

The hooks, by group (each docstring says when the harness calls it):

    lifecycle   attach, begin_task, training_phases, end_task
    forward     before_forward, auxiliary_loss, after_optimizer_step, select_rows
    reporting   task_report, evaluation_report, inactive_parameters_per_token
    resume      state_dict, load_state_dict

and the class data the harness reads: ``name``, ``HParams``, ``joint_training``, ``oracle``,
``rows_independent_at_eval`` and, for oracle ablations, the instance field ``eval_task``.
Services every method shares are free functions, not methods: ``trainable_parameters(model)`` and
``hparams_dict(method)`` here; ``checkpoint_state``, ``restore`` and ``note_trained`` in
:mod:`methods.state`; the record's parameter counts in ``bench.analysis.metrics.count_parameters``.

``train_loader`` yields model-ready batches (dicts of tensors: input_ids, attention_mask, pixel_values,
labels, ...) that a method may iterate for probing or for fitting a task locator; a method must not
keep those batches after ``end_task`` returns (no replay unless the method is a replay method).
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
from torch import nn


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
    ``parameters``: what the phase's optimiser updates, in this order (the order of AdamW's state).
    ``evolving``: parameters the phase changes WITHOUT gradient (never in the optimiser; e.g. EvoMoE's
    experts 2..N moved by EMA in ``after_optimizer_step``); they count as trained in the record and a
    checkpoint saves them. ``loader``: None = the task's loader. ``lr``: None = the run's.
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


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters with ``requires_grad``, in ``model.parameters()`` order: what the default
    ``training_phases`` trains, and so the order of its optimiser's state."""
    return [p for p in model.parameters() if p.requires_grad]


def hparams_dict(method: "ContinualMethod") -> dict[str, Any]:
    """The method's hyper-parameters as a dict (the run record's ``hparams``)."""
    return dataclasses.asdict(method.hp)


def search_space(hp_cls: type[MethodHParams]) -> dict[str, tuple]:
    """The tuning grid of a hyper-parameter class: every ``search`` along its class hierarchy, a
    subclass's entry replacing its base's for the same knob."""
    space: dict[str, tuple] = {}
    for cls in reversed(hp_cls.__mro__):
        space.update(cls.__dict__.get("search", {}))
    return space


class ContinualMethod:
    """Base class: a method owns the layers it installs and decides which parameters train."""

    # --- class data the harness reads ------------------------------------------------------------
    name: ClassVar[str] = ""  # set by ``methods.register``
    HParams: ClassVar[type[MethodHParams]] = MethodHParams
    # True for reference points that see all tasks at once (multitask); the protocol then trains one
    # stage on the union and evaluates once. Every other method sees tasks one at a time.
    joint_training: ClassVar[bool] = False
    # True when an ablation gives the model privileged information (oracle task id); recorded, and
    # the harness then sets ``eval_task`` around each task's evaluation.
    oracle: ClassVar[bool] = False
    # Whether each sample's evaluation output depends on that sample alone, so that the evaluator may
    # split a prompt batch into chunks and drop finished rows (``select_rows``). False for anything that
    # couples the rows of a forward, such as MoE capacity with token dropping; a method whose answer
    # depends on its configuration makes it a property (``methods.moe_base.MoEMethod``).
    rows_independent_at_eval: bool = True

    def __init__(self, hparams: MethodHParams | None = None):
        self.hp = hparams if hparams is not None else self.HParams()
        self.model: nn.Module | None = None
        self.ctx: MethodContext | None = None
        # Oracle ablations only (``oracle = True``): the true index of the task whose test set the
        # harness is evaluating, None outside that evaluation. Never set for other methods.
        self.eval_task: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: MethodContext) -> None:
        """Called once, on the stage-0 base model, before row 0 is evaluated (and on a fresh model
        before a resume). Freezes the whole model and remembers its tensors; a method that adds
        layers at attach time calls ``super().attach(model, ctx)`` first, then installs them."""
        self.model, self.ctx = model, ctx
        for p in model.parameters():
            p.requires_grad_(False)
        # The base model's tensors, by identity: a checkpoint references them instead of copying them.
        # Weak references, so a tensor a method replaces (e.g. an FFN turned into experts) can be freed.
        self._base_tensors = {id(t): weakref.ref(t) for t in model.state_dict(keep_vars=True).values()}
        self._noted: set[int] = set()  # base tensors the harness trained in place (methods.state.note_trained)

    def begin_task(self, task_index: int, task, train_loader) -> None:
        """Called before task ``task_index``'s training: grow, freeze, reset per-task statistics."""

    def training_phases(self, task_index: int, task, train_loader, steps: int) -> Iterator[TrainingPhase]:
        """Called once per task, after ``begin_task``: the task's training as phases the harness runs one
        after the other (``bench.train.phases.train_task``). Default: one phase of ``steps`` on every
        parameter with ``requires_grad`` (``trainable_parameters``)."""
        yield TrainingPhase("task", trainable_parameters(self.model), steps)

    def end_task(self, task_index: int, task, train_loader) -> None:
        """Called after the task's training (and its parameter counts), before ``task_report`` and the
        evaluation row: fit statistics on the task's data, freeze what the task trained."""

    # --- forward ---------------------------------------------------------------------------------
    def before_forward(self, batch: dict[str, torch.Tensor], phase: str) -> None:
        """Called with every batch before the model runs. ``phase`` is ``"train"``, ``"prefill"`` (the
        prompt at evaluation) or ``"decode"`` (one generated token per sample, KV cache in use).
        Lets a method see input-level information such as the image-token mask or pick a router
        (PTL) from the prompt; the model itself never receives a task id."""

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Called once per training micro-batch, right after its forward: a term added to the LM loss
        (e.g. load balancing, already multiplied by its coefficient), or None."""
        return None

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (e.g. EvoMoE's EMA evolution of experts 2..N)."""

    def select_rows(self, rows: torch.Tensor | None) -> None:
        """Evaluation only: the next forwards run on rows ``rows`` (long, ascending) of the batch last
        given to ``before_forward(batch, "prefill")`` (a prefill chunk, or the samples still decoding);
        None: on all of it. A method that keeps per-sample state from the prompt must index it here.
        With ``rows_independent_at_eval`` False the batch is never split and only None comes."""

    # --- reporting -------------------------------------------------------------------------------
    def task_report(self) -> dict[str, Any]:
        """Called after each task's ``end_task``, before its evaluation row: per-task diagnostics written
        into the run record (expert utilisation, probe statistics, ...). Must be JSON-able."""
        return {}

    def evaluation_report(self, task_name: str) -> dict[str, Any]:
        """Called after a task's test answers exist (so routing never saw the name): diagnostics for
        that evaluation, e.g. PTL's predicted-task histogram = one row of the confusion matrix."""
        return {}

    def inactive_parameters_per_token(self) -> int:
        """Called for the record's parameter counts after each task's training, before ``end_task``
        (``bench.analysis.metrics.count_parameters``): parameters the model holds that
        one text token does not pass through at inference (experts outside its top-k, other tasks'
        routers); 0 for a dense model."""
        return 0

    # --- resume ----------------------------------------------------------------------------------
    # One mechanism for every method, so that any run can resume after a task (bench/io/checkpoint.py
    # writes it): ``methods.state.checkpoint_state`` saves the tensors the method owns or trained plus
    # JSON metadata, ``methods.state.restore`` re-grows the structure from the metadata and loads the
    # tensors. A method only adds, through these two hooks, what the model's own parameters cannot
    # tell: its structure (experts per layer, per-task routers), Python-side state (task counters,
    # phases) and tensors kept outside the model (PTL's VAEs, EvoMoE's beta generator).
    def state_dict(self) -> dict[str, Any]:
        """Called when a checkpoint is written after a task: the method-specific part, a JSON-able dict
        that may hold tensors anywhere in it (they are stored in safetensors). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Called on resume, on a freshly attached method: re-grow the structure ``state_dict``
        described (and load any tensors kept outside the model). The model's tensors are loaded
        afterwards by ``methods.state.restore``."""
