"""Renders chat templates as Hugging Face transformers does (its `_compile_jinja_template` and
`render_jinja_template`): jinja2's sandbox with trim_blocks, lstrip_blocks and loopcontrols, its
`tojson`, `raise_exception` and `strftime_now` — the date fixed to tenets' (1 January 2026) so
the two can be compared character for character.

stdin: {"template", "bos_token", "eos_token", "cases": [{"messages", "add_generation_prompt"}]}
stdout: a JSON list, per case {"text": ...} or {"error": ...}.
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime(2026, 1, 1).strftime(format)


def main():
    job = json.load(sys.stdin)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    template = env.from_string(job["template"])
    out = []
    for case in job["cases"]:
        try:
            text = template.render(messages=case["messages"], tools=None, documents=None,
                                   add_generation_prompt=case["add_generation_prompt"],
                                   bos_token=job["bos_token"], eos_token=job["eos_token"])
            out.append({"text": text})
        except Exception as e:  # the template refused the conversation
            out.append({"error": str(e)})
    json.dump(out, sys.stdout)


main()
