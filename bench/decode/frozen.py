"""Proof that a frozen part of a model is still the same function, so what it computed can be reused.

Evaluation recomputes the same things every row: the image features of the same test images (vision
tower + projector) and, for LLaVA-CMoE, the base model's last-token features PTL locates tasks with.
Both paths are frozen in most runs, and then their outputs on the same inputs are the same tensors;
``modules_fingerprint`` states everything such an output depends on besides its inputs, and reuse is
allowed only while the fingerprint is equal to the one the output was computed under.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.nn.modules import module as module_mod


def passive_hook(hook) -> bool:
    """transformers' own output-capturing hooks (installed lazily on the vision layers the first time
    hidden states are selected) only record outputs; any other hook may change them."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing"


def global_hooks_present() -> bool:
    return any(getattr(module_mod, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                             "_global_forward_hooks_with_kwargs"))


def modules_fingerprint(roots: Iterable[tuple[str, nn.Module]], *, require_eval: bool = True) -> list[Any] | None:
    """The identity, class (and, with ``require_eval``, eval mode) of every module under ``roots``, and
    the identity, storage, version counter (bumped by every in-place write: optimiser steps,
    ``copy_``, ``load_state_dict``), dtype and shape of every parameter and buffer. None when the
    output cannot be proven unchanged: a trainable parameter (``requires_grad``), a forward hook other
    than transformers' output capturing, a patched ``forward``, a module in training mode (with
    ``require_eval``), or a global module hook."""
    if global_hooks_present():
        return None
    parts: list[Any] = []
    for root_name, root in roots:
        for name, m in root.named_modules():
            hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
            if any(not passive_hook(h) for h in hooks) or "forward" in m.__dict__ or (require_eval and m.training):
                return None
            parts.append((root_name, name, id(m), type(m)))
        for name, t in [*root.named_parameters(), *root.named_buffers()]:
            if t.requires_grad:
                return None
            parts.append((root_name, name, id(t), t._version, t.data_ptr(), t.dtype, tuple(t.shape)))
    return parts


def batch_digest(batch: Mapping[str, Any], keys: Iterable[str]) -> bytes:
    """A content hash of the named tensors of a batch (dtype, shape and bytes; an absent key counts),
    so a cache keyed by it can never hand one batch's output to another."""
    h = hashlib.blake2b(digest_size=20)
    for key in keys:
        t = batch.get(key)
        if t is None:
            h.update(f"{key}:-;".encode())
            continue
        t = t.detach().contiguous().cpu()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.digest()
