"""Golden diagnostics: malformed specs and exactly what nestc says about them (file, line, column,
message), through the whole `nestc check` pipeline (parse, resolve, level graph, compiler support).

Each case is (name, spec text, [(line, column, message), ...]) and lists *every* diagnostic, so a
case also fails when a mistake starts producing a cascade of follow-up errors.
"""

from __future__ import annotations

import re
from textwrap import dedent, indent

import pytest

from lang_helpers import MODEL_16, diagnose, triples
from nestc.diagnostics import NestError
from nestc.loader import load

# the shared model section, indented like the case texts below (each case is dedented as a whole)
MODEL = indent(MODEL_16, " " * 8)

# ----------------------------------------------------------------------------------- .nest syntax

SYNTAX = [
    ("missing_rbrace", """\
        spec s
        box m : memory {
            state matrix(4)
        """, [(2, 16, "the file ends before this `{` is closed")]),
    ("missing_rpar", """\
        spec s
        param a = max(1, 2
        param b = 3
        """, [(3, 1, "expected `)` to close the parenthesis, found `param`")]),
    ("single_quoted_string", """\
        spec s 'a title'
        """, [(1, 8, "strings use double quotes")]),
    ("unclosed_string", """\
        spec s "a title
        """, [(1, 8, "this string is not closed on its line")]),
    ("bad_character", """\
        spec s
        param a = 3 $ 4
        """, [(2, 13, "unexpected character `$`")]),
    ("reserved_word_as_a_param", """\
        spec s
        param box = 3
        """, [(2, 7, "`box` is a reserved word and cannot be used as a name")]),
    ("reserved_word_as_a_box", """\
        spec s
        box every : memory {}
        """, [(2, 5, "`every` is a reserved word and cannot be used as a name")]),
    ("every_without_a_unit", """\
        spec s
        box m : memory {
            every 64
        }
        """, [(4, 1, "`every` needs a unit after the count, found `}`")]),
    # the grammar is layout-free, so the next property's name becomes the unit
    ("every_without_a_unit_before_a_property", """\
        spec s
        box m : memory {
            every 64
            state matrix(4)
        }
        """, [(2, 1, "memory box `m` has no `state`"),
              (3, 5, "unknown unit `state` in `every`"),
              (4, 11, "unknown property `matrix` of box `m`")]),
    ("missing_expression", """\
        spec s
        param a =
        param b = 2
        """, [(3, 1, "expected an expression, found `param`")]),
    ("missing_box_kind_colon", """\
        spec s
        box m memory {
        }
        """, [(2, 7, "expected `:` and the kind of the box, found the name `memory`")]),
    ("declaration_level_junk", """\
        spec s
        hello world
        """, [(2, 1, "expected a declaration, found the name `hello`")]),
    # LALR merges lookaheads: this once said "expected a box property or `}`"
    ("junk_after_a_param", """\
        spec s
        param a = 1
        42
        """, [(3, 1, "expected a declaration, found the number `42`")]),
    ("number_too_large", """\
        spec s
        param a = 1e999
        """, [(2, 11, "the number `1e999` is too large")]),
    ("second_model_section", """\
        spec s
        model {
            dim 4
        }
        model {
            dim 8
        }
        """, [(5, 1, "a spec has one `model` section; this is the second")]),
    ("every_broken_item_is_reported", """\
        spec s
        param a =
        param b = 2
        box m memory {}
        param c = (1
        """, [(3, 1, "expected an expression, found `param`"),
              (4, 7, "expected `:` and the kind of the box, found the name `memory`"),
              (5, 13, "expected `)` to close the parenthesis, found the end of the file")]),
]

# ----------------------------------------------------------------------------------- semantics

