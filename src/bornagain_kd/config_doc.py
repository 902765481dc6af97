"""Every config key with its type, default and meaning, read from the config dataclasses themselves.

The meaning of a key is the string literal written under its field (an attribute docstring):

    epochs: int = 10
    \"\"\"Passes over the training set, per generation.\"\"\"

so `bornagain config ban` and docs/configuration.md (`bornagain config --markdown`, checked by
tests/test_docs.py) cannot drift from the code. A subclass that overrides a field's default without a new
docstring keeps its base class's.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
from dataclasses import dataclass
from typing import Any

from bornagain_kd.config import _type_name, config_keys

# the commands and the config each reads; a section a command ignores is left out of its listing
COMMANDS = {"ban": ("vision", ()), "train": ("vision", ("ban",)),
            "glue-teachers": ("glue", ("bam",)), "bam": ("glue", ())}


@dataclass(frozen=True)
class KeyDoc:
    key: str        # dotted, as written in a recipe or an override: "train.epochs"
    type: str       # "int", "'step' | 'cosine'", "list[int] | null"
    default: str    # as YAML would spell it: 10, [2, 3], null
    meaning: str    # the field's docstring, whitespace collapsed ("" where it has none)


def _config_class(kind: str) -> type:
    if kind == "vision":
        from bornagain_kd.vision.config import VisionConfig  # noqa: PLC0415 - the torch-free configs, on demand

        return VisionConfig
    from bornagain_kd.glue.config import GlueExperimentConfig  # noqa: PLC0415

    return GlueExperimentConfig


@functools.cache
def _attribute_docstrings(cls: type) -> dict[str, str]:
    """{field: docstring} of the string literals right under a class's annotated fields, base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _yaml_value(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)  # YAML's flow style reads JSON: 10, "step", [2, 3], null, true


def _type_text(tp: Any) -> str:
    return _type_name(tp).replace("NoneType", "null").replace("None", "null")  # config errors' names, YAML's null


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def key_docs(cls: type, skip: tuple[str, ...] = ()) -> list[KeyDoc]:
    """Every key of a config class, sections expanded in field order (config.config_keys)."""
    return [KeyDoc(key, _type_text(tp), _yaml_value(_default(f)), _attribute_docstrings(owner).get(f.name, ""))
            for key, f, tp, owner in config_keys(cls, skip=skip)]


def command_keys(command: str) -> list[KeyDoc]:
    kind, skip = COMMANDS[command]
    return key_docs(_config_class(kind), skip=skip)


ABBREVIATIONS = ("e.g.", "i.e.", "eq.", "et al.", "cf.", "vs.", "fig.", "sec.", "no.", "approx.", "etc.")
"""Words ending in a full stop that end no sentence (lower-cased)."""


def _first_sentence(text: str) -> str:
    """The text up to its first full stop that ends a sentence: not inside parentheses or brackets (`(Eq. 2:
    ...)`), not an abbreviation (`Mueller et al. 2019`), and followed by a space or the end."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if ch != "." or depth > 0 or (i + 1 < len(text) and not text[i + 1].isspace()):
            continue
        head = text[:i + 1].lower()
        if not any(head.endswith(a) and (len(head) == len(a) or not head[-len(a) - 1].isalnum())
                   for a in ABBREVIATIONS):  # a whole word: "mono." ends a sentence, "no." does not
            return text[:i + 1]
    return text


def render_text(command: str) -> str:
    """`bornagain config COMMAND`: one line per key, `key = default  # meaning (first sentence)`."""
    keys = command_keys(command)
    width = max(len(f"{k.key} = {k.default}") for k in keys)
    lines = [f"# bornagain {command}: every key, its default and meaning (override: key=value; "
             f"full text: docs/configuration.md)"]
    lines += [f"{k.key} = {k.default}".ljust(width) + f"  # {_first_sentence(k.meaning)}" for k in keys]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """docs/configuration.md: one table per config (vision: ban and train; GLUE: glue-teachers and bam)."""
    parts = ["# Configuration reference", "",
             "Generated from the config dataclasses by `bornagain config --markdown > docs/configuration.md`; "
             "tests/test_docs.py fails when this page is stale. Any key is set in a YAML recipe (`--config`) "
             "or on the command line as `key=value` (lists as `[a,b]`, null as `null`); "
             "`bornagain config ban` prints the same list in the terminal.", ""]
    titles = {"vision": "`bornagain ban` and `bornagain train` (images; `train` ignores `ban.*`)",
              "glue": "`bornagain glue-teachers` and `bornagain bam` (GLUE; `glue-teachers` ignores `bam.*`)"}
    for kind, title in titles.items():
        parts += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        parts += [f"| `{k.key}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.meaning)} |"
                  for k in key_docs(_config_class(kind))]
        parts.append("")
    return "\n".join(parts)
