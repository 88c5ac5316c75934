"""``python -m bench base {build,rekey,show}``: the stage-0 base shipped in ``bench/base/``.

``build`` trains the tiny preset's tokenizer and stage 0 from scratch in a temporary cache (or in
``--cache DIR``, reusing what it holds), packages them as a shipped-base folder (``--out``), and says
whether the result equals the shipped one (sha256) or by how much its weights differ; ``--write``
replaces ``bench/base/`` with it. Rebuild whenever ``tests/bench/test_base_model.py``'s key test
fails: a changed caption generator or task generator (tokenizer corpus), stage-0 recipe or tiny
backbone gives another key, and every first run would train stage 0 again.

``rekey`` renames the shipped base to the current code's key when an edit of the generator package
(``tasks/synthetic``) moved the key but not what stage 0 is trained on: it trains the tokenizer and
renders the caption records from the current code in a temporary cache (no stage-0 training) and
re-keys only if the tokenizer files equal the shipped ones (sha256), the captions have the shipped
fingerprint and no other key input changed. Stage-0 weights depend on the machine's floating-point
kernels, so a rebuild elsewhere need not reproduce the shipped file; re-keying keeps the weights every
committed record was run on.

``show`` prints the manifest and whether the current code's key for the default tiny config is
still the shipped one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from accelerate.utils import set_seed
import torch
import transformers

from bench.model import base_model as bm
from bench.config import build_config
from bench.run.setup import make_accelerator, ordered_tasks


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``base`` sub-command's sub-commands and flags (``bench.__main__`` registers ``base``)."""
    s = p.add_subparsers(dest="base_command", required=True)
    b = s.add_parser("build", help="train tokenizer + stage 0 of the tiny preset from scratch and compare "
                                   "with the shipped base")
    b.add_argument("--out", help="where the built base folder goes (default: inside the build cache)")
    b.add_argument("--cache", help="build in this cache folder instead of a fresh temporary one (what it already "
                                   "holds for the key is reused, not retrained)")
    b.add_argument("--write", action="store_true", help="replace the shipped files in bench/base/ with the result")
    b.set_defaults(func=cmd_build)
    r = s.add_parser("rekey", help="rename the shipped base to the current key when only the generator "
                                    "package's source moved it (tokenizer and captions checked identical)")
    r.set_defaults(func=cmd_rekey)
    sh = s.add_parser("show", help="print the shipped base's manifest and whether the code's key still matches it")
    sh.add_argument("--json", action="store_true", help="print the manifest as JSON only")
    sh.set_defaults(func=cmd_show)


def _default_cfg(cache: Path):
    return build_config("tiny", cache_dir=str(cache))


def _versions() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine()}


