"""Sharded training through accelerate: FSDP2 or DeepSpeed ZeRO-1/2, chosen by the accelerate config.

    accelerate launch --config_file bench/configs/fsdp-8gpu.yaml -m bench run --method cmoe ...

The harness's methods change the model between tasks (new experts, frozen experts, per-task routers)
and between the phases of a task (cmoe's probe, EvoMoE's router phase), and they evaluate, probe and
fit their task locators on the plain module tree. So sharding lives inside one training phase:

* **FSDP** (``fsdp_version: 2``; torch's ``fully_shard`` through accelerate's plugin). At the start of
  every phase the trainer prepares the model, its optimizer, schedule and loader together with
  accelerate, which shards the module tree in place (the auto-wrap policy's units, per-parameter
  sharding: frozen and trainable parameters share a unit) and points the optimizer at the shards.
  Gradients, AdamW state and the trained parameters' masters live 1/N per rank. When the phase ends,
  ``ShardedPhase.restore`` writes each trained parameter's full value (``DTensor.full_tensor``,
  an all-gather) back into the parameter object the method owns and puts the module tree back as it
  was before the phase (classes, registered parameters, hooks), so evaluation, the method's work
  between phases and the checkpoints (full tensors, loadable with any process count) see whole
  parameters. Between phases every rank holds the whole model, as in a data-parallel run.
* **DeepSpeed ZeRO-1/2** shards optimizer state (and gradients) only; parameters stay whole, so the
  model is prepared with its optimizer per phase and nothing needs restoring. ZeRO-3 partitions
  parameters in place the way FSDP does, without a way back to whole parameters between phases:
  use FSDP for parameter sharding.

A method whose ``after_optimizer_step`` changes parameters outside the optimizer (EvoMoE's expert
evolution) holds references that FSDP replaces by shards for the duration of a phase; under FSDP it
is refused before any work (``check_method``).

accelerate enables FSDP only on accelerator devices; torch's FSDP2 runs on CPU processes with gloo,
so a multi-process CPU run whose accelerate config asks for FSDP (``ACCELERATE_USE_FSDP``) gets
accelerate's FSDP2 code path by setting the distributed type accelerate sets on GPUs
(``enable_cpu_fsdp``). That is how the CPU tests run FSDP; torch's FSDP1 refuses CPU processes
("FSDP needs a non-CPU accelerator device"), so version 1 is not supported.
"""
from __future__ import annotations

import os
from typing import Any
import functools

import torch
from torch import nn
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate import PartialState
from torch.distributed.tensor import DTensor
from torch.distributed import _composable_state

from bench.config import ConfigError
from methods.base import ContinualMethod

FSDP, DEEPSPEED = "fsdp", "deepspeed"


def kind(accelerator) -> str | None:
    """``"fsdp"``, ``"deepspeed"`` or None (one process, or data-parallel DDP)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return FSDP
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return DEEPSPEED
    return None


def describe(accelerator) -> str:
    """What the record's budget says about sharding: ``fsdp2`` / ``deepspeed-zero2`` / ``no``."""
    k = kind(accelerator)
    if k == FSDP:
        return f"fsdp{accelerator.state.fsdp_plugin.fsdp_version}"
    if k == DEEPSPEED:
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    return "no"


def fsdp_requested() -> bool:
    """``accelerate launch`` with an FSDP config exports ACCELERATE_USE_FSDP=true to every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def enable_cpu_fsdp(accelerator) -> None:
    """Give a multi-process CPU (gloo) run accelerate's FSDP2 path; see the module docstring."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch exported
    # AcceleratorState copies PartialState's fields whenever it is instantiated again (accelerate's
    # optimizer and loader wrappers do), so both shared states get the type
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP


def check_accelerator(accelerator) -> None:
    """Refuse the sharded set-ups the per-phase scheme cannot serve, with the setting to change."""
    k = kind(accelerator)
    if k == FSDP:
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version != 2:
            raise ConfigError("FSDP needs fsdp_version: 2 in the accelerate config (torch's fully_shard). Methods "
                              "change the model between training phases, and the harness restores whole parameters "
                              "after each phase, which it does for FSDP2's per-parameter shards; bench/configs/"
                              "fsdp-8gpu.yaml is an example.")
        if plugin.cpu_ram_efficient_loading:
            raise ConfigError("fsdp_cpu_ram_efficient_loading must be false: it moves the model to the meta device "
                              "at every prepare, and the model is prepared once per training phase here.")
        if plugin.activation_checkpointing:
            raise ConfigError("fsdp_activation_checkpointing must be false: it wraps modules in checkpoint "
                              "wrappers, which changes the module tree the methods own; pass "
                              "--gradient-checkpointing instead (transformers' gradient checkpointing, same memory).")
    elif k == DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage not in (0, 1, 2):
            raise ConfigError(f"DeepSpeed ZeRO-{stage} partitions parameters in place, and the methods change the "
                              "model between training phases; use ZeRO-2 (bench/configs/deepspeed-zero2-8gpu.yaml) or "
                              "FSDP (bench/configs/fsdp-8gpu.yaml) to shard parameters.")


