"""What the benchmark scripts that build a spec's training step share on the command line: the
loop-mode check, a run in a chosen (or fresh) inductor cache, a spec's errors printed as its
diagnostics and exit code 2 rather than a traceback, and the table printed and the results
written as JSON at the end."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Callable


def bad_loop_mode(script: str, loops: str) -> bool:
    """Print the error and return True when `loops` is not one of nestc's loop modes."""
    from nestc.runtime.ops import LOOP_MODES

    if loops in LOOP_MODES:
        return False
    print(f"{script}: error: --loops {loops}: use one of {', '.join(LOOP_MODES)}", file=sys.stderr)
    return True


def bad_first_pass(script: str, first_pass: str) -> bool:
    """Print the error and return True when `first_pass` is not one of nestc's first-pass modes."""
    from nestc.runtime.train import FIRST_PASSES

    if first_pass in FIRST_PASSES:
        return False
    print(f"{script}: error: --first-pass {first_pass}: use one of {', '.join(FIRST_PASSES)}", file=sys.stderr)
    return True


def run_in_cache(script: str, spec: str, cache: str | None, prefix: str, measure: Callable[[], dict]) -> dict | None:
    """measure() with inductor's cache in `cache`, or in a temporary folder made empty for it;
    None, once the spec's diagnostics are printed, when the spec does not resolve."""
    with tempfile.TemporaryDirectory(prefix=prefix) as fresh:
        # inductor reads its cache folder from the environment when it first needs it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache or fresh
        return with_spec_errors(script, spec, measure)


def with_spec_errors(script: str, spec: str, measure: Callable[[], dict]) -> dict | None:
    """measure(), or None once the spec's diagnostics are printed when the spec does not resolve."""
    from nestc.diagnostics import NestError

    try:
        return measure()
    except NestError as err:
        print(f"{script}: error in {spec}:\n{err.render_plain()}", file=sys.stderr)
        return None


def report(text: str, res: dict, json_path: str | None) -> int:
    """Print a script's table and, with --json, write its results atomically; exit code 0."""
    print(text)
    if json_path:
        from nestc.atomic import write_text_atomic

        write_text_atomic(json_path, json.dumps(res, indent=2) + "\n")
    return 0
