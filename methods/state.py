"""A method checkpoint, the same for every method (``checkpoint_state`` / ``restore``, called by
``bench.io.checkpoint``): the method's trained parameters and state only; the base model is
referenced, never copied. The method-specific part comes from its ``state_dict`` / ``load_state_dict``
hooks.

    tensors  model.<name>   every model tensor except untouched base-model tensors (LoRA factors,
                            experts, routers and their row masks, base tensors the harness trained)
             method.<path>  tensors found inside the method's own ``state_dict()`` (VAEs, generators)
    meta     {"format", "method", "hparams", "state" (the method's dict, tensors replaced by
              {"__tensor__": key}), "trainable" (parameter names with requires_grad), "base_trained"}

``restore`` is strict: on a freshly attached method it calls the method's ``load_state_dict`` (which
re-grows experts / routers / VAEs), then requires that the model's non-base tensors and the saved
``model.*`` keys are the same set with the same shapes, loads them, and sets ``requires_grad`` exactly
as it was. Any mismatch is a ``StateError`` naming the first differing keys.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import torch
from torch import nn

from methods.base import hparams_dict

FORMAT = 1
MODEL, METHOD, TENSOR_REF = "model.", "method.", "__tensor__"


class StateError(ValueError):
    """A checkpoint that does not fit the method / model it is restored into."""


def _is_base(method, tensor: torch.Tensor) -> bool:
    ref = method._base_tensors.get(id(tensor))
    return ref is not None and ref() is tensor


def _flatten(obj: Any, path: str, out: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of ``obj`` with every tensor moved into ``out`` and replaced by a reference."""
    if torch.is_tensor(obj):
        key = METHOD + path
        out[key] = obj.detach().cpu().clone().contiguous()
        return {TENSOR_REF: key}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{path}.{k}" if path else str(k), out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}.{i}" if path else str(i), out) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {TENSOR_REF}:
            try:
                return tensors[obj[TENSOR_REF]]
            except KeyError:
                raise StateError(f"method state refers to tensor {obj[TENSOR_REF]!r}, absent from the checkpoint") from None
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _hparams(method) -> Any:
    return json.loads(json.dumps(hparams_dict(method), default=str))


def note_trained(method, params: Iterable[nn.Parameter]) -> None:
    """The harness reports every parameter it trains (or evolves) before a task's training
    (``bench.train.phases.train_task``), so a base-model tensor trained in place (e.g. the projector,
    MoE-LLaVA's dense FFNs) is saved too."""
    method._noted.update(id(p) for p in params)


def owned_model_tensors(method) -> dict[str, torch.Tensor]:
    """Model tensors (by state_dict name) the checkpoint must carry: all but untouched base tensors."""
    out = {}
    for name, t in method.model.state_dict(keep_vars=True).items():
        if not _is_base(method, t) or id(t) in method._noted or getattr(t, "requires_grad", False):
            out[name] = t
    return out


def checkpoint_state(method) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) for ``bench.io.checkpoint``: every model tensor that is not an untouched tensor
    of the base model (LoRA, experts, routers, row masks, base tensors trained in place) under
    ``model.<name>``, the tensors inside ``method.state_dict()`` under ``method.<path>``, and JSON metadata
    (method name, hyper-parameters, which parameters were trainable, the method's own state)."""
    if method.model is None:
        raise StateError(f"method {method.name!r} is not attached to a model")
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    base_trained = []
    for name, t in owned_model_tensors(method).items():
        # the same tensor under two names (tied weights) is stored once, as safetensors requires
        tensors[MODEL + name] = t.detach().cpu().clone().contiguous() if id(t) not in seen else tensors[seen[id(t)]]
        seen.setdefault(id(t), MODEL + name)
        if _is_base(method, t):
            base_trained.append(name)
    state = _flatten(method.state_dict(), "", tensors)
    meta = {
        "format": FORMAT,
        "method": method.name,
        "hparams": _hparams(method),
        "state": state,
        "trainable": sorted(n for n, p in method.model.named_parameters() if p.requires_grad),
        "base_trained": sorted(base_trained),
    }
    return tensors, meta


def restore(method, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of ``checkpoint_state`` on a freshly attached method: re-grow (``load_state_dict``), load,
    set flags. Raises ``StateError`` when the checkpoint does not fit this method and model."""
    if method.model is None:
        raise StateError(f"attach method {method.name!r} to a model before restoring it")
    if meta.get("format") != FORMAT:
        raise StateError(f"method checkpoint format {meta.get('format')!r}; this code reads format {FORMAT}")
    if meta.get("method") != method.name:
        raise StateError(f"checkpoint of method {meta.get('method')!r} cannot be restored into {method.name!r}")
    if meta.get("hparams") != _hparams(method):
        raise StateError(f"checkpoint hyper-parameters {meta.get('hparams')} differ from the method's {_hparams(method)}")
    try:
        method.load_state_dict(_unflatten(meta["state"], tensors))
    except (ValueError, RuntimeError, KeyError) as e:
        if isinstance(e, StateError):
            raise
        raise StateError(f"method {method.name!r} could not re-grow its saved structure: {e}") from None

    model = method.model
    current = model.state_dict(keep_vars=True)
    base_trained = set(meta.get("base_trained", []))
    expected = {n for n, t in current.items() if not _is_base(method, t) or n in base_trained}
    saved = {k[len(MODEL):] for k in tensors if k.startswith(MODEL)}
    if expected != saved:
        missing, extra = sorted(expected - saved), sorted(saved - expected)
        raise StateError(f"checkpoint does not match the re-grown {method.name!r} model: "
                         f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                         f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    with torch.no_grad():
        for name in sorted(saved):
            src, dst = tensors[MODEL + name], current[name]
            if tuple(src.shape) != tuple(dst.shape) or src.dtype != dst.dtype:
                raise StateError(f"checkpoint tensor {name!r} is {tuple(src.shape)} {src.dtype}, "
                                 f"the model's is {tuple(dst.shape)} {dst.dtype}")
            dst.copy_(src)
    trainable = set(meta.get("trainable", []))
    named = dict(model.named_parameters())
    unknown = trainable - set(named)
    if unknown:
        raise StateError(f"checkpoint marks unknown parameters trainable: {sorted(unknown)[:5]}")
    for name, p in named.items():
        p.requires_grad_(name in trainable)
    note_trained(method, (current[n] for n in base_trained))
