"""Prompts: the deterministic per-family prompt engine and the optional local-LLM enhancer.

``expand`` (engine) needs no model and no torch. ``enhance`` (enhancer) loads a small instruct model from local
files only when asked, validates what it writes and falls back to the engine when the text is not usable.
"""

from __future__ import annotations

from .engine import ExpandedPrompt, expand, parse_hints

__all__ = ["ExpandedPrompt", "expand", "parse_hints"]
