"""The tiny two-task run of each method, trained once per session and shared by every test that
checks that same run (the registry test, and the per-method record tests), instead of each test
training it again. A run is observed while it trains (frozen check, parameter totals and FFN
snapshots around every phase) and keeps its live method and model for the checks after it; tests
must treat what they get as read-only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from frozen_check import FrozenCheck  # tests/ is on sys.path through its conftest.py

from bench.config import RunConfig
from bench.io.records import read_record
from bench.run.protocol import run


@dataclass
class TinyRun:
    """One finished tiny run and what was observed while it trained."""

    cfg: RunConfig
    record: dict[str, Any]
    method: Any                     # the live method and model after the last task
    model: Any
    frozen: FrozenCheck             # its ``checked`` counts the phases it checked
    totals: list[int] = field(default_factory=list)   # the model's parameter count before every phase
    phases: list[tuple[int, str, int]] = field(default_factory=list)  # (stage, phase name, evolving count)
    # per stage, the decoder FFN parameters (".mlp." in the name) after the stage's last phase
    ffn_after: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


@pytest.fixture(scope="session")
def tiny_run(session_tiny_config):
    """``tiny_run(name)``: the default tiny two-task run of method ``name`` (``tiny_config(method=name)``),
    trained on first use and reused by later tests of the session."""
    make = session_tiny_config
    runs: dict[str, TinyRun] = {}

    def get(name: str) -> TinyRun:
        if name not in runs:
            cfg = make(method=name)
            frozen = FrozenCheck()
            live: dict[str, Any] = {}
            totals: list[int] = []
            phases: list[tuple[int, str, int]] = []
            ffn_after: dict[int, dict[str, torch.Tensor]] = {}

            def before(t, method, model, phase):
                live.update(method=method, model=model)
                totals.append(sum(p.numel() for p in model.parameters()))
                phases.append((t, phase.name, len(phase.evolving)))
                frozen.before(t, method, model, phase)

            def after(t, method, model, phase):
                frozen.after(t, method, model, phase)
                ffn_after[t] = {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp." in n}

            frozen.before_train, frozen.after_train = before, after
            record = read_record(run(cfg, frozen))
            runs[name] = TinyRun(cfg, record, live["method"], live["model"], frozen, totals, phases, ffn_after)
        return runs[name]

    return get
