"""Run options on real tiny diffusers pipelines on the CPU: fp8 storage, int8 weight-only, a GGUF transformer, step
caches (calls counted with forward hooks, no mocks), LoRAs made with peft, attention fallback and compile."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from localvideo.catalog import get_model
from localvideo.errors import InvalidRequest
from localvideo.generation import build_metadata
from localvideo.hardware import Hardware
from localvideo.planner import _installed, estimate_memory, plan as make_plan
from localvideo.request import GenerationRequest
from localvideo.runtime import options, runner, store
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)
PROMPT = "a red fox trots across fresh snow at dawn"


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(budget_bytes=8 * 10**9)


def _plan(model: str = "tiny-wan", steps: int = 4, **kw):
    spec = get_model(model)
    req = GenerationRequest(prompt=PROMPT, model=model, seed=3, steps=steps, expand_prompt=False, **kw)
    return spec, make_plan(req, spec, CPU)


def _pipe(pipelines: PipelineCache, model: str = "tiny-wan", steps: int = 4, **kw):
    spec, p = _plan(model, steps, **kw)
    pipe, hit = runner.get_pipeline(pipelines, spec, store.locate(spec), p)
    return pipe, p, hit


class BlockCalls:
    """Counts how often the last transformer block really computes: a forward hook on its first attention's query
    projection (a cache hook that skips the block — FBC, MagCache — or predicts its attention — TaylorSeer — never
    reaches it; a hook on the block itself would fire even when a cache hook short-cuts its forward)."""

    def __init__(self, pipe):
        last = options.transformer_blocks(pipe.transformer)[-1]
        self.n = 0
        self._handle = last.attn1.to_q.register_forward_hook(self._count)

    def _count(self, *_):
        self.n += 1

    def close(self):
        self._handle.remove()


def _run(pipe, p, count: bool = False):
    calls = BlockCalls(pipe) if count else None
    try:
        frames = runner.run(pipe, p).frames
    finally:
        if calls:
            calls.close()
    return (frames, calls.n) if count else frames


@pytest.fixture(scope="module")
def baseline(cache):
    pipe, p, _ = _pipe(cache)
    frames, n = _run(pipe, p, count=True)
    return frames, n


# -- quantization ---------------------------------------------------------------------------------------------------

def test_fp8_layerwise_casting_runs_and_drifts_a_little(cache, baseline):
    import torch

    pipe, p, _ = _pipe(cache, quantization="fp8")
    assert p.quantization == "fp8" and p.estimate.quantization == "fp8"
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn  # stored in fp8
    frames = _run(pipe, p)
    diff = np.abs(frames - baseline[0]).mean()
    assert 0 < diff < 0.05, diff  # close-ish, not identical


def test_int8_weight_only_with_quanto_runs_on_cpu(cache, baseline):
    if not _installed("optimum.quanto"):
        pytest.skip("optimum-quanto is not installed (it is a dependency in pyproject.toml)")
    assert options.int8_backend() == "quanto"
    pipe, p, _ = _pipe(cache, quantization="int8")
    w = pipe.transformer.blocks[0].attn1.to_q.weight
    assert "QBytesTensor" in type(w).__name__ and w._data.dtype.itemsize == 1  # int8 storage
    frames = _run(pipe, p)
    diff = np.abs(frames - baseline[0]).mean()
    assert 0 < diff < 0.05, diff


def test_int8_weight_only_with_torchao(cache, baseline):
    if not _installed("torchao"):
        pytest.skip("torchao is not installed: it is optional (quanto is the int8 backend in pyproject.toml) because "
                    "installed torchao makes every diffusers import print CUDA-extension load failures on CPU "
                    "machines; with torchao 0.18 + torch 2.13 this path was checked to run on the CPU")
    cfg = options.int8_config("torchao")
    spec, p = _plan(quantization="int8")
    import diffusers

    pipe = diffusers.WanPipeline.from_pretrained(str(store.locate(spec)), quantization_config=cfg,
                                                 local_files_only=True)
    assert "Int8" in type(pipe.transformer.blocks[0].attn1.to_q.weight).__name__


def test_int8_without_a_backend_is_refused_with_the_package_to_install(monkeypatch):
    import localvideo.planner as planner

    monkeypatch.setattr(planner, "_installed", lambda name: False)
    with pytest.raises(InvalidRequest, match="optimum-quanto"):
        _plan(quantization="int8")


# -- GGUF -----------------------------------------------------------------------------------------------------------

# diffusers' Wan single-file converter (convert_wan_transformer_to_diffusers) expects the original Wan checkpoint
# names; this is its inverse, checked by round-tripping through the converter itself.
_WAN_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
    (".norm2.", ".norm_tmp."), (".norm3.", ".norm2."), (".norm_tmp.", ".norm3."),  # diffusers swaps norm2/norm3
]


def _wan_original_name(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key.endswith(".scale_shift_table"):
        key = key[: -len("scale_shift_table")] + "modulation"
    for a, b in _WAN_TO_ORIGINAL:
        key = key.replace(a, b)
    return key


def write_wan_gguf(state_dict: dict, path) -> dict:
    """Write a Wan transformer state dict as a GGUF file with the original Wan tensor names: 2-D weights whose rows
    are a multiple of 32 values as Q8_0 (ggml's block size), other matrices as F16, vectors as F32."""
    import gguf
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = {_wan_original_name(k): v for k, v in state_dict.items()}
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(state_dict), set(back) ^ set(state_dict)
    writer = gguf.GGUFWriter(str(path), arch="wan")
    kinds = {}
    for name, tensor in original.items():
        a = tensor.float().numpy()
        if a.ndim == 2 and a.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            kinds[name] = "Q8_0"
        elif a.ndim >= 2:
            writer.add_tensor(name, a.astype(np.float16))
            kinds[name] = "F16"
        else:
            writer.add_tensor(name, a.astype(np.float32))
            kinds[name] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return kinds


@pytest.fixture(scope="module")
def wan_gguf(tmp_path_factory):
    pytest.importorskip("gguf", reason="the gguf package is not installed (it is a dependency in pyproject.toml)")
    from diffusers import WanTransformer3DModel

    folder = store.locate(get_model("tiny-wan"))
    tr = WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer")
    path = tmp_path_factory.mktemp("gguf") / "tiny-wan-Q8_0.gguf"
    kinds = write_wan_gguf(tr.state_dict(), path)
    return path, kinds


def test_gguf_transformer_loads_from_a_single_file_and_generates(cache, baseline, wan_gguf):
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    path, kinds = wan_gguf
    # The tiny Wan is 24 wide: only matrices with 32-value rows (the FFN's down projection, the text embedder) can
    # be Q8_0 blocks; the rest are F16/F32 tensors, which the same loader path handles.
    assert list(kinds.values()).count("Q8_0") >= 3
    spec, p = _plan(gguf_path=str(path))
    assert p.quantization == "gguf" and p.estimate.quantization == "gguf"
    others = sum(n * 4 for c, n in spec.component_params.items() if c != "transformer")  # fp32 on the CPU
    assert p.estimate.weights_bytes == others + path.stat().st_size  # the transformer counts as its file
    pipe, p, _ = _pipe(cache, gguf_path=str(path))
    down = pipe.transformer.blocks[0].ffn.net[2]
    assert isinstance(down, GGUFLinear) and isinstance(down.weight, GGUFParameter)
    assert down.weight.quant_type.name == "Q8_0"
    frames = _run(pipe, p)
    diff = np.abs(frames - baseline[0]).mean()
    assert 0 < diff < 0.05, diff


def test_a_gguf_of_another_model_is_refused_with_a_reason(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(path), arch="wan")
    w.add_tensor("blocks.0.self_attn.q.weight", np.zeros((64, 64), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    spec, p = _plan(gguf_path=str(path))
    with pytest.raises(InvalidRequest, match="does not fit tiny-wan's transformer"):
        runner.load_pipeline(spec, store.locate(spec), p)


# -- step caches ----------------------------------------------------------------------------------------------------

def test_first_block_cache_skips_transformer_blocks_and_leaves_no_hook_behind(cache, baseline):
    base_frames, base_calls = baseline
    pipe, p, _ = _pipe(cache, step_cache="fbc:0.1")
    assert p.step_cache == "fbc:0.1"
    frames, calls = _run(pipe, p, count=True)
    assert base_calls == 2 * 4  # 4 steps, cond + uncond (Wan runs them one after the other)
    assert calls < base_calls, (calls, base_calls)
    assert not np.array_equal(frames, base_frames)
    # the same warm pipeline without --cache (the step cache is not in the key): the run removes the hook first,
    # so it computes every block and gives the exact baseline frames
    pipe2, p2, hit = _pipe(cache)
    assert hit and pipe2 is pipe
    frames2, calls2 = _run(pipe2, p2, count=True)
    assert not pipe.transformer.is_cache_enabled
    assert calls2 == base_calls and np.array_equal(frames2, base_frames)


def test_first_block_cache_needs_two_blocks(cache):
    pipe, p, _ = _pipe(cache, model="tiny-ltx", step_cache="fbc")
    with pytest.raises(InvalidRequest, match="at least two transformer blocks"):
        runner.run(pipe, p)


def test_taylorseer_predicts_some_steps(cache, baseline):
    pipe, p, _ = _pipe(cache, step_cache="taylor:2")
    assert p.step_cache == "taylor:2" and p.step_cache_params["cache_identifiers"]
    frames, calls = _run(pipe, p, count=True)
    assert calls < baseline[1], (calls, baseline[1])
    assert np.isfinite(frames).all() and not np.array_equal(frames, baseline[0])


def test_magcache_refuses_without_ratios_then_calibrates_and_skips(cache, baseline):
    ratios_file = options.magcache_file("tiny-wan")
    ratios_file.unlink(missing_ok=True)
    with pytest.raises(InvalidRequest, match="none are known") as e:
        _plan("tiny-wan", 4, step_cache="mag")  # refused when planned: before a model loads or a job queues
    assert "--cache mag:calibrate" in e.value.hint
    pipe, p, _ = _pipe(cache, step_cache="mag:calibrate")
    frames, calls = _run(pipe, p, count=True)
    assert calls == baseline[1] and np.array_equal(frames, baseline[0])  # calibration computes every step
    saved = json.loads(ratios_file.read_text())
    assert saved["steps"] == 4 and len(saved["ratios"]) == 4 and saved["contexts"] == 2
    pipe, p, _ = _pipe(cache, steps=8, step_cache="mag:0.3")  # ratios interpolated to 8 steps
    frames, calls = _run(pipe, p, count=True)
    assert calls < 2 * 8, calls


# -- LoRA -----------------------------------------------------------------------------------------------------------

def _make_lora(folder, seed: int):
    import torch
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig, get_peft_model_state_dict

    tr = WanTransformer3DModel.from_pretrained(str(store.locate(get_model("tiny-wan"))), subfolder="transformer")
    torch.manual_seed(seed)
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                              init_lora_weights=False))  # random A and B: a LoRA that changes the output
    WanPipeline.save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(tr),
                                  weight_name="lora.safetensors")
    return str(folder / "lora.safetensors")


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    pytest.importorskip("peft", reason="peft is not installed (it is a dependency in pyproject.toml)")
    root = tmp_path_factory.mktemp("loras")
    return [_make_lora(root / f"l{i}", seed=10 + i) for i in range(2)]