def check_method(method, accelerator) -> None:
    """A method that updates parameters outside the optimizer cannot be trained under FSDP."""
    if kind(accelerator) == FSDP and type(method).after_optimizer_step is not ContinualMethod.after_optimizer_step:
        raise ConfigError(f"method {method.name} changes parameters after every optimiser step outside the optimizer "
                          "(after_optimizer_step), through references that FSDP replaces by shards during a training "
                          "phase, so it cannot be sharded with FSDP. Run it data-parallel (bench/configs/"
                          "ddp-8gpu.yaml) or with DeepSpeed ZeRO-2 (bench/configs/deepspeed-zero2-8gpu.yaml).")


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


class ShardedPhase:
    """The module tree before ``fully_shard`` changes it in place, and its restoration after the phase.

    Kept per module: its class, its registered parameters (the very objects the method holds) and the
    ids of its hooks. ``restore`` copies the trained values in from the shards (all ranks take part:
    each ``full_tensor`` is an all-gather), then puts back classes and parameters, drops the hooks
    ``fully_shard`` registered and the per-module FSDP state it added, so the next phase can shard the
    tree again. This is the one place that knows FSDP2's in-place changes; torch offers no inverse of
    ``fully_shard``, and the test of 2-process FSDP runs (tests/bench/test_fsdp.py) exercises it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = [(m, m.__class__, dict(m._parameters), set(vars(m)),
                         {h: set(getattr(m, h, {}) or {}) for h in _HOOK_DICTS}) for m in model.modules()]
        self.names = {name: p for name, p in model.named_parameters()}

    @torch.no_grad()
    def restore(self) -> None:
        now = dict(self.model.named_parameters())
        for name, original in self.names.items():
            shard = now.get(name)
            if shard is None or shard is original or not original.requires_grad:
                continue  # frozen: the original object never changed
            full = shard.full_tensor() if isinstance(shard, DTensor) else shard.detach()
            if original.data.dtype != full.dtype or original.data.shape != full.shape:
                original.data = full.to(original.device).clone()
            else:
                original.data.copy_(full)
        for m, cls, params, keys, hooks in self.modules:
            m.__class__ = cls
            m._parameters.clear()
            m._parameters.update(params)
            for key in set(vars(m)) - keys:
                if key.startswith("__composable_api") or key.startswith("_fsdp") or key == "_is_fsdp_managed_module":
                    delattr(m, key) if not key.startswith("__") else vars(m).pop(key)
            for h, ids in hooks.items():
                d = getattr(m, h, None)
                for hid in [i for i in (d or {}) if i not in ids and _from_fsdp(d[i])]:
                    del d[hid]  # hooks others added meanwhile (transformers' output capturing) stay
            _composable_state._module_state_mapping.pop(m, None)


def _from_fsdp(hook) -> bool:
    """Whether a module hook was registered by torch's FSDP (its function lives in torch.distributed.fsdp)."""
    fn = getattr(hook, "hook", hook)  # load_state_dict hooks are wrapped
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__module__", "").startswith("torch.distributed.fsdp")


def prepare_phase(accelerator, model: nn.Module, optimizer, scheduler, loader) -> tuple[Any, ...]:
    """(wrapped model, optimizer, scheduler, loader, restore callable, parameters to clip) for one
    sharded training phase; the model, optimizer, schedule and loader are prepared together, as
    FSDP2 and DeepSpeed need."""
    k = kind(accelerator)
    phase = ShardedPhase(model) if k == FSDP else None
    wrapped, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    if k == FSDP:
        # Experts outside a batch's top-k get no gradient on one rank and some on another: reduce zeros
        # for them so every rank runs the same reduce-scatters (FSDP's find_unused_parameters).
        wrapped.set_reduce_scatter_unused_params(True)
    clip = [p for group in optimizer.param_groups for p in group["params"]]
    return wrapped, optimizer, scheduler, loader, (phase.restore if phase else (lambda: None)), clip


def clip_grad_norm(accelerator, params: list[nn.Parameter], max_norm: float) -> None:
    """Clip the global gradient norm of the trained parameters. accelerate's ``clip_grad_norm_`` under FSDP
    clips only when given every parameter of the model; torch's handles the sharded (DTensor) gradients
    of any subset, reducing the norm over the ranks; DeepSpeed clips inside its engine."""
    k = kind(accelerator)
    if k == FSDP:
        accelerator.unscale_gradients()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif k == DEEPSPEED:
        return
    else:
        accelerator.clip_grad_norm_(params, max_norm)
