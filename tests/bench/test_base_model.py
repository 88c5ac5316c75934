"""The shipped stage-0 base (bench/base/): a first run of the default tiny config uses it and trains
nothing; its key follows the code; its files are what the manifest says; a config it does not fit
trains stage 0 and says why in one line. No test here trains stage 0."""
from __future__ import annotations

import copy

import json
import shutil

import pytest
import torch
from PIL import Image, ImageDraw

from bench.model import base_model as bm
from bench.config import Stage0Spec, build_config
from bench.run.protocol import make_accelerator, ordered_tasks


def _default(tmp_path, **overrides):
    return build_config("tiny", cache_dir=str(tmp_path / "cache"), **overrides)


def _plan(cfg, **kwargs):
    return bm.plan_base(cfg, ordered_tasks(cfg), **kwargs)


def test_shipped_base_key_is_what_the_code_computes(tmp_path):
    """Fails when a change to the caption or task generators (the tokenizer corpus), the stage-0
    recipe or the tiny backbone moved the default tiny config's key away from the shipped base:
    every first run would then train stage 0 again."""
    manifest = bm.read_manifest()
    assert manifest is not None, "bench/base/manifest.json is missing: run `python -m bench base build --write`"
    plan = _plan(_default(tmp_path))
    assert plan.source == "shipped" and plan.key == manifest["key"], (
        f"the default tiny config no longer uses the shipped stage-0 base: {plan.reason}. If only the generator "
        "package's source moved the key, `python -m bench base rekey` renames it (20 s); otherwise rebuild it with "
        "`python -m bench base build --write` (about 15 min on 2 cores). Commit bench/base/.")
    assert plan.tokenizer_source == "shipped"


def _moved(manifest, **inputs_changes):
    """A plan for the shipped manifest's inputs with the generator digest moved (and ``inputs_changes``
    applied to the stage-0 recipe)."""
    key_inputs, tok_inputs = copy.deepcopy(manifest["key_inputs"]), copy.deepcopy(manifest["tokenizer"]["inputs"])
    key_inputs["data"]["code_digest"] = tok_inputs["pretrain"]["code_digest"] = "feedfacefeedface"
    key_inputs["backbone"]["tokenizer"] = "0123456789ab"
    key_inputs["stage0"].update(inputs_changes)
    return bm.BasePlan(source="train", tokenizer_hash="0123456789ab", tokenizer_inputs=tok_inputs, key="ba5eba5eba5e",
                       key_inputs=key_inputs)


def _shipped_tokenizer_sha(manifest):
    return {n.rsplit("/", 1)[-1]: manifest["files"][n]["sha256"]
            for n in bm.tokenizer_files(manifest, manifest["tokenizer"]["hash"])}


def test_rekey_renames_the_shipped_files_when_only_the_source_digest_moved():
    manifest = bm.read_manifest()
    new = bm.rekeyed_manifest(manifest, _moved(manifest), _shipped_tokenizer_sha(manifest), manifest["data_sha256"])
    assert new["key"] == "ba5eba5eba5e" and new["tokenizer"]["hash"] == "0123456789ab"
    assert new["files"]["stage0/ba5eba5eba5e.safetensors"] == manifest["files"][f"stage0/{manifest['key']}.safetensors"]
    assert sorted(e["sha256"] for e in new["files"].values()) == sorted(e["sha256"] for e in manifest["files"].values())
    assert all(n.startswith(("stage0/ba5eba5eba5e", "tokenizers/0123456789ab/")) for n in new["files"])
    assert new["stage0"] == manifest["stage0"] and new["data_sha256"] == manifest["data_sha256"]


@pytest.mark.parametrize("change, words", [("recipe", "stage0.steps"), ("tokenizer", "tokenizer trained"),
                                           ("captions", "caption records differ")])
def test_rekey_refuses_when_what_stage_0_learns_from_changed(change, words):
    manifest = bm.read_manifest()
    plan = _moved(manifest, steps=manifest["key_inputs"]["stage0"]["steps"] + 1) if change == "recipe" else _moved(manifest)
    tok = _shipped_tokenizer_sha(manifest)
    if change == "tokenizer":
        tok = {**tok, "tokenizer.json": "0" * 64}
    data = "f" * 64 if change == "captions" else manifest["data_sha256"]
    with pytest.raises(bm.BaseModelError, match=words):
        bm.rekeyed_manifest(manifest, plan, tok, data)


