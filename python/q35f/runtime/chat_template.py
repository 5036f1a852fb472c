"""Chat templates: compiled the way transformers compiles them (sandboxed jinja2), and rendered
within bounds, because a template is code that comes with a model file.

A template may loop for hours (nested `range`s), build a huge string (`'x' * 10**9`, or a
string doubled in a loop), recurse without end or simply be broken. `render` stops it with a
ValueError naming the template once it runs longer than RENDER_SECONDS or any string it builds
or emits exceeds MAX_CHARS; every other failure inside the template becomes a ValueError too.
The time and size checks run from a trace function on the rendering thread, active only in
the template's own frames, so the rest of the process is unaffected.
"""

from __future__ import annotations

import json
import math
import sys
import time

RENDER_SECONDS = 2.0
MAX_CHARS = 8 * 1024 * 1024  # more than any prompt a server accepts (4 MiB body)
# The sizes of the template's local variables are checked every this many lines it runs.
SIZE_CHECK_LINES = 4


class TemplateBoundError(ValueError):
    pass


def compile_template(source: str, name: str = "chat template"):
    """A Hugging Face chat template as a jinja2 Template, in jinja2's immutable sandbox."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Environment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right, name)
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):
        raise TemplateError(message)

    env = Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                   indent=indent)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except Exception as err:  # a syntax error, or a template too deeply nested to compile
        raise ValueError(f"{name} is not a valid jinja template: {type(err).__name__}: "
                         f"{_one_line(err)}") from None


def render(template, name: str = "chat template", **context) -> str:
    """The template rendered with `context`; a ValueError naming `name` if it fails or runs
    past the bounds."""
    deadline = time.monotonic() + RENDER_SECONDS
    pieces, size = [], 0
    previous = sys.gettrace()
    sys.settrace(_tracer(deadline, name))
    try:
        for piece in template.generate(**context):
            size += len(piece)
            if size > MAX_CHARS:
                raise TemplateBoundError(f"{name} renders more than {MAX_CHARS} characters")
            pieces.append(piece)
    except TemplateBoundError:
        raise
    except Exception as err:  # raise_exception, undefined names, 1/0, recursion, ...
        raise ValueError(f"{name} cannot render these messages: {type(err).__name__}: "
                         f"{_one_line(err)}") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _tracer(deadline: float, name: str):
    from jinja2.utils import Namespace

    def local(frame, event, arg):
        if event == "line":
            if time.monotonic() > deadline:
                raise TemplateBoundError(f"{name} ran longer than {RENDER_SECONDS:g} s")
            local.lines += 1
            if local.lines % SIZE_CHECK_LINES == 0:
                for value in frame.f_locals.values():
                    if isinstance(value, Namespace):  # {% set ns.s = ... %} keeps it here
                        values = list(value._Namespace__attrs.values())
                    else:
                        values = [value]
                    if any(isinstance(v, (str, list, tuple)) and len(v) > MAX_CHARS
                           for v in values):
                        raise TemplateBoundError(
                            f"{name} builds a value longer than {MAX_CHARS} items")
        return local

    local.lines = 0

    def global_(frame, event, arg):
        return local if frame.f_code.co_filename == "<template>" else None

    return global_


def _check_binop(operator: str, left, right, name: str) -> None:
    """Refuse `*` and `**` whose result would be huge, before computing it."""
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int) \
                    and len(seq) * max(count, 0) > MAX_CHARS:
                raise TemplateBoundError(f"{name} builds a value longer than {MAX_CHARS} items")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
            and abs(left) > 1 and right * math.log2(abs(left)) > 64 * 1024:
        raise TemplateBoundError(f"{name} computes an integer of more than 65536 bits")
