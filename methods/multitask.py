"""``multitask``: joint training on the union of all tasks in one stage (the upper reference of every
continual table). Same LoRA as ``seq-ft`` and the same total budget: T x steps-per-task steps over the
shuffled union, then one evaluation row."""
from __future__ import annotations

from methods import register
from methods.seq_ft import SequentialFineTuning


@register("multitask")
class MultiTask(SequentialFineTuning):
    joint_training = True