def package(cfg, task_list, dest: Path) -> dict[str, Any]:
    """Write the cache's stage-0 base of ``cfg`` (tokenizer + weights, which must be cached) as a
    shipped-base folder ``dest`` with its manifest; returns the manifest."""
    plan = bm.ensure_tokenizer(cfg, task_list, bm.plan_base(cfg, task_list, use_shipped=False))
    if plan.source != "cached":
        raise bm.BaseModelError(f"the cache {cfg.cache_dir} holds no stage-0 weights for key {plan.key}; "
                                "train them first (python -m bench base build).")
    meta_path = plan.weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    recorded = meta.pop("sha256", None)
    if dest.exists():
        shutil.rmtree(dest)
    weights_name = bm.shipped_weights_name(plan.key)
    tok_dir = bm.shipped_tokenizer_dir(plan.tokenizer_hash)
    (dest / weights_name).parent.mkdir(parents=True)
    (dest / tok_dir).mkdir(parents=True)
    shutil.copyfile(plan.weights, dest / weights_name)
    for file in sorted(plan.tokenizer_dir.iterdir()):
        shutil.copyfile(file, dest / tok_dir / file.name)
    files = {}
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        name = path.relative_to(dest).as_posix()
        files[name] = {"sha256": bm.sha256_file(path), "bytes": path.stat().st_size}
    if recorded is not None and files[weights_name]["sha256"] != recorded:
        raise bm.BaseModelError(f"the cached weights {plan.weights} do not have the sha256 recorded next to them "
                                "(corrupted); delete them and build again.")
    manifest = {
        "format": bm.MANIFEST_FORMAT,
        "about": "The tiny preset's stage-0 base (python -m bench base build). A run whose stage-0 key equals "
                 "`key` uses these files instead of training; every file is checked against its sha256.",
        "preset": cfg.preset,
        "key": plan.key,
        "key_inputs": plan.key_inputs,
        "tokenizer": {"hash": plan.tokenizer_hash, "inputs": plan.tokenizer_inputs},
        "stage0": meta,
        "data_sha256": bm.caption_fingerprint(cfg),
        "files": files,
        "built_with": _versions(),
    }
    (dest / bm.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _tensor_summary(new: Path, old: Path) -> list[str]:
    a, b = load_file(str(new)), load_file(str(old))
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        return ["weights: other tensor names or shapes than the shipped base (not comparable tensor by tensor)"]
    stats = []
    for name in sorted(a):
        x, y = a[name].double(), b[name].double()
        diff = (x - y).abs()
        rel = float((x - y).norm() / y.norm()) if float(y.norm()) > 0 else float(diff.max() > 0)
        stats.append((name, float(diff.max()) if diff.numel() else 0.0, rel))
    differing = [s for s in stats if s[1] > 0]
    if not differing:
        return ["weights: every tensor is equal to the shipped base's (the files differ only in bytes around them)"]
    top_abs = max(differing, key=lambda s: s[1])
    top_rel = max(differing, key=lambda s: s[2])
    rels = [s[2] for s in differing]
    lines = [f"weights: {len(differing)} of {len(stats)} tensors differ from the shipped base; "
             f"max |diff| {top_abs[1]:.3g} ({top_abs[0]}); relative L2 per differing tensor: "
             f"median {statistics.median(rels):.3g}, max {top_rel[2]:.3g} ({top_rel[0]})"]
    lines += [f"  {name}: max |diff| {mx:.3g}, relative L2 {rel:.3g}"
              for name, mx, rel in sorted(differing, key=lambda s: -s[2])[:5]]
    return lines


def compare(new_dir: Path, old_dir: Path) -> tuple[bool, list[str]]:
    """(whether ``new_dir`` equals ``old_dir`` file by file, what differs, one item per line)."""
    new, old = bm.read_manifest(new_dir), bm.read_manifest(old_dir)
    if old is None:
        return False, [f"no shipped base in {old_dir} to compare with"]
    lines = []
    if new["key"] != old["key"]:
        reason = bm.why_not_shipped(old, new["tokenizer"]["inputs"], new["key_inputs"])
        lines.append(f"key: {new['key']}, the shipped base's is {old['key']} ({reason})")
    else:
        lines.append(f"key: {new['key']}, the same as the shipped base's")
    same_files = new["files"] == old["files"]
    new_tok = {n.split("/", 2)[-1]: e["sha256"] for n, e in new["files"].items() if n.startswith("tokenizers/")}
    old_tok = {n.split("/", 2)[-1]: e["sha256"] for n, e in old["files"].items() if n.startswith("tokenizers/")}
    lines.append("tokenizer: identical to the shipped one (sha256)" if new_tok == old_tok else
                 f"tokenizer: differs from the shipped one (hash {new['tokenizer']['hash']} vs {old['tokenizer']['hash']})")
    new_w, old_w = bm.shipped_weights_name(new["key"]), bm.shipped_weights_name(old["key"])
    if new["files"][new_w]["sha256"] == old["files"][old_w]["sha256"]:
        lines.append(f"weights: identical to the shipped base (sha256 {new['files'][new_w]['sha256']})")
    else:
        lines += _tensor_summary(new_dir / new_w, old_dir / old_w)
    return same_files, lines


def install(src: Path, dst: Path) -> None:
    """Replace the shipped base folder ``dst`` with ``src`` (a ``package`` output)."""
    tmp = dst.with_name(dst.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def cmd_build(args: argparse.Namespace) -> int:
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="cmb-base-build-"))
    cfg = _default_cfg(cache)
    task_list = ordered_tasks(cfg)
    plan = bm.plan_base(cfg, task_list, use_shipped=False)
    doing = plan.describe(cfg) if plan.source == "train" else f"reusing the cached {plan.key}"
    print(f"base build: tiny preset in cache {cache}; {doing}", flush=True)
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)  # as in a run (stage 0 itself seeds its init and its data order)
    bm.load_base(cfg, task_list, accelerator, plan)
    out = Path(args.out) if args.out else cache / "base"
    manifest = package(cfg, task_list, out)
    print(f"built: {out} (key {manifest['key']}, {sum(e['bytes'] for e in manifest['files'].values()) / 1e6:.1f} MB)")
    if not args.cache:  # the renders were only needed to train; the built folder (and its cache) stay
        shutil.rmtree(cache / "coin-mini", ignore_errors=True)
    same, lines = compare(out, bm.SHIPPED_DIR)
    for line in lines:
        print(line)
    print("result: equal to the shipped base" if same else "result: differs from the shipped base")
    if args.write:
        install(out, bm.SHIPPED_DIR)
        print(f"wrote {bm.SHIPPED_DIR}; commit it (git add bench/base) together with the change that moved the key")
    elif not same:
        print(f"to ship it: python -m bench base build --write (or copy {out} over bench/base)")
    return 0


