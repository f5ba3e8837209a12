"""The training loop for `polycap train pretrain|sft CONFIG`: AdamW, warmup + cosine, checkpoints, resume, DDP."""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from typing import Any

import yaml

from polycap.schemas.config import ConfigError
from polycap.trainer.config import TrainerConfig, load_trainer_config, to_dict

CKPT_PREFIX = "checkpoint-"


def run(stage: str, config_path: str, shards: str | None = None, overrides: list[str] | None = None) -> dict:
    """Load and validate the config, train one stage, return the final metrics."""
    cfg = load_trainer_config(config_path, overrides, shards)
    cfg.stage(stage)   # validates the stage name before any work
    return train(cfg, stage)


def train(cfg: TrainerConfig, stage: str) -> dict[str, Any]:
    import torch

    from polycap.trainer.data import ExampleBuilder, ShardStream, batches
    from polycap.trainer.model import lr_lambda, prepare

    st = cfg.stage(stage)
    if not cfg.data.shards:
        raise ConfigError("data.shards: no shards given (set it in the YAML or pass --shards DIR)")
    rank, world, local_rank = dist_env()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # Oversubscribed OpenMP threads spin and stall (measured here: 1 thread 18x faster than 2 on a busy
    # 2-core box), so default to half the cores per rank.
    torch.set_num_threads(cfg.train.num_threads or max(1, min(8, (os.cpu_count() or 1) // (2 * world))))
    stream = ShardStream(cfg.data.shards, cfg.train.seed, cfg.data.shuffle_buffer, rank, world)   # fails fast
    stage_dir = os.path.join(cfg.train.out_dir, stage)
    os.makedirs(stage_dir, exist_ok=True)
    ckpt = latest_checkpoint(stage_dir) if cfg.train.resume else None
    seed_everything(cfg.train.seed + rank)

    # 1. model, processor, freezing (resuming loads the checkpoint's weights or adapter)
    model, processor, base, counts = prepare(
        cfg, stage, adapter_dir=_existing(ckpt, "adapter"), model_dir=_existing(ckpt, "model"))
    model.to(device)
    tok = processor.tokenizer
    ip = processor.image_processor
    builder = ExampleBuilder(tok, stage, processor.image_seq_length, cfg.data.lang_weights, cfg.data.max_len,
                             cfg.data.max_tiles, ip.size["height"], cfg.data.caption_fallback, cfg.train.seed,
                             ip.image_mean, ip.image_std)

    # 2. optimizer, schedule (no weight decay on norms and biases)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=st.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(st.warmup_steps, st.max_steps, cfg.optim.min_lr_ratio))
    step = 0
    if ckpt:
        step = load_state(os.path.join(ckpt, "state.pt"), opt, sched, stream, rank)
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    autocast = _autocast(cfg, device)

    # 3. the loop: accumulate micro-batches, mean loss over all supervised tokens of the step
    log = MetricsLog(stage_dir, rank)
    log.write({"event": "start", "stage": stage, "base": base, "resumed_from": ckpt, "step": step,
               "world": world, "device": str(device), **counts})
    it = batches(stream, builder, cfg.train.batch_size, tok.pad_token_id)
    keys_file = (open(os.path.join(stage_dir, f"keys-rank{rank}.txt"), "a")  # noqa: SIM115 - closed after the loop
                 if cfg.train.log_keys else None)
    first_loss = last_loss = None
    t0, tokens_seen = time.time(), 0
    model.train()
    while step < st.max_steps:
        micro = [next(it) for _ in range(cfg.train.grad_accum)]
        n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        loss_sum = 0.0
        for i, b in enumerate(micro):
            sync = contextlib.nullcontext() if (world == 1 or i == len(micro) - 1) else ddp.no_sync()
            with sync:
                with autocast:
                    s, _ = token_loss(ddp, b, device)
                (s / max(1, n_tokens)).backward()
            loss_sum += float(s.detach())
            if keys_file:
                keys_file.write("\n".join(b["keys"]) + "\n")
        grad_norm = _clip(model, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += n_tokens
        last_loss = loss_sum / max(1, n_tokens)
        first_loss = last_loss if first_loss is None else first_loss
        if step % cfg.train.log_every == 0 or step == st.max_steps:
            log.write({"step": step, "loss": last_loss, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm,
                       "tokens": tokens_seen, "elapsed_s": round(time.time() - t0, 3),
                       "skipped": dict(builder.skipped)})
        if cfg.data.eval_shards and cfg.train.eval_every and step % cfg.train.eval_every == 0:
            log.write({"step": step, "eval_loss": evaluate(ddp, cfg, builder, tok.pad_token_id, device, rank, world)})
        if cfg.train.save_every and step % cfg.train.save_every == 0 and step < st.max_steps:
            save_checkpoint(stage_dir, step, model, processor, opt, sched, stream, cfg, rank, world)
    if keys_file:
        keys_file.close()

    # 4. final eval, final checkpoint (resumable) and a transformers/vLLM-loadable export
    eval_loss = evaluate(ddp, cfg, builder, tok.pad_token_id, device, rank, world) if cfg.data.eval_shards else None
    save_checkpoint(stage_dir, step, model, processor, opt, sched, stream, cfg, rank, world)
    final = os.path.join(stage_dir, "final")
    if rank == 0:
        from polycap.trainer.model import export_pretrained

        export_pretrained(model, processor, final, cfg.data.max_tiles)
    result = {"stage": stage, "steps": step, "first_loss": first_loss, "loss": last_loss, "eval_loss": eval_loss,
              "tokens": tokens_seen, "elapsed_s": round(time.time() - t0, 3), "skipped": dict(builder.skipped),
              "final_dir": final, "world": world, "rank": rank, **counts}
    log.write({"event": "end", **result})
    log.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return result


# ---------------------------------------------------------------- pieces the loop uses

def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run directly."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def token_loss(model: Any, batch: dict[str, Any], device: Any):
    """(sum of next-token cross-entropy over supervised tokens, their count); logits upcast to fp32."""
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                pixel_values=batch["pixel_values"].to(device))
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(device)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return loss, int((labels != -100).sum())


def evaluate(model: Any, cfg: TrainerConfig, builder: Any, pad_id: int, device: Any, rank: int,
             world: int) -> float | None:
    """Mean token loss on the held-out shards (split across ranks, summed with all_reduce)."""
    import torch

    from polycap.trainer.data import eval_batches

    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad(), _autocast(cfg, device):
        for b in eval_batches(cfg.data.eval_shards, builder, cfg.train.batch_size, pad_id,
                              cfg.train.eval_batches, rank, world):
            s, n = token_loss(model, b, device)
            total += torch.tensor([float(s), n], dtype=torch.float64, device=device)
    model.train()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else None


def _autocast(cfg: TrainerConfig, device: Any):
    """bf16 autocast on CUDA (fp32 master weights), plain fp32 on CPU."""
    import torch

    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _clip(model: Any, max_norm: float) -> float:
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def _existing(ckpt: str | None, sub: str) -> str | None:
    return os.path.join(ckpt, sub) if ckpt and os.path.isdir(os.path.join(ckpt, sub)) else None


class MetricsLog:
    """Append-only JSONL at {stage_dir}/metrics.jsonl, written by rank 0."""

    def __init__(self, stage_dir: str, rank: int):
        path = os.path.join(stage_dir, "metrics.jsonl")
        self.f = open(path, "a", encoding="utf-8") if rank == 0 else None  # noqa: SIM115 - lives for the run

    def write(self, rec: dict[str, Any]) -> None:
        if self.f:
            self.f.write(json.dumps({"time": round(time.time(), 3), **rec}, ensure_ascii=False) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


# ---------------------------------------------------------------- checkpoints

def latest_checkpoint(stage_dir: str) -> str | None:
    steps = [int(d[len(CKPT_PREFIX):]) for d in os.listdir(stage_dir) if d.startswith(CKPT_PREFIX)
             and d[len(CKPT_PREFIX):].isdigit() and os.path.exists(os.path.join(stage_dir, d, "state.pt"))]
    return os.path.join(stage_dir, f"{CKPT_PREFIX}{max(steps):07d}") if steps else None


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(stage_dir: str, step: int, model: Any, processor: Any, opt: Any, sched: Any, stream: Any,
                    cfg: TrainerConfig, rank: int, world: int) -> str | None:
    """Model (or LoRA adapter), optimizer, scheduler, every rank's data position and RNG, and the config.

    Written to a temp dir and renamed, so a checkpoint dir with `state.pt` is always complete.
    """
    import torch

    from polycap.trainer.model import unwrap

    per_rank = {"data": stream.state_dict(), "rng": _rng_state()}
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    if rank != 0:
        return None
    final = os.path.join(stage_dir, f"{CKPT_PREFIX}{step:07d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    m = unwrap(model)
    sub = "adapter" if hasattr(m, "peft_config") else "model"
    m.save_pretrained(os.path.join(tmp, sub))
    if sub == "model":
        processor.save_pretrained(os.path.join(tmp, sub))
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "ranks": gathered}, os.path.join(tmp, "state.pt"))
    with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, allow_unicode=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _prune(stage_dir, cfg.train.keep_checkpoints)
    return final


def _prune(stage_dir: str, keep: int) -> None:
    ckpts = sorted(d for d in os.listdir(stage_dir) if d.startswith(CKPT_PREFIX) and d[len(CKPT_PREFIX):].isdigit())
    for d in ckpts[:-keep]:
        shutil.rmtree(os.path.join(stage_dir, d), ignore_errors=True)


def load_state(path: str, opt: Any, sched: Any, stream: Any, rank: int) -> int:
    """Restore optimizer, scheduler, this rank's data position and RNG; returns the step."""
    import numpy as np
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if len(state["ranks"]) != stream.world:
        raise ValueError(f"{path}: saved with {len(state['ranks'])} rank(s), resumed with {stream.world}")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    mine = state["ranks"][rank]
    stream.load_state_dict(mine["data"])
    rng = mine["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])
