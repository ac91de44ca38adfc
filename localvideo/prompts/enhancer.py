"""The optional local-LLM prompt enhancer.

A small instruct model (from the models folder, the Hugging Face cache or any local folder — never downloaded
implicitly) rewrites a short prompt in the style the video model's family was trained on. Its answer is only used
when it passes strict checks (:func:`validate`); otherwise the deterministic engine's expansion is used and the
result says why. Nothing here pretends: ``EnhanceResult.source`` is ``"llm"`` only for validated model text.

* Entries (:data:`ENHANCERS`) work like video models: ``localvideo models pull qwen2.5-1.5b-instruct``; a missing
  model is :class:`~localvideo.errors.ModelNotInstalled` with that command; a model that does not fit the free
  RAM / VRAM is :class:`~localvideo.errors.DoesNotFit` before anything is loaded. ``tiny-lm`` is a real LLaMA-style
  causal LM with RANDOM weights and the locally trained tiny tokenizer, built on this machine for tests: its output
  is noise and always falls back.
* Streaming: ``stream`` receives text as it is generated (token by token). ``stop`` (a ``threading.Event``) ends
  generation at the next token through a ``StoppingCriteria`` and :func:`enhance` raises
  :class:`~localvideo.errors.Cancelled` once the generation thread has ended.
* DeepSeek-R1 distills think first: a ``<think>…</think>`` block is expected and removed before validation; a
  leftover or unfinished tag counts as garbage.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from ..catalog import DTYPE_BYTES
from ..errors import Cancelled, DoesNotFit, GenerationFailed, InvalidRequest, ModelNotInstalled, UnknownModel
from ..hardware import GB, Hardware
from ..settings import Settings, get_settings
from . import engine

log = logging.getLogger(__name__)

LLM_ALLOW = ["*.json", "*.safetensors", "tokenizer*", "vocab.json", "merges.txt", "*.jinja", "*.model"]
LLM_IGNORE = ["*.bin", "*.pth", "*.pt", "*.ckpt", "*.gguf", "*.msgpack", "*.onnx", "*.h5", "original/*"]
MEMORY_OVERHEAD = 1.25  # weights × this: KV cache, activations and allocator slack for a ~1k-token generation
MEMORY_FIXED = int(0.3 * GB)
USABLE = 0.9
TINY_MARKER = "localvideo_tiny.json"
TINY_FORMAT = 1
TINY_SEED = 0


# -------------------------------------------------------------------------------------------------------- catalog


def qwen2_params(arch: dict) -> int:
    """Parameters of a Qwen2 / LLaMA-style decoder from its config (tests check this against transformers)."""
    h, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    heads, kv_heads, vocab = arch["num_attention_heads"], arch["num_key_value_heads"], arch["vocab_size"]
    head_dim = arch.get("head_dim") or h // heads
    bias = arch.get("attention_bias", False)
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if bias else 0)
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    embed = vocab * h
    head = 0 if arch.get("tie_word_embeddings", False) else vocab * h
    return embed + layers * per_layer + h + head


_QWEN25_15B = {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
               "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "attention_bias": True}


@dataclass(frozen=True)
class EnhancerSpec:
    id: str
    name: str
    repo: str  # HF repo id, "local:tiny-lm", or a folder path for a local model
    dtype: str
    licence: str
    description: str = ""
    arch: dict = field(default_factory=dict)  # architecture fields of config.json (parameter count)
    reasoning: bool = False  # writes <think>…</think> before answering (DeepSeek-R1 distills)
    generation: dict = field(default_factory=dict)  # sampling settings recommended by the model card
    max_new_tokens: int = 400
    tiny: bool = False
    local_path: str | None = None  # a folder given directly (not from the catalog)
    measured_params: int = 0  # tiny / local folders: counted from the weights
    allow_patterns: tuple[str, ...] = tuple(LLM_ALLOW)
    ignore_patterns: tuple[str, ...] = tuple(LLM_IGNORE)

    @property
    def params(self) -> int:
        return self.measured_params or qwen2_params(self.arch)

    @property
    def weights_bytes(self) -> int:
        return self.params * DTYPE_BYTES[self.dtype]

    @property
    def label(self) -> str:
        return f"{self.id} (RANDOM WEIGHTS: output is noise)" if self.tiny else self.id

    @staticmethod
    def is_complete(path: Path) -> bool:
        """A transformers causal-LM folder: config, a tokenizer, and every safetensors shard its index lists."""
        path = Path(path)
        if not (path / "config.json").is_file():
            return False
        if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
            return False
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError):
                return False
            return all((path / s).is_file() for s in shards)
        return any(path.glob("*.safetensors"))

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "repo": self.repo, "kind": "prompt-enhancer", "dtype": self.dtype,
                "params": self.params, "weights_gb": round(self.weights_bytes / 1e9, 2), "licence": self.licence,
                "reasoning": self.reasoning, "random_weights": self.tiny, "description": self.description}


ENHANCERS: tuple[EnhancerSpec, ...] = (
    EnhancerSpec(
        id="qwen2.5-1.5b-instruct", name="Qwen2.5 1.5B Instruct", repo="Qwen/Qwen2.5-1.5B-Instruct",
        dtype="bfloat16", licence="apache-2.0", arch=_QWEN25_15B | {"tie_word_embeddings": True},
        generation={"do_sample": False, "repetition_penalty": 1.05}, max_new_tokens=400,
        description="Small multilingual instruct model; 1.54B parameters, ≈3.1 GB in bf16. The default enhancer.",
    ),
    EnhancerSpec(
        id="deepseek-r1-distill-qwen-1.5b", name="DeepSeek-R1 Distill Qwen 1.5B",
        repo="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", dtype="bfloat16", licence="mit",
        arch=_QWEN25_15B | {"tie_word_embeddings": False}, reasoning=True,
        generation={"do_sample": True, "temperature": 0.6, "top_p": 0.95, "seed": 0}, max_new_tokens=1500,
        description="Reasoning distill (thinks in <think> before answering); 1.78B parameters (untied head).",
    ),
    EnhancerSpec(
        id="tiny-lm", name="Tiny LM (random weights)", repo="local:tiny-lm", dtype="float32",
        licence="none (random weights)", tiny=True, measured_params=32_480,
        arch={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
              "tie_word_embeddings": True},
        generation={"do_sample": False}, max_new_tokens=200,
        description="A real LLaMA-style causal LM with random weights and the locally trained tiny tokenizer, built "
                    "on this machine. Output is noise (it always falls back to the engine); for tests.",
    ),
)
_BY_ID = {e.id: e for e in ENHANCERS}
DEFAULT_ENHANCER = "qwen2.5-1.5b-instruct"


def all_enhancers(include_tiny: bool = True) -> list[EnhancerSpec]:
    return [e for e in ENHANCERS if include_tiny or not e.tiny]


def is_enhancer(model_id: str) -> bool:
    key = (model_id or "").strip().lower()
    return key in _BY_ID or any(e.repo.lower() == key for e in ENHANCERS)


def get_enhancer(model: str) -> EnhancerSpec:
    """An enhancer by id or HF repo id, or a local folder holding a transformers causal LM."""
    key = (model or "").strip()
    if key.lower() in _BY_ID:
        return _BY_ID[key.lower()]
    for e in ENHANCERS:
        if e.repo.lower() == key.lower():
            return e
    path = Path(key).expanduser()
    if key and (os.sep in key or key.startswith(".")) or path.is_dir():
        if not path.is_dir():
            raise ModelNotInstalled(f"No model folder at {path}.",
                                    hint="Give a folder with config.json, a tokenizer and *.safetensors, or an "
                                         "enhancer id (see `localvideo models list`).", model=key)
        return _folder_spec(path)
    raise UnknownModel(f"Unknown prompt enhancer '{model}'.",
                       hint=f"Use one of: {', '.join(_BY_ID)}, or a local model folder.", model=model)


def _safetensors_params(path: Path) -> tuple[int, int]:
    """(parameters, bytes) from the safetensors headers (no weights read)."""
    params = nbytes = 0
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t["shape"]:
                count *= int(d)
            params += count
            nbytes += int(t["data_offsets"][1]) - int(t["data_offsets"][0])
    return params, nbytes


def _folder_spec(path: Path) -> EnhancerSpec:
    if not EnhancerSpec.is_complete(path):
        raise ModelNotInstalled(f"{path} is not a complete transformers model folder.",
                                hint="It needs config.json, tokenizer files and the *.safetensors weights.",
                                model=str(path))
    cfg = json.loads((path / "config.json").read_text())
    params, nbytes = _safetensors_params(path)
    dtype = "float32" if params and nbytes >= 4 * params else "bfloat16"
    marker = _read_json(path / TINY_MARKER)
    return EnhancerSpec(id=path.name, name=path.name, repo=str(path), dtype=dtype, licence="see the model folder",
                        local_path=str(path), measured_params=params, tiny=bool(marker.get("random_weights")),
                        reasoning="<think>" in (path / "tokenizer_config.json").read_text(errors="replace")
                        if (path / "tokenizer_config.json").is_file() else False,
                        arch={k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers")},
                        generation={"do_sample": False}, max_new_tokens=400)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------------- tiny model

_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_tokenizer_for_lm():
    """The locally trained tiny Unigram tokenizer plus ChatML markers and a chat template (no network)."""
    from ..runtime.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def make_tiny_lm(tokenizer=None, **overrides):
    """(tokenizer, model): a LLaMA-style causal LM with random weights from ``TINY_SEED`` (fp32, CPU).

    It is a LLaMA (not Qwen2) config because transformers maps the qwen2 model type to a byte-level tokenizer
    class and would not reload the Unigram tokenizer as itself."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else build_tiny_tokenizer_for_lm()
    arch = {k: v for k, v in _BY_ID["tiny-lm"].arch.items() if k != "model_type"} | overrides
    cfg = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None, **arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return tok, model


