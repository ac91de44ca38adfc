"""The local-LLM prompt enhancer, with a real tiny causal LM (random weights, locally trained tokenizer).

What is real here: transformers generation, streaming, the stopping criterion, loading from folders, the model
store lookup. The only boundary faked is the hub (no network) and the machine's memory (a Hardware value).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from _helpers import teach_tiny_lm, torch_threads
from localvideo.errors import Cancelled, DoesNotFit, InvalidRequest, ModelNotInstalled, UnknownModel
from localvideo.hardware import Hardware
from localvideo.prompts import engine, enhancer
from localvideo.runtime import store
from localvideo.settings import get_settings

BIG = Hardware.assumed(None, ram_gb=64)
FOX = "a red fox trots across fresh snow [dolly in]"
ANSWER = ("A red fox trots across fresh snow at dawn, its thick orange coat bright against the white field. It "
          "pauses, lifts its head and sniffs the cold air, then runs on toward the dark edge of a pine forest. The "
          "camera slowly dollies in toward the fox. Soft pink dawn light, long blue shadows, realistic cinematic "
          "footage.")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for the module (see _helpers.torch_threads)."""
    with torch_threads(1):
        yield


def _no_enhancer_thread_alive() -> bool:
    return not any(t.name == "localvideo-enhancer" and t.is_alive() for t in threading.enumerate())


# ------------------------------------------------------------------------------------------------------ catalog


@pytest.mark.parametrize("model_id,repo,params,licence", [
    ("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, "apache-2.0"),
    ("deepseek-r1-distill-qwen-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1_777_088_000, "mit"),
])
def test_catalog_entries_count_parameters_like_transformers(model_id, repo, params, licence):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = enhancer.get_enhancer(model_id)
    assert (spec.repo, spec.params, spec.licence, spec.dtype) == (repo, params, licence, "bfloat16")
    assert enhancer.get_enhancer(repo) is spec and enhancer.is_enhancer(model_id)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in spec.arch.items() if k != "model_type"}))
    assert sum(p.numel() for p in model.parameters()) == params
    assert "*.safetensors" in spec.allow_patterns and "*.bin" in spec.ignore_patterns
    assert store.pull_command(spec) == f"localvideo models pull {model_id}"


def test_tiny_lm_is_built_locally_and_labelled_random():
    spec = enhancer.get_enhancer("tiny-lm")
    path = enhancer.locate(spec)
    assert path == get_settings().tiny / "tiny-lm" and enhancer.EnhancerSpec.is_complete(path)
    marker = json.loads((path / enhancer.TINY_MARKER).read_text())
    assert marker["random_weights"] is True
    assert "RANDOM" in spec.label and spec.to_dict()["random_weights"] is True
    folder = enhancer.get_enhancer(str(path))  # the same folder given as a path
    assert folder.tiny and folder.params == spec.params  # counted from the safetensors headers


# ---------------------------------------------------------------------------------------------------- generation


def test_tiny_lm_generates_streams_and_its_garbage_falls_back_to_the_engine():
    chunks: list[str] = []
    r = enhancer.enhance(FOX, "wan", model="tiny-lm", stream=chunks.append, hardware=BIG, max_new_tokens=60)
    assert r.new_tokens == 60 and len(chunks) > 1 and "".join(chunks) == r.raw_output and r.raw_output
    assert r.source == "engine" and r.reason_if_fallback and "not used" in r.reason_if_fallback
    expanded = engine.expand(FOX, "wan")
    assert r.prompt == expanded.prompt and r.negative_prompt == expanded.negative_prompt
    assert r.hints == {"camera": ["dolly in"]} and r.changes[0] == r.reason_if_fallback
    assert _no_enhancer_thread_alive()


def test_stop_mid_stream_really_stops_generation():
    stop = threading.Event()
    seen: list[str] = []

    def on_text(chunk: str) -> None:
        seen.append(chunk)
        if len(seen) == 3:
            stop.set()

    t0 = time.perf_counter()
    with pytest.raises(Cancelled) as e:
        enhancer.enhance(FOX, "ltx", model="tiny-lm", stream=on_text, stop=stop, hardware=BIG, max_new_tokens=4000)
    took = time.perf_counter() - t0
    # The generating thread runs ahead of the reader by a few tokens (scheduling), then the criterion ends it at
    # its next token: far from the 4000 it was allowed.
    assert 3 <= e.value.details["tokens"] <= 50 and len(seen) <= e.value.details["tokens"]
    assert took < 10 and _no_enhancer_thread_alive()


