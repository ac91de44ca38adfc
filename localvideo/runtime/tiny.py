"""Tiny random-weight video pipelines, built offline.

``build_tiny_pipeline(family, dest)`` creates a *real* diffusers pipeline (``WanPipeline``, ``LTXPipeline``,
``CogVideoXPipeline``, or for ``wan-flf2v`` a ``WanImageToVideoPipeline``) whose components use tiny configs
(modelled on diffusers' own pipeline tests) and random weights drawn from ``TINY_SEED``, then saves it with
``save_pretrained``. The folder reloads with ``DiffusionPipeline.from_pretrained(folder, local_files_only=True)`` and
runs end to end on a CPU in about a second; its output is noise. It exists so the whole app (loading, scheduling,
callbacks, decoding, encoding MP4s) can be exercised without downloading gigabytes of weights and without any
network access.

No tokenizer is downloaded either: a tiny Unigram tokenizer is trained with the ``tokenizers`` library on a small
built-in corpus and wrapped as a ``transformers.T5Tokenizer``.

Geometry of the tiny pipelines (see ``TINY_GEOMETRY``):

* tiny-wan: frames 4k+1, width/height multiple of 16 (VAE 8x space / 4x time, patch 1x2x2), default 128x128x17.
* tiny-ltx: frames 8k+1, width/height multiple of 32 (pipeline check; VAE 8x space / 8x time, patch 1),
  default 128x128x17.
* tiny-cogvideox: frames 4k+1 (VAE 4x time, 8x space, patch 2 -> size multiple of 16), default 128x128x9.
  Must be called with ``max_sequence_length=226`` (the transformer's ``max_text_seq_length``; 226 is also the
  pipeline's default), anything else fails with a shape mismatch.
* tiny-wan-flf2v (a *variant* of the wan family, see ``VARIANTS``): Wan 2.1 first-last-frame-to-video, shaped like
  Wan2.1-FLF2V-14B-720P: tiny-wan's VAE and text encoder, a tiny CLIP vision encoder + ``CLIPImageProcessorPil``,
  and a transformer with the image branch (in_channels 36, ``image_dim``, ``added_kv_proj_dim``,
  ``pos_embed_seq_len``). Same geometry as tiny-wan. Must be called with ``image=`` *and* ``last_image=``: its image
  position embedding spans two CLIP sequences (first and last frame), so a first frame alone fails in diffusers.

Heavy libraries (torch, diffusers, transformers, tokenizers) are only imported inside functions.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import time
import uuid
from pathlib import Path
from typing import Any

FAMILIES = ("wan", "ltx", "cogvideox")
# Tiny builds beyond one per family: build name -> catalog family. Built into root/f"tiny-{name}" like the others.
VARIANTS: dict[str, str] = {"wan-flf2v": "wan"}
BUILDS = FAMILIES + tuple(VARIANTS)
TINY_SEED = 0  # weights are generated deterministically from this seed

MARKER_NAME = "localvideo_tiny.json"
# Bump when the tiny configs change, so existing folders built by an older layout are rebuilt.
TINY_FORMAT = 1

# Geometry the tiny pipelines honour. ``frame_step``: valid frame counts are ``frame_step * k + 1``.
TINY_GEOMETRY: dict[str, dict[str, Any]] = {
    "wan": {
        "pipeline": "WanPipeline",
        "frame_step": 4,
        "size_multiple": 16,
        "vae_spatial": 8,
        "vae_temporal": 4,
        "latent_channels": 16,
        "patch_size": (1, 2, 2),
        "max_sequence_length": 512,
        "default_width": 128,
        "default_height": 128,
        "default_frames": 17,
        "call_kwargs": {},
    },
    "ltx": {
        "pipeline": "LTXPipeline",
        "frame_step": 8,
        "size_multiple": 32,
        "vae_spatial": 8,
        "vae_temporal": 8,
        "latent_channels": 8,
        "patch_size": (1, 1, 1),
        "max_sequence_length": 128,
        "default_width": 128,
        "default_height": 128,
        "default_frames": 17,
        "call_kwargs": {},
    },
    "cogvideox": {
        "pipeline": "CogVideoXPipeline",
        "frame_step": 8,  # 4x VAE, but an even latent count decodes to 4L frames: only 8k+1 is exact
        "size_multiple": 16,
        "vae_spatial": 8,
        "vae_temporal": 4,
        "latent_channels": 4,
        "patch_size": (1, 2, 2),
        "max_sequence_length": 226,
        "default_width": 128,
        "default_height": 128,
        "default_frames": 9,
        "call_kwargs": {"max_sequence_length": 226},
    },
}
# Wan 2.1 FLF2V variant: tiny-wan's geometry, another pipeline class; needs ``image`` and ``last_image``.
TINY_GEOMETRY["wan-flf2v"] = {**TINY_GEOMETRY["wan"], "pipeline": "WanImageToVideoPipeline", "needs_last_image": True}

# Text encoder width; every transformer's text/caption dim below must equal it.
_TEXT_DIM = 32
# Tiny CLIP vision tower of the wan-flf2v variant: 32 px input, 8 px patches -> 16 patches + 1 class token.
# Its width is the transformer's ``image_dim`` (1280, ViT-H/14, in the real Wan 2.1 I2V / FLF2V models).
_CLIP_DIM = 16
_CLIP_IMAGE_SIZE = 32
_CLIP_PATCH = 8
_CLIP_TOKENS = (_CLIP_IMAGE_SIZE // _CLIP_PATCH) ** 2 + 1
_COGVIDEOX_MAX_TEXT_SEQ = 226

# Small deterministic English corpus for the tokenizer (scene descriptions, the kind of text prompts contain).
_CORPUS = """\
A red fox runs across a snowy field at dawn, its breath visible in the cold air.
The camera slowly pans over a quiet city street at night, neon lights reflecting in the puddles.
A cat sleeps on a sunny windowsill while curtains move gently in the breeze.
Waves crash against rocky cliffs under a dark and stormy sky.
Two children fly a bright yellow kite on a windy hill in spring.
An astronaut floats inside a space station, looking down at the blue Earth.
A chef chops fresh vegetables in a busy restaurant kitchen, steam rising from the pots.
Golden autumn leaves fall slowly from tall trees in a peaceful park.
A vintage car drives along a winding coastal road at sunset.
A hummingbird hovers near a purple flower, its wings a blur of motion.
Rain drips from the roof of an old wooden cabin deep in the forest.
A dancer spins on a wooden stage under a single warm spotlight.
Snow covered mountains glow pink and orange as the sun rises behind them.
A small boat drifts on a calm lake surrounded by pine trees and fog.
Fireworks explode over a river, lighting the faces of the crowd below.
A dog chases a ball through tall green grass on a summer afternoon.
Close-up of coffee being poured into a white cup, with cream swirling slowly.
A train crosses a high stone bridge over a deep valley filled with mist.
Jellyfish glow softly as they pulse through the deep blue ocean.
An old man plays the violin on a crowded street corner in Paris.
A time-lapse of clouds rolling over a desert canyon, shadows racing across the rocks.
A robot walks through an abandoned factory, sparks flying from broken machines.
Sunlight streams through the stained glass windows of a quiet cathedral.
A horse gallops along the beach, sand and water splashing beneath its hooves.
A candle flickers on a wooden table beside an open book and a pair of glasses.
A drone shot flies over green rice terraces on a misty morning.
A skateboarder jumps over stairs in an empty city plaza, cinematic slow motion.
Cherry blossoms drift down onto a stone path in a Japanese garden.
A lighthouse shines its beam across rough seas during a winter storm.
A girl with curly hair laughs while riding a bicycle down a country lane.
Lava flows slowly from a volcano, glowing bright red against the black rock.
A panda eats bamboo in a lush bamboo forest, realistic, highly detailed, 4k.
Northern lights dance in green and violet waves above a frozen lake.
A busy market street full of colorful fruit, spices and people talking.
A paper boat floats down a small stream after the rain.
An eagle soars high above a canyon, wings spread wide against the sky.
A spaceship lands on a strange planet with two moons and purple sand.
Hands shape wet clay on a spinning potter's wheel.
A city skyline at dusk, windows lighting up one by one, wide angle shot.
A butterfly lands on a child's finger in a sunny meadow, shallow depth of field.
Negative: blurry, low quality, distorted, watermark, text, jpeg artifacts, worst quality, static frame.
"""


def _check_family(family: str) -> None:
    if family not in BUILDS:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {', '.join(BUILDS)}")


# --------------------------------------------------------------------------------------------------------- tokenizer


def _train_tiny_vocab(vocab_size: int = 512) -> list[tuple[str, float]]:
    """Train a tiny Unigram model on the built-in corpus; return ``[(piece, score), ...]`` with
    ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then pieces in a deterministic order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    # Same pre-tokenization as transformers' T5Tokenizer, so trained pieces carry the "▁" word prefix it expects.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    alphabet = sorted({c for c in string.printable if not c.isspace()})
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=alphabet,
        max_piece_length=12,
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer)
    trained = json.loads(tok.to_str())["model"]["vocab"]

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    special_names = {s for s, _ in specials}
    # The trainer's scores carry last-bit float noise between runs (parallel, hash-ordered sums): round them and
    # sort, so the same vocabulary always gets the same ids and scores.
    # Required characters that the trained model did not keep (the alphabet, rare corpus characters) are added by
    # the trainer with scores min_score + k * 0.0001, k following hash-set order, so their order changes between
    # runs: give all of them one fixed low score instead.
    scored = [(piece, float(score)) for piece, score in trained if piece not in special_names]
    required = set(alphabet) | {c for c in _CORPUS if not c.isspace()} | {"▁"}
    min_score = min(score for _, score in scored)
    fallback_max = min_score + 0.0001 * (len(required) + 1) + 1e-9
    pieces: dict[str, float] = {}
    for piece, score in scored:
        if len(piece) == 1 and score <= fallback_max:
            continue
        pieces[piece] = round(score, 4)
    for ch in sorted(required):  # every printable ASCII / corpus character stays reachable (never <unk>)
        pieces.setdefault(ch, -20.0)
    ordered = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
    return specials + ordered