def save_lm(tok, model, dest: Path, marker: dict | None = None) -> Path:
    """Save into ``dest`` atomically (temp sibling folder, then rename)."""
    import uuid

    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    from ..runtime.leftovers import owner_tag

    tag = owner_tag()  # names this process: a killed build's folder is swept later (runtime.leftovers)
    tmp = dest.parent / f".{dest.name}.building-{tag}-{uuid.uuid4().hex[:8]}"
    try:
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        if marker is not None:
            (tmp / TINY_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            import shutil

            old = dest.parent / f".{dest.name}.old-{tag}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_tiny_lm(settings: Settings | None = None) -> Path:
    """``<tiny>/tiny-lm``, built the first time (≈5 s: the tokenizer is trained here)."""
    from ..runtime.tiny import _FileLock

    settings = settings or get_settings()
    dest = settings.tiny / "tiny-lm"

    def built() -> bool:
        m = _read_json(dest / TINY_MARKER)
        return m.get("format") == TINY_FORMAT and EnhancerSpec.is_complete(dest)

    if built():
        return dest
    with _FileLock(settings.tiny / ".tiny-lm.lock"):
        if not built():
            tok, model = make_tiny_lm()
            save_lm(tok, model, dest, {"model": "tiny-lm", "random_weights": True, "seed": TINY_SEED,
                                       "format": TINY_FORMAT, "note": "random weights: output is noise"})
    return dest


# ----------------------------------------------------------------------------------------------- find and check


def locate(spec: EnhancerSpec, settings: Settings | None = None) -> Path:
    """Folder of a usable copy (never downloads): tiny is built, a local folder is itself, catalog entries are
    looked up by the model store (models folder, then the HF cache)."""
    settings = settings or get_settings()
    if spec.tiny and spec.local_path is None:
        return ensure_tiny_lm(settings)
    if spec.local_path is not None:
        return Path(spec.local_path)
    from ..runtime import store

    found = store.find(spec, settings)
    if found is None:
        cmd = store.pull_command(spec)
        raise ModelNotInstalled(
            f"The prompt enhancer {spec.id} is not installed (looked in {store.models_folder_path(spec, settings)} "
            "and the Hugging Face cache).",
            hint=f"Download it with: {cmd}   (or generate without --enhance: the prompt engine needs no model)",
            model=spec.id, command=cmd)
    return found.path


def memory_needed(spec: EnhancerSpec, dtype: str | None = None) -> int:
    return int(spec.params * DTYPE_BYTES[dtype or spec.dtype] * MEMORY_OVERHEAD) + MEMORY_FIXED


def check_fits(spec: EnhancerSpec, hardware: Hardware) -> tuple[str, str]:
    """(device, dtype) to run on: the GPU with the most free memory when the model fits there, else the CPU when it
    fits in RAM; otherwise :class:`DoesNotFit`. Counts parameters × dtype × overhead, before loading anything."""
    gpu = hardware.best_gpu
    if gpu is not None:
        need = memory_needed(spec)
        if need <= gpu.free_bytes * USABLE:
            return gpu.device, spec.dtype
    cpu_dtype = "float32" if spec.tiny or spec.dtype == "float32" else "bfloat16"
    need_cpu = memory_needed(spec, cpu_dtype)
    budget = hardware.ram_available_bytes * USABLE
    if need_cpu <= budget:
        return "cpu", cpu_dtype
    where = f"{gpu.free_bytes / GB:.1f} GB free on {gpu.name} and " if gpu is not None else ""
    raise DoesNotFit(
        f"The prompt enhancer {spec.id} needs about {need_cpu / GB:.2f} GB ({spec.params / 1e9:.2f} B parameters in "
        f"{cpu_dtype} plus working memory); this machine has {where}{hardware.ram_available_bytes / GB:.2f} GB of "
        "RAM available.",
        hint="Close other programs, or drop --enhance: the prompt engine expands prompts without a model.",
        model=spec.id)


# ------------------------------------------------------------------------------------------------------ instruct

_FAMILY_NAMES = {"wan": "Wan", "ltx": "LTX-Video", "cogvideox": "CogVideoX", "hunyuan": "HunyuanVideo",
                 "mochi": "Mochi"}
# (words the model is asked for, fewest tokens an answer may have)
_TARGET = {"wan": ((80, 150), 30), "ltx": ((40, 75), 20), "cogvideox": ((60, 120), 25), "hunyuan": ((60, 120), 25),
           "mochi": ((60, 120), 25)}


def build_messages(prompt: str, family: str) -> list[dict]:
    """The chat messages sent to the model (one user turn: DeepSeek-R1 distills are meant to get no system
    prompt). Hints are parsed by the engine and turned into requirements."""
    engine.family_info(family)
    text, hints = engine.parse_hints(prompt)
    (lo, hi), _ = _TARGET[family]
    required = []
    for kind, label in (("shot", "Shot"), ("camera", "Camera"), ("light", "Lighting"), ("style", "Style"),
                        ("mood", "Mood"), ("speed", "Speed")):
        if kind in hints:
            required.append(f"{label}: " + "; ".join(engine.VOCAB[kind].get(v, v) for v in hints[kind]) + ".")
    idea = text or "(no subject given: invent a simple scene that suits the requirements)"
    instructions = (
        f"You write prompts for the {_FAMILY_NAMES[family]} text-to-video model. Rewrite the idea below as one "
        f"paragraph of {lo} to {hi} words of plain prose that describes, in chronological order: the main subject "
        "and its appearance, the action as it unfolds, the setting, the camera shot and movement, the lighting and "
        "colors, and the visual style. Be concrete and visual. Keep every detail of the idea and add nothing that "
        "contradicts it. Write in the same language as the idea. Answer with the prompt only: no title, no list, "
        "no quotes, no explanation."
    )
    if required:
        instructions += "\nRequirements: " + " ".join(required)
    return [{"role": "user", "content": f"{instructions}\nIdea: {idea}"}]


# ----------------------------------------------------------------------------------------------------- validation

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_TAG = re.compile(r"</?\s*[A-Za-z|][^<>\n]{0,40}>|<\|[^|]{0,40}\|>")
_PREAMBLE = re.compile(
    r"^\W*(sure\b|certainly\b|of course\b|okay\b|ok\b|absolutely\b|great\b|here is\b|here's\b|here are\b|"
    r"as an ai\b|i cannot\b|i can't\b|i can not\b|i'm sorry\b|i am sorry\b|i apologi[sz]e\b|i'd be happy\b|"
    r"i would be happy\b|i will\b|i'll\b|let me\b|(?:enhanced |rewritten |video |final |improved )?prompt\s*:|"
    r"title\s*:)", re.I)
_REFUSAL = re.compile(r"\b(as an ai|language model|i cannot|i can't|i'm unable|i am unable)\b", re.I)
_MARKDOWN = re.compile(r"(^\s*(#{1,6}\s|[-*•+]\s|\d+[.)]\s|>\s))|\*\*|__|```", re.M)
_STOP = set("a an the and or but of in on at to for with by from into onto over under as is are was were be its "
            "it this that these those his her their our your my there here very".split())


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    if engine.is_cjk(ch):
        return "cjk"
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o <= 0x1EFF:
        return "latin"
    if 0x370 <= o <= 0x3FF:
        return "greek"
    if 0x400 <= o <= 0x52F:
        return "cyrillic"
    if 0x590 <= o <= 0x5FF:
        return "hebrew"
    if 0x600 <= o <= 0x6FF:
        return "arabic"
    if 0x900 <= o <= 0x97F:
        return "devanagari"
    if 0xE00 <= o <= 0xE7F:
        return "thai"
    return "other"


def script_shares(text: str) -> dict[str, float]:
    counts = Counter(s for s in map(_script, text) if s)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.most_common()} if total else {}