def test_stop_from_another_thread_ends_a_long_generation():
    stop = threading.Event()
    first = threading.Event()
    timer = threading.Thread(target=lambda: (first.wait(30), stop.set()))
    timer.start()
    with pytest.raises(Cancelled) as e:
        enhancer.enhance(FOX, "cogvideox", model="tiny-lm", stream=lambda c: first.set(), stop=stop, hardware=BIG,
                         max_new_tokens=4000)
    timer.join()
    assert 0 < e.value.details["tokens"] < 4000 and _no_enhancer_thread_alive()


def test_stop_set_before_start_loads_nothing():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        enhancer.enhance(FOX, "wan", model="qwen2.5-1.5b-instruct", stop=stop, hardware=BIG)  # not even installed


def test_a_tiny_lm_that_learned_an_answer_is_used_verbatim(tmp_path):
    """The success path end to end: teach the tiny LM one good answer (a few seconds of training), save it as a
    local model folder, and enhance through it: the validated LLM text is used, with source "llm"."""
    tok, folder = teach_tiny_lm(enhancer.build_messages(FOX, "wan"), ANSWER, tmp_path / "fox-lm", max_steps=200)
    answer_ids = tok(ANSWER, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert tok.decode(answer_ids, skip_special_tokens=True) == ANSWER

    streamed: list[str] = []
    r = enhancer.enhance(FOX, "wan", model=str(folder), stream=streamed.append, hardware=BIG)
    assert r.source == "llm" and r.reason_if_fallback is None, r.reason_if_fallback
    assert r.prompt == ANSWER and "".join(streamed) == r.raw_output
    assert r.negative_prompt == engine.expand(FOX, "wan").negative_prompt and r.model == "fox-lm"
    # for a prompt it never learned, its text is not a usable Chinese prompt: validated away, with a reason
    r2 = enhancer.enhance("一只红狐狸在雪地里奔跑 [dolly in]", "wan", model=str(folder), hardware=BIG)
    assert r2.source == "engine" and r2.reason_if_fallback and r2.prompt.startswith("一只红狐狸在雪地里奔跑")


# ---------------------------------------------------------------------------------------------------- validation

GOOD = ("A red fox trots across fresh snow at dawn, its orange coat bright against the white field, and pauses to "
        "sniff the cold air before running on toward a dark pine forest while the camera slowly dollies in.")

VALIDATION = [
    ("", "nothing"),
    ("   \n ", "nothing"),
    ("Sure! " + GOOD, "preamble"),
    ("Here's an enhanced prompt: " + GOOD, "preamble"),
    ("Here is the prompt:\n" + GOOD, "preamble"),
    ("Enhanced prompt: " + GOOD, "preamble"),
    ("As an AI language model, I cannot create videos.", "preamble"),
    (GOOD + " As an AI, I hope this helps.", "talks about itself"),
    ("<think>The user wants a fox. " + GOOD, "unfinished <think>"),
    (GOOD + " <b>snow</b>", "markup"),
    (GOOD + " <|im_end|>", "markup"),
    ("# Fox video\n- a red fox\n- fresh snow\n- dolly in", "markdown"),
    ("A **red fox** trots across fresh snow at dawn while the camera slowly dollies in toward it, pine trees "
     "behind, soft dawn light.", "markdown"),
    ("fox " * 30, "garbage"),
    ("tttttttttttttttttttttttttttttttttttttt", "garbage"),
    ("A red fox snow snow snow snow and snow, then snow, snow over snow, a snow drift and snow in the snow light "
     "and more snow", "garbage"),
    ("Рыжая лиса бежит по свежему снегу на рассвете, камера медленно приближается, мягкий розовый свет, длинные "
     "голубые тени, реалистичная кинематографичная съёмка.", "Cyrillic"),
    ("A red fox in the snow.", "too short"),
    ("A tabby cat sleeps on a sunny windowsill while curtains move gently in the breeze, the camera holding a "
     "steady close-up, warm afternoon light, realistic footage.", "drops the subject"),
    ("1234 5678 9012 3456 7890 !!!! ???? ---- ==== //// 0000 1111 2222 3333 4444 5555 6666 7777 8888 9999",
     "symbols"),
]


@pytest.mark.parametrize("raw,why", VALIDATION)
def test_validator_rejects_with_a_reason(raw, why):
    v = enhancer.validate(raw, FOX, "wan")
    assert not v.ok and why in v.reason, v.reason


def test_validator_rejects_cut_off_output():
    v = enhancer.validate(GOOD, FOX, "wan", finished=False)
    assert not v.ok and "cut off" in v.reason


def test_validator_accepts_good_prose_and_strips_reasoning_blocks():
    assert enhancer.validate(GOOD, FOX, "wan") == enhancer.Verdict(True, GOOD)
    assert enhancer.validate(f'"{GOOD}"', FOX, "wan").text == GOOD  # wrapping quotes are removed
    r1 = enhancer.validate(f"<think>\nThe user wants a fox in snow. I should add the camera.\n</think>\n\n{GOOD}",
                           FOX, "wan", reasoning=True)
    assert r1.ok and r1.text == GOOD
    # DeepSeek-R1's chat template opens <think> itself: the answer follows a lone </think>
    lone = enhancer.validate(f"Okay, a fox. Camera: dolly in.\n</think>\n{GOOD}", FOX, "wan", reasoning=True)
    assert lone.ok and lone.text == GOOD
    leftover = enhancer.validate(f"<think>a</think> {GOOD} </think>", FOX, "wan")
    assert not leftover.ok


def test_validator_language_rules_follow_the_input_script():
    zh = "一只红狐狸在清晨的新雪上小跑，橙色的皮毛在白色雪原上格外醒目。它停下来嗅了嗅寒冷的空气，然后奔向远处的松林。镜头缓缓推近狐狸，柔和的晨光，长长的蓝色阴影，写实电影质感。"
    assert enhancer.validate(zh, "一只红狐狸在雪地里奔跑", "wan").ok
    english = enhancer.validate(GOOD, "一只红狐狸在雪地里奔跑", "wan")
    assert not english.ok and "Latin" in english.reason and "Chinese" in english.reason
    fr = ("Un renard roux court dans la neige fraîche à l'aube, son pelage orange éclatant sur le champ blanc. Il "
          "s'arrête, renifle l'air froid, puis repart vers une forêt de pins. La caméra avance lentement vers lui, "
          "lumière douce et rosée, longues ombres bleues.")
    assert enhancer.validate(fr, "un renard roux court dans la neige", "wan").ok
    assert not enhancer.validate(GOOD, "un renard roux court dans la neige", "wan").ok  # subject words missing


def test_validator_trims_overlong_answers_at_a_sentence_end_for_short_limit_families():
    long = GOOD + (" Snowflakes drift through the pale air and settle on its whiskers. Behind it, a frozen creek "
                   "winds between birch trunks, and crows lift from the branches as it passes. Its paws leave a neat "
                   "line of prints that glitter in the low sun, while distant hills fade into haze. The fox finally "
                   "stops at the tree line, looks back over its shoulder, and disappears between the trunks.")
    v = enhancer.validate(long, FOX, "ltx")
    assert v.ok and engine.estimate_tokens(v.text) <= 128 and v.text.endswith(".") and v.notes
    run_on = GOOD.rstrip(".") + ", " + ", ".join(f"glint{i}" for i in range(120))  # one endless sentence
    v2 = enhancer.validate(run_on, FOX, "ltx")
    assert not v2.ok and "too long" in v2.reason


def test_build_messages_turns_hints_into_requirements_and_asks_for_the_family_style():
    (msg,) = enhancer.build_messages("a fox [orbit] [golden hour] [anime]", "ltx")
    content = msg["content"]
    assert msg["role"] == "user" and "LTX-Video" in content and "Idea: a fox" in content and "[" not in content
    assert "Camera: orbits slowly around the subject." in content and "golden-hour" in content
    assert "anime" in content and "40 to 75 words" in content


# ------------------------------------------------------------------------------------------------ store, memory


def test_missing_real_model_names_the_pull_command():
    with pytest.raises(ModelNotInstalled) as e:
        enhancer.enhance(FOX, "wan", model="qwen2.5-1.5b-instruct", hardware=BIG)
    assert "localvideo models pull qwen2.5-1.5b-instruct" in e.value.hint
    assert e.value.details["command"] == "localvideo models pull qwen2.5-1.5b-instruct"


def _fake_llm_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"0" * 100)
    return path


