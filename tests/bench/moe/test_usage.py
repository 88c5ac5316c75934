"""Expert-usage measurement: the seeded subset of a task's training records."""
from __future__ import annotations

from torch.utils.data import DataLoader

from bench.moe import subset_loader


def test_the_subset_is_a_reproducible_tenth():
    loader = DataLoader(list(range(48)), batch_size=8, shuffle=True)
    sub = subset_loader(loader, 0.1, seed=3)
    assert len(sub.dataset) == 5 and not sub.drop_last
    again = subset_loader(loader, 0.1, seed=3)
    assert list(sub.dataset.indices) == list(again.dataset.indices)
    assert len(subset_loader(loader, 0.001, seed=3).dataset) == 1
