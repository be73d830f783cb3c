"""Training data for nestc language models: corpora, token datasets and batches.

* :func:`default_corpus` -- English text that ships with CPython itself, so that a model can be
  trained (and the test-suite run) with nothing downloaded.
* :func:`load_text` -- a user's text file or folder of text files.
* :class:`TokenDataset` -- a 1-D token array split into train / held-out parts, with
  reproducible, *resumable* random training batches and deterministic held-out batches.
* :func:`prepare_corpus` -- all of the above in one call, plus a description for metrics logs.

Held-out split (interleaved stripes)
------------------------------------
The token array (``N`` tokens) is cut into ``k`` equal consecutive *stripes*; the **last**
``holdout`` fraction of every stripe is held out, the rest of the stripe is training data. ``k``
is ``held-out tokens // holdout_block`` (``holdout_block`` = 4096 tokens by default), at least 1
and at most ``max_holdout_blocks`` (16). So a small corpus holds out its tail (``k`` = 1) and a
large one holds out ``k`` blocks of >= 4096 tokens spread evenly over the whole text, which keeps
the held-out text representative of a corpus made of many different files. Training windows are
drawn only from inside a training segment (a window never straddles a held-out block, and a
target token is never a held-out token), so **no held-out token is ever seen in training**.

Batches and resuming
--------------------
Training batch ``step`` is a pure function of ``(seed, step, batch_size, seq_len)``: a fresh
``torch.Generator`` is seeded with a 63-bit mix of ``seed`` and ``step`` and draws ``batch_size``
window starts uniformly from all valid training windows. A run resumed at step ``k`` therefore
draws exactly the batches a straight run draws at step ``k``; :class:`BatchSampler` exposes the
(tiny) state to store in a checkpoint. Held-out batches are the held-out blocks cut into
consecutive non-overlapping windows, always in the same order.
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from nestc.atomic import replace_file
from nestc.diagnostics import NestError, Pos, plural

from .tokenizers import Tokenizer

__all__ = [
    "DEFAULT_CORPUS_NAME",
    "TEXT_SUFFIXES",
    "BatchSampler",
    "TokenDataset",
    "default_corpus",
    "load_text",
    "prepare_corpus",
]

DEFAULT_CORPUS_NAME = "<default: python-docs>"

#: File suffixes :func:`load_text` reads from a folder (case-insensitive). Files with no suffix are
#: read too when they look like UTF-8 text (e.g. ``README``, ``LICENSE``).
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text", ".tex", ".org", ".adoc")

_SNIFF_BYTES = 8192


# --------------------------------------------------------------------------- default corpus


def _zen_of_python() -> str:
    """The Zen of Python, decoded from ``this.py``'s source *without importing it*
    (``import this`` would print it to stdout)."""
    spec = importlib.util.find_spec("this")
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return ""
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "s" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return codecs.decode(node.value.value, "rot13")
    return ""


def default_corpus() -> str:
    """The built-in training corpus: English prose that ships with CPython, nothing to download.

    Contents, in this order:

    1. Every entry of ``pydoc_data.topics.topics`` (the text of the Python Language Reference and
       library topics that ``help()`` shows: statements, expressions, data model, ...), taken in
       sorted key order, each entry ending with a newline and followed by one blank line. On
       CPython 3.11.7 these are 79 topics, 464,970 characters.
    2. "The Zen of Python" by Tim Peters (the text ``import this`` prints, 856 characters), read
       from ``this.py``'s source without importing it.

    Total on CPython 3.11.7: **465,906 characters** (ASCII plus a few typographic characters such
    as curly quotes and dashes) = 467,053 UTF-8 bytes (byte tokens) = 139,223 GPT-2 tokens.
    The text is a pure function of the Python version (other versions ship slightly different
    docs); :func:`prepare_corpus` records its sha256.

    Not included, deliberately: ``LICENSE.txt`` (not shipped by every Python distribution, so the
    corpus would differ between machines with the same Python version) and module docstrings
    (mostly code, and collecting them means importing modules with side effects).
    """
    import pydoc_data.topics as topics_mod

    topics = topics_mod.topics
    parts = []
    for key in sorted(topics):
        text = topics[key]
        parts.append(text if text.endswith("\n") else text + "\n")
    zen = _zen_of_python()
    if zen:
        parts.append(zen if zen.endswith("\n") else zen + "\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- loading text files


def _decode_error(path: Path, raw: bytes, err: UnicodeDecodeError, encoding: str) -> NestError:
    line = raw.count(b"\n", 0, err.start) + 1
    bad = raw[err.start : min(err.end, err.start + 4)]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        guess = "it starts with a UTF-16 byte-order mark: re-save it as UTF-8 or pass encoding='utf-16'"
    else:
        guess = (
            "if it is Latin-1/Windows-1252 text, convert it with "
            f"`iconv -f cp1252 -t utf-8 '{path}' > out.txt` or pass encoding='cp1252'"
        )
    col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
    return NestError.at(
        Pos(file=str(path), line=line, col=col),
        f"cannot decode this file as {encoding}: byte {bad!r} at offset {err.start} (line {line}) is invalid",
        hint=guess,
    )


def _read_text_file(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NestError.at(
            Pos(file=str(path)),
            f"cannot read this file: {e.strerror or e}",
            hint="check that the file exists and is readable",
        ) from None
    enc = encoding.lower().replace("_", "-")
    if enc in ("utf-8", "utf8") and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is not text
    if enc in ("utf-8", "utf8") and b"\x00" in raw:
        off = raw.index(b"\x00")
        utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[1:2] == b"\x00" or raw[0:1] == b"\x00"
        raise NestError.at(
            Pos(
                file=str(path),
                line=raw.count(b"\n", 0, off) + 1,
                col=off - (raw.rfind(b"\n", 0, off) + 1) + 1,
            ),
            f"this file contains NUL bytes (first at offset {off}): it is binary, not UTF-8 text",
            hint=(
                "it looks UTF-16 encoded: re-save it as UTF-8 or pass encoding='utf-16'"
                if utf16
                else "point the data path at a text file (UTF-8), or remove binary files from the folder"
            ),
        )
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise _decode_error(path, raw, e, encoding) from None
    except LookupError:
        raise NestError.at(
            Pos(file=str(path)),
            f"unknown text encoding `{encoding}`",
            hint="use a Python codec name such as 'utf-8', 'utf-16' or 'cp1252'",
        ) from None


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut by the sniff window is fine
        return e.start >= len(head) - 3 and len(head) == _SNIFF_BYTES
    return True


def _text_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(text files, skipped files) under ``folder``, recursively, sorted by relative path.
    Hidden files and folders (``.git``, ``.DS_Store``, ...) are ignored."""
    files: list[Path] = []
    skipped: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            p = Path(root) / name
            if not p.is_file():
                continue
            suffix = p.suffix.lower()
            if suffix in TEXT_SUFFIXES or (suffix == "" and _looks_like_text(p)):
                files.append(p)
            else:
                skipped.append(p)
    key = lambda p: p.relative_to(folder).as_posix()  # noqa: E731
    return sorted(files, key=key), sorted(skipped, key=key)


