"""One settings check for every kind of run: a run continues only with the settings it started with."""

from __future__ import annotations

from pathlib import Path

from bornagain.errors import UserError
from bornagain.files import read_json, write_json


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(saved: dict, now: dict, ignore: tuple[str, ...] = (), renamed: dict[str, str] | None = None,
                 defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ (keys starting with an ``ignore`` prefix do not matter; ``renamed``
    maps old dotted names in ``saved``, recorded before a key was renamed, to their new names; a key that
    ``saved`` lacks, recorded before the key existed, counts as its value in ``defaults`` when ``now`` has it)."""
    a, b = flatten(saved), flatten(now)
    a = {**{k: v for k, v in flatten(defaults or {}).items() if k in b},
         **{(renamed or {}).get(k, k): v for k, v in a.items()}}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(ignore))


def refuse_changed(saved: dict, now: dict, where: Path, *, ignore: tuple[str, ...] = (),
                   renamed: dict[str, str] | None = None, defaults: dict | None = None) -> None:
    changed = changed_keys(saved, now, ignore, renamed, defaults)
    if changed:
        raise UserError(f"'{where}' was made with other settings (changed: {', '.join(changed)}); "
                        "continue it with the same settings, or choose another --output")


def check_or_record(path: Path, settings: dict, *, ignore: tuple[str, ...] = (), write: bool = True,
                    renamed: dict[str, str] | None = None, defaults: dict | None = None) -> None:
    """Compare ``settings`` with those recorded in ``path`` (JSON), or record them there first
    (``write=False`` on the ranks that do not write files; ``defaults``: see ``changed_keys``)."""
    if path.exists():
        refuse_changed(read_json(path), settings, path.parent, ignore=ignore, renamed=renamed, defaults=defaults)
    elif write:
        write_json(path, settings)