def test_loras_change_the_output_stack_and_are_recorded(baseline, loras):
    a, b = loras
    cache = PipelineCache(budget_bytes=8 * 10**9)
    pipe, p0, hit = _pipe(cache, loras=[f"{a}:0"])
    assert not hit
    f0 = _run(pipe, p0)
    pipe, p8, hit = _pipe(cache, loras=[f"{a}:0.8"])
    assert hit and cache.stats.loads == 1  # same LoRA set, another weight: no reload
    f8 = _run(pipe, p8)
    assert np.abs(f0 - baseline[0]).max() < 1e-5  # weight 0 is the base model
    assert np.abs(f8 - f0).mean() > 1e-4
    pipe, p2, hit = _pipe(cache, loras=[f"{a}:0.8", f"{b}:0.8"])
    assert not hit and cache.stats.loads == 2  # another LoRA set: another load
    f2 = _run(pipe, p2)
    assert np.abs(f2 - f8).mean() > 1e-4
    assert sorted(pipe.get_list_adapters()["transformer"]) == ["lora0", "lora1"]
    meta = build_metadata(p2, get_model("tiny-wan"))
    assert meta["loras"] == [{"path": a, "weight": 0.8}, {"path": b, "weight": 0.8}]
    _, p3, hit = _pipe(cache, loras=[f"{b}:0.5", f"{a}:1"])  # same set in another order: a hit
    assert hit and cache.stats.loads == 2


