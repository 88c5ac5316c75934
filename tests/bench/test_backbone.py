"""Backbone: the tiny preset and a local llava-hf checkpoint go through the same code path."""
from __future__ import annotations

import torch

from bench.model.backbone import Backbone, build_tiny, load_local, tiny_image_processor, train_tokenizer
from bench.config import BackboneSpec


def _tiny_backbone() -> Backbone:
    corpus = [f"USER:\nWhat colour is the {s}?\nAnswer briefly. ASSISTANT: {c}" for s in ("circle", "star")
              for c in ("red", "blue", "green")] * 5
    tok = train_tokenizer(corpus, vocab_size=400)
    spec = BackboneSpec(vision_hidden=32, vision_layers=1, text_hidden=32, text_intermediate=64, text_layers=2,
                        text_heads=2, vision_heads=2)
    model, config = build_tiny(spec, tok, seed=0)
    return Backbone(model=model.eval(), tokenizer=tok, image_processor=tiny_image_processor(spec),
                    num_image_tokens=config.image_seq_length, description={"config_hash": "x"})


def test_prompt_layout_expands_image_placeholder():
    bb = _tiny_backbone()
    with_image, text_only = bb.prompt_ids(["What colour is the star?\nAnswer briefly."] * 2, [True, False])
    assert with_image.count(bb.image_token_id) == bb.num_image_tokens == 64
    assert bb.image_token_id not in text_only
    assert with_image[0] == bb.tokenizer.bos_token_id
    assert bb.answer_ids(["red"])[0][-1] == bb.eos_id
    # the answer's first token is a merged " red", not a lone space (see base_model._tokenizer_corpus)
    assert len(bb.answer_ids(["red"])[0]) == 2


def test_local_checkpoint_loads_through_the_same_interface(tmp_path):
    from PIL import Image
    from transformers import LlavaProcessor

    bb = _tiny_backbone()
    bb.model.save_pretrained(tmp_path)
    LlavaProcessor(image_processor=bb.image_processor, tokenizer=bb.tokenizer, patch_size=8,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(tmp_path)
    local = load_local(BackboneSpec(model_path=str(tmp_path)))
    assert local.description["kind"] == "local"
    assert local.num_image_tokens == bb.num_image_tokens
    prompts = ["What colour is the circle?\nAnswer briefly."]
    assert local.prompt_ids(prompts, [True]) == bb.prompt_ids(prompts, [True])
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    ids = torch.tensor(bb.prompt_ids(prompts, [True]))
    with torch.no_grad():
        a = bb.model(input_ids=ids, pixel_values=bb.pixel_values([image])).logits
        b = local.model(input_ids=ids, pixel_values=local.pixel_values([image])).logits
    torch.testing.assert_close(a, b)


def test_tiny_vision_positions_start_as_2d_sincos_codes():
    """Position codes of the content's magnitude, distinct per patch, separable into row and column."""
    from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

    from bench.model.backbone import sincos_2d

    bb = _tiny_backbone()
    emb = next(m for m in bb.model.modules() if isinstance(m, CLIPVisionEmbeddings))
    w = emb.position_embedding.weight.detach()
    assert torch.count_nonzero(w[0]) == 0 and w.shape == (65, 32)
    codes = w[1:]
    assert 0.2 < codes.std() < 0.5  # CLIP's own init is N(0, 0.02²): 10x weaker than a patch's content
    assert torch.cdist(codes, codes).add(torch.eye(64)).min() > 0.05  # every patch has its own code
    # the first half of the channels depends on the row only, the second half on the column only
    grid = sincos_2d(8, 32).reshape(8, 8, 32)
    assert torch.equal(grid[:, :1, :16].expand(8, 8, 16), grid[:, :, :16])
    assert torch.equal(grid[:1, :, 16:].expand(8, 8, 16), grid[:, :, 16:])
    torch.testing.assert_close(codes, 0.5 * grid.reshape(64, 32))