def build_tiny_tokenizer():
    """A ``transformers.T5Tokenizer`` built from a freshly trained tiny Unigram vocabulary (no network)."""
    from transformers import T5Tokenizer

    vocab = _train_tiny_vocab()
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    if len(tokenizer) != len(vocab):  # guard against the "4-token vocabulary" trap of transformers 5
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


# -------------------------------------------------------------------------------------------------------- components


def _t5_kwargs(vocab_size: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _wan_components(torch, vocab_size: int, **transformer_kwargs: Any) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(TINY_SEED)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    torch.manual_seed(TINY_SEED)
    text_encoder = UMT5EncoderModel(UMT5Config(**_t5_kwargs(vocab_size)))
    torch.manual_seed(TINY_SEED)
    transformer = WanTransformer3DModel(**{
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": _TEXT_DIM,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
        **transformer_kwargs,  # the wan-flf2v variant's image branch
    })
    # Same scheduler as the real Wan 2.1 T2V checkpoints (UniPC with flow-matching sigmas).
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=3.0,
    )
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def _wan_flf2v_components(torch, vocab_size: int) -> dict[str, Any]:
    """Wan 2.1 first-last-frame-to-video (the shape of Wan2.1-FLF2V-14B-720P, scaled down).

    As in the real config: ``in_channels`` 36 (16 noise + 4 frame mask + 16 conditioning latents), ``image_dim`` =
    the CLIP vision width, ``added_kv_proj_dim`` = the transformer width (the image cross-attention's key/value
    projections) and ``pos_embed_seq_len`` = 2 CLIP sequences (first and last frame side by side; 2 x 257 in the
    real model). Wan2.1-I2V-14B has no ``pos_embed_seq_len``: it takes a first frame only, and diffusers fails when
    it is given a last one (the two CLIP embeddings become a batch of 2 against a text batch of 1).
    """
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    components = _wan_components(torch, vocab_size, in_channels=36, image_dim=_CLIP_DIM, added_kv_proj_dim=2 * 12,
                                 pos_embed_seq_len=2 * _CLIP_TOKENS)
    torch.manual_seed(TINY_SEED)
    # The pipeline reads image_encoder(...).hidden_states[-2]: two layers, so that is the first layer's output.
    components["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=_CLIP_DIM,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=_CLIP_IMAGE_SIZE,
        patch_size=_CLIP_PATCH,
        projection_dim=_CLIP_DIM,
    ))
    # CLIP's own preprocessing (shortest edge resize, center crop, OpenAI mean/std) at 32 px. The PIL backend: the
    # default CLIPImageProcessor wants torchvision and falls back to this class (with a warning) without it, so the
    # saved model_index is the same on every machine.
    components["image_processor"] = CLIPImageProcessorPil(
        size={"shortest_edge": _CLIP_IMAGE_SIZE}, crop_size={"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE})
    return components


def _ltx_components(torch, vocab_size: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(TINY_SEED)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=_TEXT_DIM,
    )
    torch.manual_seed(TINY_SEED)
    # Unlike diffusers' test config (4x spatial only, and a default full-size decoder), scale 8x in space and time
    # in both encoder and decoder, with 8-channel blocks: 128x128x17 decodes in well under a second.
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(TINY_SEED)
    text_encoder = T5EncoderModel(T5Config(**_t5_kwargs(vocab_size)))
    scheduler = FlowMatchEulerDiscreteScheduler()
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def _cogvideox_components(torch, vocab_size: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(TINY_SEED)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8,  # inner dim 32, divisible by 16 as the 3D sincos embedding needs
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=_TEXT_DIM,
        num_layers=1,
        # Sincos positional embeddings (not learned): recomputed for any other size; these are the defaults.
        sample_width=16,  # latent 16 -> 128 px
        sample_height=16,
        sample_frames=9,  # latent frames (9 - 1) / 4 + 1 = 3
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=_COGVIDEOX_MAX_TEXT_SEQ,
    )
    torch.manual_seed(TINY_SEED)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    torch.manual_seed(TINY_SEED)
    text_encoder = T5EncoderModel(T5Config(**_t5_kwargs(vocab_size)))
    # Same settings as the CogVideoX-2b scheduler config.
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
        steps_offset=0,
    )
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def make_tiny_pipeline(family: str):
    """Build the tiny pipeline for ``family`` in memory (fp32, CPU, random weights from ``TINY_SEED``).

    The caller's global torch RNG state is left untouched."""
    _check_family(family)
    import torch
    import diffusers

    tokenizer = build_tiny_tokenizer()
    makers = {"wan": _wan_components, "ltx": _ltx_components, "cogvideox": _cogvideox_components,
              "wan-flf2v": _wan_flf2v_components}
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # fp32 weights whatever the caller's default dtype is
    try:
        with torch.random.fork_rng(devices=[]):
            components = makers[family](torch, len(tokenizer))
    finally:
        torch.set_default_dtype(previous_dtype)
    pipeline_cls = getattr(diffusers, TINY_GEOMETRY[family]["pipeline"])
    pipe = pipeline_cls(tokenizer=tokenizer, **components)
    for name in ("transformer", "vae", "text_encoder", "image_encoder"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).eval()
    return pipe


# ----------------------------------------------------------------------------------------------------------- on disk


def _marker(family: str) -> dict[str, Any]:
    import diffusers

    return {
        "family": family,
        "random_weights": True,
        "seed": TINY_SEED,
        "diffusers": diffusers.__version__,
        "note": "random weights: output is noise",
        "format": TINY_FORMAT,
    }


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a tiny pipeline folder, or None when missing or unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def build_tiny_pipeline(family: str, dest: Path) -> Path:
    """Build the tiny pipeline for `family` and save it into `dest` (created atomically: build in a temp sibling
    folder then os.replace/rename, so a half-built folder never exists at `dest`). Returns dest. Writes a
    `localvideo_tiny.json` marker file in dest with {"family":..., "random_weights": true, "seed": 0, "diffusers":
    version, "note": "random weights: output is noise"} (plus "format", the tiny layout version).

    An existing folder at `dest` is replaced."""
    _check_family(family)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    from .leftovers import owner_tag

    tag = f"{owner_tag()}-{uuid.uuid4().hex[:8]}"  # names this process: a killed build's folder is swept later
    tmp = dest.parent / f".{dest.name}.building-{tag}"
    try:
        pipe = make_tiny_pipeline(family)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER_NAME).write_text(json.dumps(_marker(family), indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, dest)  # fine when dest is absent (or an empty dir on POSIX)
        except OSError:
            if not dest.exists():
                raise
            # A stale/old folder is in the way: move it aside first (a rename, so still never half-built).
            old = dest.parent / f".{dest.name}.old-{tag}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove_tree(old)
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    return dest


class _FileLock:
    """Inter-process exclusive lock on ``path`` (fcntl.flock where available, else an O_EXCL lockfile)."""

    def __init__(self, path: Path, stale_after_s: float = 600.0) -> None:
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self._fd: int | None = None
        self._excl = False

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows
            fcntl = None
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self
        while True:
            try:
                self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                self._excl = True
                return self
            except FileExistsError:
                try:
                    if time.time() - self.path.stat().st_mtime > self.stale_after_s:
                        self.path.unlink()  # holder died long ago
                        continue
                except OSError:
                    continue
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases a flock
            self._fd = None
        if self._excl:
            try:
                self.path.unlink()
            except OSError:
                pass
            self._excl = False


def _is_built(folder: Path, family: str) -> bool:
    marker = read_marker(folder)
    return (
        marker is not None
        and marker.get("family") == family
        and marker.get("format", TINY_FORMAT) == TINY_FORMAT
        and (folder / "model_index.json").is_file()
    )


def _remove_stale_leftovers(dest: Path, older_than_s: float = 3600.0) -> None:
    """Remove temp folders that a killed build left next to ``dest``: at once when their name proves the building
    process gone (:mod:`localvideo.runtime.leftovers`), else only old ones (names of older builds carry the pid
    alone, and a concurrent direct ``build_tiny_pipeline`` call may still be writing a fresh one)."""
    from . import leftovers

    leftovers.sweep([dest.parent], context="tiny model build")
    now = time.time()
    for pattern in (f".{dest.name}.building-*", f".{dest.name}.old-*"):
        for path in dest.parent.glob(pattern):
            try:
                if now - path.stat().st_mtime > older_than_s:
                    _remove_tree(path)
            except OSError:
                pass


def ensure_tiny_pipeline(family: str, root: Path) -> Path:
    """Return root/f"tiny-{family}" (e.g. root/"tiny-wan"), building it first if the marker file is missing. Safe if
    two processes race (file lock on root/f".tiny-{family}.lock")."""
    _check_family(family)
    root = Path(root)
    dest = root / f"tiny-{family}"
    if _is_built(dest, family):
        return dest
    with _FileLock(root / f".tiny-{family}.lock"):
        if not _is_built(dest, family):  # another process may have built it while we waited
            _remove_stale_leftovers(dest)
            build_tiny_pipeline(family, dest)
    return dest


__all__ = [
    "BUILDS",
    "FAMILIES",
    "MARKER_NAME",
    "TINY_GEOMETRY",
    "TINY_SEED",
    "build_tiny_pipeline",
    "build_tiny_tokenizer",
    "ensure_tiny_pipeline",
    "make_tiny_pipeline",
    "read_marker",
    "VARIANTS",
]
