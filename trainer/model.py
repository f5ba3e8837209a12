"""The model: transformers' InternVLForConditionalGeneration (InternViT + MLP + Qwen2), frozen per stage."""
from __future__ import annotations

import math
import os
from typing import Any

from polycap.trainer.config import StageConfig, TrainerConfig

PROJECTOR = "multi_modal_projector"


def base_model_path(cfg: TrainerConfig, stage: str) -> str:
    """Where this stage starts: `{stage}.init_from`, else `model.path` ("tiny" builds one under out_dir)."""
    st = cfg.stage(stage)
    if st.init_from:
        return st.init_from
    if cfg.model.path == "tiny":
        from polycap.trainer.tiny import build_tiny_internvl

        return build_tiny_internvl(os.path.join(cfg.train.out_dir, f"tiny-base-seed{cfg.model.tiny_seed}"),
                                   cfg.model.tiny_seed)
    if not os.path.isdir(cfg.model.path):
        raise FileNotFoundError(f"model.path: {cfg.model.path!r} is not a local checkpoint dir (no downloads "
                                "here: point it at an InternVL-hf checkpoint, or use `tiny`)")
    return cfg.model.path


def load_model(path: str):
    """An InternVL-hf checkpoint in fp32 (master weights; bf16 is autocast on GPU)."""
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    if type(model).__name__ != "InternVLForConditionalGeneration":
        raise ValueError(f"{path}: expected an InternVL-hf checkpoint (model_type internvl), got "
                         f"{type(model).__name__}")
    return model


def vision_blocks(model: Any) -> list:
    return list(model.model.vision_tower.encoder.layer)


def trainable_vision_blocks(n_blocks: int, vision_train_last: int) -> int:
    """-1 = the second half of the encoder (ShareGPT4V's best pretraining setting); else min(n, blocks)."""
    return n_blocks - n_blocks // 2 if vision_train_last < 0 else min(vision_train_last, n_blocks)


def set_trainable(model: Any, stage: str, st: StageConfig) -> dict[str, int]:
    """Freeze per stage and return parameter counts by part.

    pretrain: projector + last N vision blocks (+ the LLM when `train_llm`).
    sft: vision frozen; projector + LLM (full; with LoRA the adapter handles the LLM, see `add_lora`).
    """
    model.requires_grad_(False)
    getattr(model.model, PROJECTOR).requires_grad_(True)
    blocks = vision_blocks(model)
    n_vis = trainable_vision_blocks(len(blocks), st.vision_train_last) if stage == "pretrain" else 0
    for block in blocks[len(blocks) - n_vis:]:
        block.requires_grad_(True)
    if n_vis:
        model.model.vision_tower.layernorm.requires_grad_(True)   # post-encoder norm (Identity in InternViT)
    if (stage == "pretrain" and st.train_llm) or (stage == "sft" and not st.lora.enabled):
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    return param_counts(model) | {"vision_blocks_trained": n_vis, "vision_blocks": len(blocks)}


def add_lora(model: Any, st: StageConfig):
    """Wrap the LLM's linear layers with LoRA (Vintern-1B recipe); the projector is trained in full."""
    from peft import LoraConfig, get_peft_model

    targets = "|".join(st.lora.target_modules)
    lora = LoraConfig(r=st.lora.r, lora_alpha=st.lora.alpha, lora_dropout=st.lora.dropout,
                      target_modules=rf".*language_model.*\.({targets})", modules_to_save=[PROJECTOR])
    return get_peft_model(model, lora)


def param_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable}


def prepare(cfg: TrainerConfig, stage: str, adapter_dir: str | None = None, model_dir: str | None = None):
    """(model, processor, base_path, counts) for a stage; `model_dir`/`adapter_dir` resume a checkpoint."""
    from polycap.sharding.checkpoint import load_processor

    st = cfg.stage(stage)
    base = base_model_path(cfg, stage)
    model = load_model(model_dir or base)
    counts = set_trainable(model, stage, st)
    if stage == "sft" and st.lora.enabled:
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
        else:
            model = add_lora(model, st)
        counts |= param_counts(model)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, load_processor(base), base, counts


def unwrap(model: Any) -> Any:
    """Strip DDP and return the plain (possibly peft) model."""
    return getattr(model, "module", model)


def export_pretrained(model: Any, processor: Any, out_dir: str, max_tiles: int) -> str:
    """`save_pretrained` a transformers/vLLM-loadable checkpoint; LoRA is merged into a copy first."""
    import copy

    m = unwrap(model)
    if hasattr(m, "merge_and_unload"):
        m = copy.deepcopy(m).merge_and_unload()
    was = m.config.use_cache if hasattr(m.config, "use_cache") else None
    m.save_pretrained(out_dir)
    if was is not None:
        m.config.use_cache = was
    processor.image_processor.max_patches = max_tiles   # inference tiles as trained
    processor.save_pretrained(out_dir)
    return out_dir


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine to `min_ratio` at `total` steps."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f