SEMANTIC = [
    ("unknown_name_with_did_you_mean", """\
        spec s
        param width = 16
        param d = widht * 2
        """, [(3, 11, "unknown name `widht` in param `d`")]),
    ("unknown_function_in_a_param", """\
        spec s
        param a = sqrtt(4)
        """, [(2, 11, "unknown function `sqrtt` in param `a`")]),
    ("unknown_function_in_a_block", """\
        spec s
        block layer {
            x = x + lineer(x, 16)
        }
        """ + MODEL, [(3, 13, "unknown function `lineer`")]),
    ("unknown_box_kind", """\
        spec s
        box m : memroy {
            state matrix(4)
        }
        """, [(2, 1, "unknown box kind `memroy`")]),
    ("unknown_property", """\
        spec s
        box W : weights {
            updte W
        }
        """, [(3, 5, "unknown property `updte` of box `W`")]),
    ("property_not_allowed_for_the_kind", """\
        spec s
        box W : weights {
            update W - grad(W)
            window 4
        }
        """, [(4, 5, "a weights box has no property `window`")]),
    ("duplicate_param", """\
        spec s
        param a = 1
        param a = 2
        """, [(3, 1, "`a` is declared twice in this spec (as a param at line 2 and as a param here)")]),
    ("param_and_box_share_a_name", """\
        spec s
        param m = 1
        box m : weights {
            update m - grad(m)
        }
        """, [(3, 1, "`m` is declared twice in this spec (as a param at line 2 and as a box here)")]),
    ("duplicate_property", """\
        spec s
        box W : weights {
            update W - grad(W)
            update W
        }
        """, [(4, 5, "property `update` is given twice")]),
    ("param_cycle", """\
        spec s
        param a = b + 1
        param b = a * 2
        """, [(3, 11, "param `a` depends on itself: a -> b -> a")]),
    ("division_by_zero", """\
        spec s
        param z = 0
        param a = 4 / z
        """, [(3, 15, "division by zero")]),
    ("complex_power", """\
        spec s
        param a = (-8) ** 0.5
        """, [(2, 11, "`**` gives a complex number, not a real one")]),
    ("huge_power_is_refused_not_computed", """\
        spec s
        param a = 10 ** 10 ** 10
        """, [(2, 11, "this number is too large")]),
    ("keys_width_vs_state", """\
        spec s
        block layer {
            box mem : memory {
                state     matrix(8)
                keys      linear(in, 4)
                values    linear(in, 8)
                objective l2(M(k), v)
            }

            x = x + linear(mem(x), 16)
        }
        """ + MODEL, [(5, 19, "the keys of box `mem` have width 4, but its state needs 1 head(s) × 8 = 8")]),
    ("values_width_vs_state", """\
        spec s
        block layer {
            box mem : memory {
                heads     2
                state     matrix(8)
                keys      linear(in, 16)
                values    linear(in, 8)
                query     linear(in, 16)
                objective l2(M(k), v)
            }

            x = x + linear(mem(x), 16)
        }
        """ + MODEL, [(7, 19, "the values of box `mem` have width 8, but its state needs 2 head(s) × 8 = 16")]),
    ("residual_width_mismatch", """\
        spec s
        block layer {
            x = linear(x, 3)
        }
        """ + MODEL, [(3, 9, "`x` is the residual stream of width 16, but this gives width 3")]),
    ("let_used_before_its_definition", """\
        spec s
        block layer {
            x     = x + h
            let h = rmsnorm(x)
        }
        """ + MODEL, [(3, 17, "`h` is used before its `let` at line 4")]),
    ("box_uses_in_but_is_never_read", """\
        spec s
        block layer {
            box mem : memory {
                state     matrix(16)
                keys      in
                values    in
                objective l2(M(k), v)
            }

            x = x + rmsnorm(x)
        }
        """ + MODEL, [(3, 5, "box `mem` uses `in`, but it is never read, so `in` has no value")]),
    # a read inside a box property has no statement to order it by: before this was an error,
    # it passed `nestc check` and failed in the code generator ("read twice outside a chunk loop")
    ("box_read_inside_another_box", """\
        spec s
        block layer {
            box gen : memory {
                state     matrix(16)
                keys      in
                values    in
                objective l2(M(k), v)
            }
            box user : memory {
                state     matrix(16)
                keys      l2norm(gen(in))
                values    in
                objective l2(M(k), v)
            }

            x = x + gen(x) + user(x)
        }
        """ + MODEL, [(11, 26, "box `gen` is read in the keys of box `user`; boxes are read in "
                      "the block's statements")]),
    # passed `nestc check`; the code generator then failed with an internal error
    ("step_in_a_memory_rule", """\
        spec s
        block layer {
            box m : memory {
                state  matrix(16)
                keys   in
                values in
                update M + 0.01 * step * outer(v - M(k), k)
            }

            x = x + m(rmsnorm(x))
        }
        """ + MODEL, [(7, 27, "`step` (an optimizer box's count of its updates) is not defined "
                      "in a memory's rules")]),
    # one error: `repeat` said "unknown block `outer`" too, with the hint to declare it
    ("built_in_name_as_a_block_in_repeat", """\
        spec s
        block outer {
            x = x + rmsnorm(x)
        }
        """ + MODEL.replace("layer", "outer"), [(2, 1, "`outer` is a built-in name and cannot name a block")]),
    ("like_of_an_unknown_box", """\
        spec s
        box m : memory like mm {}
        """, [(2, 1, "`like mm`: no box `mm` here")]),
    ("use_of_an_unknown_spec", """\
        spec s
        use titanz
        """, [(2, 1, "`use titanz`: no built-in spec or file of that name")]),
    ("use_of_a_missing_file", """\
        spec s
        use "nowhere.nest"
        """, [(2, 1, "`use`: no such file `nowhere.nest`")]),
    ("unknown_optimizer_in_train", """\
        spec s
        block layer {
            x = x + rmsnorm(x)
        }
        """ + MODEL + """
        train {
            optimizer adamm(lr=1e-3)
        }
        """, [(12, 5, "unknown optimizer `adamm`")]),
    ("optimizer_with_positional_args", """\
        spec s
        train {
            optimizer adamw(3)
        }
        """, [(3, 21, "optimizer `adamw` takes its settings by name")]),
    ("optimizer_with_an_unknown_arg", """\
        spec s
        block layer {
            x = x + rmsnorm(x)
        }
        """ + MODEL + """
        train {
            optimizer adamw(lr=1e-3, beta=0.9)
        }
        """, [(12, 5, "`optimizer adamw(beta=...)`: the spec has no param `beta`")]),
    ("two_optimizers_on_one_group", """\
        spec s
        block layer {
            x = x + rmsnorm(x)
        }
        """ + MODEL + """
        train {
            optimizer adamw(lr=1e-3)
            optimizer sgd(lr=1e-2)
        }
        """, [(13, 5, "two optimizers for the group `all`")]),
    ("model_without_dim", """\
        spec s
        block layer {
            x = x + rmsnorm(x)
        }

        model {
            repeat 1 { layer }
        }
        """, [(6, 1, "the model section has no `dim`")]),
    ("unknown_block_in_repeat", """\
        spec s
        block layer {
            x = x + rmsnorm(x)
        }

        model {
            dim    16
            repeat 2 { layr }
        }
        """, [(8, 5, "unknown block `layr` in `repeat`")]),
    ("too_many_layers", """\
        spec s
        block layer {
            x = x + rmsnorm(x)
        }

        model {
            dim    16
            repeat 100000000 { layer }
        }
        """, [(8, 12, "the model would have more than 4096 layers")]),
]

