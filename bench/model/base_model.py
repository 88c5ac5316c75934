"""Stage 0: the shared dense starting point every method and seed begins from.

CoIN starts from a LLaVA that has seen only alignment pretraining, never the eight tasks (its
stage-1 checkpoint). The tiny analogue: build the tiny LLaVA from configs and train it densely on a
caption-style mix (``tasks.synthetic.captions``) that is not one of the eight tasks. The weights are
named by a key, a hash of everything that determines them (backbone config, tokenizer, stage-0
recipe, data), and stored in safetensors. A local checkpoint (``--model``) is its own stage 0 and is
used as is.

Where the weights come from, in this order (:func:`plan_base` decides, :func:`load_base` does it):

1. ``cached``  — the user cache (``CMB_CACHE``) holds ``stage0/<key>.safetensors``;
2. ``shipped`` — the package's own folder ``bench/base/`` holds the base for the key (the tiny
   preset's default: a newcomer's first run trains nothing); every file is checked against the
   sha256 in ``bench/base/manifest.json`` before it is used;
3. ``trained`` — stage 0 is trained (about 10 min on an idle 2-core machine for the tiny preset) and cached.

Every key is computed without rendering any data (:func:`pretrain_source`), so deciding costs
nothing. When the shipped base does not fit, the plan says in one line which inputs of the key
differ (:func:`why_not_shipped`). ``python -m bench base build`` rebuilds the shipped folder;
``python -m bench base rekey`` renames it when only the generator package's source moved the key
(same tokenizer, same caption records: :func:`rekeyed_manifest`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast
from safetensors.torch import load, save

from bench.model.backbone import (POSITION_INIT, Backbone, build_tiny, describe, load_local, tiny_configs,
                            tiny_image_processor, train_tokenizer)
from bench.config import ConfigError, RunConfig, stable_hash
from tasks.synthetic import GENERATOR_VERSION
from tasks.synthetic.captions import pretrain_records
from bench.model.backbone import conversation_text
from bench.train.data import encode_split, train_loader
from bench.train.trainer import train_steps
import tasks

log = logging.getLogger(__name__)

# The package's shipped base: a read-only tree laid out like the cache (stage0/<key>.safetensors,
# tokenizers/<hash>/) plus manifest.json (the key, what it hashes, a sha256 of every file).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "base"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
# Bump when what the stage-0 key hashes changes. 2: the backbone config without transformers_version
# (a patch release of transformers does not change the weights' meaning), the backbone spec alongside.
KEY_VERSION = 2
TOKENIZER_CORPUS = "templated-conversations-v2"
REBUILD_HINT = "python -m bench base build --write"


class BaseModelError(ConfigError):
    """A shipped or cached stage-0 file that is not what its manifest or metadata says (exit 2)."""


# --------------------------------------------------------------------------------------------------
# what determines the base: computed without rendering any data
# --------------------------------------------------------------------------------------------------
def pretrain_source(cfg: RunConfig) -> dict[str, Any]:
    """The ``source`` of the stage-0 caption split exactly as ``tasks.synthetic.build_split`` records
    it once rendered, computed from the generator version and code digest alone (no rendering)."""
    n = cfg.stage0.num_records
    return {"kind": "coin-mini", "data_seed": cfg.stage0.data_seed, "generator_version": GENERATOR_VERSION,
            "code_digest": tasks.synthetic._code_digest(), "n": n,  # looked up when called (tests replace it)
            "generated": n, "image_size": cfg.backbone.image_size}


def _pretrain_split(cfg: RunConfig):
    return pretrain_records(cfg.stage0.num_records, cfg.stage0.data_seed, cfg.backbone.image_size,
                            cache_dir=cfg.data_spec().cache_dir)


def _tokenizer_tasks(cfg: RunConfig, task_list) -> list:
    """coin-mini: always all eight tasks, so one tokenizer and one stage 0 serve every task subset and
    order; real CoIN files: the tasks the run reads (others may be absent from the data root)."""
    return list(task_list) if cfg.data_root else tasks.suite("coin")


def _tokenizer_corpus(cfg: RunConfig, task_list):
    """The suite's own text, as the model will read it: every stage-0 caption and every task training
    record rendered through the conversation template. Training on the templated text matters: BPE
    then learns the merges the model really sees (" ASSISTANT:", " B", " Red"); trained on bare
    answers it splits " B" into a lone space plus "B", and the lone space is a token stage 0 never
    predicts, which no LoRA can cheaply teach it to predict later."""
    def corpus():
        spec = dataclasses.replace(cfg.data_spec(), validation=False)  # the base never depends on the protocol
        for split in [_pretrain_split(cfg)] + [task.load("train", spec) for task in task_list]:
            prompts, answers = split.texts()
            yield from (conversation_text(p, a) for p, a in zip(prompts, answers))

    return corpus


def tokenizer_inputs(cfg: RunConfig, task_list) -> dict[str, Any]:
    """Everything the tokenizer is trained from; its hash names the tokenizer folder."""
    tok_tasks = _tokenizer_tasks(cfg, task_list)
    return {"vocab": cfg.backbone.vocab_size, "corpus": TOKENIZER_CORPUS, "pretrain": pretrain_source(cfg),
            "source": cfg.data_spec().source, "data_root": cfg.data_root, "data_seed": cfg.data_seed,
            "mini_train": cfg.mini_train, "instructions": cfg.instructions, "tasks": [t.name for t in tok_tasks],
            "stage0_data": [cfg.stage0.num_records, cfg.stage0.data_seed, cfg.backbone.image_size]}


def _without_version(d: Any) -> Any:
    """A config dict without ``transformers_version`` at any depth."""
    if isinstance(d, dict):
        return {k: _without_version(v) for k, v in d.items() if k != "transformers_version"}
    return d


def stage0_key_inputs(cfg: RunConfig, config, tokenizer_hash: str | None) -> dict[str, Any]:
    """What the stage-0 key hashes. ``config`` (the tiny LlavaConfig) may be None when the tokenizer
    is not known yet; the result then lacks the parts that need it (only good for comparing)."""
    backbone = {"spec": cfg.backbone.as_dict(), "position_init": POSITION_INIT}
    if config is not None:
        backbone.update(config=_without_version(config.to_dict()), tokenizer=tokenizer_hash)
    return {"backbone": backbone, "stage0": dataclasses.asdict(cfg.stage0), "data": pretrain_source(cfg),
            "version": KEY_VERSION}


def stage0_key(inputs: dict[str, Any]) -> str:
    return stable_hash(inputs)


# --------------------------------------------------------------------------------------------------
# the shipped base
# --------------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(shipped: Path | None = None) -> dict[str, Any] | None:
    path = (shipped or SHIPPED_DIR) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise BaseModelError(f"{path} is not valid JSON ({e}); restore it from git or rebuild it with "
                             f"`{REBUILD_HINT}`.") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BaseModelError(f"{path} has format {manifest.get('format')!r}, this code reads format "
                             f"{MANIFEST_FORMAT}; rebuild it with `{REBUILD_HINT}`.")
    return manifest


def shipped_weights_name(key: str) -> str:
    return f"stage0/{key}.safetensors"


def shipped_tokenizer_dir(tokenizer_hash: str) -> str:
    return f"tokenizers/{tokenizer_hash}"


def tokenizer_files(manifest: dict[str, Any], tokenizer_hash: str) -> list[str]:
    """The manifest's files of one tokenizer folder (tokenizer.json, tokenizer_config.json, ...)."""
    prefix = shipped_tokenizer_dir(tokenizer_hash) + "/"
    names = sorted(n for n in manifest["files"] if n.startswith(prefix))
    if prefix + "tokenizer.json" not in names:
        raise BaseModelError(f"the shipped base's manifest lists no {prefix}tokenizer.json; rebuild the shipped "
                             f"base with `{REBUILD_HINT}`.")
    return names


