"""Putting MoE layers into a LLaVA decoder (by default every other decoder layer, as
MoE-LLaVA).

Methods only change ``language_model.layers[i].mlp``; these helpers find those layers, pick the MoE
ones (``"alternate"`` = 0, 2, 4, ... as MoE-LLaVA's ``range(L)[::2]``, ``"all"``, or explicit ids) and
swap each chosen FFN for whatever module a method builds from it.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from bench.model.layers import decoder_layers

__all__ = ["decoder_layers", "install_moe", "select_moe_layers"]


def select_moe_layers(num_layers: int, moe_layers: str | Sequence[int] = "alternate") -> list[int]:
    """Layer ids that become MoE: ``"alternate"`` (0, 2, 4, ...), ``"all"``, or an explicit list."""
    if moe_layers == "alternate":
        return list(range(num_layers))[::2]
    if moe_layers == "all":
        return list(range(num_layers))
    if isinstance(moe_layers, str):
        raise ValueError(f"moe_layers must be 'alternate', 'all' or a list of ids, not {moe_layers!r}")
    ids = sorted(set(int(i) for i in moe_layers))
    if ids and not (0 <= ids[0] and ids[-1] < num_layers):
        raise ValueError(f"moe layer ids {ids} outside 0..{num_layers - 1}")
    return ids


def install_moe(model: nn.Module, build: Callable[[int, nn.Module], nn.Module],
                moe_layers: str | Sequence[int] = "alternate") -> dict[int, nn.Module]:
    """Replace ``layers[i].mlp`` with ``build(i, old_mlp)`` for each chosen layer; returns {i: new}."""
    layers = decoder_layers(model)
    installed = {}
    for i in select_moe_layers(len(layers), moe_layers):
        installed[i] = build(i, layers[i].mlp)
        layers[i].mlp = installed[i]
    return installed
