"""The backbone: a `transformers.LlavaForConditionalGeneration`, tiny (built offline from configs) or a
local llava-hf checkpoint, plus everything that turns task records into model inputs.

Both paths end in the same :class:`Backbone` object, so the trainer, the methods and evaluation never
know which one they run on. Prompts follow LLaVA-1.5's ``vicuna_v1`` turn format (CoIN's training data):
``USER: <image>\\n{prompt} ASSISTANT: {answer}</s>`` (the image line is omitted for text-only records).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          PreTrainedTokenizerFast)
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from bench.config import BackboneSpec, stable_hash

try:  # transformers >= 5: the Pillow backend, no torchvision needed
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
IMAGE_TOKEN = "<image>"
# CLIP's normalisation constants, as every LLaVA image processor uses them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def conversation_text(prompt: str, answer: str) -> str:
    """The text of one training conversation, exactly as ``prompt_ids + answer_ids`` spell it
    (without special tokens and image placeholders)."""
    return f"USER:\n{prompt} ASSISTANT: {answer}"


@dataclass
class Backbone:
    model: Any  # LlavaForConditionalGeneration
    tokenizer: Any  # PreTrainedTokenizerFast
    image_processor: Any  # CLIPImageProcessor (or the checkpoint's own)
    num_image_tokens: int
    description: dict[str, Any]

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def config_hash(self) -> str:
        return self.description["config_hash"]

    # --- text ----------------------------------------------------------------------------------------
    def prompt_ids(self, prompts: Sequence[str], has_image: Sequence[bool]) -> list[list[int]]:
        """Token ids of ``USER: [<image> x N]\\n{prompt} ASSISTANT:``, the image placeholder expanded
        to the number of image features the vision tower yields (what LlavaProcessor does)."""
        tok = self.tokenizer
        head = [tok.bos_token_id] + tok("USER:", add_special_tokens=False)["input_ids"]
        bodies = tok([(("\n" if img else " ") + p + " ASSISTANT:") for p, img in zip(prompts, has_image)],
                     add_special_tokens=False)["input_ids"]
        image_block = [self.image_token_id] * self.num_image_tokens
        return [head + (image_block if img else []) + body for body, img in zip(bodies, has_image)]

    def answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer([" " + a for a in answers], add_special_tokens=False)["input_ids"]
        return [a + [self.eos_id] for a in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # --- images --------------------------------------------------------------------------------------
    def pixel_values(self, images: list) -> torch.Tensor:
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


# --------------------------------------------------------------------------------------------------
# tiny backbone
# --------------------------------------------------------------------------------------------------
def tiny_configs(spec: BackboneSpec, tokenizer) -> Any:
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                              image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.text_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.text_hidden,
                       intermediate_size=spec.text_intermediate, num_hidden_layers=spec.text_layers,
                       num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_heads,
                       max_position_embeddings=spec.max_positions, tie_word_embeddings=False,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    # vision_feature_layer=-1 because a 2-layer tower has no useful penultimate layer; "default" drops CLS.
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", image_seq_length=(spec.image_size // spec.patch_size) ** 2)


def tiny_image_processor(spec: BackboneSpec):
    return CLIPImageProcessor(size={"shortest_edge": spec.image_size},
                              crop_size={"height": spec.image_size, "width": spec.image_size},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained with `tokenizers` on the suite's own text (offline)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left")


# How the tiny vision tower's position embeddings start (part of the tiny backbone's identity).
POSITION_INIT = "sincos-2d"


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes for a ``grid`` x ``grid`` patch grid, [grid², dim] (as MAE's
    ViT): the first half of the channels encodes the row, the second half the column, each with
    ``dim // 4`` frequencies ``1 / 10000^(i / (dim // 4))`` as sine and cosine pairs."""
    if dim % 4:
        raise ValueError(f"sin-cos position codes need a width divisible by 4, got {dim}")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None] * freq[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def init_vision_positions(model, scale: float = 0.5) -> None:
    """Start the tiny CLIP tower's learned position embeddings from ``scale`` x 2-D sine-cosine codes
    (the class token's row at zero) instead of CLIP's N(0, 0.02²).

    Why: with CLIP's init the position signal is about 13x weaker than a patch's content at the input
    (std 0.02 vs 0.27 here), and the tiny tower, trained only through captions, never made it strong:
    after stage 0 the decoder still could not tell left from right (ScienceQA's side questions at
    chance, grounding collapsed to one box). Structured codes of the content's magnitude make
    "where" as readable as "what" from the first step; they remain trainable."""
    for emb in (m for m in model.modules() if isinstance(m, CLIPVisionEmbeddings)):
        grid = int(round(emb.num_patches ** 0.5))
        with torch.no_grad():
            weight = emb.position_embedding.weight
            weight.zero_()
            weight[1:] = scale * sincos_2d(grid, weight.shape[1]).to(weight.dtype)


def build_tiny(spec: BackboneSpec, tokenizer, seed: int):
    torch.manual_seed(seed)
    config = tiny_configs(spec, tokenizer)
    model = LlavaForConditionalGeneration(config)
    init_vision_positions(model)
    return model, config


def describe(spec: BackboneSpec, config, tokenizer_hash: str) -> dict[str, Any]:
    cfg = config.to_dict()
    return {"kind": "local" if spec.model_path else "tiny", "spec": spec.as_dict(),
            "config_hash": stable_hash({"config": cfg, "tokenizer": tokenizer_hash,
                                        **({} if spec.model_path else {"position_init": POSITION_INIT})}),
            "tokenizer_hash": tokenizer_hash}


def load_local(spec: BackboneSpec) -> Backbone:
    """A local llava-hf checkpoint with its own processor; same Backbone interface as the tiny one."""
    path = Path(spec.model_path)
    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(str(path), local_files_only=True, torch_dtype="auto")
    tok = processor.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = "left"
    vc = model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2 + (1 if model.config.vision_feature_select_strategy == "full" else 0)
    files = sorted(p.name for p in path.iterdir())
    desc = {"kind": "local", "spec": spec.as_dict(), "path": str(path),
            "config_hash": stable_hash({"config": model.config.to_dict(), "files": files}),
            "tokenizer_hash": stable_hash(json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else tok.name_or_path)}
    return Backbone(model=model, tokenizer=tok, image_processor=processor.image_processor, num_image_tokens=n,
                    description=desc)
