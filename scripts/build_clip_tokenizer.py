"""Build the CLIP tokenizer files in assets/tokenizers/ from open_clip's BPE file.

The byte-pair-encoding merges of OpenAI's CLIP (the tokenizer of SD 1.x and of
both SDXL text encoders) ship inside the open-clip-torch wheel as
``open_clip/bpe_simple_vocab_16e6.txt.gz``. This script fetches the wheel with
``pip download --no-deps`` (or takes ``--bpe PATH``), reads the file out of the
zip without importing or installing the package, and writes, for
``transformers.CLIPTokenizer``:

* ``vocab.json``: 49,408 entries. 256 byte symbols, the same 256 with the
  end-of-word marker ``</w>``, one entry per merge (48,894), then
  ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407), exactly the order of
  open_clip's ``SimpleTokenizer`` and OpenAI's ``clip/simple_tokenizer.py``.
* ``merges.txt``: the same merges, with the ``#version: 0.2`` header.
* ``tokenizer_config.json`` / ``special_tokens_map.json``: two folders that
  differ only in the pad token: ``clip-vit-l-14`` pads with ``<|endoftext|>``
  (as SD 1.x and SDXL's ``tokenizer``), ``clip-vit-bigg-14`` pads with ``!``
  (id 0, as SDXL's ``tokenizer_2``).

Usage::

    python scripts/build_clip_tokenizer.py            # downloads the wheel with pip
    python scripts/build_clip_tokenizer.py --bpe bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "assets" / "tokenizers"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # what SimpleTokenizer keeps: 48,894 merges


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible map from bytes to printable unicode characters (GPT-2, CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_bpe_from_wheel() -> tuple[bytes, str]:
    """Download the open-clip-torch wheel (no deps, not installed) and read the BPE file from it."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, "open-clip-torch"], check=True)
        wheel = next(Path(tmp).glob("open_clip_torch-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            return z.read(BPE_IN_WHEEL), wheel.name


def build(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]  # line 0 is a version header
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def tokenizer_config(pad_token: str) -> dict:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
    }


LICENCE = """The vocabulary and merges in this folder are OpenAI's CLIP byte-pair encoding
(bpe_simple_vocab_16e6.txt.gz), as redistributed in the open-clip-torch wheel ({wheel}).
They were converted to vocab.json / merges.txt by scripts/build_clip_tokenizer.py.

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bpe", type=Path, help="an open-clip-torch wheel, or bpe_simple_vocab_16e6.txt.gz (default: pip download the wheel)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.bpe and args.bpe.suffix == ".whl":
        with zipfile.ZipFile(args.bpe) as z:
            bpe, source = z.read(BPE_IN_WHEEL), args.bpe.name
    elif args.bpe:
        bpe, source = args.bpe.read_bytes(), args.bpe.name
    else:
        bpe, source = read_bpe_from_wheel()
    vocab, merges = build(bpe)
    for folder, pad in (("clip-vit-l-14", "<|endoftext|>"), ("clip-vit-bigg-14", "!")):
        d = args.out / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(pad), indent=2) + "\n")
        special = {k: v for k, v in tokenizer_config(pad).items() if k.endswith("_token")}
        (d / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        (d / "LICENSE").write_text(LICENCE.format(wheel=source))
        print(f"wrote {d} ({len(vocab)} tokens, {len(merges)} merges, pad {pad!r})")


if __name__ == "__main__":
    main()
