"""Continual-learning metrics: pure functions of the accuracy matrix.

``A`` has T+1 rows and T columns: ``A[0]`` is the base model before any task, ``A[i][j]`` the
accuracy (percent) on task j after training through task i (both 1-indexed in the formulas below,
row index i and column index j-1 in code). A joint-training record has only rows 0 and "after all";
the per-stage metrics are then undefined and returned as None.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

METRIC_DEFS_VERSION = 1
Matrix = Sequence[Sequence[float]]


def _full(A: Matrix) -> int | None:
    """T if A is a full (T+1) x T continual matrix, else None."""
    T = len(A[0]) if A else 0
    return T if T and len(A) == T + 1 else None


def last(A: Matrix) -> float:
    """Last / MFN = mean_j A[T][j]: the mean accuracy after the final stage."""
    return sum(A[-1]) / len(A[-1])


def mft(A: Matrix) -> float | None:
    """MFT = mean_i A[i][i]: accuracy right after learning each task (the no-forgetting reference)."""
    T = _full(A)
    return None if T is None else sum(A[i][i - 1] for i in range(1, T + 1)) / T


def maa(A: Matrix) -> float | None:
    """MAA = mean_i ( mean_{j<=i} A[i][j] ): the average accuracy on seen tasks, averaged over stages."""
    T = _full(A)
    if T is None:
        return None
    return sum(sum(A[i][:i]) / i for i in range(1, T + 1)) / T


def bwt(A: Matrix) -> float | None:
    """BWT = 1/(T-1) * sum_{j<T} (A[T][j] - A[j][j]); negative means forgetting."""
    T = _full(A)
    if T is None or T < 2:
        return None
    return sum(A[T][j - 1] - A[j][j - 1] for j in range(1, T)) / (T - 1)


def forgetting(A: Matrix) -> float | None:
    """Forgetting = 1/(T-1) * sum_{j<T} max_{i in [j, T-1]} (A[i][j] - A[T][j]) (Chaudhry et al.)."""
    T = _full(A)
    if T is None or T < 2:
        return None
    return sum(max(A[i][j - 1] for i in range(j, T)) - A[T][j - 1] for j in range(1, T)) / (T - 1)


def fwt(A: Matrix) -> float | None:
    """FWT = 1/(T-1) * sum_{j>=2} (A[j-1][j] - A[0][j]): what earlier tasks give a task before it is trained."""
    T = _full(A)
    if T is None or T < 2:
        return None
    return sum(A[j - 1][j - 1] - A[0][j - 1] for j in range(2, T + 1)) / (T - 1)


def summarize(A: Matrix) -> dict[str, float | None]:
    return {"last": last(A), "mft": mft(A), "maa": maa(A), "bwt": bwt(A), "forgetting": forgetting(A),
            "fwt": fwt(A), "metric_defs_version": METRIC_DEFS_VERSION}


def count_parameters(model: nn.Module, method: Any = None) -> dict[str, int]:
    """Parameter counts for the record: ``total`` (every parameter the model holds, backbone included),
    ``trained`` (parameters with requires_grad at this moment, i.e. trained in the current task) and
    ``activated_per_token`` (what one text token passes through at inference: total minus the vision
    tower and projector, minus the experts a token does not use, as the method reports them)."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inner = getattr(model, "model", model)
    vision = sum(p.numel() for name in ("vision_tower", "multi_modal_projector")
                 for p in (getattr(inner, name).parameters() if hasattr(inner, name) else []))
    inactive = method.inactive_parameters_per_token() if method is not None else 0
    return {"total": total, "trained": trained, "activated_per_token": total - vision - inactive}
