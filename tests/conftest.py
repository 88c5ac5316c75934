"""Shared fixtures. Everything runs offline on the tiny preset; the coin-mini render cache, the
tokenizer and the stage-0 weights are shared by every test of a session (one temporary cache)."""
from __future__ import annotations

import bench  # noqa: F401  (first: its import sets the offline environment)
import pytest
import torch

# The test models are tiny: one intra-op thread avoids OpenMP stalls when the 2 cores are shared.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cmb-cache"))


def tiny_config_factory(cache_dir: str, out: str):
    """A factory of very small run configs: two short tasks, a few steps, a tiny stage 0."""
    from bench.config import Stage0Spec, build_config

    def make(**overrides):
        values = dict(method="seq-ft", tasks="vqav2,imagenet", steps_per_task=6, batch_size=8, mini_train=48,
                      mini_test=16, eval_batch_size=16, max_new_tokens=8, out=out,
                      cache_dir=cache_dir, stage0=Stage0Spec(steps=8, num_records=160, batch_size=8))
        values.update(overrides)
        return build_config("tiny", **values)

    return make


@pytest.fixture(scope="session")
def session_tiny_config(session_cache, tmp_path_factory):
    """``tiny_config_factory`` writing into one results folder for the whole session (runs that
    session-scoped fixtures train once and share)."""
    return tiny_config_factory(session_cache, str(tmp_path_factory.mktemp("session-runs") / "results"))


@pytest.fixture
def tiny_config(session_cache, tmp_path):
    """``tiny_config_factory`` writing into the test's own results folder."""
    return tiny_config_factory(session_cache, str(tmp_path / "results"))