_SCRIPT_NAMES = {"latin": "Latin script", "cjk": "Chinese/Japanese/Korean", "cyrillic": "Cyrillic",
                 "greek": "Greek", "arabic": "Arabic", "hebrew": "Hebrew", "devanagari": "Devanagari",
                 "thai": "Thai", "other": "another script"}


def _content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[^\W\d_]{3,}", text.lower()) if w not in _STOP and not engine.is_cjk(w[0])]


def strip_reasoning(text: str, reasoning: bool) -> tuple[str, str | None]:
    """Remove complete ``<think>…</think>`` blocks and everything up to a lone ``</think>`` (reasoning models whose
    chat template opens the block themselves). Returns (text, reason it is unusable or None). ``reasoning`` only
    words the message."""
    out = _THINK_BLOCK.sub(" ", text)
    if "</think>" in out.lower() and "<think>" not in out.lower():
        out = re.split(r"</think>", out, flags=re.I)[-1]
    if re.search(r"<think>", out, re.I) and not re.search(r"</think>", out, re.I):
        return out, ("the model's reasoning (<think>) never finished" if reasoning else
                     "it contains an unfinished <think> reasoning block")
    return out, None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str  # cleaned text (the prompt to use when ok)
    reason: str | None = None
    notes: tuple[str, ...] = ()


