"""A protocol hook that proves frozen means frozen: parameters a training phase neither trains (its
``parameters``, or anything with ``requires_grad``) nor evolves (its ``evolving``) must be bit-identical
after the phase, and some trained parameter must move; every evolved parameter must move, with no
gradient and outside autograd."""
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

    def before(self, t, method, model, phase):
        trainable = {id(p) for p in phase.parameters} | {id(p) for p in model.parameters() if p.requires_grad}
        evolving = {id(p) for p in phase.evolving}
        named = list(model.named_parameters())
        self.frozen = {n: p.detach().clone() for n, p in named if id(p) not in trainable | evolving}
        self.trained = {n: p.detach().clone() for n, p in named if id(p) in trainable}
        self.evolved = {n: p.detach().clone() for n, p in named if id(p) in evolving}
        assert self.trained, f"{method.name} exposes no trainable parameters in stage {t}"

    def after(self, t, method, model, phase):
        now = dict(model.named_parameters())
        changed = [n for n, v in self.frozen.items() if not torch.equal(v, now[n].detach())]
        assert not changed, f"{method.name}: frozen parameters changed in stage {t}: {changed[:5]}"
        unevolved = [n for n, v in self.evolved.items() if torch.equal(v, now[n].detach())]
        assert not unevolved, f"{method.name}: evolving parameters did not change in stage {t}: {unevolved[:5]}"
        assert all(not now[n].requires_grad and now[n].grad is None for n in self.evolved), \
            f"{method.name}: an evolving parameter is in autograd in stage {t}"
        assert any(not torch.equal(v, now[n].detach()) for n, v in self.trained.items()), \
            f"{method.name}: no trainable parameter moved in stage {t}"
        self.checked += 1
