"""Small helpers shared by several test modules (fixtures live in conftest.py, the live server in _live.py)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


def wait_for(svc, job_id: str, pred, timeout: float = 120.0):
    """Poll an in-process JobService until ``pred(job)`` holds and return that job; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.get(job_id)
        if pred(job):
            return job
        time.sleep(0.02)
    raise TimeoutError(svc.get(job_id))


@contextlib.contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` for the block, then back to what it was. Tiny models on a shared 2-core box:
    more threads only fight each other (20x slower training)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def teach_tiny_lm(messages: list[dict], answer: str, folder: Path, max_steps: int):
    """A tiny random-weight causal LM (``enhancer.make_tiny_lm``) taught one chat: the templated ``messages`` with
    the generation prompt → ``answer`` + EOS, loss on the answer only (Adam, lr 1e-2, seed 0), until the loss is
    below 0.005 or after ``max_steps`` steps; saved as a local model folder. Returns (tokenizer, folder)."""
    import torch

    from localvideo.prompts import enhancer

    tok, model = enhancer.make_tiny_lm(hidden_size=64, intermediate_size=128)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(text, add_special_tokens=False).input_ids
    answer_ids = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(max_steps):
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if loss.item() < 0.005:
                break
    model.eval()
    return tok, enhancer.save_lm(tok, model, folder)
