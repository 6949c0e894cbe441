"""The OpenCLIP BPE tokenizer, exactly as ``open_clip.tokenize`` does it, without torch.

* text cleaning: ``ftfy.fix_text`` (curly quotes → straight, full-width → ASCII, ligatures
  split, mojibake repaired, NFC), ``html.unescape`` twice, whitespace runs collapsed, stripped,
  lower-cased;
* pre-tokenisation with open_clip's pattern (special tokens, English contractions, letter runs,
  single digits, runs of other symbols; whitespace dropped), each piece byte-encoded to
  printable characters and split by rank-ordered BPE merges (``…</w>`` marks a word's end);
* ``[SOT, ids…, EOT, 0…]`` in ``context_length`` ids; a longer prompt is cut to the first
  ``context_length`` ids with the last forced to EOT (and a :class:`PromptTruncatedWarning`).

The OpenCLIP vocabulary (49,408 ids: 256 bytes, 256 bytes + ``</w>``, 48,894 merges,
``<start_of_text>`` = 49406, ``<end_of_text>`` = 49407) is built from the BPE file shipped in
``videomv_jax/models/clip_bpe/`` (see its NOTICE.txt): :func:`openclip_tokenizer`. Directories
with ``vocab.json`` + ``merges.txt`` (the format the tiny caption tokenizers and converted
directories use) load with :func:`load_tokenizer`; their special tokens may be named
``<|startoftext|>``/``<|endoftext|>`` (Hugging Face) or ``<start_of_text>``/``<end_of_text>``
(open_clip).
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
import warnings
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["CLIPTokenizer", "PromptTruncatedWarning", "clean_text", "load_tokenizer",
           "openclip_tokenizer", "tokenize", "OPENCLIP_BPE_FILE", "OPENCLIP_VOCAB_SIZE"]

OPENCLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: rows of OpenCLIP's token embedding; every id a tokenizer emits must be below this
OPENCLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2  # open_clip uses this many merges of the file
#: accepted (start, end) special-token spellings, first found wins
SPECIAL_NAMES = (("<start_of_text>", "<end_of_text>"), ("<|startoftext|>", "<|endoftext|>"))
SOT_TOKEN, EOT_TOKEN = SPECIAL_NAMES[1]  # kept for callers of the Hugging Face spelling


class PromptTruncatedWarning(UserWarning):
    """A prompt had more than ``context_length - 2`` BPE tokens and was cut."""


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """Byte → printable character: printable Latin-1 bytes map to themselves, the other 68
    bytes to code points 256, 257, … in byte order (CLIP's byte-level alphabet)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """open_clip's ``lower`` cleaning: ftfy repair, HTML entities unescaped twice, whitespace
    runs collapsed to one space, stripped, lower-cased."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class CLIPTokenizer:
    """Byte-level BPE tokenizer with CLIP's cleaning and pre-tokenisation.

    ``vocab``: token → id; ``merges``: merge pairs in priority order. ``unk_id`` (default the
    end token) stands for a piece the vocabulary cannot spell (never the case for OpenCLIP's,
    which holds every byte). ``source`` describes where it came from (for messages).
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *,
                 source: str = "a vocabulary", unk_id: int | None = None):
        import regex

        self.encoder = dict(vocab)
        self.source = source
        names = next((pair for pair in SPECIAL_NAMES if all(t in vocab for t in pair)), None)
        if names is None:
            raise ValueError(f"{source} has no start/end special tokens: expected one of "
                             f"{[list(p) for p in SPECIAL_NAMES]} in its vocabulary")
        self.sot_token, self.eot_token = names
        self.sot_id, self.eot_id = vocab[names[0]], vocab[names[1]]
        ids = list(vocab.values())
        if len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"{source}: vocabulary ids must be distinct and non-negative")
        self.max_id = max(ids)
        self.unk_id = self.eot_id if unk_id is None else unk_id
        self.decoder = {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.byte_encoder = _byte_alphabet()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        special = "|".join(regex.escape(t) for t in names)
        self.pattern = regex.compile(
            special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self._cache: dict[str, list[int]] = {names[0]: [self.sot_id], names[1]: [self.eot_id]}

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_bpe_file(cls, path: str | os.PathLike | None = None) -> CLIPTokenizer:
        """OpenCLIP's tokenizer from its gzipped BPE merges file (default: the shipped one)."""
        if path is None:
            ref = resources.files("videomv_jax.models") / "clip_bpe" / OPENCLIP_BPE_FILE
            with resources.as_file(ref) as p:
                data = gzip.open(p).read()
            source = f"the shipped OpenCLIP BPE file ({OPENCLIP_BPE_FILE})"
        else:
            data = gzip.open(os.fspath(path)).read()
            source = f"BPE file {os.fspath(path)!r}"
        lines = data.decode("utf-8").split("\n")[1:_NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{source} is not a CLIP BPE merges file ({len(merges)} merges "
                             f"read, {_NUM_MERGES} expected)")
        table = _byte_alphabet()  # vocabulary order: printable bytes first, then the rest
        alphabet = sorted(table.values(), key=lambda c: (ord(c) >= 256, ord(c)))
        tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        tokens += list(SPECIAL_NAMES[0])
        return cls({t: i for i, t in enumerate(tokens)}, merges, source=source)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> CLIPTokenizer:
        """From ``vocab.json`` + ``merges.txt`` (or a Hugging Face ``tokenizer.json``)."""
        d = os.fspath(directory)
        files = [f for f in ("vocab.json", "merges.txt", "tokenizer.json", OPENCLIP_BPE_FILE)
                 if os.path.isfile(os.path.join(d, f))]
        if {"vocab.json", "merges.txt"} <= set(files):
            with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
                vocab = json.load(f)
            with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = [tuple(line.split()) for line in lines
                      if line.strip() and not line.startswith("#version")]
        elif "tokenizer.json" in files:
            with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
                spec = json.load(f)
            model = spec.get("model", {})
            vocab = dict(model.get("vocab", {}))
            for tok in spec.get("added_tokens", []):
                vocab.setdefault(tok["content"], tok["id"])
            merges = [tuple(m.split()) if isinstance(m, str) else tuple(m)
                      for m in model.get("merges", [])]
        elif OPENCLIP_BPE_FILE in files:
            return cls.from_bpe_file(os.path.join(d, OPENCLIP_BPE_FILE))
        else:
            raise FileNotFoundError(
                f"{d!r} holds no CLIP tokenizer: need vocab.json and merges.txt (or "
                f"tokenizer.json or {OPENCLIP_BPE_FILE}), found {files}; the OpenCLIP one "
                f"ships with videomv_jax: load_tokenizer('openclip') or write it with "
                f"videomv_jax.models.clip_tokenizer.openclip_tokenizer().save(DIR)")
        bad = [m for m in merges if len(m) != 2]
        if bad:
            raise ValueError(f"{d!r}: merges must be pairs, got {bad[0]!r}")
        return cls(vocab, merges, source=f"the tokenizer in {d!r}")

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json`` + ``merges.txt`` (readable by :meth:`from_directory`)."""
        os.makedirs(directory, exist_ok=True)
        merges = sorted(self.ranks, key=self.ranks.__getitem__)
        with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))

    # -- encoding ------------------------------------------------------------------------------

    def get_vocab(self) -> dict[str, int]:
        return dict(self.encoder)

    @property
    def vocab_size(self) -> int:
        """Rows an embedding needs for every id this tokenizer emits (largest id + 1)."""
        return self.max_id + 1

    def _bpe(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = [self.byte_encoder[b] for b in piece.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.encoder.get(t, self.unk_id) for t in word]
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after :func:`clean_text` (no start/end tokens)."""
        ids: list[int] = []
        for piece in self.pattern.findall(clean_text(text)):
            ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder.get(int(i), "") for i in ids)
        raw = bytearray(32 if c == " " else self.byte_decoder[c]
                        for c in text.replace("</w>", " ") if c == " " or c in self.byte_decoder)
        return raw.decode("utf-8", errors="replace").strip()

    def check_fits(self, embedding_rows: int, what: str = "the text encoder") -> None:
        """Raise unless every id this tokenizer emits is a row of an embedding with
        ``embedding_rows`` rows (an id beyond it would read garbage / NaN)."""
        if self.max_id >= embedding_rows:
            raise ValueError(
                f"{self.source} emits ids up to {self.max_id} (start {self.sot_token}={self.sot_id}"
                f", end {self.eot_token}={self.eot_id}), but {what} has only {embedding_rows} "
                f"token embeddings; use the tokenizer the model was trained with (OpenCLIP's: "
                f"load_tokenizer('openclip'))")


@functools.lru_cache(maxsize=1)
def openclip_tokenizer() -> CLIPTokenizer:
    """OpenCLIP's ViT-H-14 tokenizer, built from the shipped BPE file (cached)."""
    return CLIPTokenizer.from_bpe_file()


def load_tokenizer(directory: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer from a directory (see :meth:`CLIPTokenizer.from_directory`), or
    OpenCLIP's shipped one for ``None`` / ``"openclip"``."""
    if directory is None or os.fspath(directory) == "openclip":
        return openclip_tokenizer()
    return CLIPTokenizer.from_directory(directory)


def tokenize(tokenizer: Any, prompts: str | Sequence[str], context_length: int = 77,
             return_truncated: bool = False, vocab_size: int | None = None):
    """``open_clip.tokenize``: [SOT, BPE ids…, EOT, 0, 0, …] as int32 [B, context_length].

    A prompt with more than ``context_length - 2`` BPE tokens is truncated to
    ``context_length`` ids and its last id forced to EOT (what open_clip does silently); here
    each such prompt also raises a :class:`PromptTruncatedWarning` naming it. With
    ``return_truncated`` the per-prompt truncation flags are returned as well. ``vocab_size``
    (the text encoder's embedding rows), when given, is checked against the tokenizer's ids.
    """
    if vocab_size is not None:
        tokenizer.check_fits(vocab_size)
    if isinstance(prompts, str):
        prompts = [prompts]
    sot, eot = tokenizer.sot_id, tokenizer.eot_id
    out = np.zeros((len(prompts), context_length), np.int32)
    truncated = []
    for row, prompt in enumerate(prompts):
        ids = [sot, *tokenizer.encode(prompt), eot]
        cut = len(ids) > context_length
        if cut:
            dropped = tokenizer.decode(ids[context_length - 1:-1])
            shown = json.dumps(prompt)
            shown = shown if len(shown) <= 300 else shown[:297] + "..."
            warnings.warn(
                f"prompt {row} has {len(ids) - 2} BPE tokens, more than the "
                f"{context_length - 2} that fit; truncated like open_clip (last id forced to "
                f"EOT), dropping {json.dumps(dropped)}: {shown}", PromptTruncatedWarning,
                stacklevel=2)
            ids = ids[:context_length]
            ids[-1] = eot
        out[row, :len(ids)] = ids
        truncated.append(cut)
    return (out, truncated) if return_truncated else out
