"""Every registered method gets the same tiny two-task end-to-end run: a valid record with finite
metrics, and parameters the method did not expose for training are bit-identical after each task."""
from __future__ import annotations

import math

import pytest
import torch

import methods
from bench.protocol import Hooks, run
from bench.records import read_record


class FrozenCheck(Hooks):
    """Snapshots the parameters a method leaves out of training and compares them after training."""

    def __init__(self):
        super().__init__(before_train=self.before, after_train=self.after)
        self.frozen: dict[str, torch.Tensor] = {}
        self.trained: dict[str, torch.Tensor] = {}
        self.checked = 0

    def before(self, t, method, model):
        trainable = {id(p) for p in method.trainable_parameters()}
        evolving = {id(p) for p in method.evolving_parameters()}
        named = list(model.named_parameters())
        self.frozen = {n: p.detach().clone() for n, p in named if id(p) not in trainable | evolving}
        self.trained = {n: p.detach().clone() for n, p in named if id(p) in trainable}
        assert self.trained, f"{method.name} exposes no trainable parameters in stage {t}"

    def after(self, t, method, model):
        now = dict(model.named_parameters())
        changed = [n for n, v in self.frozen.items() if not torch.equal(v, now[n].detach())]
        assert not changed, f"{method.name}: frozen parameters changed in stage {t}: {changed[:5]}"
        assert any(not torch.equal(v, now[n].detach()) for n, v in self.trained.items()), \
            f"{method.name}: no trainable parameter moved in stage {t}"
        self.checked += 1


@pytest.mark.parametrize("name", methods.names())
def test_method_runs_two_tasks(name, tiny_config):
    cfg = tiny_config(method=name)
    hooks = FrozenCheck()
    record = read_record(run(cfg, hooks))
    expected_stages = 1 if methods.get(name).joint_training else 2
    assert hooks.checked == expected_stages
    assert record["method"] == name and record["tasks"] == ["vqav2", "imagenet"]
    assert len(record["accuracy_matrix"]) == expected_stages + 1
    for key in ("last", "maa", "bwt", "forgetting", "fwt", "mft"):
        value = record["metrics"][key]
        assert value is None or math.isfinite(value)
    assert math.isfinite(record["metrics"]["last"])
    assert len(record["parameters"]) == expected_stages
    for counts in record["parameters"]:
        assert 0 < counts["trained"] <= counts["total"]
        assert 0 < counts["activated_per_token"] <= counts["total"]
    assert record["wall_time"]["training"] > 0 and record["wall_time"]["evaluation"] > 0
