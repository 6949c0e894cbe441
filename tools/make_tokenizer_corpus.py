#!/usr/bin/env python
"""Write tests/data/open_clip_tokens.json: prompts with the ids open_clip's own tokenizer gives.

Run once (the JSON is committed; the tests do not need open_clip)::

    pip download --no-deps open_clip_torch -d /tmp/oc && (cd /tmp/oc && unzip -q -o *.whl)
    python tools/make_tokenizer_corpus.py --open-clip-dir /tmp/oc/open_clip

Only ``open_clip/tokenizer.py`` is loaded (by file path, so the package's ``__init__`` and its
torchvision import are skipped); it needs torch, ftfy and regex. Without ``--open-clip-dir`` an
installed ``open_clip`` package is located (not imported). The prompts cover plain captions,
ftfy's repairs (curly quotes, full-width forms, ligatures, mojibake), HTML entities, odd
whitespace, CJK, emoji, accents, contractions, special-token look-alikes and prompts longer
than 77 tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data",
                   "open_clip_tokens.json")

HAND = [
    # plain captions
    "a red chair", "A photo of a cat sitting on a wooden table.", "", " ", "   leading spaces",
    "an astronaut riding a horse on mars, 4k, trending on artstation",
    "a 3D model of a teapot, high quality, 360 degree view", "sci-fi spaceship; octane render",
    "a bowl of fruit (apples, pears & grapes)", "100% cotton t-shirt #blue @home",
    "the year 2024 was 12.5% warmer", "email me at someone@example.com",
    "path/to/file_name.png", "C++ and C# code", "what's up? it's fine!", "x" * 40,
    # curly quotes and dashes (ftfy uncurls quotes)
    "a cat named \u2018Tom\u2019", "\u201cquoted\u201d prompt", "it\u2019s a dog\u2019s life",
    "rock \u2019n\u2019 roll", "an em\u2014dash and an en\u2013dash", "ellipsis\u2026 here",
    "\u201ahigh-low\u201c quotes", "\u00abguillemets\u00bb",
    # full-width forms (ftfy narrows them)
    "\uff21\uff22\uff23\uff11\uff12\uff13",
    "\uff48\uff45\uff4c\uff4c\uff4f \uff57\uff4f\uff52\uff4c\uff44",
    "full\uff0dwidth\uff01\uff1f", "\u3000ideographic space\u3000",
    # ligatures
    "\ufb01ne \ufb02ow", "of\ufb01ce \ufb00 \ufb03 \ufb04", "e\ufb05 \ufb06",
    # mojibake (UTF-8 read as Latin-1 / cp1252)
    "caf\u00c3\u00a9 au lait", "na\u00c3\u00afve r\u00c3\u00a9sum\u00c3\u00a9",
    "\u00e2\u20ac\u0153smart quotes\u00e2\u20ac\u009d", "don\u00e2\u20ac\u2122t",
    "Se\u00c3\u00b1or Pi\u00c3\u00b1a", "\u00c3\u00bcber cool",
    # html entities (unescaped twice)
    "fish &amp; chips", "fish &amp;amp; chips", "&lt;b&gt;bold&lt;/b&gt;",
    "&quot;hi&quot; &#39;x&#39;",
    "5 &gt; 3 &amp;&amp; 2 &lt; 4", "&eacute;t&eacute; &nbsp; space", "&#x1F600; smile",
    # whitespace
    "tab\tseparated\twords", "new\nline\r\nwindows", "many     spaces   here",
    "nbsp\u00a0between", "zero\u200bwidth space", "trailing   ", "\u2028line sep\u2029para",
    # accents, other scripts, case
    "Cr\u00e8me br\u00fbl\u00e9e", "\u00c5ngstr\u00f6m \u00f8re", "stra\u00dfe STRASSE",
    "\u0130stanbul",
    "\u0394\u03b5\u03bb\u03c6\u03bf\u03af greek", "\u041c\u043e\u0441\u043a\u0432\u0430 russian",
    "\u05e9\u05dc\u05d5\u05dd hebrew", "\u0645\u0631\u062d\u0628\u0627 arabic",
    "\u0928\u092e\u0938\u094d\u0924\u0947 hindi", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 thai",
    "e\u0301 combining acute", "\u01c5 titlecase digraph", "MiXeD CaSe WoRdS", "ALL CAPS PROMPT",
    # CJK
    "\u4e00\u53ea\u732b\u5750\u5728\u684c\u5b50\u4e0a", "\u732b", "\u6771\u4eac\u30bf\u30ef\u30fc",
    "\u304b\u308f\u3044\u3044\u72ac", "\ud55c\uad6d\uc5b4 \ubb38\uc7a5", "\u4e2d\u6587 and English",
    "\u5317\u4eac 2008 \u5965\u8fd0\u4f1a", "\uff08\u62ec\u5f27\uff09\u3001\u3002",
    # emoji
    "\U0001f431 cat", "\U0001f680\U0001f319\u2b50",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
    "thumbs \U0001f44d\U0001f3fd up", "\U0001f1fa\U0001f1f8 flag", "heart \u2764\ufe0f love",
    "a \U0001f355 pizza with \U0001f336\ufe0f peppers", "\u263a smile \u2639",
    # contractions
    "don't I'LL we've they're she'd he's it'd we'll I'm", "rock'n'roll o'clock",
    "'s 't 're at start", "DON'T SHOUT",
    # special-token look-alikes
    "<start_of_text>", "<end_of_text> after", "a <START_OF_TEXT> b", "_<end_of_text>",
    "<|startoftext|> hf style", "<|endoftext|>", "<end_of_text><end_of_text>",
    "<start_of_text", "end_of_text>",
    # digits and symbols
    "1234567890", "3.14159 pi", "\u00bd \u00bc \u00be fractions", "x\u00b2 + y\u00b3",
    "\u2460\u2461\u2462 circled", "\u2160 \u2161 \u2162 roman", "\u00a92024 \u00ae \u2122",
    "$100 \u20ac50 \u00a330 \u00a5200", "!!!???...", "@@@###$$$", "~`^|\\", "[brackets] {braces}",
    "\u2192 \u2190 \u2191 \u2193 arrows", "\u221e \u2211 \u222b math",
    # control characters
    "bell\u0007char", "null\u0000byte", "esc\u001b[31mred",
    # long (more than 75 BPE tokens: truncated)
    " ".join(["hello"] * 80), " ".join(["a photo of a cat"] * 20),
    "\u4e00\u53ea\u732b" * 40, "\U0001f431" * 60, ", ".join(str(i) for i in range(60)),
    "highly detailed, " * 30, "supercalifragilisticexpialidocious " * 12,
    " ".join(["hello"] * 75), " ".join(["hello"] * 76),
]

SUBJECTS = ["a red car", "an old man", "a wooden chair", "a blue ceramic vase", "a corgi puppy",
            "the Eiffel tower", "a robot", "a bowl of ramen", "a medieval castle", "a sneaker"]
STYLES = ["", ", 3d render", ", oil painting", ", photorealistic, 8k", " in the style of Pixar",
          ", low poly", ", studio lighting, white background", ", watercolor sketch",
          ", isometric view", ", cinematic"]
VIEWS = ["front view", "side view", "back view", "top-down view", "multi-view turntable"]


def prompts() -> list[str]:
    out = list(HAND)
    for subject, style in itertools.product(SUBJECTS, STYLES):
        out.append(subject + style)
    for subject, view in itertools.product(SUBJECTS[:6], VIEWS):
        out.append(f"{view} of {subject}")
    return out


def load_open_clip_tokenizer(directory: str | None):
    if directory is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("open_clip not found: pass --open-clip-dir (see the docstring)")
        directory = list(spec.submodule_search_locations)[0]
    path = os.path.join(directory, "tokenizer.py")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_only", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    version = "unknown"
    version_file = os.path.join(directory, "version.py")
    if os.path.isfile(version_file):
        scope: dict = {}
        exec(open(version_file).read(), scope)  # noqa: S102 - a one-line __version__ file
        version = scope.get("__version__", version)
    bpe = os.path.join(directory, "bpe_simple_vocab_16e6.txt.gz")
    with open(bpe, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return module.SimpleTokenizer(bpe), version, sha


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--open-clip-dir", default=None,
                   help="the open_clip package directory (holding tokenizer.py)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    tok, version, sha = load_open_clip_tokenizer(args.open_clip_dir)
    texts = prompts()
    ids = tok(texts, context_length=77).numpy()
    cases = [{"prompt": t, "ids": [int(i) for i in row if i != 0]} for t, row in zip(
        texts, ids, strict=True)]
    data = {
        "generated_by": "tools/make_tokenizer_corpus.py",
        "open_clip_torch": version,
        "bpe_sha256": sha,
        "context_length": 77,
        "note": "ids are open_clip.tokenize(prompt) without the trailing zero padding",
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} prompts (open_clip_torch {version})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
