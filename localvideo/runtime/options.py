"""Run options beyond the memory strategy, applied by the runner to a diffusers pipeline.

Where each one happens:

- at load time (part of the pipeline cache key, see :func:`pipeline_key`):
  - ``quantization`` — ``fp8``: diffusers layerwise casting on the transformer (weights stored as float8_e4m3fn,
    upcast to the plan's dtype one layer at a time; LoRA layers are left unquantized); ``int8``: weight-only int8 at
    load time through diffusers' ``PipelineQuantizationConfig`` with optimum-quanto (torchao is used when quanto is
    missing; quanto is preferred because merely having torchao installed makes every diffusers import print
    CUDA-extension load failures on CPU-only machines); ``gguf``: ``<Transformer>.from_single_file(path,
    quantization_config=GGUFQuantizationConfig(compute_dtype=…))`` with the model folder's transformer config,
    passed to the pipeline's ``from_pretrained`` as ``transformer=``.
  - ``loras`` — loaded with the pipeline's ``load_lora_weights`` under adapter names ``lora0``, ``lora1``, … (the
    key holds the *set of files*; weights are set per run, so changing a weight does not reload).
  - ``attention`` — ``set_attention_backend("flash"|"sage")`` when the package and a GPU are there (the planner has
    already degraded to sdpa with a warning otherwise; a late failure is logged and sdpa kept).
  - ``compile`` — regional ``compile_repeated_blocks`` when the transformer declares repeated blocks, else
    ``torch.compile`` of the transformer.
- per run (:func:`configure_run`): the step cache (any previous cache hook is removed first, so a warm pipeline
  used without ``--cache`` afterwards runs without one) and the LoRA weights.

MagCache needs per-checkpoint magnitude ratios. None are known for the catalog's models, so ``--cache mag`` refuses
until ``--cache mag:calibrate`` has run once (a full-quality run that measures them; they are saved under
``<home>/magcache/<model>.json`` and used from then on).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import GenerationFailed, InvalidRequest
from ..planner import Plan, attention_problem, compile_problem, load_mag_ratios, mag_ratios_missing, magcache_file

log = logging.getLogger(__name__)

ADAPTER_PREFIX = "lora"
_BACKENDS = {"flash": "flash", "sage": "sage"}  # our names → diffusers' AttentionBackendName values


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# -- cache key -----------------------------------------------------------------------------------------------------

def _file_id(path: str | None) -> tuple | None:
    """A file as a key: its path plus size and mtime, so a file rewritten in place is loaded again."""
    import os

    if path is None:
        return None
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, None, None)


def pipeline_key(plan: Plan) -> tuple:
    """What, besides model/path/dtype/device/strategy, makes two loaded pipelines different: quantization (and the
    GGUF file), the *set* of LoRA files (their weights are set per run), the attention backend and compilation."""
    return (plan.quantization, _file_id(plan.gguf_path), tuple(sorted(_file_id(p) for p, _ in plan.loras)),
            plan.attention, bool(plan.compile))


# -- load time ------------------------------------------------------------------------------------------------------

def int8_backend() -> str:
    """``quanto`` or ``torchao``, whichever is installed (quanto first); raises when neither is."""
    from ..planner import _installed

    if _installed("optimum.quanto"):
        return "quanto"
    if _installed("torchao"):
        return "torchao"
    raise InvalidRequest("int8 weight-only quantization needs optimum-quanto (or torchao), and neither is installed.",
                         hint="pip install optimum-quanto, or use --quantization fp8.")


def int8_config(backend: str | None = None):
    """A diffusers ``PipelineQuantizationConfig`` that quantizes the transformer's weights to int8 at load time."""
    from diffusers import PipelineQuantizationConfig

    backend = backend or int8_backend()
    if backend == "quanto":
        from diffusers import QuantoConfig

        cfg = QuantoConfig(weights_dtype="int8")
    else:
        from diffusers import TorchAoConfig

        try:
            from torchao.quantization import Int8WeightOnlyConfig

            cfg = TorchAoConfig(Int8WeightOnlyConfig())
        except ImportError:  # older torchao: string form
            cfg = TorchAoConfig("int8_weight_only")
    return PipelineQuantizationConfig(quant_mapping={"transformer": cfg})


