"""Expert-usage measurement: the seeded subset of a task's training records, which positions count."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from bench.moe import measure_usage, subset_loader
from bench.moe.usage import counted_positions
from bench.train.data import IGNORE


def test_the_subset_is_a_reproducible_tenth():
    loader = DataLoader(list(range(48)), batch_size=8, shuffle=True)
    sub = subset_loader(loader, 0.1, seed=3)
    assert len(sub.dataset) == 5 and not sub.drop_last
    again = subset_loader(loader, 0.1, seed=3)
    assert list(sub.dataset.indices) == list(again.dataset.indices)
    assert len(subset_loader(loader, 0.001, seed=3).dataset) == 1


def test_loss_positions_are_those_whose_next_token_is_supervised():
    # two right-padded records: prompt of 3 then an answer of 2 (+ eos); prompt of 2, answer of 1, padding
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 7, 8, 2],
                           [IGNORE, IGNORE, 9, 2, IGNORE, IGNORE]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    batch = {"labels": labels, "attention_mask": mask}
    assert counted_positions(batch, "all").tolist() == mask.bool().tolist()
    # position t predicts token t + 1: the last prompt token and every answer token but the last
    assert counted_positions(batch, "loss").tolist() == [[False, False, True, True, True, False],
                                                         [False, True, True, False, False, False]]
    with pytest.raises(ValueError, match="tokens must be one of all, loss"):
        measure_usage(None, {}, [], torch.device("cpu"), lambda b: None, tokens="answers")


class _OneLayer(torch.nn.Module):
    """A stand-in model with one MoE layer whose top-1 choice per position is fixed: [0, 1, 1, 0]."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Module()
        self.layer.experts = torch.nn.Module()
        self.layer.experts.num_experts = 2

    def forward(self, input_ids, attention_mask, use_cache=False):
        index = torch.tensor([[0], [1], [1], [0]])
        self.layer.last_output = type("Out", (), {"expert_index": index, "kept": torch.ones_like(index, dtype=torch.bool)})


@pytest.mark.parametrize("tokens, expected", [("all", [0.5, 0.5]), ("loss", [0.0, 1.0])])
def test_frequencies_count_the_chosen_positions(tokens, expected):
    model = _OneLayer()
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[IGNORE, IGNORE, 5, 2]])}  # positions 1 and 2 predict supervised tokens
    freqs = measure_usage(model, {0: model.layer}, [batch], torch.device("cpu"), lambda b: None, tokens=tokens)
    assert freqs[0].tolist() == expected
