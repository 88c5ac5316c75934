"""A protocol hook that proves frozen means frozen: parameters a method leaves out of training (and
out of its EMA-evolved set) must be bit-identical after each task, and some trained parameter must move."""
from __future__ import annotations

import torch

from bench.run.protocol import Hooks


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