def validate(raw: str, original: str, family: str, *, reasoning: bool = False, finished: bool = True) -> Verdict:
    """Strictly check the model's answer to ``original`` (the user's prompt) for ``family``."""
    fam = engine.family_info(family)
    text, why = strip_reasoning(raw or "", reasoning)
    if why:
        return Verdict(False, text.strip(), why)
    text = text.strip()
    if len(text) >= 2 and text[0] in "\"'“«" and text[-1] in "\"'”»":
        text = text[1:-1].strip()
    if not text:
        return Verdict(False, "", "the model returned nothing")
    if _TAG.search(text):
        return Verdict(False, text, f"it contains markup or reasoning tags ({_TAG.search(text).group(0)!r})")
    m = _PREAMBLE.match(text)
    if m:
        return Verdict(False, text, f"it starts with chat preamble ({m.group(0).strip()!r}) instead of the prompt")
    if _REFUSAL.search(text):
        return Verdict(False, text, f"it talks about itself ({_REFUSAL.search(text).group(0)!r}) instead of a scene")
    if _MARKDOWN.search(text):
        return Verdict(False, text, "it is formatted as markdown (headers, lists or bold), not plain prose")
    rep = re.search(r"(.{1,24}?)\1{5,}", text, re.S)
    if rep:
        unit = rep.group(1)
        return Verdict(False, text, f"it looks like garbage: {unit!r} repeated {len(rep.group(0)) // len(unit)} "
                                    "times")
    words = re.findall(r"\w+", text.lower())
    if len(words) >= 12:
        top, n = Counter(w for w in words if w not in _STOP).most_common(1)[0] if any(
            w not in _STOP for w in words) else ("", 0)
        if n > 0.2 * len(words) and n >= 5:
            return Verdict(False, text, f"it looks like garbage: {top!r} is {n} of its {len(words)} words")
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        if len(set(grams)) < 0.6 * len(grams):
            return Verdict(False, text, "it keeps repeating itself")
    if not finished:
        return Verdict(False, text, "it was cut off at the token limit before the model finished")
    src, out = script_shares(original), script_shares(text)
    if src and sum(1 for c in original if _script(c)) >= 3 and out:
        want = max(src, key=src.get)
        if out.get(want, 0.0) < 0.5:
            got = max(out, key=out.get)
            return Verdict(False, text, f"it is written in {_SCRIPT_NAMES[got]}, but the prompt is in "
                                        f"{_SCRIPT_NAMES[want]}")
    if sum(1 for c in text if c.isalpha() or engine.is_cjk(c)) < 0.6 * len(text.replace(" ", "")):
        return Verdict(False, text, "it is mostly symbols or numbers, not a description")
    text = re.sub(r"\s*\n+\s*", " ", text)
    notes: list[str] = []
    _, min_tokens = _TARGET[family]
    tokens = engine.estimate_tokens(text)
    if tokens < min_tokens:
        return Verdict(False, text, f"it is too short for {fam.name} (≈{tokens} tokens; at least {min_tokens})")
    if tokens > fam.token_limit - 1:
        cut, _ = engine.trim_to_tokens(text, fam.token_limit - 1)
        if not cut or cut[-1] not in ".!?。！？":
            return Verdict(False, text, f"it is too long for {fam.name}'s {fam.token_limit}-token text limit "
                                        f"(≈{tokens} tokens) and has no sentence end to cut at")
        notes.append(f"the model's answer was trimmed at a sentence end to fit {fam.token_limit} tokens")
        text = cut
    want_words = _content_words(engine.parse_hints(original)[0])
    if want_words:
        have = _content_words(text)
        missing = [w for w in dict.fromkeys(want_words) if not any(h.startswith(w[:5]) for h in have)]
        if len(missing) > len(set(want_words)) / 2:
            return Verdict(False, text, "it drops the subject of the prompt (missing: "
                                        f"{', '.join(missing[:5])})")
    cjk_src = {c for c in original if engine.is_cjk(c)}
    if len(cjk_src) >= 3:
        kept = sum(1 for c in cjk_src if c in text) / len(cjk_src)
        if kept < 0.4:
            return Verdict(False, text, "it drops the subject of the prompt (few of its characters are kept)")
    return Verdict(True, text, None, tuple(notes))