# ------------------------------------------------------------ the level graph and the compiler

LEVELS_AND_COMPILER = [
    # the generated code lost the local surprise probe: an AttributeError at the first step
    ("lss_box_read_twice", """\
        spec s
        block layer {
            box cms : memory {
                state     mlp(8, expansion=2)
                keys      in
                values    lss
                objective dot(M(k), v)
                every     4 tokens
            }
            let h = rmsnorm(x)
            x = x + cms(h)
            x = x + cms(rmsnorm(x))
        }
        model {
            dim 8
            repeat 1 { layer }
        }
        """, [(12, 13, "box `cms` learns from `lss`, the loss gradient at its output, so it can be "
                       "read at one place only; it is read at line 11 too")]),
    # a fractional or zero iteration count was truncated: `steps=0.5` ran no iteration at all
    ("newton_schulz_steps_not_a_whole_number", """\
        spec s
        param n = 0.5

        box m : memory {
            state   like(W)
            context g = grad(W)
            update  0.9 * M + g
            every   1 step
        }

        box W : weights {
            update W - 0.01 * newton_schulz(m, steps=n)
            params matrices
        }
        """, [(12, 46, "`steps` of `newton_schulz` must be a whole number ≥ 1, got 0.5")]),
    ("newton_schulz_optimizer_steps_zero", """\
        spec s

        box m : memory {
            state   like(W)
            context g = grad(W)
            update  0.9 * M + g
            every   1 step
        }

        box o : memory {
            state     like(W)
            context   u = m
            values    u
            optimizer newton_schulz(steps=0)
            every     1 step
        }

        box W : weights {
            update W - 0.01 * o
            params matrices
        }
        """, [(14, 35, "`steps` of `optimizer newton_schulz` must be a whole number ≥ 1 known at "
                       "compile time, got 0")]),
    ("same_frequency_current_state_cycle", """\
        spec s

        box a : memory {
            state   like(W)
            context g = grad(W)
            update  M + b
            every   1 step
        }

        box b : memory {
            state   like(W)
            context g = grad(W)
            update  M + a
            every   1 step
        }

        box W : weights {
            update W - a - b
        }
        """, [(3, 1, "these boxes update at the same frequency and each needs the others' "
                     "current state: a -> b -> a")]),
    # passed `nestc check` and raised a ValueError from runtime/attention.py at the first step
    ("attention_prefix_without_segments", """\
        spec s
        block layer {
            box attn : attention {
                heads 2
            }

            x = x + attn(x, prefix=rmsnorm(x))
        }
        """ + MODEL, [(7, 13, "attention box `attn` reads prefix tokens (`prefix=`), which the "
                      "compiler supports only in segments (Titans MAC: each segment attends to "
                      "its own prefix tokens)")]),
    # passed `nestc check`, and then the general rule made one step per update regardless
    ("inner_steps_are_not_implemented", """\
        spec s
        block layer {
            box m : memory {
                state     mlp(16)
                keys      in
                values    in
                objective l2(M(k), v)
                steps     2
            }

            x = x + m(x)
        }
        """ + MODEL, [(8, 9, "box `m`: `steps 2` (several inner optimizer steps per update) is not "
                      "implemented: every lowering makes one step per update")]),
    ("chunk_sizes_do_not_nest", """\
        spec s
        block layer {
            box fast : memory {
                state     mlp(16)
                keys      in
                values    in
                objective l2(M(k), v)
                every     16 tokens
            }

            box slow : memory {
                state     mlp(16)
                keys      in
                values    in
                objective l2(M(k), v)
                every     24 tokens
            }

            x = x + slow(fast(x))
        }
        """ + MODEL, [(11, 5, "chunk sizes do not nest: `layer.slow` updates every 24 tokens "
                                 "and `layer.fast`, which it exchanges data with, every 16 tokens")]),
    ("objective_that_does_not_mention_M", """\
        spec s
        block layer {
            box mem : memory {
                state     matrix(16)
                keys      in
                values    in
                objective l2(k, v)
            }

            x = x + mem(x)
        }
        """ + MODEL, [(7, 19, "the objective of box `mem` does not depend on its state M, so it "
                                 "has nothing to learn")]),
    ("objective_that_is_not_a_per_token_scalar", """\
        spec s
        block layer {
            box mem : memory {
                state     matrix(16)
                keys      in
                values    in
                objective M(k) - v
            }

            x = x + mem(x)
        }
        """ + MODEL, [(7, 19, "the objective of box `mem` must be a per-token scalar, but it is "
                                 "a per-head vector of width 16")]),
    ("read_after_on_a_chunked_mlp_memory", """\
        spec s
        block layer {
            box mem : memory {
                state     mlp(16)
                keys      in
                values    in
                objective l2(M(k), v)
                every     64 tokens
                read      after
            }

            x = x + mem(x)
        }
        """ + MODEL, [(9, 9, "box `mem` reads its state after each token's update but updates "
                                "every 64 tokens: inside a chunk the per-token states of a "
                                "non-linear memory are not computed")]),
    ("closed_form_on_a_parametric_memory", """\
        spec s
        block layer {
            box mem : memory {
                state     mlp(16)
                keys      in
                values    in
                objective l2(M(k), v)
                optimizer closed_form
            }

            x = x + mem(x)
        }
        """ + MODEL, [(8, 9, "box `mem`: `optimizer closed_form` is the non-parametric solution; "
                                "for a parametric memory the compiler has no closed form")]),
    ("memory_without_state", """\
        spec s
        block layer {
            box mem : memory {
                keys      in
                values    in
                objective l2(M(k), v)
            }

            x = x + mem(x)
        }
        """ + MODEL, [(3, 5, "memory box `mem` has no `state`")]),
]

