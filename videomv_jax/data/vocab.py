"""A small CLIP-format BPE tokenizer trained on a caption vocabulary.

The tiny default model has no use for OpenCLIP's 49,408-token vocabulary: its text encoder
only ever sees ``shapes`` captions. :func:`build_caption_tokenizer` writes ``vocab.json`` +
``merges.txt`` in the CLIP BPE format (loadable with
:func:`videomv_jax.models.clip.load_tokenizer`) whose merges rebuild every word seen in the
training captions, so each known word is one token. Unknown words still tokenise, into single
characters (every lower-case letter, digit and common punctuation mark is in the vocabulary).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable

__all__ = ["build_caption_tokenizer", "caption_words"]

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")


def caption_words(captions: Iterable[str]) -> list[str]:
    """The distinct words of ``captions`` (lower-cased, split like CLIP's pre-tokenizer into
    letter runs, single digits and single punctuation marks), sorted."""
    words: set[str] = set()
    for c in captions:
        words.update(_WORD.findall(c.lower()))
    return sorted(words)


def build_caption_tokenizer(captions: Iterable[str], directory: str | os.PathLike) -> int:
    """Write a CLIP BPE tokenizer for ``captions`` into ``directory``; returns the vocab size
    (the text encoder's ``vocab_size`` must be at least this)."""
    alphabet = string.ascii_lowercase + string.digits + string.punctuation
    tokens: list[str] = []
    seen: set[str] = set()

    def add(tok: str) -> None:
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)

    for ch in alphabet:
        add(ch)
    for ch in alphabet:
        add(ch + "</w>")
    merges: list[str] = []
    merge_seen: set[str] = set()
    for word in caption_words(captions):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            rule = f"{current} {nxt}"
            current = current + nxt
            if rule not in merge_seen:
                merge_seen.add(rule)
                merges.append(rule)
            add(current)
    add(SOT)
    add(EOT)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as fh:
        json.dump({t: i for i, t in enumerate(tokens)}, fh)
    with open(os.path.join(directory, "merges.txt"), "w") as fh:
        fh.write("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    return len(tokens)