def test_manifest_sha256_matches_the_shipped_files():
    manifest = bm.read_manifest()
    on_disk = {p.relative_to(bm.SHIPPED_DIR).as_posix() for p in bm.SHIPPED_DIR.rglob("*") if p.is_file()}
    assert on_disk - {bm.MANIFEST_NAME} == set(manifest["files"]), "files in bench/base/ the manifest does not list"
    for name, entry in manifest["files"].items():
        path = bm.SHIPPED_DIR / name
        assert path.stat().st_size == entry["bytes"], name
        assert bm.sha256_file(path) == entry["sha256"], f"{name}: sha256 differs from the manifest"
    assert sum(e["bytes"] for e in manifest["files"].values()) < 20e6
    assert set(manifest) >= {"key", "key_inputs", "tokenizer", "stage0", "files", "built_with"}


def _greedy(backbone, prompt: str, image=None, max_new: int = 24) -> str:
    """Plain greedy decoding, one full forward per token (independent of the harness's decoder)."""
    ids = torch.tensor([backbone.prompt_ids([prompt], [image is not None])[0]])
    extra = {"pixel_values": backbone.pixel_values([image])} if image is not None else {}
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(backbone.model(input_ids=ids, **extra).logits[0, -1].argmax())
            if nxt == backbone.eos_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return backbone.decode(out)


def _image(draw_fn) -> Image.Image:
    img = Image.new("RGB", (64, 64), (236, 236, 236))  # one of coin-mini's backgrounds
    draw_fn(ImageDraw.Draw(img))
    return img


# Greedy outputs of the shipped weights, recorded once (prompt, image, expected). Each was chosen with a
# top-1 vs top-2 logit margin of at least 1.0 at every step, so float noise of another CPU cannot flip it;
# rebuilding the shipped base means recording them again.
KNOWN_OUTPUTS = [
    ("Describe the image briefly.", lambda d: d.rectangle((0, 0, 63, 63), fill=(10, 10, 10)),
     "a very dark photo of something"),
    ("Describe the image briefly.", lambda d: d.rectangle((8, 8, 56, 56), fill=(36, 160, 60)), "a big green square"),
    ("Describe the image briefly.", lambda d: d.rectangle((8, 8, 56, 56), fill=(238, 204, 18)), "a big yellow square"),
    ("Describe the image briefly.", lambda d: d.rectangle((0, 0, 63, 63), fill=(236, 236, 236)),
     "a noisy photo of an empty background"),
]


def test_shipped_base_loads_without_training_or_rendering_and_decodes_known_outputs(tmp_path):
    from tasks.synthetic import draw

    cfg = _default(tmp_path)
    rendered = draw.render_count
    backbone, info = bm.load_base(cfg, ordered_tasks(cfg), make_accelerator(cfg))
    assert draw.render_count == rendered, "loading the shipped base rendered data"
    assert not (tmp_path / "cache").exists(), "loading the shipped base wrote to the cache"
    manifest = bm.read_manifest()
    assert info["source"] == "shipped" and info["key"] == manifest["key"] and info["cached"] is True
    assert info["sha256"] == manifest["files"][bm.shipped_weights_name(manifest["key"])]["sha256"]
    assert info["tokenizer"] == {"hash": manifest["tokenizer"]["hash"], "source": "shipped"}
    backbone.model.eval()
    got = [_greedy(backbone, prompt, _image(fn) if fn else None) for prompt, fn, _ in KNOWN_OUTPUTS]
    assert got == [expected for _, _, expected in KNOWN_OUTPUTS]


def test_a_changed_recipe_trains_stage_0_and_says_why_in_one_line(tmp_path):
    plan = _plan(_default(tmp_path, stage0=Stage0Spec(steps=1200)))
    assert plan.source == "train"
    assert plan.tokenizer_source == "shipped"  # the tokenizer does not depend on the step count
    assert "\n" not in plan.reason
    assert "stage-0 recipe differs (steps 4000 -> 1200)" in plan.reason
    assert plan.key != bm.read_manifest()["key"]
    line = plan.describe(_default(tmp_path))
    assert line.startswith("training stage 0") and "\n" not in line