# ----------------------------------------------------------------------------------- YAML

YAML = [
    ("invalid_yaml", """\
        spec: s
        boxes:
          - box: m
           kind: memory
        """, [(4, 4, "this is not valid YAML: expected <block end>, but found '<block mapping start>'")]),
    ("unknown_top_level_key", """\
        spec: s
        parms:
          a: 1
        """, [(2, 1, "unknown key `parms` in the spec")]),
    ("unknown_box_key", """\
        spec: s
        boxes:
          - box: m
            kind: memory
            stat: matrix(4)
        """, [(5, 5, "unknown key `stat` in box `m`")]),
    ("box_without_kind", """\
        spec: s
        boxes:
          - box: m
            state: matrix(4)
        """, [(3, 5, "box `m` has no `kind`")]),
    ("boxes_not_a_list", """\
        spec: s
        boxes:
          box: m
        """, [(3, 3, "`boxes` must be a list")]),
    ("params_not_a_mapping", """\
        spec: s
        params: [1, 2]
        """, [(2, 9, "`params` must be a mapping of `key: value` entries")]),
    ("bad_expression_in_a_plain_string", """\
        spec: s
        params:
          a: 1
          b: 2 * (a
        """, [(4, 12, "in param `b`: expected `)` to close the parenthesis, found the end of the expression")]),
    ("bad_expression_in_a_quoted_string", """\
        spec: s
        params:
          a: 1
          b: "max(a,, 2)"
        """, [(4, 13, "in param `b`: expected an expression, found `,`")]),
    ("bad_expression_in_a_box_property", """\
        spec: s
        boxes:
          - box: W
            kind: weights
            update: W - * grad(W)
        """, [(5, 17, "in `update` of box `W`: expected an expression, found `*`")]),
    ("reserved_word_as_a_name", """\
        spec: s
        boxes:
          - box: every
            kind: weights
        """, [(3, 10, "the box name: `every` is a reserved word and cannot be used as a name")]),
    ("name_that_is_not_ascii", """\
        spec: s
        params:
          é: 1
        """, [(3, 3, "a param must be a name: ASCII letters, digits and `_`, not starting with a "
                     "digit; got `é`")]),
    ("keyword_inside_an_expression", """\
        spec: s
        params:
          a: 1 + when
        """, [(3, 10, "in param `a`: `when` is a reserved word and cannot be used as a name")]),
    ("nul_character", 'spec: s\ntitle: "a\x00b"\n',
     [(2, 10, "this is not valid YAML: the character U+0000 is not allowed in a YAML file")]),
    ("no_spec_name", """\
        params:
          a: 1
        """, [(1, 1, "the YAML spec has no `spec:` name")]),
    ("empty_file", "", [(1, 1, "the YAML file is empty")]),
    ("yaml_every_without_a_unit", """\
        spec: s
        boxes:
          - box: W
            kind: weights
            every: 64
        """, [(5, 12, "`every` of box `W` needs a count and a unit")]),
    ("semantic_error_points_into_the_yaml", """\
        spec: s
        params:
          width: 16
          d: widht * 2
        """, [(4, 6, "unknown name `widht` in param `d`")]),
]

