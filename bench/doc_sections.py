"""Sections of a results page that different scripts own: each script writes its own, between
markers, and keeps the others.

docs/results.md is written by bench/reproduce_paper.py (the ResNet-20 tables) and holds
bench/vit_results.py's ViT section too: ``put_section`` replaces (or appends) one owner's block,
``owned_sections`` returns every marked block of a file, so that a script rewriting the rest of
the page carries them over unchanged.
"""

from __future__ import annotations

import os
import re

_BLOCK = re.compile(r"<!-- section: (?P<owner>[\w./-]+) -->\n.*?<!-- end of section: (?P=owner) -->\n", re.S)


def block(owner: str, text: str) -> str:
    return f"<!-- section: {owner} -->\n{text.rstrip()}\n<!-- end of section: {owner} -->\n"


def owned_sections(path: str) -> list[str]:
    """Every marked block of ``path`` (none if the file does not exist), in order."""
    if not os.path.isfile(path):
        return []
    return [m.group(0) for m in _BLOCK.finditer(open(path, encoding="utf-8").read())]


def put_section(path: str, owner: str, text: str) -> str:
    """``path``'s text with ``owner``'s block set to ``text``: replaced where it is, else appended."""
    old = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    new = block(owner, text)
    found = [m for m in _BLOCK.finditer(old) if m.group("owner") == owner]
    if found:
        return old[:found[0].start()] + new + old[found[0].end():]
    return old.rstrip("\n") + ("\n\n" if old else "") + new