def test_enhancer_in_the_models_folder_or_hf_cache_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    spec = enhancer.get_enhancer("qwen2.5-1.5b-instruct")
    assert store.find(spec) is None
    _fake_llm_folder(tmp_path / "models" / spec.repo)
    assert enhancer.locate(spec) == tmp_path / "models" / spec.repo
    r1 = enhancer.get_enhancer("deepseek-r1-distill-qwen-1.5b")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo_dir = cache / ("models--" + r1.repo.replace("/", "--"))
    _fake_llm_folder(repo_dir / "snapshots" / ("0" * 40))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    found = store.find(r1)
    assert found and found.source == "hf-cache"
    # a diffusers-style check would not accept these folders, and an LLM check does not accept shards missing
    (tmp_path / "models" / spec.repo / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    assert store.find(spec) is None or store.find(spec).source == "hf-cache"


def test_memory_check_refuses_before_loading():
    tiny = enhancer.get_enhancer("tiny-lm")
    with pytest.raises(DoesNotFit, match="needs about"):
        enhancer.enhance(FOX, "wan", model="tiny-lm", hardware=Hardware.assumed(None, ram_gb=0.1))
    qwen = enhancer.get_enhancer("qwen2.5-1.5b-instruct")
    with pytest.raises(DoesNotFit, match="qwen2.5-1.5b-instruct needs about 4"):
        enhancer.check_fits(qwen, Hardware.assumed(None, ram_gb=2))
    assert enhancer.check_fits(qwen, Hardware.assumed(24)) == ("cuda:0", "bfloat16")
    assert enhancer.check_fits(qwen, Hardware.assumed(2, ram_gb=32)) == ("cpu", "bfloat16")  # GPU too small
    assert enhancer.check_fits(tiny, Hardware.assumed(None, ram_gb=1)) == ("cpu", "float32")


def test_bad_requests_are_typed_errors(tmp_path):
    with pytest.raises(InvalidRequest, match="empty"):
        enhancer.enhance("  ", "wan", model="tiny-lm", hardware=BIG)
    with pytest.raises(UnknownModel, match="qwen2.5-1.5b-instruct"):
        enhancer.get_enhancer("gpt-5")
    with pytest.raises(ModelNotInstalled, match="No model folder"):
        enhancer.get_enhancer(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotInstalled, match="not a complete"):
        enhancer.get_enhancer(str(tmp_path))


def test_pull_uses_the_model_store_with_the_enhancer_patterns(tmp_path, monkeypatch):
    from types import SimpleNamespace
    import shutil

    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    source = _fake_llm_folder(tmp_path / "remote")
    calls = []

    class Hub:  # the hub boundary: a file list with sizes and a copying download
        def model_info(self, repo, files_metadata=False):
            files = {"config.json": 1, "model.safetensors": 100, "tokenizer.json": 1, "pytorch_model.bin": 10**12}
            return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n, size=s) for n, s in files.items()])

        def snapshot_download(self, repo, local_dir, allow_patterns, ignore_patterns):
            calls.append((repo, allow_patterns))
            shutil.copytree(source, local_dir, dirs_exist_ok=True)

    spec = enhancer.get_enhancer("qwen2.5-1.5b-instruct")
    hub = Hub()
    assert store.download_size(spec, api=hub) == 102  # the .bin duplicate is not fetched
    installed = enhancer.pull(spec, api=hub, snapshot_download=hub.snapshot_download)
    assert installed.path == tmp_path / "models" / spec.repo and calls[0][0] == spec.repo
    assert enhancer.locate(spec) == installed.path
