"""Where a LLaVA keeps its decoder layers: the one structural fact LoRA injection and MoE installation
need, kept apart from the backbone builders so that importing them does not import transformers."""
from __future__ import annotations

from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a ``LlavaForConditionalGeneration`` (or a bare Llama model)."""
    for path in ("model.language_model.layers", "language_model.layers", "model.layers", "layers"):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise AttributeError(f"no decoder layers found in {type(model).__name__}")
