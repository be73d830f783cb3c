"""A mutation fuzzer over the built-in specs: whatever the input, nestc either accepts it or raises
NestError (a diagnostic for the user) -- never any other exception. Accepted specs must also
survive `nestc fmt` and the YAML round trip unchanged.

The mutations work on tokens of valid specs (so most inputs get deep into the pipeline): delete,
duplicate or swap a token, replace a name, change a number, insert punctuation, a keyword, a stray
character or a whole declaration, or cut the text short. Every crash the fuzzer found is kept below
as an explicit regression example.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nestc import compat, levels
from nestc.diagnostics import NestError
from nestc.ir import same_ir
from nestc.loader import builtin_names, builtin_path, load_text
from nestc.parser import parse_nest
from nestc.printer import format_spec
from nestc.resolve import resolve
from nestc.yaml_io import format_yaml, parse_yaml

NEST_SOURCES = {n: builtin_path(n).read_text(encoding="utf-8") for n in builtin_names()}
YAML_SOURCES = {n: format_yaml(parse_nest(t, f"{n}.nest")) for n, t in NEST_SOURCES.items()}

TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d+\.\d*(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?'
                   r"|[A-Za-z_]\w*|\*\*|==|!=|<=|>=|\s+|.", re.S)
NAME = re.compile(r"[A-Za-z_]\w*")
NUMBER = re.compile(r"\d[\d.eE+-]*")

WORDS = ["box", "every", "tokens", "steps", "step", "M", "in", "x", "like", "memory", "weights",
         "attention", "state", "update", "objective", "retention", "optimizer", "context", "let",
         "param", "use", "when", "if", "then", "else", "true", "false", "not", "and", "or",
         "repeat", "model", "train", "block", "spec", "on", "grad", "W", "k", "v", "q", "lss",
         "mlp", "matrix", "vector", "linear", "meta", "dgd", "gd", "closed_form", "newton_schulz",
         "momentum", "read", "after", "before", "heads", "matrices", "rest", "all", "none",
         "combine", "read_after", "read_before", "stop_grad", "outer", "sum", "lp", "l2", "dot",
         "cms", "hope", "adamw", "sgd", "m3", "zeros", "identity", "random", "checkpoint",
         "reset", "window", "persistent", "segment", "rope", "seq_len", "dim", "kind", "doc",
         "note", "layers", "value", "set"]
NUMBERS = ["0", "-1", "1", "2", "3", "0.5", "-0.0", "2.5", "7", "64", "1e9", "3e-4", "1e-300",
           "1e300", "1e308", "1e999", "99999999999999999999", "4096", "4097"]
PUNCTUATION = list("{}()[],:=+-*/%<>!\"'#.$@\\;\n\t|&?^~`") + \
    ["**", "==", "<=", "''", '"', "\x00", "\x0c", "\r", "\r\n", "\x85", "\u2028", "é", "🙂",
     "- ", ": ", "  ", "\n  - "]
SNIPPETS = ['\nuse "a\\x00b"\n', '\nuse "../nowhere.nest"\n', "\nuse cms\n", "\nuse hope\n",
            "\nbox z : memory {}\n", "\nparam p = p\n", "\nmodel {\n}\n", "\ntrain {\n}\n",
            "\nblock b {\n x = b(x)\n}\n", "\nparam q = 10 ** 10 ** 10\n", "# comment\n",
            "  # note \u2028 x\n", "\n  - box: every\n    kind: memory\n"]

OPS = ["delete", "duplicate", "swap", "replace_name", "number", "punctuation", "character", "word",
       "snippet", "truncate"]


@st.composite
def mutants(draw, sources: dict[str, str]) -> str:
    text = sources[draw(st.sampled_from(sorted(sources)))]
    toks = TOKEN.findall(text)
    for _ in range(draw(st.integers(1, 3))):
        if not toks:
            break
        op = draw(st.sampled_from(OPS))
        i = draw(st.integers(0, len(toks) - 1))
        if op == "delete":
            del toks[i]
        elif op == "duplicate":
            toks.insert(i, toks[i])
        elif op == "swap":
            j = draw(st.integers(0, len(toks) - 1))
            toks[i], toks[j] = toks[j], toks[i]
        elif op == "replace_name":
            names = [k for k, t in enumerate(toks) if NAME.fullmatch(t)]
            if names:
                k = draw(st.sampled_from(names))
                own = sorted({t for t in toks if NAME.fullmatch(t)})
                toks[k] = draw(st.sampled_from(WORDS + NUMBERS + own))
        elif op == "number":
            numbers = [k for k, t in enumerate(toks) if NUMBER.fullmatch(t)]
            if numbers:
                toks[draw(st.sampled_from(numbers))] = draw(st.sampled_from(NUMBERS))
        elif op == "punctuation":
            toks.insert(i, draw(st.sampled_from(PUNCTUATION)))
        elif op == "character":
            toks.insert(i, draw(st.characters(codec="utf-8")))
        elif op == "word":
            toks.insert(i, " " + draw(st.sampled_from(WORDS)) + " ")
        elif op == "snippet":
            toks.insert(i, draw(st.sampled_from(SNIPPETS)))
        else:  # truncate
            toks = toks[:i]
    return "".join(toks)


_WORKDIR = tempfile.TemporaryDirectory(prefix="nestc-fuzz-")  # removed when the run ends
WORKDIR = Path(_WORKDIR.name)  # where relative `use` paths point: an empty folder


def pipeline(text: str, suffix: str) -> None:
    """Everything `nestc check`, `nestc fmt` and `nestc convert` do with a spec. Raises NestError
    for a bad spec; anything else is a bug."""
    loaded = load_text(text, "fuzz" + suffix, suffix=suffix, base=WORKDIR)
    spec = loaded.root
    formatted = format_spec(spec)
    try:  # what fmt prints must parse...
        again = parse_nest(formatted, "formatted.nest")
    except NestError as err:
        raise AssertionError(f"fmt printed text that does not parse:\n{err}\n{formatted}") from None
    assert same_ir(spec, again), "fmt changed the spec"  # ...to the same spec
    assert format_spec(again) == formatted, "fmt is not idempotent"
    try:
        yaml_text = format_yaml(spec)
    except NestError:
        yaml_text = None  # a spec YAML cannot hold (a property given twice): reported
    if yaml_text is not None:
        try:
            back = parse_yaml(yaml_text, "converted.yaml")
        except NestError as err:
            # .nest parses any property name and the resolver rejects unknown ones; the YAML
            # loader rejects them at once. Any other failure is a bug of the YAML writer.
            assert all(d.message.startswith("unknown key") for d in err.diagnostics), \
                f"the YAML written for a spec does not load:\n{err}\n{yaml_text}"
        else:
            assert same_ir(spec, back), "the YAML round trip changed the spec"
    program = resolve(loaded)
    levels.build(program)
    compat.unsupported(program)


def no_crash(text: str, suffix: str) -> None:
    try:
        pipeline(text, suffix)
    except NestError as err:
        for d in err.diagnostics:  # a diagnostic always says where
            assert d.pos.file, err
            assert d.message, err
    except Exception as err:  # noqa: BLE001 - the property under test
        pytest.fail(f"{type(err).__name__}: {err}\n--- the {suffix} spec ---\n{text}",
                    pytrace=True)


# Inputs that crashed nestc before the fixes (each raised something other than NestError, or
# broke the fmt / YAML round trip), kept as regression examples.
NEST_REGRESSIONS = [
    # `repeat` with a huge count: OverflowError in list repetition
    "spec s\nblock b {\n    x = x\n}\nmodel {\n    dim 4\n    repeat 99999999999999999999 { b }\n}\n",
    # a number literal beyond float range became inf: ValueError when printed back
    "spec s\ntrain {\n    optimizer adamw(lr=1e999)\n}\n",
    "spec s\nparam e = 1e999\nblock b {\n    box m : memory {\n        state mlp(4, expansion=e)\n"
    "    }\n    x = x + m(x)\n}\n",
    # a power that Python would compute for hours
    "spec s\nparam a = 10 ** 10 ** 10\n",
    # a complex number from a negative base and a fractional exponent: TypeError when folded
    "spec s\nparam a = (-8) ** 0.5\nblock b {\n    x = x * a\n}\nmodel {\n    dim 4\n"
    "    repeat 1 { b }\n}\n",
    # U+2028 inside a comment split the comment lines for str.splitlines: fmt lost a note
    "spec s\n# a\u2028b\nparam a = 1  # note\nparam b = 2  # other\n",
    # a NUL byte in a `use` path: ValueError from the file system
    'spec s\nuse "a\\x00b"\n',
    # a reference to a stateless memory box (cascade, and width 0 arithmetic)
    "spec s\nblock b {\n    box m : memory {}\n    x = x + m(x)\n}\nmodel {\n    dim 4\n    repeat 1 { b }\n}\n",
    # comment with trailing blanks: fmt dropped them, so the IR changed
    "spec s\n# doc   \nparam a = 1  # note   \n",
    # a number PyYAML writes differently (1e-300 -> 1.0e-300): the YAML round trip changed it
    "spec s\nparam a = 1e-300\n",
    # a property named like a YAML key: `kind` turned a weights box into a memory box in YAML
    "spec s\nbox W : weights {\n    kind memory\n    update W\n}\n",
    # an MLP memory 1e20 layers deep: OverflowError building its shape for `nestc check`
    "spec s\nblock b {\n    box m : memory {\n        state mlp(4, depth=99999999999999999999)\n"
    "        keys x\n        values x\n        objective l2(M(k), v)\n        optimizer gd()\n"
    "    }\n    x = x + m(x)\n}\nmodel {\n    dim 4\n    repeat 1 { b }\n}\n",
    # a finite expansion (1e308) times the width overflowed to inf: OverflowError in int()
    "spec s\nparam e = 1e308\nblock b {\n    box m : memory {\n        state mlp(4, expansion=e)\n"
    "    }\n    x = x + m(x)\n}\nmodel {\n    dim 4\n    repeat 1 { b }\n}\n",
    # a comment holding U+0085 (NEL, a YAML line break): the YAML written for it loaded back with
    # a space there; such strings are now written double-quoted, with the break escaped
    "# a\x85b\nspec s\nparam a = 1\n",
    "# a\x85b\n# c\nspec s\nparam a = 1\n",
]
YAML_REGRESSIONS = [
    # a NUL character: PyYAML's ReaderError escaped
    'spec: s\ntitle: "a\x00b"\n',
    # a Unicode name passed str.isidentifier() but is no .nest name: convert wrote broken .nest
    "spec: s\nboxes:\n  - box: m\n    kind: memory\n    context:\n      gé: grad(W)\n",
    # a keyword inside an expression: lark's expression-only parser lexed it as a name
    "spec: s\nparams:\n  a: 1 + when\n",
    # a doc line with U+2028
    "spec: s\ndoc:\n  - a\u2028b\nparams:\n  a: 1\n",
    # a one-element doc list holding an empty line (`doc: ''` reads back as no doc)
    "spec: s\ndoc:\n  - ''\n",
    # a note spanning lines cannot be an end-of-line comment
    "spec: s\nparams:\n  a:\n    value: 1\n    note: |\n      two\n      lines\n",
    # `every` with a unit that is no name
    "spec: s\nboxes:\n  - box: W\n    kind: weights\n    every: 4 tok-ens\n    update: W\n",
]


@pytest.mark.parametrize("text", NEST_REGRESSIONS)
def test_nest_regressions(text):
    no_crash(text, ".nest")


@pytest.mark.parametrize("text", YAML_REGRESSIONS)
def test_yaml_regressions(text):
    no_crash(text, ".yaml")


@settings(max_examples=900, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(mutants(NEST_SOURCES))
@example("spec s\nparam a = 1\n42\n")
def test_mutated_nest_specs_never_crash(text):
    no_crash(text, ".nest")


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(mutants(YAML_SOURCES))
@example("spec: s\nboxes:\n  - box: every\n    kind: weights\n")
def test_mutated_yaml_specs_never_crash(text):
    no_crash(text, ".yaml")


def test_the_fuzzer_reaches_every_stage():
    """Mutants are not all rejected by the parser: some fail later, some check clean."""
    import random

    outcomes = {"syntax": 0, "semantic": 0, "clean": 0}
    rng = random.Random(0)
    for _ in range(40):
        toks = TOKEN.findall(rng.choice(list(NEST_SOURCES.values())))
        k = rng.randrange(len(toks))
        if NAME.fullmatch(toks[k]):
            toks[k] = rng.choice(WORDS)
        text = "".join(toks)
        try:
            load_text(text, "fuzz.nest", base=WORKDIR)
        except NestError:
            outcomes["syntax"] += 1
            continue
        try:
            pipeline(text, ".nest")
            outcomes["clean"] += 1
        except NestError:
            outcomes["semantic"] += 1
    assert all(outcomes.values()), outcomes
