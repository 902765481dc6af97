"""One settings check for every kind of run: a run continues only with the settings it started with."""

from __future__ import annotations

from pathlib import Path

import yaml

from bornagain_kd.errors import UserError


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


SHARED_RENAMED_KEYS: dict[str, str] = {"train.tensorboard": "train.trackers"}
"""Keys of the shared train section renamed for every config: every record is read under the new name
(config.RENAMED_VALUES converts a value given under the old name)."""


def recorded(saved: dict, added: dict[str, object] | None = None, renamed: dict[str, str] | None = None) -> dict:
    """The settings a run was made with, as dotted keys under today's names: ``renamed`` maps old dotted names
    (recorded before a key was renamed) to new ones, and a key in ``added`` that the record lacks (it was made
    before the key existed) takes the value that was in force then, never today's default, which may differ
    (``ban.normalize_loss_weights``: a run made before it trained with the weights 1 / 1, today's default
    normalises them to 0.5 / 0.5). A key that is neither recorded nor in ``added`` stays absent, so it counts
    as changed: every config class lists its added keys (``ADDED_KEYS``; a test checks the list is complete)."""
    names = {**SHARED_RENAMED_KEYS, **(renamed or {})}
    flat = {names.get(k, k): v for k, v in flatten(saved).items()}
    then = {}
    for key, value in (added or {}).items():
        if key not in flat and not any(k.startswith(key + ".") for k in flat):
            then.update(flatten({key: value}) if isinstance(value, dict) else {key: value})  # {}: no dotted key
    return {**then, **flat}


def changed_keys(saved: dict, now: dict, ignore: tuple[str, ...] = (), renamed: dict[str, str] | None = None,
                 added: dict[str, object] | None = None) -> list[str]:
    """Dotted keys whose values differ between a recorded run (``saved``, read with ``recorded``) and ``now``;
    keys starting with an ``ignore`` prefix do not matter, nor an added key that neither side records (the
    settings of a GLUE teacher hold no ``bam.*``)."""
    a, b = _compared(saved, now, renamed, added)
    return sorted(k for k in set(a) | set(b) if a.get(k, _ABSENT) != b.get(k, _ABSENT) and not k.startswith(ignore))


def _compared(saved: dict, now: dict, renamed, added) -> tuple[dict, dict]:
    """(recorded settings, settings now), both dotted; an added key only where today's settings have it."""
    b = flatten(now)
    made = recorded(saved, None, renamed)  # what the record itself holds
    then = {k: v for k, v in recorded(saved, added, renamed).items() if k not in made and k in b}
    return {**then, **made}, b


_ABSENT = object()  # a key one side lacks differs from any value, None too


def describe_changes(saved: dict, now: dict, keys: list[str], renamed: dict[str, str] | None = None,
                     added: dict[str, object] | None = None) -> str:
    """'changed: key (recorded X, now Y), ...' for the changed ``keys``."""
    a, b = _compared(saved, now, renamed, added)
    show = lambda d, k: repr(d[k]) if k in d else "absent"  # noqa: E731
    return "changed: " + ", ".join(f"{k} (recorded {show(a, k)}, now {show(b, k)})" for k in keys)


def refuse_changed(saved: dict, now: dict, where: Path, *, ignore: tuple[str, ...] = (),
                   renamed: dict[str, str] | None = None, added: dict[str, object] | None = None) -> None:
    changed = changed_keys(saved, now, ignore, renamed, added)
    if changed:
        raise UserError(f"'{where}' was made with other settings ({describe_changes(saved, now, changed, renamed, added)}); "
                        f"continue it with the recorded settings (add {recorded_overrides(saved, changed, renamed, added)}),"
                        " or choose another --output")


def recorded_overrides(saved: dict, keys: list[str], renamed: dict[str, str] | None = None,
                       added: dict[str, object] | None = None) -> str:
    """The ``key=value`` overrides that give ``keys`` their recorded values, as typed on a command line (a key the
    record lacks is left out: it has no value to give)."""
    values = recorded(saved, added, renamed)
    shown = []
    for key in keys:
        if key in values:
            text = yaml.safe_dump(values[key], default_flow_style=True, width=10**6).strip()
            text = text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()
            shown.append(f"{key}={text}" if " " not in text and "[" not in text else f'"{key}={text}"')
    return " ".join(shown) or "the recorded values"
