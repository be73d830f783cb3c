"""What `nestc compile` writes (issue #3, item 1): byte-identical for the same spec and options,
in any process; importing only torch and nestc's runtime; each section citing the spec line it
came from; and no spec text -- names, titles, strings -- that can change what the module does."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nestc
from nestc.loader import builtin_names, builtin_path

BUILTINS = builtin_names()
ALLOWED_IMPORTS = {"torch", "torch.nn.functional", "torch.nn", "nestc.runtime", "nestc.runtime.model"}
# calls a generated module never needs, whatever the spec
FORBIDDEN_CALLS = {"eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "input",
                   "breakpoint"}


def compile_in_a_process(spec: str, out: Path, hash_seed: str) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "nestc.cli", "compile", spec, "-o", str(out)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONHASHSEED": hash_seed})
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


@pytest.mark.parametrize("spec", ["hope", "titans_mac", "m3"])
def test_the_same_spec_compiles_to_the_same_bytes_in_any_process(spec, tmp_path):
    a = compile_in_a_process(spec, tmp_path / "a.py", "1")
    b = compile_in_a_process(spec, tmp_path / "b.py", "2")
    assert a == b
    assert a.decode() == nestc.compile(spec).source  # the file is what nestc.compile(spec) loads


@pytest.mark.parametrize("spec", BUILTINS)
def test_a_generated_module_imports_only_torch_and_the_runtime(spec):
    tree = ast.parse(nestc.compile(spec).source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, (spec, node.func.id, node.lineno)
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS
    # and only at the top: no import hides inside a function
    assert all(isinstance(n, (ast.Import, ast.ImportFrom)) or not any(
        isinstance(m, (ast.Import, ast.ImportFrom)) for m in ast.walk(n)) for n in tree.body)


CITE = re.compile(r"#\s*(?:box \w+ \()?(?P<file>[\w./-]+\.nest):(?P<line>\d+)\)?[:,]?\s*(?P<text>.*)$")


@pytest.mark.parametrize("spec", BUILTINS)
def test_every_citation_points_at_the_spec_line_it_came_from(spec):
    """`# specs/titans.nest:38  let h = rmsnorm(x)`: line 38 of the spec holds that statement
    (its first name and, for a let, its target); `# box lmm (specs/titans.nest:24)...`: line 24
    declares box lmm (optimizer specs cite their boxes so). Params are folded in the cited text, so words are compared, not the text."""
    source = nestc.compile(spec).source
    cited = 0
    for line in source.splitlines():
        m = CITE.search(line)
        if not m:
            continue
        path = Path(m["file"])
        path = path if path.is_absolute() else Path(builtin_path(spec)).parents[1] / path
        spec_line = path.read_text().splitlines()[int(m["line"]) - 1]
        box = re.search(r"# box (\w+) \(", line)
        if box:
            assert re.search(rf"\bbox\b.*\b{box[1]}\b", spec_line), (line, spec_line)
        else:
            words = re.findall(r"[A-Za-z_]\w*", m["text"])
            let = re.match(r"let (\w+) =", m["text"])
            expected = [let[1]] if let else words[:1]
            assert all(re.search(rf"\b{w}\b", spec_line) for w in expected), (line, spec_line)
        cited += 1
    assert cited >= 1, spec


HOSTILE = '''spec r "a title with \\"\\"\\" and a backslash \\\\ and # and {braces}"
param d   = 16
param tag = "\\"\\"\\"; import os; os.system('touch /tmp/nestc-pwned') #"
block o {
    box none : memory {
        heads 2
        state matrix(8, 8)
        keys l2norm(linear(in, d), groups=2)
        values linear(in, d)
        objective l2(M(k), v)
    }
    x = x + linear(none(rmsnorm(x)), d)
}
block language_model {
    x = x + mlp(rmsnorm(x), 32)
}
model {
    dim d
    repeat 1 { o }
    repeat 1 { language_model }
}
'''


def test_spec_text_cannot_change_what_the_module_does(tmp_path):
    """Quotes, triple quotes and code in a title and a string param stay inside comments and
    literals; names that are Python keywords or the module's own names (`r` as the spec, `o` and
    `language_model` as blocks, `none` as a box: classes `O`, `LanguageModel`, ... would shadow
    the runtime's aliases) get names of their own."""
    marker = Path("/tmp/nestc-pwned")
    marker.unlink(missing_ok=True)
    c = nestc.compile("hostile.nest", text=HOSTILE)
    tree = ast.parse(c.source)
    assert not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "system"
                   for n in ast.walk(tree))
    assert c.module.PARAMS["tag"] == "\"\"\"; import os; os.system('touch /tmp/nestc-pwned') #"
    assert "os" not in vars(c.module)
    torch.manual_seed(0)
    model = c.model()
    logits, _ = model(torch.randint(0, 256, (2, 8)))
    assert logits.shape == (2, 8, 256) and torch.isfinite(logits).all()
    assert not marker.exists()


@pytest.mark.parametrize("text", [HOSTILE, """spec o "SGD with a backslash \\\\ and a closing quote \\""
param lr = 0.1
box W : weights {
    update W - lr * grad(W)
}
"""])
def test_backslashes_and_quotes_in_spec_text_make_valid_python(text):
    """A backslash in a title became `\\ ` in a docstring (an invalid escape: a warning now, an
    error in later Pythons), and a title ending in a quote closed the optimizer class's
    docstring early. The module compiles with warnings as errors, and its docstrings read the
    title as written."""
    import warnings

    c = nestc.compile("hostile.nest", text=text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = ast.parse(c.source)
        compile(tree, "generated", "exec")
    title = c.program.title
    docs = [ast.get_docstring(n, clean=False) or "" for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef))]
    assert any(title.replace('"""', "'''") in d for d in docs), (title, docs)


def test_an_optimizer_spec_named_like_a_runtime_alias_steps():
    """An optimizer spec `o` makes class `O_`, not `O` (the runtime's optimizer module, which
    its own step calls)."""
    text = '''spec o "SGD by another name"
param lr = 0.1
box W : weights {
    update W - lr * grad(W)
}
'''
    (_, _, cls, _), = nestc.compile("o.nest", text=text).module.OPTIMIZERS
    w = torch.nn.Parameter(torch.ones(3))
    opt = cls([w])
    w.grad = torch.full((3,), 2.0)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((3,), 0.8))
