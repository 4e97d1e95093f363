"""Prompt templates for pseudo-interaction generation (paper eq. 4).

A template is a text file with four placeholders: ``{source_domain}`` and ``{target_domain}`` (the
domain names from the dataset YAML), ``{items}`` (the user's recent source items, one numbered line
each, oldest first) and ``{n}`` (how many target items to ask for). Placeholders are replaced
literally in one pass, so other braces in a template are left alone. The defaults ship in
``lgcd_core/templates/``; the YAML can name any other file (absolute, or relative to the repo root).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from lgcd_core.config import REPO_ROOT
from lgcd_core.io import printable

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PLACEHOLDERS = ("{source_domain}", "{target_domain}", "{items}", "{n}")
Direction = Literal["a_to_b", "b_to_a"]


def template_path(name: str, direction: Direction) -> Path:
    """'default' -> the packaged template of that direction; else a file path."""
    if name == "default":
        return TEMPLATES_DIR / f"{direction}.txt"
    path = Path(name).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def load_template(name: str, direction: Direction) -> str:
    """Read and check a template: it must contain ``{items}``."""
    path = template_path(name, direction)
    if not path.is_file():
        raise FileNotFoundError(f"prompt template {name!r} ({direction}): {path} does not exist")
    text = path.read_text()
    if "{items}" not in text:
        raise ValueError(f"prompt template {path}: needs the placeholder {{items}} (has {PLACEHOLDERS})")
    return text


# Chat-template markers of common model families. Item text is data: a title holding one of these must not
# close the user's turn or open a system turn, whichever backend (or remote server) applies the template.
CHAT_MARKERS = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<\|?(?:eot_id|begin_of_text)\|?>")


def defang(text: str, markers: list[str] | None = None) -> str:
    """``text`` with every chat-template marker (:data:`CHAT_MARKERS`, and the literal ``markers``, e.g. a
    tokenizer's special tokens) made inert: its angle or square brackets become the look-alike ‹ › / ⟦ ⟧,
    so a tokenizer reads it as plain text and a reader still sees what the data said."""
    def inert(marker: str) -> str:
        swapped = marker.replace("<", "‹").replace(">", "›").replace("[", "⟦").replace("]", "⟧")
        return swapped if swapped != marker else marker[0] + "\u2009" + marker[1:]  # a thin space splits the rest

    for marker in sorted(markers or [], key=len, reverse=True):
        if marker and marker in text:
            text = text.replace(marker, inert(marker))
    return CHAT_MARKERS.sub(lambda m: inert(m.group(0)), text)


def display_text(text: str, max_chars: int) -> str:
    """An item's text as the prompt shows it: one printable line with chat markers made inert (:func:`defang`),
    cut to ``max_chars`` (ending in '...')."""
    flat = defang(printable(text))
    return flat if len(flat) <= max_chars else flat[: max_chars - 3].rstrip() + "..."


def format_items(texts: list[str]) -> str:
    """Numbered ``1. text`` lines."""
    return "\n".join(f"{i}. {text}" for i, text in enumerate(texts, start=1))


def render_prompt(template: str, source_domain: str, target_domain: str, history: list[str], n: int) -> str:
    """Fill a template with the domain names, the numbered history (see :func:`display_text`) and ``n``."""
    values = {
        "{source_domain}": source_domain,
        "{target_domain}": target_domain,
        "{items}": format_items(history),
        "{n}": str(n),
    }
    pattern = "|".join(re.escape(p) for p in PLACEHOLDERS)
    return re.sub(pattern, lambda m: values[m.group(0)], template).strip()