NEST_CASES = SYNTAX + SEMANTIC + LEVELS_AND_COMPILER


def _ids(cases):
    return [c[0] for c in cases]


def test_the_table_is_large_and_has_unique_names():
    names = _ids(NEST_CASES + YAML)
    assert len(names) == len(set(names))
    assert len(names) >= 30


@pytest.mark.parametrize("name, text, expected", NEST_CASES, ids=_ids(NEST_CASES))
def test_nest_diagnostics(name, text, expected, tmp_path):
    diags = diagnose(dedent(text), ".nest", base=tmp_path)
    assert triples(diags) == expected
    assert all(d.pos.file == "bad.nest" for d in diags)


@pytest.mark.parametrize("name, text, expected", YAML, ids=_ids(YAML))
def test_yaml_diagnostics(name, text, expected, tmp_path):
    diags = diagnose(dedent(text), ".yaml", base=tmp_path)
    assert triples(diags) == expected
    assert all(d.pos.file == "bad.yaml" for d in diags)


# ------------------------------------------------------------------------ did-you-mean hints

HINTS = [
    ("every_without_a_unit_before_a_property",
     "`every` needs a unit (`every 64 tokens`); without one, the next word, `state`, is read as "
     "the unit"),
    ("unknown_name_with_did_you_mean", "did you mean `width`?"),
    ("unknown_function_in_a_param", "did you mean `sqrt`?"),
    ("unknown_function_in_a_block", "did you mean `linear` or `lerp`?"),
    ("unknown_box_kind", "did you mean `memory`?"),
    ("unknown_property", "did you mean `update`?"),
    ("like_of_an_unknown_box", "did you mean `m`?"),
    ("unknown_optimizer_in_train", "did you mean `adam` or `adamw`?"),
    ("unknown_block_in_repeat", "did you mean `layer`?"),
    ("box_read_inside_another_box", "read it in a let and name that in the box: `let g = gen(...)` "
     "in the block, then `g` here"),
    ("let_used_before_its_definition",
     "a block runs its statements in order: move the `let` above this statement"),
]
YAML_HINTS = [
    ("unknown_top_level_key", "did you mean `params`?"),
    ("unknown_box_key", "did you mean `state`?"),
    ("semantic_error_points_into_the_yaml", "did you mean `width`?"),
]


