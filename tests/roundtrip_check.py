"""Checkpoint round trip of a finished tiny run, used by the
registry-driven test of every method: ``load_after_task`` must rebuild the stage-0 model, re-grow the
method's structure (experts, per-task routers, VAEs, phases) and give bit-identical tensors,
trainable flags, method state and model outputs to the live method after its last task."""
from __future__ import annotations

import torch

from bench.io import checkpoint

from bench.run import restore
from bench.train.data import eval_loader
from bench.run.protocol import encode_test_sets
from methods.state import checkpoint_state


def _outputs(method, model, batch) -> torch.Tensor:
    model.eval()
    torch.manual_seed(0)  # moe-llava draws Gumbel noise for its second choice, at evaluation too
    method.before_forward(batch, "prefill")
    with torch.no_grad():
        return model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits


def assert_round_trip(cfg, record, method, model) -> None:
    """``method`` / ``model``: the run's live objects, in their state after the run's last task."""
    run_dir = checkpoint.run_dir_for(cfg.out, record["run_id"])
    last = len(record["accuracy_matrix"]) - 2
    assert checkpoint.finished_tasks(run_dir) == list(range(last + 1))

    loaded = restore.load_after_task(run_dir, cache_dir=cfg.cache_dir)
    assert loaded.task_index == last and loaded.task_names == record["tasks"]
    live, restored = model.state_dict(), loaded.model.state_dict()
    assert list(live) == list(restored)
    different = [k for k in live if not torch.equal(live[k], restored[k])]
    assert not different, f"{method.name}: restored tensors differ: {different[:5]}"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, p in loaded.model.named_parameters() if p.requires_grad}

    # the method's own state (structure, counters, VAEs, generators) survives a second round trip
    t_live, m_live = checkpoint_state(method)
    t_back, m_back = checkpoint_state(loaded.method)
    assert m_live == m_back
    assert sorted(t_live) == sorted(t_back) and all(torch.equal(t_live[k], t_back[k]) for k in t_live)
    # the frozen base model is referenced, not copied
    assert not any("vision_tower" in k or "embed_tokens" in k for k in t_live)

    task, encoded = encode_test_sets(loaded.cfg, loaded.tasks[:1], loaded.backbone)[loaded.task_names[0]]
    batch = next(iter(eval_loader(loaded.backbone, encoded, 4)))
    assert torch.equal(_outputs(method, model, batch), _outputs(loaded.method, loaded.model, batch))
