"""The smallest real LlavaForConditionalGeneration (CLIP 1 layer, Llama 4 layers, d=16) for unit tests
of methods and MoE layers that need a real decoder but no data or stage 0."""
from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration


def micro_llava(seed: int = 0, *, d: int = 16, intermediate: int = 40, vocab: int = 64,
                image_token_id: int = 63) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=LlamaConfig(hidden_size=d, intermediate_size=intermediate, num_hidden_layers=4,
                                num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab),
        image_token_id=image_token_id)
    return LlavaForConditionalGeneration(cfg).eval()