def _join_texts(texts: list[str]) -> str:
    """Each text ends with a newline; texts are separated by one blank line."""
    return "\n".join(t if t.endswith("\n") else t + "\n" for t in texts)


def load_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of ``path``: one text file, or a folder.

    A folder is searched recursively; every file with a suffix in :data:`TEXT_SUFFIXES` (and every
    suffix-less file that looks like UTF-8 text) is read, in sorted relative-path order. Hidden
    files/folders are skipped, and so are empty files. The texts are joined so that each ends
    with a newline and one blank line separates two files. Raises :class:`NestError` for a missing
    path, an empty folder, a folder without text files, undecodable bytes (naming the file, line
    and byte) and text that is empty or only whitespace.
    """
    p = Path(os.fspath(path)).expanduser()
    pos = Pos(file=str(p))
    if not p.exists():
        parent = p.parent if str(p.parent) else Path(".")
        hint = "check the path (it is relative to the current directory)"
        if parent.is_dir():
            near = sorted(x.name for x in parent.iterdir() if not x.name.startswith("."))[:8]
            if near:
                hint += f"; {parent} holds: " + ", ".join(near)
        else:
            hint += f"; the folder {parent} does not exist either"
        raise NestError.at(pos, "data path does not exist", hint=hint)
    if p.is_dir():
        files, skipped = _text_files(p)
        if not files:
            if not skipped:
                raise NestError.at(
                    pos,
                    "data folder is empty",
                    hint="put UTF-8 text files (*.txt, *.md) into it, or point at a text file",
                )
            shown = ", ".join(s.relative_to(p).as_posix() for s in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            raise NestError.at(
                pos,
                f"data folder holds no text files ({plural(len(skipped), 'other file')}: {shown}{more})",
                hint="text files are read by suffix: " + ", ".join(TEXT_SUFFIXES) + "; rename or convert them",
            )
        texts = []
        for f in files:
            t = _read_text_file(f, encoding)
            if t.strip():
                texts.append(t)
        if not texts:
            raise NestError.at(
                pos,
                f"all {plural(len(files), 'text file')} in the data folder are empty",
                hint="put some text into the files, or point at another folder",
            )
        return _join_texts(texts)
    if not p.is_file():
        raise NestError.at(
            pos, "data path is neither a file nor a folder", hint="point at a text file or a folder of text files"
        )
    text = _read_text_file(p, encoding)
    if not text.strip():
        raise NestError.at(
            pos,
            "data file is empty" if not text else "data file holds only whitespace",
            hint="point at a file with some text in it (UTF-8)",
        )
    return text


# --------------------------------------------------------------------------- datasets


def _mix_seed(seed: int, step: int) -> int:
    """A 63-bit seed for batch ``step`` of a run seeded ``seed`` (splitmix64 finaliser)."""
    mask = (1 << 64) - 1
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(step) + 0x632BE59BD9B4E019) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return z & ((1 << 63) - 1)


class TokenDataset:
    """A 1-D token array with a deterministic train / held-out split (see the module docstring).

    ``tokens``: an integer 1-D tensor (stored as ``torch.long``). ``holdout``: the held-out fraction
    in ``[0, 0.5]``. ``source``: a name for messages (a path or the default corpus name).
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        holdout: float = 0.05,
        *,
        holdout_block: int = 4096,
        max_holdout_blocks: int = 16,
        source: str = "<tokens>",
    ) -> None:
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dim() != 1 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"TokenDataset needs a 1-D integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
        if not (isinstance(holdout, (int, float)) and 0.0 <= holdout <= 0.5):
            raise NestError.at(
                Pos(file=source),
                f"held-out fraction must be between 0 and 0.5, got {holdout!r}",
                hint="use e.g. 0.05 to hold out 5% of the corpus for evaluation (0 disables evaluation)",
            )
        self.tokens = tokens.to(torch.long).contiguous()
        self.holdout = float(holdout)
        self.source = source
        n = self.tokens.numel()
        n_hold = int(round(n * self.holdout))
        if self.holdout > 0 and n_hold == 0 and n > 1:
            n_hold = 1
        k = max(1, min(int(max_holdout_blocks), n_hold // max(1, int(holdout_block)))) if n_hold else 0
        train: list[tuple[int, int]] = []
        held: list[tuple[int, int]] = []
        if k == 0:
            train = [(0, n)] if n else []
        else:
            for i in range(k):
                s0, s1 = (i * n) // k, ((i + 1) * n) // k
                h = ((i + 1) * n_hold) // k - (i * n_hold) // k
                if s1 - h > s0:
                    train.append((s0, s1 - h))
                if h:
                    held.append((s1 - h, s1))
        self.train_segments: list[tuple[int, int]] = train
        self.heldout_segments: list[tuple[int, int]] = held

    # ---- sizes
    def __len__(self) -> int:
        return self.tokens.numel()

    @property
    def n_train(self) -> int:
        return sum(b - a for a, b in self.train_segments)

    @property
    def n_heldout(self) -> int:
        return sum(b - a for a, b in self.heldout_segments)

    def heldout_mask(self) -> torch.Tensor:
        """Bool tensor over the tokens: True where the token is held out."""
        m = torch.zeros(len(self), dtype=torch.bool)
        for a, b in self.heldout_segments:
            m[a:b] = True
        return m

    # ---- training batches
    def _check_seq_len(self, seq_len: int) -> None:
        if not isinstance(seq_len, int) or seq_len < 1:
            raise NestError.at(
                Pos(file=self.source),
                f"seq_len must be a positive integer, got {seq_len!r}",
                hint="set the training context length to a whole number of tokens >= 1, e.g. 256",
            )
        need = seq_len + 1
        if len(self) < need:
            raise NestError.at(
                Pos(file=self.source),
                f"corpus is too short: it has {plural(len(self), 'token')}, "
                f"but a training window of seq_len={seq_len} needs {need}",
                hint=f"use a longer corpus or a seq_len of at most {max(len(self) - 1, 0)}",
            )
        longest = max((b - a for a, b in self.train_segments), default=0)
        if longest < need:
            raise NestError.at(
                Pos(file=self.source),
                f"the training split is too short: its longest piece has {plural(longest, 'token')}, "
                f"but a window of seq_len={seq_len} needs {need}",
                hint="use a longer corpus, a smaller seq_len, or a smaller held-out fraction",
            )

    def _train_window_table(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment starts, cumulative window counts) of the training segments."""
        starts, counts = [], []
        for a, b in self.train_segments:
            c = b - a - seq_len  # valid window starts: a .. b-seq_len-1
            if c > 0:
                starts.append(a)
                counts.append(c)
        return torch.tensor(starts, dtype=torch.long), torch.cumsum(torch.tensor(counts, dtype=torch.long), 0)

    def n_train_windows(self, seq_len: int) -> int:
        """How many distinct training windows of ``seq_len`` (+1 target) exist."""
        _, cum = self._train_window_table(seq_len)
        return int(cum[-1]) if cum.numel() else 0

    def _windows(self, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts.unsqueeze(1) + torch.arange(seq_len + 1, dtype=torch.long)
        w = self.tokens[idx]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch number ``step``: ``(input, target)``, both ``long [batch_size, seq_len]``,
        ``target[:, t] == input[:, t+1]`` of the same window. A pure function of its arguments."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise NestError.at(
                Pos(file=self.source),
                f"batch_size must be a positive integer, got {batch_size!r}",
                hint="set the batch size to a whole number >= 1, e.g. 8",
            )
        self._check_seq_len(seq_len)
        seg_starts, cum = self._train_window_table(seq_len)
        g = torch.Generator().manual_seed(_mix_seed(seed, step))
        u = torch.randint(0, int(cum[-1]), (batch_size,), generator=g, dtype=torch.long)
        seg = torch.searchsorted(cum, u, right=True)
        prev = torch.cat([torch.zeros(1, dtype=torch.long), cum])[seg]
        starts = seg_starts[seg] + (u - prev)
        return self._windows(starts, seq_len)

    def batches(self, batch_size: int, seq_len: int, seed: int = 0, start_step: int = 0) -> "BatchSampler":
        """An endless iterator of training batches (see :class:`BatchSampler`), from ``start_step``."""
        self._check_seq_len(seq_len)
        return BatchSampler(self, batch_size, seq_len, seed, start_step)

    # ---- held-out batches
    def eval_starts(self, seq_len: int) -> torch.Tensor:
        """Start positions of the held-out windows: every held-out block cut into consecutive
        non-overlapping windows of ``seq_len`` inputs (+1 target); a remainder shorter than a
        window is not evaluated."""
        starts = []
        for a, b in self.heldout_segments:
            starts.extend(range(a, b - seq_len, seq_len))
        return torch.tensor(starts, dtype=torch.long)

    def eval_batches(
        self, batch_size: int, seq_len: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic ``(input, target)`` batches covering the held-out split, always in the
        same order (the last batch may be smaller). ``max_batches`` keeps an evenly spaced,
        fixed subset of the windows, so that a cheap evaluation is still comparable between steps.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise NestError.at(
                Pos(file=self.source),
                f"batch_size must be a positive integer, got {batch_size!r}",
                hint="set the batch size to a whole number >= 1, e.g. 8",
            )
        if not isinstance(seq_len, int) or seq_len < 1:
            raise NestError.at(
                Pos(file=self.source),
                f"seq_len must be a positive integer, got {seq_len!r}",
                hint="set the training context length to a whole number of tokens >= 1, e.g. 256",
            )
        if not self.heldout_segments:
            raise NestError.at(
                Pos(file=self.source),
                "there is no held-out split to evaluate on (held-out fraction is 0)",
                hint="set a held-out fraction above 0, e.g. 0.05",
            )
        starts = self.eval_starts(seq_len)
        if starts.numel() == 0:
            longest = max(b - a for a, b in self.heldout_segments)
            raise NestError.at(
                Pos(file=self.source),
                f"held-out blocks are too short for evaluation: the longest has {plural(longest, 'token')}, "
                f"but a window of seq_len={seq_len} needs {seq_len + 1}",
                hint="use a larger held-out fraction, a longer corpus or a smaller seq_len",
            )
        if max_batches is not None and max_batches * batch_size < starts.numel():
            n = max(1, max_batches * batch_size)
            pick = torch.linspace(0, starts.numel() - 1, n).round().long().unique()
            starts = starts[pick]
        for i in range(0, starts.numel(), batch_size):
            yield self._windows(starts[i : i + batch_size], seq_len)

    def describe(self) -> dict[str, Any]:
        return {
            "tokens": len(self),
            "train_tokens": self.n_train,
            "heldout_tokens": self.n_heldout,
            "holdout": self.holdout,
            "heldout_blocks": len(self.heldout_segments),
        }

    def __repr__(self) -> str:
        return (
            f"TokenDataset({self.source!r}, tokens={len(self)}, train={self.n_train}, "
            f"heldout={self.n_heldout} in {len(self.heldout_segments)} blocks)"
        )


@dataclass
class BatchSampler:
    """Endless training batches; batch ``step`` depends only on ``(seed, step, batch_size, seq_len)``.

    ``state_dict()`` is ``{"seed", "step", "batch_size", "seq_len"}`` (``step`` = the next batch to
    draw); store it in a checkpoint and ``load_state_dict`` it (or pass ``start_step``) to resume.
    """

    dataset: TokenDataset
    batch_size: int
    seq_len: int
    seed: int = 0
    step: int = 0

    def __iter__(self) -> "BatchSampler":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.dataset.batch(self.step, self.batch_size, self.seq_len, self.seed)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step, "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("batch_size", "seq_len"):
            if key in state and state[key] != getattr(self, key):
                raise NestError.at(
                    Pos(file=self.dataset.source),
                    f"cannot resume the batch sampler: the checkpoint used {key}={state[key]}, "
                    f"this run uses {getattr(self, key)}",
                    hint=f"resume with {key}={state[key]}, or start a fresh run",
                )
        self.seed = int(state["seed"])
        self.step = int(state["step"])


# --------------------------------------------------------------------------- prepare_corpus


def _tokenize_cached(text: str, sha: str, tokenizer: Tokenizer, cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """Token ids of ``text``; with ``cache_dir``, cached as ``tokens-<sha>-<tokenizer>.bin``
    (int32 little-endian) + a ``.json`` sidecar. A damaged cache entry is silently rebuilt."""
    if cache_dir is None:
        return tokenizer.encode_tensor(text)
    cfg = json.dumps(tokenizer.to_config(), sort_keys=True)
    tag = hashlib.sha256(cfg.encode()).hexdigest()[:8]
    d = Path(os.fspath(cache_dir)).expanduser()
    data_p = d / f"tokens-{sha[:20]}-{tokenizer.name}-{tag}.bin"
    meta_p = data_p.with_suffix(".json")
    try:
        meta = json.loads(meta_p.read_text())
        raw = bytearray(data_p.read_bytes())
        if meta.get("sha256") == sha and meta.get("tokenizer") == json.loads(cfg) and len(raw) == 4 * meta["tokens"]:
            if not raw:
                return torch.zeros(0, dtype=torch.long)
            return torch.frombuffer(raw, dtype=torch.int32).to(torch.long)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ids = tokenizer.encode_tensor(text)
    try:
        d.mkdir(parents=True, exist_ok=True)
        arr = ids.to(torch.int32).numpy().astype("<i4", copy=False)
        replace_file(data_p, arr.tobytes())
        replace_file(
            meta_p, json.dumps({"sha256": sha, "tokenizer": json.loads(cfg), "tokens": ids.numel()}).encode()
        )
    except OSError as e:
        raise NestError.at(
            Pos(file=str(d)),
            f"cannot write the token cache: {e.strerror or e}",
            hint="point the cache folder at a writable place, or run without a cache",
        ) from None
    return ids


def prepare_corpus(
    source: str | os.PathLike | None,
    tokenizer: Tokenizer,
    holdout: float = 0.05,
    cache_dir: str | os.PathLike | None = None,
    *,
    encoding: str = "utf-8",
    holdout_block: int = 4096,
) -> tuple[TokenDataset, dict[str, Any]]:
    """Load, tokenize and split a corpus. ``source=None`` is :func:`default_corpus`, anything else
    a path for :func:`load_text`. Returns ``(dataset, info)`` where ``info`` (JSON-able, for
    metrics logs and checkpoints) holds ``source``, ``chars``, ``sha256`` (of the UTF-8 text),
    ``tokenizer``, ``vocab_size``, ``tokens``, ``train_tokens``, ``heldout_tokens``, ``holdout``
    and ``heldout_blocks``. With ``cache_dir`` the token ids are cached there by text hash."""
    if source is None:
        text, name = default_corpus(), DEFAULT_CORPUS_NAME
    elif not os.fspath(source).strip():
        raise NestError.at(
            Pos(file="<data>"),
            "data path is empty",
            hint="give a text file or folder, or leave the data path out to train on the built-in corpus",
        )
    else:
        p = Path(os.fspath(source)).expanduser()
        text, name = load_text(p, encoding=encoding), str(p.resolve() if p.exists() else p)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    ids = _tokenize_cached(text, sha, tokenizer, cache_dir)
    ds = TokenDataset(ids, holdout, holdout_block=holdout_block, source=name)
    info = {
        "source": name,
        "chars": len(text),
        "sha256": sha,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        **ds.describe(),
    }
    return ds, info
