"""The process's random generators as one JSON-able value: python ``random``, numpy's global generator,
torch's CPU generator and every CUDA device's. A checkpoint stores it so that a resumed run draws
exactly what the uninterrupted run drew; :func:`preserved_rng` wraps work (a tracked lm-eval
evaluation) that must leave the run's draws unchanged."""
from __future__ import annotations

import base64
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """python ``random``, numpy and torch (CPU and every CUDA device) generator states."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": [version, list(mt), gauss],
                             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
                             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back to ``state`` (a :func:`rng_state` value)."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave every generator as it was on entry, whatever the block draws."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
