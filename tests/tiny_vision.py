"""Tiny random-weight DINOv2, CLIP and SigLIP image models with their image processors, built from
transformers configs and saved locally: no hub, no download."""

from __future__ import annotations

from pathlib import Path

ARCHS = ("dinov2", "clip", "clip_vision", "siglip")


def build_tiny_vision(folder: Path, arch: str, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-32 model of `arch` and its processor into `folder`/`arch`; return it."""
    import torch
    from transformers import (BitImageProcessorPil, CLIPConfig, CLIPImageProcessorPil, CLIPModel,
                              CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model,
                              SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel)

    torch.manual_seed(seed)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    vision = {**small, "image_size": 28, "patch_size": 7}
    if arch == "dinov2":
        model = Dinov2Model(Dinov2Config(**vision))
        # DINOv2's own recipe: shortest edge, then a centre crop, bicubic, ImageNet mean/std.
        processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                                         do_center_crop=True, resample=3,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    elif arch == "clip":
        text = {**small, "vocab_size": 99, "max_position_embeddings": 16}
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    elif arch == "clip_vision":
        model = CLIPVisionModel(CLIPVisionConfig(**vision))
        processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    elif arch == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
        processor = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    else:
        raise ValueError(f"arch {arch!r}: one of {ARCHS}")
    out = Path(folder) / arch
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