@pytest.mark.parametrize("name, hint", HINTS + YAML_HINTS, ids=_ids(HINTS + YAML_HINTS))
def test_hints(name, hint, tmp_path):
    cases = {c[0]: (c[1], ".nest") for c in NEST_CASES} | {c[0]: (c[1], ".yaml") for c in YAML}
    text, suffix = cases[name]
    assert hint in [d.hint for d in diagnose(dedent(text), suffix, base=tmp_path)]


# ------------------------------------------------------------------------ properties of all of them

# lark's own vocabulary: terminal names, anonymous tokens, reprs of its objects
LARK_WORDS = re.compile(r"__ANON|\$END|Token\(|Tree\(|Traceback|UnexpectedToken|"
                        r"\b(?:[LR](?:BRACE|PAR|SQB)|COLON|COMMA|EQUAL|NUMBER|STRING|COMPARE|PLUS|"
                        r"MINUS|STAR|SLASH|PERCENT|POW)\b")


@pytest.mark.parametrize("name, text, suffix", [(c[0], c[1], ".nest") for c in NEST_CASES] +
                         [(c[0], c[1], ".yaml") for c in YAML], ids=_ids(NEST_CASES + YAML))
def test_messages_speak_the_language(name, text, suffix, tmp_path):
    diags = diagnose(dedent(text), suffix, base=tmp_path)
    assert diags
    for d in diags:
        assert not LARK_WORDS.search(d.message), d.message
        assert not re.search(r"\bNAME\b", d.message), d.message  # (hints use NAME as a placeholder)
        assert d.hint is None or not LARK_WORDS.search(d.hint), d.hint
        assert d.pos.file and d.pos.line >= 1 and d.pos.col >= 1, d
        assert d.severity == "error"
        if text.strip():  # (an empty file has no line to quote)
            assert d.source_line is not None, "the caret excerpt needs the offending line"
            assert d.excerpt() is not None