def cmd_rekey(args: argparse.Namespace) -> int:
    manifest = bm.read_manifest()
    if manifest is None:
        raise bm.BaseModelError(f"no shipped base to re-key: {bm.SHIPPED_DIR / bm.MANIFEST_NAME} is missing")
    with tempfile.TemporaryDirectory(prefix="cmb-base-rekey-") as tmp:
        cfg = _default_cfg(Path(tmp))
        task_list = ordered_tasks(cfg)
        plan = bm.plan_base(cfg, task_list)
        if plan.source == "shipped":
            print(f"the shipped base already has the current key {plan.key}; nothing to do")
            return 0
        print("base rekey: training the tokenizer and rendering the captions from the current code", flush=True)
        plan = bm.ensure_tokenizer(cfg, task_list, bm.plan_base(cfg, task_list, use_shipped=False))
        tokenizer_sha = {f.name: bm.sha256_file(f) for f in sorted(plan.tokenizer_dir.iterdir())}
        new = bm.rekeyed_manifest(manifest, plan, tokenizer_sha, bm.caption_fingerprint(cfg))
        out = Path(tmp) / "base"
        for name, old_name in zip(new["files"], manifest["files"]):  # the same files, in the same order
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bm.SHIPPED_DIR / old_name, out / name)
        (out / bm.MANIFEST_NAME).write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        install(out, bm.SHIPPED_DIR)
    print(f"re-keyed {bm.SHIPPED_DIR}: {manifest['key']} -> {new['key']} (tokenizer {new['tokenizer']['hash']}); "
          "the weights are unchanged; commit bench/base with the change that moved the key")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    manifest = bm.read_manifest()
    if manifest is None:
        print(f"no shipped base: {bm.SHIPPED_DIR / bm.MANIFEST_NAME} is missing (python -m bench base build --write)")
        return 1
    if args.json:
        print(json.dumps(manifest, indent=1, sort_keys=True))
        return 0
    s, v = manifest["stage0"], manifest["built_with"]
    recipe = manifest["key_inputs"]["stage0"]
    print(f"shipped base: {bm.SHIPPED_DIR} ({manifest['preset']} preset)")
    print(f"key: {manifest['key']} (stage-0 key version {manifest['key_inputs']['version']})")
    print(f"tokenizer: {manifest['tokenizer']['hash']}")
    print(f"stage 0: {recipe['steps']} steps x batch {recipe['batch_size']}, lr {recipe['lr']}, {recipe['num_records']} "
          f"captions (data seed {recipe['data_seed']}), final loss {s.get('final_loss', float('nan')):.4f}, "
          f"trained in {s.get('train_seconds', 0) / 60:.1f} min")
    print(f"built with: python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
          f"{v['torch_threads']} torch threads")
    print("files:")
    for name, entry in sorted(manifest["files"].items()):
        print(f"  {name}  {entry['bytes'] / 1e6:.2f} MB  sha256 {entry['sha256']}")
    with tempfile.TemporaryDirectory(prefix="cmb-base-show-") as empty:
        cfg = _default_cfg(Path(empty))
        plan = bm.plan_base(cfg, ordered_tasks(cfg))
    if plan.source == "shipped":
        print(f"current code: the default tiny config's key is {plan.key}, the shipped one (a first run trains nothing)")
    else:
        print(f"current code: the default tiny config does not use it: {plan.reason}; "
              f"rebuild it with `{bm.REBUILD_HINT}`")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from bench.__main__ import main

    sys.exit(main(["base", *sys.argv[1:]]))