def test_a_changed_generator_names_the_generator_code(tmp_path, monkeypatch):
    import tasks.synthetic

    monkeypatch.setattr(tasks.synthetic, "_code_digest", lambda: "0123456789abcdef")
    plan = _plan(_default(tmp_path))
    assert plan.source == "train" and plan.tokenizer_source == "train"  # the corpus changed too
    assert "coin-mini generator code (tasks/synthetic) differs (code_digest" in plan.reason
    assert "-> 0123456789abcdef" in plan.reason and "\n" not in plan.reason
    assert plan.reason.count("code_digest") == 1  # it sits in both the tokenizer corpus and the caption data


def test_other_presets_and_backbones_are_not_shipped(tmp_path):
    smoke = _plan(build_config("smoke", cache_dir=str(tmp_path)))
    assert smoke.source == "train" and "stage-0 recipe differs" in smoke.reason
    wider = _plan(_default(tmp_path, mini_train=500))
    assert wider.source == "train" and "tokenizer corpus differs (mini_train 2000 -> 500)" in wider.reason


def test_the_key_ignores_the_transformers_version(tmp_path):
    plan = _plan(_default(tmp_path))
    assert "transformers_version" not in json.dumps(plan.key_inputs)


def test_pretrain_source_is_computed_without_rendering(tmp_path):
    cfg = _default(tmp_path, stage0=Stage0Spec(num_records=12))
    assert bm.pretrain_source(cfg) == bm._pretrain_split(cfg).source


def test_the_cache_comes_before_the_shipped_base(tmp_path):
    cfg = _default(tmp_path)
    shipped = _plan(cfg)
    cache = tmp_path / "cache"
    shutil.copytree(shipped.tokenizer_dir, cache / "tokenizers" / shipped.tokenizer_hash)
    (cache / "stage0").mkdir(parents=True)
    shutil.copyfile(shipped.weights, cache / "stage0" / f"{shipped.key}.safetensors")
    plan = _plan(cfg)
    assert (plan.source, plan.tokenizer_source, plan.key) == ("cached", "cached", shipped.key)
    _, info = bm.load_base(cfg, ordered_tasks(cfg), make_accelerator(cfg), plan)
    assert info["source"] == "cached" and info["sha256"] == shipped.sha256


def test_a_corrupted_shipped_file_is_a_clear_error(tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(bm.SHIPPED_DIR, copy)
    cfg = _default(tmp_path)
    plan = _plan(cfg, shipped=copy)
    assert plan.source == "shipped"
    blob = bytearray(plan.weights.read_bytes())
    blob[-1] ^= 1
    plan.weights.write_bytes(bytes(blob))
    with pytest.raises(bm.BaseModelError, match="sha256"):
        bm.load_base(cfg, ordered_tasks(cfg), make_accelerator(cfg), plan)
    tok = copy / bm.shipped_tokenizer_dir(plan.tokenizer_hash) / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")
    with pytest.raises(bm.BaseModelError, match="corrupted"):
        _plan(cfg, shipped=copy)


def test_base_show_prints_the_manifest(capsys):
    from bench.__main__ import main

    assert main(["base", "show"]) == 0
    out = capsys.readouterr().out
    manifest = bm.read_manifest()
    assert manifest["key"] in out and "the shipped one" in out
    assert main(["base", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == manifest


def test_a_run_prints_its_plan_first_and_records_its_base(tiny_config, capsys):
    from bench.run.protocol import run
    from bench.io.records import read_record

    record = read_record(run(tiny_config(tasks="vqav2")))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run {record['run_id']}: seq-ft on vqav2 (vqav2), 6 steps x batch 8 per task, "
                               "seed 0, preset tiny; base: ")
    stage0 = record["backbone"]["stage0"]
    assert stage0["source"] in ("trained", "cached") and stage0["key"] and len(stage0["sha256"]) == 64
    assert stage0["tokenizer"]["hash"] == record["backbone"]["tokenizer_hash"]
    if stage0["source"] == "trained":  # the first test of the session to need this tiny stage 0
        assert "stage-0 recipe differs" in stage0["reason"] and stage0["reason"] in lines[0]
    else:
        assert "cached stage 0" in lines[0]
    again = read_record(run(tiny_config(tasks="vqav2")))["backbone"]["stage0"]
    assert (again["source"], again["key"], again["sha256"]) == ("cached", stage0["key"], stage0["sha256"])
