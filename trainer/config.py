"""Trainer config: frozen dataclasses from YAML (no exec), `--set a.b=c` overrides, validated before any work."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.schemas.config import ConfigError, apply_overrides, build, config_mapping

STAGES = ("pretrain", "sft")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ModelConfig:
    path: str = "tiny"              # a local InternVL-hf dir (e.g. InternVL3-1B-hf), or "tiny" (trainer.tiny)
    tiny_seed: int = 0              # weights seed when path == "tiny"


@dataclass(frozen=True)
class DataConfig:
    shards: str = ""                # run dir, shard dir or glob; `--shards` overrides
    eval_shards: str = ""           # held-out shard(s) for eval loss; "" = no eval
    # Per-sample language choice among the languages the sample has, weighted (Vintern-1B style mix).
    lang_weights: dict[str, float] = field(default_factory=lambda: {"en": 0.5, "ko": 0.25, "vi": 0.25})
    shuffle_buffer: int = 256
    max_len: int = 2048             # tokens, image tokens included; text is cut, image tokens never
    max_tiles: int = 12             # InternVL 1.5 trains with 1..12 tiles of 448 px
    caption_fallback: bool = True   # SFT: a sample with only a caption becomes a describe-the-image turn


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass(frozen=True)
class StageConfig:
    lr: float = 1e-4
    max_steps: int = 1000
    warmup_steps: int = 50
    init_from: str = ""             # a checkpoint's `model/` dir to start from ("" = model.path)
    # pretrain: trainable vision blocks counted from the top; -1 = the second half (ShareGPT4V, sec. 4.4
    # ablation: unfreezing the latter half of the vision encoder in pretraining works best)
    vision_train_last: int = -1
    train_llm: bool = False         # pretrain: also train the LLM (ShareGPT4V unfreezes it); sft: always
    lora: LoraConfig = field(default_factory=LoraConfig)   # sft only: LoRA on the LLM, projector trained


@dataclass(frozen=True)
class OptimConfig:
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    min_lr_ratio: float = 0.0       # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0          # 0 = off


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "out/train"      # stage outputs go to {out_dir}/{stage}/
    batch_size: int = 4             # per rank, per micro-step
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 0             # 0 = eval only at the end (when data.eval_shards is set)
    eval_batches: int = 20
    save_every: int = 0             # 0 = only the final checkpoint
    keep_checkpoints: int = 2
    resume: bool = True             # continue from the newest checkpoint in {out_dir}/{stage}/ if any
    precision: str = "auto"         # auto = bf16 autocast on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    seed: int = 0
    num_threads: int = 0            # torch CPU threads per rank; 0 = cores // (2 * ranks), 1..8
    log_keys: bool = False          # write per-rank sample keys (for tests / debugging the split)


@dataclass(frozen=True)
class TrainerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-4, warmup_steps=50))
    sft: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-5, warmup_steps=50))

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ConfigError(f"stage: {name!r} is not one of {', '.join(STAGES)}")
        return getattr(self, name)


def _check(cfg: TrainerConfig) -> None:
    positive = {"data.shuffle_buffer": cfg.data.shuffle_buffer, "data.max_len": cfg.data.max_len,
                "data.max_tiles": cfg.data.max_tiles, "train.batch_size": cfg.train.batch_size,
                "train.grad_accum": cfg.train.grad_accum, "train.log_every": cfg.train.log_every,
                "train.eval_batches": cfg.train.eval_batches, "train.keep_checkpoints": cfg.train.keep_checkpoints}
    for stage in STAGES:
        s = cfg.stage(stage)
        positive.update({f"{stage}.max_steps": s.max_steps, f"{stage}.lora.r": s.lora.r})
        if s.lr <= 0:
            raise ConfigError(f"{stage}.lr: must be > 0, got {s.lr}")
        if s.warmup_steps < 0:
            raise ConfigError(f"{stage}.warmup_steps: must be >= 0, got {s.warmup_steps}")
        if s.vision_train_last < -1:
            raise ConfigError(f"{stage}.vision_train_last: must be -1 (second half) or >= 0")
    for name, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{name}: must be > 0, got {v}")
    if cfg.pretrain.lora.enabled:
        raise ConfigError("pretrain.lora.enabled: LoRA is an SFT option (pretraining trains the projector)")
    if not cfg.data.lang_weights or any(w < 0 for w in cfg.data.lang_weights.values()) \
            or sum(cfg.data.lang_weights.values()) <= 0:
        raise ConfigError("data.lang_weights: needs at least one language with a weight > 0, none negative")
    if cfg.train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision: {cfg.train.precision!r} is not one of {', '.join(PRECISIONS)}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    for name in ("eval_every", "save_every", "num_threads"):
        if getattr(cfg.train, name) < 0:
            raise ConfigError(f"train.{name}: must be >= 0")


def load_trainer_config(path: str | Path | None = None, overrides: list[str] | None = None,
                        shards: str | None = None, data: dict[str, Any] | None = None) -> TrainerConfig:
    """YAML (or a dict) + `a.b=c` overrides (values parsed as YAML) + `--shards`, validated."""
    data = apply_overrides(config_mapping(path, data, "trainer config"), overrides)
    if shards:
        data.setdefault("data", {})["shards"] = shards
    cfg = build(TrainerConfig, data)
    _check(cfg)
    return cfg


def to_dict(cfg: TrainerConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