# ----------------------------------------------------------------------------------------------------- generation


@dataclass
class EnhanceResult:
    prompt: str  # what the video model will read
    source: Literal["llm", "engine"]
    reason_if_fallback: str | None
    raw_output: str  # the model's text as generated ("" if it never ran)
    negative_prompt: str = ""
    model: str = ""
    family: str = ""
    original: str = ""
    hints: dict = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    new_tokens: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("prompt", "source", "reason_if_fallback", "raw_output",
                                              "negative_prompt", "model", "family", "original", "hints", "changes",
                                              "new_tokens", "seconds")}


class _TokenStreamer:
    """A transformers streamer (``put``/``end``) that hands out decoded text per token through a queue; text ending
    in an incomplete UTF-8 sequence is held back until the next token completes it."""

    def __init__(self, tokenizer, timeout: float | None):
        self.tokenizer = tokenizer
        self.timeout = timeout
        self.q: queue.Queue = queue.Queue()
        self.ids: list[int] = []
        self.sent = ""
        self._prompt_seen = False
        self._done = object()

    def put(self, value) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(x) for x in value.reshape(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)
        self.q.put(self._done)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if text.startswith(self.sent):
            delta = text[len(self.sent):]
            if delta:
                self.sent = text
                self.q.put(delta)

    def __iter__(self):
        while True:
            item = self.q.get(timeout=self.timeout)
            if item is self._done:
                return
            yield item


