"""FAKE translator for tests: a deterministic GenBackend that "translates" by a fixed word mapping.

It is not a model. Each English word the translate gates' fitted translation table knows becomes its first
translation there; any other becomes a made-up Hangul (ko) or Vietnamese-looking (vi) word picked by a hash;
placeholders ([[P3]]), digits, punctuation and line breaks are kept, so structure,
caching and gate tests exercise the real code paths. Trigger words in the source make it misbehave:
  FAKEFAILONCE  -> first (normal-prompt) answer is the English input; the strict retry answers well
  FAKEFAILALWAYS-> every answer is the English input (ends in a GATE_ENGLISH_LEFT reject)
  FAKEDROPSPAN  -> the first placeholder is dropped
  FAKETRUNCATE  -> finish_reason "length"
`spec.options["log_path"]`: every request is appended there as one line (counts requests across processes).
Importing this module registers it as `backend: fake-translator` (FAKE).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from polycap.transforms.backends.base import GenBackend, GenRequest, GenResult, register_backend
from polycap.transforms.coverage import STOP_WORDS, stem
from polycap.transforms.translate_gates import _lexicon, omission_model

FAKE = "fake-translator"

_KO = [chr(c) for c in range(0xAC00, 0xAC00 + 11172, 97)]  # a spread of Hangul syllables
_VI = ["của", "những", "người", "được", "trong", "một", "không", "với", "đường", "nhà", "màu", "xanh",
       "đỏ", "bàn", "ghế", "cây", "trời", "nước", "ảnh", "đứng", "ngồi", "chạy", "lớn", "nhỏ", "trên", "dưới"]
_TOKEN = re.compile(r"\[\[P\d+\]\]|[A-Za-z']+|\s+|.", re.DOTALL)


def _h(word: str) -> int:
    return int(hashlib.sha256(word.lower().encode()).hexdigest()[:8], 16)


def fake_word(word: str, lang: str) -> str:
    table = _lexicon(lang)[0] if lang in omission_model() else {}   # the gates' fitted translation table
    known = table.get(stem(word)) if word.lower() not in STOP_WORDS else None
    if known:         # a word the gates' table knows becomes its first translation there, as a real model's
        return known[0]   # output carries one (random syllables would lack it and read as an omission)
    if lang == "ko":  # ~1 syllable per 2 letters: ko/en char ratio ~0.5, as in NTREX references
        n = max(1, (len(word) + 1) // 2)
        return "".join(_KO[(_h(word) + i * 7919) % len(_KO)] for i in range(n))
    n = max(1, (len(word) + 2) // 4)  # vi: ~1 syllable per 4 letters, ratio ~1.1
    return " ".join(_VI[(_h(word) + i * 31) % len(_VI)] for i in range(n))


def fake_translate(text: str, lang: str) -> str:
    out = []
    for tok in _TOKEN.findall(text):
        if tok[0].isalpha() and not tok.startswith("[[P"):
            out.append(fake_word(tok, lang))
        else:
            out.append(tok)
    return "".join(out)


def target_of(system: str) -> str:
    return "ko" if "Korean" in system else "vi" if "Vietnamese" in system else "ko"


class FakeTranslatorBackend(GenBackend):
    """TEST DOUBLE, not a model: see the module docstring."""

    name = "fake-translator"

    def _answer(self, req: GenRequest) -> GenResult:
        system = next((m["content"] for m in req.messages if m["role"] == "system"), "")
        text = next((m["content"] for m in req.messages if m["role"] == "user"), "")
        strict = "previous answer was rejected" in system
        finish = "stop"
        if "FAKEFAILALWAYS" in text or ("FAKEFAILONCE" in text and not strict):
            out = text
        else:
            out = fake_translate(text, target_of(system))
        if "FAKEDROPSPAN" in text:
            out = re.sub(r"\[\[P\d+\]\]", "", out, count=1)
        if "FAKETRUNCATE" in text:
            finish = "length"
        return GenResult(key=req.key, text=out, finish_reason=finish, model="fake-translator")

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        log = self.spec.options.get("log_path")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                for r in requests:
                    f.write(json.dumps({"key": r.key}) + "\n")
        return [self._answer(r) for r in requests]


register_backend(FAKE, FakeTranslatorBackend)