def verify_file(shipped: Path, manifest: dict[str, Any], name: str) -> Path:
    """``shipped/name`` after checking its sha256 against the manifest; a mismatch is an error."""
    path = shipped / name
    entry = manifest["files"].get(name)
    if entry is None:
        raise BaseModelError(f"the shipped base's manifest ({shipped / MANIFEST_NAME}) lists no file {name}; "
                             f"rebuild the shipped base with `{REBUILD_HINT}`.")
    if not path.exists():
        raise BaseModelError(f"the shipped base file {path} is missing (the manifest lists it); reinstall the "
                             "package or restore bench/base/ from git.")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BaseModelError(f"the shipped base file {path} has sha256 {actual}, its manifest says "
                             f"{entry['sha256']}: the file is corrupted or was replaced without the manifest. "
                             "Restore bench/base/ from git (a Git LFS pointer instead of the file also "
                             f"gives this), or rebuild it with `{REBUILD_HINT}`.")
    return path


def _diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON-like values: (dotted path, old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old or k not in new:
                out.append((sub, old.get(k, "<absent>"), new.get(k, "<absent>")))
            else:
                out.extend(_diff(old[k], new[k], sub))
        return out
    return [] if old == new else [(path, old, new)]


def _category(path: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("code_digest", "generator_version"):
        return "coin-mini generator code (tasks/synthetic)"
    head = path.split(".", 1)[0]
    return {"tokenizer": "tokenizer corpus", "stage0": "stage-0 recipe", "backbone": "tiny backbone",
            "data": "stage-0 caption data", "version": "stage-0 key version"}.get(head, head)


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 24 else text[:21] + "..."


def caption_fingerprint(cfg: RunConfig) -> str:
    """sha256 over the stage-0 caption records as rendered, in order (every field; images as mode,
    size and pixels): equal fingerprints mean stage 0 was trained on the same data."""
    digest = hashlib.sha256()
    for row in _pretrain_split(cfg).dataset:
        for name in sorted(row):
            value = row[name]
            digest.update(name.encode() + b"\0")
            if hasattr(value, "tobytes"):  # a decoded image
                digest.update(f"{value.mode}{value.size}".encode() + value.tobytes())
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()


# The key inputs a source edit moves without changing what stage 0 is trained on: the generator
# package's source digest, and the tokenizer's name (a hash of inputs that include that digest).
_SOURCE_ONLY = ("code_digest", "backbone.tokenizer")


def rekeyed_manifest(manifest: dict[str, Any], plan: "BasePlan", tokenizer_sha: dict[str, str],
                     data_sha256: str) -> dict[str, Any]:
    """The shipped manifest under ``plan``'s key, for a code change that moved the key but not the
    inputs: only source digests may differ, the tokenizer trained now must equal the shipped one file
    by file (sha256) and the caption records must have the shipped fingerprint. Raises
    :class:`BaseModelError` naming what differs otherwise (then the base must be rebuilt)."""
    # as the manifest stores them (JSON: integer keys become strings)
    key_inputs, tok_inputs = json.loads(json.dumps(plan.key_inputs)), json.loads(json.dumps(plan.tokenizer_inputs))
    diffs = _diff({"tokenizer": manifest["tokenizer"]["inputs"], **manifest["key_inputs"]},
                  {"tokenizer": tok_inputs, **key_inputs})
    other = [path for path, _, _ in diffs if not path.endswith(_SOURCE_ONLY)]
    shipped_tok = {name.rsplit("/", 1)[-1]: manifest["files"][name]["sha256"]
                   for name in tokenizer_files(manifest, manifest["tokenizer"]["hash"])}
    problems = ([f"inputs other than source digests differ ({', '.join(other)})"] if other else [])
    if tokenizer_sha != shipped_tok:
        problems.append("the tokenizer trained from the current code differs from the shipped one")
    if manifest.get("data_sha256") not in (None, data_sha256):
        problems.append(f"the caption records differ (fingerprint {data_sha256[:12]}, shipped "
                        f"{manifest['data_sha256'][:12]})")
    elif manifest.get("data_sha256") is None:
        problems.append("the shipped manifest has no caption fingerprint (data_sha256) to compare with")
    if problems:
        raise BaseModelError("cannot re-key the shipped base: " + "; ".join(problems) + f"; rebuild it: {REBUILD_HINT}")
    old_weights, new_weights = shipped_weights_name(manifest["key"]), shipped_weights_name(plan.key)
    old_tok, new_tok = shipped_tokenizer_dir(manifest["tokenizer"]["hash"]), shipped_tokenizer_dir(plan.tokenizer_hash)
    files = {new_weights if name == old_weights else name.replace(old_tok + "/", new_tok + "/", 1): entry
             for name, entry in manifest["files"].items()}
    return {**manifest, "key": plan.key, "key_inputs": key_inputs, "files": files,
            "tokenizer": {"hash": plan.tokenizer_hash, "inputs": tok_inputs}}


def why_not_shipped(manifest: dict[str, Any] | None, tok_inputs: dict[str, Any], key_inputs: dict[str, Any]) -> str:
    """One line: which inputs of the key differ between the shipped base and this config."""
    if manifest is None:
        return "no shipped base (bench/base/manifest.json is missing)"
    diffs = _diff({"tokenizer": manifest["tokenizer"]["inputs"]}, {"tokenizer": tok_inputs})
    theirs = manifest["key_inputs"]
    if "config" not in key_inputs["backbone"]:  # the tokenizer is not known yet: compare what is
        theirs = {**theirs, "backbone": {k: v for k, v in theirs["backbone"].items() if k in key_inputs["backbone"]}}
    diffs += _diff(theirs, key_inputs)
    if not diffs:
        return f"the shipped base's key {manifest['key']} was computed by other code (same inputs, other hash)"
    groups: dict[str, list[str]] = {}
    seen = set()
    for path, old, new in diffs:
        cat = _category(path)
        # the generator's version and digest sit in both the tokenizer corpus and the caption data: once
        leaf = path.rsplit(".", 1)[-1] if cat.startswith("coin-mini") else path.split(".", 1)[-1]
        item = f"{leaf} {_short(old)} -> {_short(new)}"
        if (cat, item) not in seen:
            seen.add((cat, item))
            groups.setdefault(cat, []).append(item)
    parts = [f"{cat} differs ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
             for cat, items in groups.items()]
    return f"the shipped base (key {manifest['key']}) is for another configuration: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# the plan: where the tokenizer and the weights come from
# --------------------------------------------------------------------------------------------------
@dataclass
class BasePlan:
    source: str                        # checkpoint | cached | shipped | train
    tokenizer_hash: str | None = None
    tokenizer_inputs: dict[str, Any] = field(default_factory=dict)
    tokenizer_source: str | None = None  # cached | shipped | train
    tokenizer_dir: Path | None = None  # where to load it from (None: train it)
    tokenizer: Any = None              # loaded already (cheap) when known
    key: str | None = None             # None until the tokenizer is known
    key_inputs: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None        # the file to load (cached or shipped); None: train
    sha256: str | None = None          # the shipped file's manifest sha256 (verified on load)
    reason: str | None = None          # why stage 0 is trained (source == "train")
    meta: dict[str, Any] = field(default_factory=dict)  # training metadata of a shipped base

    def describe(self, cfg: RunConfig) -> str:
        if self.source == "checkpoint":
            return f"local checkpoint {cfg.backbone.model_path}"
        if self.source in ("cached", "shipped"):
            where = "the package (bench/base)" if self.source == "shipped" else "the cache"
            return f"{self.source} stage 0 {self.key} from {where}"
        s = cfg.stage0
        return (f"training stage 0 ({s.steps} steps x batch {s.batch_size} on {s.num_records} captions"
                f"{'' if self.tokenizer_source != 'train' else ', tokenizer first'}): {self.reason}")


def _load_tokenizer(folder: Path):
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def plan_base(cfg: RunConfig, task_list, *, shipped: Path | None = None, use_shipped: bool = True) -> BasePlan:
    """Decide, without training or rendering anything, where stage 0 comes from: the cache, then the
    shipped base, then training (see the module docstring). Shipped weights are always paired with the
    shipped tokenizer, so a tokenizer of the same name trained elsewhere can never meet them."""
    if cfg.backbone.model_path:
        return BasePlan(source="checkpoint")
    shipped = shipped or SHIPPED_DIR
    cache = Path(cfg.cache_dir)
    tok_inputs = tokenizer_inputs(cfg, task_list)
    tok_hash = stable_hash(tok_inputs)
    plan = BasePlan(source="train", tokenizer_hash=tok_hash, tokenizer_inputs=tok_inputs)

    def with_tokenizer(tok, folder: Path, source: str) -> None:
        plan.tokenizer, plan.tokenizer_dir, plan.tokenizer_source = tok, folder, source
        plan.key_inputs = stage0_key_inputs(cfg, tiny_configs(cfg.backbone, tok), tok_hash)
        plan.key = stage0_key(plan.key_inputs)

    cached_tok = cache / "tokenizers" / tok_hash
    if (cached_tok / "tokenizer.json").exists():
        with_tokenizer(_load_tokenizer(cached_tok), cached_tok, "cached")
        weights = cache / "stage0" / f"{plan.key}.safetensors"
        if weights.exists():
            plan.source, plan.weights = "cached", weights
            return plan
    manifest = read_manifest(shipped) if use_shipped else None
    if manifest is not None and manifest["tokenizer"]["hash"] == tok_hash:
        folder = shipped / shipped_tokenizer_dir(tok_hash)
        for name in tokenizer_files(manifest, tok_hash):
            verify_file(shipped, manifest, name)
        shipped_tok = _load_tokenizer(folder)
        key_inputs = stage0_key_inputs(cfg, tiny_configs(cfg.backbone, shipped_tok), tok_hash)
        if stage0_key(key_inputs) == manifest["key"]:
            with_tokenizer(shipped_tok, folder, "shipped")
            plan.source, plan.weights = "shipped", shipped / shipped_weights_name(manifest["key"])
            plan.sha256 = manifest["files"][shipped_weights_name(manifest["key"])]["sha256"]
            plan.meta = dict(manifest.get("stage0", {}))
            return plan
        if plan.tokenizer is None:  # train stage 0 on the shipped tokenizer: same inputs, same name
            with_tokenizer(shipped_tok, folder, "shipped")
    if plan.tokenizer is None:
        plan.tokenizer_source = "train"
        plan.key_inputs = stage0_key_inputs(cfg, None, None)
    plan.reason = (why_not_shipped(manifest, tok_inputs, plan.key_inputs) if use_shipped
                   else "the shipped base is not used (rebuilding it)")
    return plan


# --------------------------------------------------------------------------------------------------
# loading / training
# --------------------------------------------------------------------------------------------------
def _copy_tokenizer(src: Path, dst: Path) -> None:
    if (dst / "tokenizer.json").exists():
        return
    tmp = dst.with_name(f"{dst.name}.{time.time_ns()}.tmp")
    tmp.mkdir(parents=True)
    for file in src.iterdir():
        shutil.copyfile(file, tmp / file.name)
    try:
        tmp.replace(dst)
    except OSError:  # another process put it there first
        shutil.rmtree(tmp, ignore_errors=True)


def _read_weights(path: Path, expected_sha: str | None, what: str) -> tuple[dict[str, torch.Tensor], str]:
    blob = path.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if expected_sha is not None and sha != expected_sha:
        fix = (f"restore bench/base/ from git or rebuild it with `{REBUILD_HINT}`" if what == "shipped"
               else "delete it (and its .json) so stage 0 is trained again")
        raise BaseModelError(f"the {what} stage-0 weights {path} have sha256 {sha}, but {expected_sha} was recorded "
                             f"for them: the file is corrupted; {fix}.")
    return load(blob), sha


def ensure_tokenizer(cfg: RunConfig, task_list, plan: BasePlan) -> BasePlan:
    """``plan`` with its tokenizer loaded: a tokenizer neither cached nor shipped is trained (this
    renders its corpus) and cached, and the stage-0 key then computed."""
    if plan.tokenizer is not None or plan.source == "checkpoint":
        return plan
    cache = Path(cfg.cache_dir)
    folder = cache / "tokenizers" / plan.tokenizer_hash
    if not (folder / "tokenizer.json").exists():
        tokenizer = train_tokenizer(_tokenizer_corpus(cfg, _tokenizer_tasks(cfg, task_list))(), cfg.backbone.vocab_size)
        tmp = folder.with_name(f"{folder.name}.{time.time_ns()}.tmp")
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.replace(folder) if not folder.exists() else shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # another process put it there first
            shutil.rmtree(tmp, ignore_errors=True)
    plan = dataclasses.replace(plan, tokenizer=_load_tokenizer(folder), tokenizer_dir=folder, tokenizer_source="trained")
    plan.key_inputs = stage0_key_inputs(cfg, tiny_configs(cfg.backbone, plan.tokenizer), plan.tokenizer_hash)
    plan.key = stage0_key(plan.key_inputs)
    weights = cache / "stage0" / f"{plan.key}.safetensors"
    if weights.exists():  # only the tokenizer folder had been deleted
        plan.source, plan.weights = "cached", weights
    return plan


def tiny_backbone(cfg: RunConfig, plan: BasePlan) -> Backbone:
    """The tiny LLaVA with ``plan``'s tokenizer, randomly initialised (seed 0), stage 0 not loaded."""
    model, config = build_tiny(cfg.backbone, plan.tokenizer, seed=0)
    desc = describe(cfg.backbone, config, plan.tokenizer_hash)
    return Backbone(model=model, tokenizer=plan.tokenizer, image_processor=tiny_image_processor(cfg.backbone),
                    num_image_tokens=config.image_seq_length, description=desc)


def load_weights(model, plan: BasePlan) -> dict[str, Any]:
    """Load a cached or shipped base into ``model``, its sha256 checked; returns its record fields."""
    meta, expected = dict(plan.meta), plan.sha256
    if plan.source == "cached":
        meta_path = plan.weights.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        expected = meta.pop("sha256", None)  # written since the cache records it
    state, sha = _read_weights(plan.weights, expected, plan.source)
    model.load_state_dict(state, strict=True)
    return {"source": plan.source, "sha256": sha, "path": str(plan.weights), "cached": True, "seconds": 0.0, **meta}


def load_base(cfg: RunConfig, task_list, accelerator, plan: BasePlan | None = None) -> tuple[Backbone, dict]:
    """The stage-0 backbone and a description for the run record (``source`` cached / shipped /
    trained, ``key``, ``sha256`` of the weights file, the tokenizer's hash and source)."""
    if cfg.backbone.model_path:
        backbone = load_local(cfg.backbone)
        return backbone, {"cached": True, "seconds": 0.0, "source": "checkpoint"}
    plan = ensure_tokenizer(cfg, task_list, plan or plan_base(cfg, task_list))
    backbone = tiny_backbone(cfg, plan)
    model = backbone.model
    info: dict[str, Any] = {"source": None, "key": plan.key, "sha256": None, "path": None,
                            "tokenizer": {"hash": plan.tokenizer_hash, "source": plan.tokenizer_source},
                            "recipe": dataclasses.asdict(cfg.stage0), "data": plan.key_inputs["data"]}
    if plan.source in ("cached", "shipped"):
        info.update(load_weights(model, plan))
        return backbone, info

    cache = Path(cfg.cache_dir)
    if plan.tokenizer_source == "shipped":  # the cache then holds the tokenizer its weights were trained with
        _copy_tokenizer(plan.tokenizer_dir, cache / "tokenizers" / plan.tokenizer_hash)
    log.info("stage 0 is trained: %s", plan.reason)
    start = time.perf_counter()
    model.to(accelerator.device)
    encoded = encode_split(backbone, _pretrain_split(cfg))
    loader = train_loader(backbone, encoded, cfg.stage0.batch_size, seed=cfg.stage0.data_seed)
    for p in model.parameters():
        p.requires_grad_(True)
    stats = train_steps(model, model.parameters(), loader, cfg.stage0.steps, accelerator=accelerator,
                        lr=cfg.stage0.lr, warmup_ratio=cfg.stage0.warmup_ratio, weight_decay=0.0,
                        desc="stage 0 (captions)")
    for p in model.parameters():
        p.requires_grad_(False)
    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    sha = hashlib.sha256(blob).hexdigest()
    meta = {"train_seconds": stats.seconds, "final_loss": stats.final_loss, "steps": stats.steps}
    path = cache / "stage0" / f"{plan.key}.safetensors"
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(blob)
        path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": sha}))
        tmp.replace(path)
    accelerator.wait_for_everyone()
    info.update(source="trained", sha256=sha, path=str(path), reason=plan.reason, cached=False,
                seconds=time.perf_counter() - start, **meta)
    return backbone, info