def transformer_class(path: Path):
    """The diffusers class of the transformer in a model folder (from ``transformer/config.json``)."""
    import diffusers

    try:
        name = json.loads((Path(path) / "transformer" / "config.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise GenerationFailed(f"Could not read the transformer config in {path}: {e}") from e
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise GenerationFailed(f"diffusers {diffusers.__version__} has no class {name}.")
    return cls


def load_gguf_transformer(path: Path, plan: Plan):
    """Load ``plan.gguf_path`` as the transformer of the model in ``path`` (its config comes from the folder)."""
    import diffusers
    from diffusers import GGUFQuantizationConfig

    cls = transformer_class(path)
    if not hasattr(cls, "from_single_file"):
        raise InvalidRequest(f"{cls.__name__} cannot load single-file (GGUF) weights in diffusers "
                             f"{diffusers.__version__}.", hint="Use --quantization fp8 or int8 instead.")
    compute = _torch_dtype(plan.dtype)
    try:
        return cls.from_single_file(plan.gguf_path, quantization_config=GGUFQuantizationConfig(compute_dtype=compute),
                                    config=str(path), subfolder="transformer", torch_dtype=compute,
                                    local_files_only=True)
    except ImportError as e:
        raise InvalidRequest(f"Loading a GGUF transformer needs the gguf package: {e}",
                             hint="pip install gguf") from e
    except (ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidRequest(f"The GGUF file {plan.gguf_path} does not fit {plan.model}'s transformer "
                             f"({cls.__name__}): {first[:300]}",
                             hint="Use a GGUF made from the same model (same architecture and size).") from e


def load_kwargs(path: Path, plan: Plan) -> dict[str, Any]:
    """Extra keyword arguments for the pipeline's ``from_pretrained``: a quantization config or a GGUF transformer."""
    if plan.quantization == "int8":
        return {"quantization_config": int8_config()}
    if plan.quantization == "gguf":
        return {"transformer": load_gguf_transformer(path, plan)}
    return {}


def apply_loras(pipe, loras) -> list[str]:
    """Load each LoRA file as adapter ``lora<i>`` (sorted by path, as in the cache key) and activate them all with
    their weights. Raises InvalidRequest naming the file when it cannot be loaded or matches nothing."""
    if not loras:
        return []
    if not hasattr(pipe, "load_lora_weights"):
        raise InvalidRequest(f"{type(pipe).__name__} does not support LoRA weights.")
    names = []
    for i, path in enumerate(sorted(p for p, _ in loras)):
        name = f"{ADAPTER_PREFIX}{i}"
        try:
            pipe.load_lora_weights(path, adapter_name=name)
        except ImportError as e:
            raise InvalidRequest(f"LoRA weights need the peft package: {e}", hint="pip install peft") from e
        except (ValueError, RuntimeError, KeyError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvalidRequest(f"The LoRA file {path} could not be loaded into {type(pipe).__name__}: "
                                 f"{first[:300]}", hint="Use a LoRA trained for this model.") from e
        loaded = {n for names_ in pipe.get_list_adapters().values() for n in names_}
        if name not in loaded:
            raise InvalidRequest(f"The LoRA file {path} has no weights that match {type(pipe).__name__}'s layers "
                                 f"(nothing was loaded).", hint="Use a LoRA trained for this model.")
        names.append(name)
    set_lora_weights(pipe, loras)
    return names


def set_lora_weights(pipe, loras) -> None:
    """Activate the loaded adapters with the weights of this run (adapter names follow the sorted paths)."""
    if not loras:
        return
    by_path = dict(loras)
    ordered = sorted(by_path)
    pipe.set_adapters([f"{ADAPTER_PREFIX}{i}" for i in range(len(ordered))], [float(by_path[p]) for p in ordered])


def apply_fp8(pipe, plan: Plan) -> None:
    """Store the transformer's weights in float8_e4m3fn and compute in the plan's dtype (layerwise casting)."""
    import torch

    tr = pipe.transformer
    skip = tuple(getattr(tr, "_skip_layerwise_casting_patterns", None) or ()) + ("lora_",)
    tr.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=_torch_dtype(plan.dtype),
                                skip_modules_pattern=skip)


def before_strategy(pipe, plan: Plan) -> None:
    """After ``from_pretrained``, before the memory strategy moves anything: LoRAs, then fp8 storage."""
    apply_loras(pipe, plan.loras)
    if plan.quantization == "fp8":
        apply_fp8(pipe, plan)


def apply_attention(pipe, backend: str) -> str:
    """Switch the transformer's attention backend; returns the backend in use (``sdpa`` when it could not)."""
    if backend == "sdpa":
        return "sdpa"
    import torch

    problem = attention_problem(backend, on_cpu=not torch.cuda.is_available())
    if problem:
        log.warning("attention backend %s unavailable (%s); keeping PyTorch SDPA", backend, problem)
        return "sdpa"
    try:
        pipe.transformer.set_attention_backend(_BACKENDS[backend])
    except (RuntimeError, ValueError, ImportError, AttributeError) as e:
        log.warning("attention backend %s could not be set (%s); keeping PyTorch SDPA", backend, e)
        return "sdpa"
    return backend


def apply_compile(pipe, on_cpu: bool) -> str | None:
    """Compile the transformer's repeated blocks (regional compilation) or, failing that, the whole transformer.
    Returns None when compiled, else the reason it was not (also logged)."""
    problem = compile_problem(on_cpu)
    if problem:
        log.warning("not compiling: %s", problem)
        return problem
    import torch

    tr = pipe.transformer
    if getattr(tr, "_repeated_blocks", None) and hasattr(tr, "compile_repeated_blocks"):
        tr.compile_repeated_blocks(fullgraph=False)
    else:
        tr.compile()
    log.info("transformer compiled with torch %s (first steps are slower while it compiles)", torch.__version__)
    return None


def after_strategy(pipe, plan: Plan) -> None:
    """After the memory strategy placed the weights: attention backend, then compilation."""
    if plan.attention != "sdpa":
        apply_attention(pipe, plan.attention)
    if plan.compile:
        apply_compile(pipe, on_cpu=plan.device == "cpu")


# -- per run -------------------------------------------------------------------------------------------------------

def step_cache_config(pipe, plan: Plan):
    """The diffusers cache config for ``plan.step_cache`` (None when no cache)."""
    if not plan.step_cache:
        return None
    import diffusers

    kind = plan.step_cache.partition(":")[0]
    p = dict(plan.step_cache_params)
    if kind == "fbc":
        return diffusers.FirstBlockCacheConfig(threshold=float(p.get("threshold", 0.05)))
    if kind == "taylor":
        dtype = _torch_dtype(plan.dtype)
        return diffusers.TaylorSeerCacheConfig(
            cache_interval=int(p.get("cache_interval", 5)),
            disable_cache_before_step=int(p.get("disable_cache_before_step", 3)),
            cache_identifiers=p.get("cache_identifiers"), taylor_factors_dtype=dtype)
    if kind == "mag":
        common = dict(threshold=float(p.get("threshold", 0.06)), max_skip_steps=int(p.get("max_skip_steps", 3)),
                      retention_ratio=float(p.get("retention_ratio", 0.2)), num_inference_steps=plan.steps)
        if p.get("calibrate"):
            return diffusers.MagCacheConfig(calibrate=True, **common)
        ratios = p.get("mag_ratios") or load_mag_ratios(plan.model)
        if not ratios:  # planned with ratios that are gone since
            raise mag_ratios_missing(plan.model)
        return diffusers.MagCacheConfig(mag_ratios=ratios, **common)
    raise InvalidRequest(f"Unknown step cache '{plan.step_cache}'.", hint="Use fbc, mag or taylor.")


def _stdout_to_stderr(fn):
    """``fn`` with what it prints sent to stderr: diffusers' MagCache prints its calibration result with print(),
    which would corrupt ``--json`` output on stdout (the ratios are saved and logged anyway)."""
    import contextlib
    import functools
    import sys

    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with contextlib.redirect_stdout(sys.stderr):
            return fn(*args, **kwargs)

    return quiet


def _capture_mag_calibration(transformer, plan: Plan) -> None:
    """Save the ratios diffusers' MagCache calibration measures (one list per cache context, e.g. cond/uncond;
    their element-wise mean is stored) once every context has seen all steps."""
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

    tail = None
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_MAG_CACHE_BLOCK_HOOK) if registry is not None else None
        if hook is not None and getattr(hook, "is_tail", False):
            tail = hook
        if hook is not None and callable(getattr(hook, "_advance_step", None)):
            hook._advance_step = _stdout_to_stderr(hook._advance_step)
    if tail is None:
        log.warning("MagCache calibration: no tail block hook found; ratios will not be saved")
        return
    original = tail._perform_calibration_step
    per_context: dict[int, list[float]] = {}

    def record(state, residual):
        original(state, residual)
        per_context[id(state)] = list(state.calibration_ratios)
        lists = list(per_context.values())
        if all(len(r) >= plan.steps for r in lists):
            ratios = [sum(r[i] for r in lists) / len(lists) for i in range(plan.steps)]
            path = magcache_file(plan.model)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"model": plan.model, "steps": plan.steps, "contexts": len(lists),
                                       "ratios": ratios,
                                       "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
            tmp.replace(path)
            log.info("MagCache ratios for %s saved to %s", plan.model, path)

    tail._perform_calibration_step = record


def transformer_blocks(transformer) -> list:
    """The transformer's blocks, in the containers diffusers' cache hooks walk (``blocks``, ``transformer_blocks``,
    ``single_transformer_blocks``, …)."""
    import torch
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    out = []
    for name, child in transformer.named_children():
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            out.extend(child)
    return out


def apply_step_cache(pipe, plan: Plan) -> None:
    """Remove any step cache from the transformer, then enable the plan's (fresh state every run)."""
    tr = getattr(pipe, "transformer", None)
    if tr is None:
        if plan.step_cache:
            raise InvalidRequest(f"{type(pipe).__name__} has no transformer, so step caches do not apply.")
        return
    if getattr(tr, "is_cache_enabled", False):
        tr.disable_cache()
    config = step_cache_config(pipe, plan)
    if config is None:
        return
    if plan.step_cache.startswith("fbc") and (n := len(transformer_blocks(tr))) < 2:
        raise InvalidRequest(f"First Block Cache needs at least two transformer blocks (it reuses the rest when the "
                             f"first barely changes); {plan.model}'s transformer has {n}.",
                             hint="Use --cache taylor or --cache mag instead.")
    tr.enable_cache(config)
    if plan.step_cache == "mag:calibrate":
        _capture_mag_calibration(tr, plan)


def configure_run(pipe, plan: Plan) -> None:
    """Per-run options on a (possibly warm) pipeline: step cache and LoRA weights."""
    apply_step_cache(pipe, plan)
    set_lora_weights(pipe, plan.loras)
