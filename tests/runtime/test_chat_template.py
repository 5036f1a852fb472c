"""Chat templates render within bounds: hostile or broken ones fail with a ValueError naming
the template, quickly and without a huge allocation; ordinary ones render as jinja2 does."""

from __future__ import annotations

import time

import pytest

from q35f.runtime import chat_template

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
SMOL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _render(source, **context):
    template = chat_template.compile_template(source, "the chat template of tiny")
    return chat_template.render(template, "the chat template of tiny",
                                **{"messages": MESSAGES, **context})


def test_an_ordinary_template_renders_as_jinja_does():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    expected = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        SMOL).render(messages=MESSAGES, add_generation_prompt=True)
    assert _render(SMOL, add_generation_prompt=True) == expected
    assert _render("{{ messages | tojson }}") == '[{"role": "user", "content": "Hi"}, ' \
                                                  '{"role": "assistant", "content": "Hello"}]'
    big = [{"role": "user", "content": "x" * 3_000_000}]  # a prompt near the server's limit
    assert len(_render(SMOL, messages=big)) > 3_000_000


@pytest.mark.parametrize("source, says", [
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "longer"),
    ("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}", "than"),
    ("{{ 'x' * 100000000 }}", "longer"),
    ("{{ [1] * 10**9 }}", "longer"),
    ("{{ 10 ** 100000 }}", "65536 bits"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s }}", "longer"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{{ raise_exception('only user and assistant roles') }}", "only user and assistant"),
    ("{{ undefined_function() }}", "UndefinedError"),
    ("{{ messages.__class__.__mro__ }}", "SecurityError"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ range(10**9) | list }}", "OverflowError"),
])
def test_a_hostile_template_fails_quickly_by_name(source, says):
    started = time.monotonic()
    with pytest.raises(ValueError, match="the chat template of tiny") as err:
        _render(source)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - started < chat_template.RENDER_SECONDS + 2


def test_a_broken_template_is_refused_when_compiled():
    with pytest.raises(ValueError, match="the chat template of tiny is not a valid jinja"):
        chat_template.compile_template("{% for m in messages %}{{ m.content", "the chat "
                                       "template of tiny")
