"""lm-eval integration: the ``cmb`` model scores a CoIN task exactly as the harness does, its likelihoods
are the training loss's, and lm-eval tasks can be tracked along a run."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def trained(session_cache, tmp_path_factory):
    """A tiny seq-ft run over imagenet (one task, checkpointed) and the model reloaded after it."""
    from bench.run.restore import load_after_task
    from bench.config import Stage0Spec, build_config
    from bench.run.protocol import run
    from bench.io.records import read_record
    from bench.lmeval.track import trackers

    cfg = build_config("tiny", method="seq-ft", tasks="imagenet", steps_per_task=12, batch_size=8, lr=3e-3,
                       mini_train=48, mini_test=16, eval_batch_size=16, max_new_tokens=8,
                       out=str(tmp_path_factory.mktemp("results")), cache_dir=session_cache,
                       stage0=Stage0Spec(steps=8, num_records=160, batch_size=8), track=["lmeval:retention"],
                       track_limit=24)
    record = read_record(run(cfg, trackers=trackers(cfg)))
    run_dir = Path(cfg.out) / record["run_dir"]
    return SimpleNamespace(cfg=cfg, record=record, run_dir=run_dir,
                           loaded=load_after_task(run_dir, 0, cache_dir=session_cache))


def _lm(loaded, **kwargs):
    from bench.lmeval.model import CMBLM

    return CMBLM(backbone=loaded.backbone, model=loaded.model, method=loaded.method, cfg=loaded.cfg,
                 accelerator=loaded.accelerator, **kwargs)


def _request(*args):
    from lm_eval.api.instance import Instance

    return Instance(request_type="loglikelihood", doc={}, arguments=tuple(args), idx=0)


def _harness_and_lmeval(loaded, lm, manager):
    from bench.lmeval.evaluate import evaluate
    from bench.run.protocol import encode_test_sets, evaluate_all

    test_sets = encode_test_sets(loaded.cfg, loaded.tasks, loaded.backbone)
    harness = evaluate_all(loaded.model, loaded.method, loaded.backbone, test_sets, loaded.cfg,
                           loaded.accelerator)["imagenet"]
    results = evaluate(lm, ["coin_imagenet"], manager=manager, log_samples=True)
    samples = sorted(results["samples"]["coin_imagenet"], key=lambda s: s["doc_id"])
    return harness, results, [s["filtered_resps"][0] for s in samples]


def test_lmeval_coin_score_equals_harness_evaluator(trained):
    """lm-eval's coin_imagenet score equals bench.run.protocol.evaluate_all on the same checkpoint: through
    the registered model (model_args run=...,after_task=0; the task reads the run's own test split),
    and on non-trivial multi-token answers (end-of-answer suppressed, so every answer is 8 tokens)."""
    from lm_eval.api.registry import get_model

    import bench.lmeval.model  # noqa: F401  (registers "cmb")
    from bench.lmeval.evaluate import task_manager

    loaded, cache = trained.loaded, trained.cfg.cache_dir
    lm = get_model("cmb").create_from_arg_string(f"run={trained.run_dir},after_task=0,cache_dir={cache}")
    manager = task_manager(metadata={"run": str(trained.run_dir), "cache_dir": cache})
    harness, results, predictions = _harness_and_lmeval(loaded, lm, manager)
    assert harness["accuracy"] == trained.record["scores"][1]["imagenet"]["accuracy"]
    assert results["results"]["coin_imagenet"]["accuracy,none"] == harness["accuracy"]
    assert results["n-samples"]["coin_imagenet"]["effective"] == harness["n"] == 16
    assert predictions[:3] == harness["examples"]

    eos = loaded.backbone.eos_id

    def no_eos(module, inputs, logits):
        logits[..., eos] = -1e9
        return logits

    hook = loaded.model.lm_head.register_forward_hook(no_eos)
    try:
        harness, results, predictions = _harness_and_lmeval(loaded, _lm(loaded), manager)
    finally:
        hook.remove()
    assert all(predictions) and predictions[:3] == harness["examples"]
    assert results["results"]["coin_imagenet"]["accuracy,none"] == harness["accuracy"]
    assert results["results"]["coin_imagenet"]["accuracy_clean,none"] >= 0.0


def test_loglikelihood_is_the_training_loss(trained):
    """With an image and text-only: the continuation's log-probability equals what the training batch
    (bench.train.data.Collator) gives the answer tokens; rolling text equals one plain forward."""
    from bench.train.data import IGNORE, Collator, encode_split

    loaded = trained.loaded
    backbone, model = loaded.backbone, loaded.model
    split = loaded.tasks[0].load("test", loaded.cfg.data_spec())
    record = split[0]
    lm = _lm(loaded)
    for image in (record.image, None):
        item = encode_split(backbone, [dataclasses.replace(record, image=image)])[0]
        batch = Collator(backbone, train=True)([item])
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        labels = batch["labels"][0, 1:]
        at = (labels != IGNORE).nonzero().flatten()[:-1]  # the answer's tokens, without its eos
        expected = float(logp[at, labels[at]].sum())
        visual = {"visual": [image] if image is not None else []}
        (got, greedy), = lm.loglikelihood([_request(record.prompt, " " + record.answer, visual)])
        assert got == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((logp[at].argmax(-1) == labels[at]).all())

    text = "the word cat in red above a small blue circle"
    ids = [backbone.tokenizer.bos_token_id] + backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    expected = float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    (rolled,) = lm.loglikelihood_rolling([_request(text)])
    assert rolled == pytest.approx(expected, abs=1e-4)
    # windows shorter than the text still score every token once: close to, not equal to, one pass
    (windowed,) = _lm(loaded, max_length=6).loglikelihood_rolling([_request(text)])
    assert math.isfinite(windowed) and windowed != pytest.approx(expected, abs=1e-6)
    (with_image,) = lm.loglikelihood_rolling([_request(text, {"visual": [record.image]})])
    assert math.isfinite(with_image) and with_image != pytest.approx(expected, abs=1e-6)


def test_run_tracks_lmeval_task_after_every_row(trained):
    """--track lmeval:retention puts the metric in the record after row 0 and after each task, and
    evaluating it again on the checkpoint gives the tracked value."""
    from bench.lmeval.track import track_row

    tracked = trained.record["tracked"]["lmeval:retention"]
    assert len(tracked) == len(trained.record["accuracy_matrix"]) == 2
    assert all(0.0 <= row["acc"] <= 1.0 and "acc_norm" in row for row in tracked)
    loaded = trained.loaded
    state = torch.get_rng_state()
    again = track_row(loaded.cfg, loaded.model, loaded.method, loaded.backbone, loaded.accelerator)
    assert again["lmeval:retention"] == tracked[1]
    assert torch.equal(torch.get_rng_state(), state)  # tracking never moves the run's generators