def test_set_of_an_unknown_param(tmp_path):
    diags = diagnose("spec s\nparam width = 16\n", base=tmp_path, overrides={"widht": "4"})
    assert [(d.pos.file, d.pos.line, d.message) for d in diags] == \
        [("--set", 0, "`--set widht=...`: the spec has no param `widht`")]
    assert diags[0].hint == "did you mean `width`?"


def test_set_with_a_bad_expression(tmp_path):
    diags = diagnose("spec s\nparam a = 1\n", base=tmp_path, overrides={"a": "1 +"})
    assert [(d.pos.file, d.pos.line, d.pos.col, d.message) for d in diags] == \
        [("--set a", 1, 4, "expected an expression, found the end of the expression")]


def test_use_cycle_between_two_files(tmp_path, monkeypatch):
    (tmp_path / "a.nest").write_text('spec a\n\nuse "b.nest"\n\nparam x = 1\n')
    (tmp_path / "b.nest").write_text('spec b\n\nuse "a.nest"\n\nparam y = 2\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NestError) as err:
        load(tmp_path / "a.nest")
    assert [(d.pos.file, d.pos.line, d.pos.col, d.message) for d in err.value.diagnostics] == \
        [("b.nest", 3, 1, "`use` cycle: a -> b -> a")]
    assert err.value.first.source_line == 'use "a.nest"'


def test_a_spec_cannot_use_itself(tmp_path, monkeypatch):
    (tmp_path / "self.nest").write_text('spec self_\nuse "self.nest"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NestError) as err:
        load(tmp_path / "self.nest")
    assert triples(err.value.diagnostics) == [(2, 1, "`use` cycle: self -> self")]


def test_all_errors_are_reported_in_source_order(tmp_path):
    text = dedent("""\
        spec s
        param a = undefined_one
        param b = 1 / 0

        box W : weights {
            updatee W
        }
        """)
    assert triples(diagnose(text, base=tmp_path)) == [
        (2, 11, "unknown name `undefined_one` in param `a`"),
        (3, 15, "division by zero"),
        (6, 5, "unknown property `updatee` of box `W`"),
    ]


def test_errors_of_one_declaration_shared_by_names_are_reported_once(tmp_path):
    text = dedent("""\
        spec s
        block layer {
            box m1, m2 : memory {
                state     matrix(16)
                keys      in
                values    in
                objective l2(M(k), v)
                retenion  gate(0.5)
            }

            x = x + m1(x) + m2(x)
        }
        """ + MODEL)
    assert triples(diagnose(text, base=tmp_path)) == [
        (8, 9, "unknown property `retenion` of box `m1`")]


def test_the_stop_grad_version_of_the_cycle_checks_clean(tmp_path):
    text = dict((c[0], c[1]) for c in LEVELS_AND_COMPILER)["same_frequency_current_state_cycle"]
    fixed = dedent(text).replace("update  M + b", "update  M + stop_grad(b)")
    assert diagnose(fixed, base=tmp_path) == []


# ------------------------------------------------------------------------ .nest -> YAML


@pytest.mark.parametrize("text, expected", [
    ("spec s\nbox W : weights {\n    update W - grad(W)\n    update W\n}\n",
     (4, 5, "box `W` has `update` twice, which YAML cannot hold")),
    ("spec s\nbox W : weights {\n    kind   memory\n    update W\n}\n",
     (3, 5, "box `W` has a property named `kind`, which in YAML means something else")),
    ("spec s\nparam a = 1\nparam a = 2\n",
     (3, 1, "the spec has `a` twice, which YAML cannot hold")),
], ids=["property_twice", "property_named_kind", "param_twice"])
def test_yaml_export_refuses_what_yaml_cannot_hold(text, expected):
    """Converting must not silently drop or reinterpret part of a (broken) spec."""
    from nestc.parser import parse_nest
    from nestc.yaml_io import format_yaml

    with pytest.raises(NestError) as err:
        format_yaml(parse_nest(text, "bad.nest"))
    assert triples(err.value.diagnostics) == [expected]