_loaded: dict[str, tuple] = {}
_load_lock = threading.Lock()


def _load(spec: EnhancerSpec, path: Path, device: str, dtype: str, keep: bool):
    key = f"{path}|{device}|{dtype}"
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelNotInstalled(f"Could not load the prompt enhancer from {path}: {e}",
                                    hint=f"Pull it again (localvideo models pull {spec.id}) or check the folder.",
                                    model=spec.id) from e
        model = model.to(device).eval()
        _loaded.clear()
        if keep:
            _loaded[key] = (tok, model)
        return tok, model


def unload() -> None:
    """Drop the enhancer kept in memory (``keep_loaded=True``)."""
    with _load_lock:
        _loaded.clear()


def _generate(tok, model, messages, spec: EnhancerSpec, *, max_new_tokens: int, stream, stop: threading.Event,
              timeout_s: float) -> tuple[str, bool, int]:
    """Run generation in a thread, streaming text; returns (text, finished with EOS?, new tokens)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = _TokenStreamer(tok, timeout=timeout_s)
    gen = {k: v for k, v in spec.generation.items() if k != "seed"}
    seed = spec.generation.get("seed", 0)
    out: dict = {}
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    if tok.eos_token_id is not None:
        eos_ids.add(tok.eos_token_id)

    def work() -> None:
        try:
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(seed)
                out["ids"] = model.generate(**enc, max_new_tokens=max_new_tokens, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([StopOnEvent()]),
                                            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                            else next(iter(eos_ids), None), **gen)
        except BaseException as e:  # surfaced in the caller's thread
            out["error"] = e
            streamer.end()

    thread = threading.Thread(target=work, name="localvideo-enhancer", daemon=True)
    thread.start()
    try:
        for chunk in streamer:
            if stream is not None:
                stream(chunk)
    except queue.Empty:
        stop.set()
        thread.join(10)
        raise GenerationFailed(f"The prompt enhancer produced nothing for {timeout_s:.0f} s.",
                               hint="Try again without --enhance.") from None
    except BaseException:  # the stream callback failed, or Ctrl-C: stop the thread before leaving
        stop.set()
        thread.join(10)
        raise
    thread.join(10)
    if "error" in out:
        e = out["error"]
        if type(e).__name__ == "OutOfMemoryError":
            raise DoesNotFit(f"The prompt enhancer ran out of memory: {e}", hint="Drop --enhance.") from e
        raise GenerationFailed(f"The prompt enhancer failed: {e}", hint="Try again without --enhance.") from e
    new = out["ids"][0, enc["input_ids"].shape[1]:].tolist()
    finished = any(t in eos_ids for t in new)
    return tok.decode(new, skip_special_tokens=True), finished, len(new)


def enhance(prompt: str, family: str, *, model: str = DEFAULT_ENHANCER, stream: Callable[[str], None] | None = None,
            stop: threading.Event | Callable[[], bool] | None = None, max_new_tokens: int | None = None,
            hardware: Hardware | None = None, settings: Settings | None = None, keep_loaded: bool = False,
            timeout_s: float = 300.0) -> EnhanceResult:
    """Rewrite ``prompt`` for ``family`` with a local LLM; validated text or the engine's expansion (with why).

    Raises :class:`InvalidRequest` (empty prompt), :class:`UnknownModel`, :class:`ModelNotInstalled`,
    :class:`DoesNotFit` (checked before loading) and :class:`Cancelled` (``stop`` was set).
    """
    t0 = time.perf_counter()
    fallback = engine.expand(prompt, family)  # also validates the prompt and the family
    spec = get_enhancer(model)
    settings = settings or get_settings()
    if hardware is None:
        from ..hardware import probe

        hardware = probe(settings.home)
    device, dtype = check_fits(spec, hardware)
    stop = _as_event(stop)
    if stop.is_set():
        raise Cancelled("Prompt enhancement was stopped before it started.")
    path = locate(spec, settings)
    tok, lm = _load(spec, path, device, dtype, keep_loaded)
    messages = build_messages(prompt, family)
    raw, finished, n_new = _generate(tok, lm, messages, spec, max_new_tokens=max_new_tokens or spec.max_new_tokens,
                                     stream=stream, stop=stop, timeout_s=timeout_s)
    if not keep_loaded:
        del lm
        _free_device(device)
    if stop.is_set():
        raise Cancelled(f"Prompt enhancement was stopped after {n_new} tokens.", hint="Nothing was generated.",
                        tokens=n_new)
    verdict = validate(raw, prompt, family, reasoning=spec.reasoning, finished=finished)
    common = dict(raw_output=raw, negative_prompt=fallback.negative_prompt, model=spec.label, family=family,
                  original=prompt, hints=fallback.hints, new_tokens=n_new,
                  seconds=round(time.perf_counter() - t0, 3))
    if verdict.ok:
        changes = [f"rewritten by {spec.label}", *verdict.notes,
                   *[c for c in fallback.changes if c.startswith("negative prompt")]]
        return EnhanceResult(prompt=verdict.text, source="llm", reason_if_fallback=None, changes=changes, **common)
    reason = f"{spec.label}'s answer was not used: {verdict.reason}; the prompt engine's expansion is used instead"
    log.info(reason)
    return EnhanceResult(prompt=fallback.prompt, source="engine", reason_if_fallback=reason,
                         changes=[reason, *fallback.changes], **common)


def chat(messages: list[dict], *, model: str = DEFAULT_ENHANCER, stream: Callable[[str], None] | None = None,
         stop: threading.Event | Callable[[], bool] | None = None, max_new_tokens: int | None = None,
         hardware: Hardware | None = None, settings: Settings | None = None,
         timeout_s: float = 300.0) -> tuple[str, bool, EnhancerSpec]:
    """Run the enhancer LLM on ``messages`` (same checks, loading, streaming and stop as :func:`enhance`) and return
    (raw text, finished with EOS?, spec). The caller validates the text (e.g. the story shot list)."""
    spec = get_enhancer(model)
    settings = settings or get_settings()
    if hardware is None:
        from ..hardware import probe

        hardware = probe(settings.home)
    device, dtype = check_fits(spec, hardware)
    stop = _as_event(stop)
    if stop.is_set():
        raise Cancelled("The LLM was stopped before it started.")
    tok, lm = _load(spec, locate(spec, settings), device, dtype, False)
    raw, finished, n_new = _generate(tok, lm, messages, spec, max_new_tokens=max_new_tokens or spec.max_new_tokens,
                                     stream=stream, stop=stop, timeout_s=timeout_s)
    del lm
    _free_device(device)
    if stop.is_set():
        raise Cancelled(f"The LLM was stopped after {n_new} tokens.", tokens=n_new)
    return raw, finished, spec


class _CallableStop(threading.Event):
    """A stop Event that also asks a ``cancel()`` callable (generation's cancel may be either)."""

    def __init__(self, check: Callable[[], bool]):
        super().__init__()
        self._check = check

    def is_set(self) -> bool:
        if not super().is_set() and self._check():
            self.set()
        return super().is_set()


def _as_event(stop) -> threading.Event:
    if stop is None:
        return threading.Event()
    if isinstance(stop, threading.Event):
        return stop
    return _CallableStop(stop)


def _free_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def pull(spec: EnhancerSpec, settings: Settings | None = None, api=None, snapshot_download=None):
    """Download an enhancer into the models folder (the model store's pull: disk check, resumable, catalog patterns);
    ``tiny-lm`` is built locally instead."""
    from ..runtime import store

    settings = settings or get_settings()
    if spec.tiny or spec.local_path is not None:
        path = locate(spec, settings)
        return store.Installed(path, "tiny" if spec.tiny else "folder", store._folder_size(path))
    return store.pull(spec, settings, api=api, snapshot_download=snapshot_download)