def test_a_missing_lora_file_is_one_clear_sentence():
    with pytest.raises(InvalidRequest, match="the LoRA file 'missing.safetensors' does not exist"):
        GenerationRequest.parse(prompt="x", loras=["missing.safetensors:0.8"])


def test_a_lora_weight_that_is_not_a_number_is_named_as_such(tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    with pytest.raises(InvalidRequest, match=r"LoRA: the weight of LoRA '.*style.safetensors' must be a number "
                                             r"\(got 'abc'\)"):
        GenerationRequest.parse(prompt="x", loras=[f"{lora}:abc"])


def test_a_lora_for_another_model_is_refused(tmp_path, loras):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"transformer.not_a_layer.lora_A.weight": torch.ones(4, 8),
               "transformer.not_a_layer.lora_B.weight": torch.ones(8, 4)}, str(path))
    spec, p = _plan(loras=[str(path)])
    with pytest.raises(InvalidRequest, match="other.safetensors"):
        runner.load_pipeline(spec, store.locate(spec), p)


# -- attention and compile ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["flash", "sage"])
def test_flash_and_sage_fall_back_to_sdpa_with_a_warning(cache, baseline, backend, caplog):
    spec, p = _plan(attention=backend)
    assert p.attention == "sdpa"
    assert any(f"Attention backend {backend} is not available" in w for w in p.warnings)
    pipe, p, _ = _pipe(cache, attention=backend)
    assert np.array_equal(_run(pipe, p), baseline[0])
    with caplog.at_level(logging.WARNING, logger="localvideo.runtime.options"):
        assert options.apply_attention(pipe, backend) == "sdpa"
    assert f"attention backend {backend} unavailable" in caplog.text


