"""The one training loop every method shares.

``train_steps`` runs a fixed number of optimiser steps through `accelerate` (device, mixed precision,
gradient accumulation, data parallelism), on exactly the parameters it is given, with
``loss = LM loss on answer tokens + method.auxiliary_loss()``. Decoding (the shared evaluator) is
``bench.decode.generate``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.train import sharding

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels")


@dataclass
class TrainStats:
    steps: int
    seconds: float  # the whole call after set-up: the step loop plus releasing accelerate's references
    trained_parameters: int
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last log)
    loop_seconds: float = 0.0  # the step loop alone (what `python -m bench perf trainer` compares)

    @property
    def final_loss(self) -> float:
        return self.loss_curve[-1][1] if self.loss_curve else float("nan")


def _cycle(loader) -> Iterator[dict[str, torch.Tensor]]:
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def cosine_with_warmup(optimizer, warmup: int, total: int):
    """Linear warm-up to the peak lr, then cosine decay to 0 (CoIN's recipe, warm-up ratio 0.03)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_steps(model: nn.Module, params: Iterable[nn.Parameter], loader, steps: int, *, accelerator, lr: float,
                warmup_ratio: float = 0.03, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                aux_loss: Callable[[], torch.Tensor | None] = lambda: None,
                before_forward: Callable[[dict, str], None] = lambda b, p: None,
                after_step: Callable[[], None] = lambda: None,
                desc: str = "train", log_every: int = 25, compile: bool = False) -> TrainStats:
    """``steps`` optimiser steps of ``loss = LM loss + aux_loss()`` on ``params``.

    The step loop never synchronises with the device except at the logging interval (``.item()`` of
    the running loss every ``log_every`` steps); ``compile=True`` runs the forward/backward through
    ``torch.compile`` (off by default; a failure to compile is reported as a RuntimeError naming the
    cause, e.g. a missing C++ compiler for inductor on CPU)."""
    params = list({id(p): p for p in params if p.requires_grad}.values())  # unique, order kept
    if not params:
        raise RuntimeError(f"{desc}: the method exposes no trainable parameters")
    n_trained = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    scheduler = cosine_with_warmup(optimizer, int(round(warmup_ratio * steps)), steps)
    # The model is wrapped (DDP) only when there is more than one process: methods change the
    # module tree between tasks, so wrapping happens per phase and the raw module stays the owner.
    # Sharded (FSDP2, DeepSpeed ZeRO-1/2): model, optimizer, schedule and loader are prepared together,
    # and FSDP's in-place sharding is undone when the phase ends (bench.train.sharding).
    if sharding.kind(accelerator):
        wrapped, optimizer, scheduler, loader, unshard, clip = sharding.prepare_phase(
            accelerator, model, optimizer, scheduler, loader)
    else:
        wrapped = accelerator.prepare_model(model) if accelerator.num_processes > 1 else model
        optimizer, scheduler, loader = accelerator.prepare(optimizer, scheduler, loader)
        unshard, clip = (lambda: None), params
    forward = compiled_forward(wrapped, desc) if compile else wrapped
    model.train()
    batches = _cycle(loader)
    running = torch.zeros((), device=accelerator.device)
    curve: list[tuple[int, float]] = []
    since = 0
    start = time.perf_counter()
    accum = accelerator.gradient_accumulation_steps
    bar = tqdm(total=steps, desc=desc, disable=not accelerator.is_local_main_process, leave=False, mininterval=1.0)
    for step in range(steps):
        for _ in range(accum):
            batch = next(batches)
            with accelerator.accumulate(wrapped), accelerator.autocast():
                before_forward(batch, "train")
                out = forward(**{k: batch[k] for k in MODEL_KEYS if k in batch})
                loss = out.loss
                aux = aux_loss()
                if aux is not None:
                    loss = loss + aux
                accelerator.backward(loss)
                if accelerator.sync_gradients and max_grad_norm:
                    sharding.clip_grad_norm(accelerator, clip, max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += out.loss.detach()
            since += 1
        after_step()
        # Synchronise with the device only at the logging interval, never per step.
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append((step + 1, float(running.item()) / since))
            running.zero_()
            since = 0
            bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
        bar.update(1)
    loop_seconds = time.perf_counter() - start
    bar.close()
    accelerator.wait_for_everyone()
    unshard()  # FSDP: whole trained parameters back in the method's own parameter objects
    # accelerate keeps every prepared optimizer/loader alive; a continual run prepares one per task.
    _release(accelerator)
    model.eval()
    return TrainStats(steps=steps, seconds=time.perf_counter() - start, trained_parameters=n_trained, loss_curve=curve,
                      loop_seconds=loop_seconds)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """transformers' gradient checkpointing: each decoder layer's activations are recomputed in the
    backward pass instead of kept (``--gradient-checkpointing``). It acts only in training mode, so
    evaluation and a method's probing forwards are unchanged. Non-reentrant: frozen inputs need no
    gradient, and the RNG state is replayed, so stochastic routing recomputes the same choices. A MoE
    layer's usage counters see each training token twice (the fractions they report are unchanged)."""
    inner = getattr(model, "module", model)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise RuntimeError(f"--gradient-checkpointing: {type(inner).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # the name since transformers 5.24
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _release(accelerator) -> None:
    """``accelerator.free_memory()`` without its ``gc.collect()`` (~0.3 s per call on the tiny preset,
    once per task): drop accelerate's references to this call's optimizer, scheduler and loader and
    let reference counting free them; on a GPU also return the cached blocks. Falls back to
    ``free_memory`` where accelerate's internals differ, or under DeepSpeed."""
    names = ("_schedulers", "_optimizers", "_models", "_dataloaders")
    if getattr(accelerator, "deepspeed_engine_wrapped", None) is not None or \
            not all(isinstance(getattr(accelerator, n, None), list) for n in names):
        accelerator.free_memory()
        return
    for n in names:
        setattr(accelerator, n, [])
    accelerator.step = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def compiled_forward(model: nn.Module, desc: str = "train") -> Callable[..., Any]:
    """``torch.compile(model)`` whose first call turns a compilation failure into one clear error.
    Compiled per ``train_steps`` call: methods change the module tree between tasks."""
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"{desc}: --compile needs torch >= 2.0 (torch.compile); this is torch {torch.__version__}.")
    compiled = torch.compile(model)
    first = [True]

    def forward(**kwargs):
        if not first[0]:
            return compiled(**kwargs)
        try:
            out = compiled(**kwargs)
        except Exception as e:  # inductor/dynamo errors come in many types
            raise RuntimeError(f"{desc}: --compile failed: torch.compile could not compile the model on "
                               f"{next(model.parameters()).device.type} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                               "On CPU, inductor needs a working C++ compiler (gcc/g++ or clang on PATH); "
                               "run without --compile.") from e
        first[0] = False
        return out

    return forward
