"""InternVL processor loading that also works where torchvision is absent (CPU-only installs)."""
from __future__ import annotations

import json
import os

from transformers import AutoProcessor, InternVLProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

# What InternVL-hf checkpoints (e.g. OpenGVLab/InternVL3-1B-hf) carry for video; written into our
# processor_config.json so machines with torchvision (GPU boxes, vLLM) load the full InternVLProcessor.
VIDEO_PROCESSOR_ENTRY = {
    "video_processor_type": "InternVLVideoProcessor",
    "size": {"height": 448, "width": 448},   # save_pretrained sets the image processor's tile size
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
    "initial_shift": True, "do_sample_frames": False,
}


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """`InternVLProcessor` without its video processor.

    transformers 5.x requires torchvision for every video processor, and PyPI ships no CPU torchvision wheel,
    so `AutoProcessor.from_pretrained` fails for any InternVL checkpoint on a CPU-only install. Images, the
    tokenizer, the chat template and `<img><IMG_CONTEXT>*n</img>` expansion are exactly InternVLProcessor's.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                 **kwargs):
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.image_seq_length = image_seq_length
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.video_token = tokenizer.video_token
        self.image_token_id = tokenizer.context_image_token_id
        import re

        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})")

    def save_pretrained(self, save_directory, **kwargs):
        """Save in the standard InternVL-hf layout (processor_class InternVLProcessor + a video entry)."""
        out = super().save_pretrained(save_directory, **kwargs)
        video = dict(VIDEO_PROCESSOR_ENTRY, size=dict(self.image_processor.size))
        for name in ("processor_config.json", "tokenizer_config.json"):
            path = os.path.join(save_directory, name)
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            cfg["processor_class"] = "InternVLProcessor"
            if name == "processor_config.json":
                cfg.setdefault("video_processor", video)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent=2, sort_keys=True, ensure_ascii=False)
        return out


def load_processor(path: str):
    """`AutoProcessor.from_pretrained(path)` where torchvision exists, else the image-only InternVL processor."""
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != "internvl":
        return AutoProcessor.from_pretrained(path)
    return ImageOnlyInternVLProcessor.from_pretrained(path)