def test_compile_without_a_compiler_is_ignored_with_a_warning(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    _, p = _plan(compile=True)
    assert p.compile is False and any("--compile is ignored" in w for w in p.warnings)


@pytest.mark.slow
def test_compile_runs_regionally_on_the_cpu(baseline):
    import torch

    _, p = _plan(compile=True)
    if not p.compile:
        pytest.skip("; ".join(w for w in p.warnings if "compile" in w))
    cache = PipelineCache(budget_bytes=8 * 10**9)
    pipe, p, _ = _pipe(cache, compile=True)
    frames = _run(pipe, p)  # the first run compiles (about a minute on 2 cores)
    assert np.abs(frames - baseline[0]).max() < 1e-3
    compiled = [m for m in pipe.transformer.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(compiled) == len(options.transformer_blocks(pipe.transformer)), torch.__version__


# -- planner --------------------------------------------------------------------------------------------------------

def test_estimate_counts_quantized_transformer_bytes():
    spec = get_model("wan2.1-t2v-14b")
    args = (spec, 1280, 720, 81, "group_offload", True, "bfloat16", False)
    none, fp8, int8 = (estimate_memory(*args, quantization=q) for q in ("none", "fp8", "int8"))
    params = spec.component_params["transformer"]
    assert none.weights_bytes - fp8.weights_bytes == pytest.approx(params * 0.98, rel=0.01)
    assert fp8.weights_bytes == int8.weights_bytes
    q4 = estimate_memory(*args, quantization="gguf", gguf_path="/models/wan2.1-t2v-14b-Q4_K_M.gguf")
    assert none.weights_bytes - q4.weights_bytes == pytest.approx(params * (2 - 144 / 256), rel=0.01)


def test_auto_picks_fp8_before_sequential_offload():
    from localvideo.hardware import GB

    # Wan 2.1 14B at 720p x 81: on 12 GB the transformer's blocks in bf16 plus ≈ 8.5 GB of traced activations do
    # not fit with group offload, in fp8 they do (the VAE decode then needs tiling, which fp8 does not change)
    spec = get_model("wan2.1-t2v-14b")
    req = GenerationRequest(prompt="x", model=spec.id, seed=0)
    plans = {}
    for vram in (80, 12):
        plans[vram] = make_plan(req, spec, Hardware.assumed(vram, ram_gb=64))
    assert plans[80].quantization == "none" and plans[80].strategy == "resident"
    assert plans[12].quantization == "fp8" and plans[12].strategy != "sequential_offload"
    assert any("fp8" in r for r in plans[12].reasons)
    assert plans[12].estimate.peak_device_bytes <= plans[12].budget_device_bytes < 12 * GB
    forced = make_plan(req.model_copy(update={"quantization": "none"}), spec, Hardware.assumed(12, ram_gb=64))
    assert forced.quantization == "none"


def test_run_options_appear_in_the_dry_run_json(loras):
    from conftest import run_cli

    r = run_cli("generate", PROMPT, "-m", "tiny-wan", "--dry-run", "--json", "--cache", "fbc:0.1", "--lora",
                f"{loras[0]}:0.7", "--attention", "flash", "--quantization", "fp8")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["plan"]
    assert (p["step_cache"], p["quantization"], p["attention"]) == ("fbc:0.1", "fp8", "sdpa")
    assert p["loras"] == [[loras[0], 0.7]]
    assert any("flash" in w for w in p["warnings"])


def test_magcache_without_ratios_is_refused_by_the_dry_run_and_the_job_service(tmp_path):
    from conftest import run_cli

    from localvideo.hardware import Hardware
    from localvideo.jobs import JobService
    from localvideo.settings import Settings

    options.magcache_file("tiny-ltx").unlink(missing_ok=True)
    r = run_cli("generate", PROMPT, "-m", "tiny-ltx", "--cache", "mag", "--dry-run")
    assert r.returncode == 2 and "MagCache needs magnitude ratios measured for tiny-ltx" in r.stderr
    assert "Traceback" not in r.stderr
    svc = JobService(Settings(jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "out"),
                     hardware=Hardware.assumed(None, ram_gb=16), workers=1)
    try:
        with pytest.raises(InvalidRequest, match="none are known"):
            svc.submit({"prompt": PROMPT, "model": "tiny-ltx", "step_cache": "mag"})
        assert svc.list().total == 0  # nothing was queued
    finally:
        svc.close()


def test_magcache_calibration_keeps_json_output_clean(tmp_path):
    """diffusers prints its calibration result to stdout; ``--json`` must still print one JSON document there."""
    from conftest import run_cli

    r = run_cli("generate", PROMPT, "-m", "tiny-ltx", "--frames", "9", "--width", "64", "--height", "64", "--steps",
                "3", "--cache", "mag:calibrate", "--json", "-o", str(tmp_path / "cal.mp4"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["metadata"]["step_cache"] == "mag:calibrate" and (tmp_path / "cal.mp4").is_file()
    assert "[MagCache] Calibration Complete" in r.stderr  # still shown to a person, on stderr
    assert len(json.loads(options.magcache_file("tiny-ltx").read_text())["ratios"]) == 3
