"""Recipes by name: the YAML files of the repository's configs/, found by `--config NAME` and listed by
`bornagain recipes`.

configs/ is the single source. A wheel carries a copy as bornagain_kd/_recipes/ (setup.py copies it at build
time); a source checkout (an editable install) reads configs/ itself. A recipe opens with three lines that
`bornagain recipes` prints:

    # purpose: what it trains and why (one line)
    # data: what it reads and how to get it
    # time: its expected wall time, on the hardware it names (or "not measured" with an estimate's basis)
"""

from __future__ import annotations

import difflib
from pathlib import Path

from bornagain_kd.errors import UserError

FIELDS = ("purpose", "data", "time")
SUFFIXES = (".yaml", ".yml")


def recipe_dirs() -> list[Path]:
    """Where packaged recipes are: the wheel's bornagain_kd/_recipes/, else the checkout's configs/."""
    here = Path(__file__).resolve().parent
    dirs = [here / "_recipes"]
    root = here.parents[1]  # src/bornagain_kd -> the repository, in a checkout
    if (root / "pyproject.toml").is_file():
        dirs.append(root / "configs")
    return [d for d in dirs if d.is_dir()]


def available() -> dict[str, Path]:
    """Recipe name (file stem) -> file, the wheel's copy first."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix in SUFFIXES else path.name


def find_recipe(config: str | Path) -> Path:
    """The file ``--config`` names: an existing file wins; else a packaged recipe of that name (``NAME``,
    ``NAME.yaml`` or ``configs/NAME.yaml``, so the README's lines work from an installed wheel); else one error
    with the close matches."""
    if not str(config).strip():
        raise UserError("--config is empty: give a recipe's name (`bornagain recipes` lists them) or a YAML file")
    path = Path(config).expanduser()
    if path.is_file():
        return path
    bare = str(path.parent) in (".", "configs")  # a name, not a path into some other folder
    recipes = available() if bare else {}
    name = _stem(path)
    if name in recipes:
        return recipes[name]
    if not bare or path.exists():  # a path into another folder, or a folder: load_yaml names the problem
        if path.exists():
            return path
        raise UserError(f"config file '{path}' does not exist: check the path given to --config")
    hint = f"close matches: {', '.join(close)}; " if (close := close_matches(name, list(recipes))) else ""
    raise UserError(f"config '{config}' is neither a file nor a packaged recipe: {hint}`bornagain recipes` lists "
                    f"the {len(recipes)} recipes (give a recipe's name, or a path to your own YAML file)")


def close_matches(name: str, names: list[str], n: int = 4) -> list[str]:
    """Names like ``name``: those containing it (case aside), then difflib's close matches."""
    low = name.lower()
    found = [m for m in names if low and low in m.lower()]
    found += [m for m in difflib.get_close_matches(low, names, n=n, cutoff=0.6) if m not in found]
    return found[:n]


def recipe_command(path: Path) -> str:
    """The command a recipe is for, from its sections: bam, glue-teachers, ban (a ban: section) or train."""
    import yaml  # noqa: PLC0415

    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "glue" in tree or "encoder" in tree:
        return "bam" if "bam" in tree else "glue-teachers"
    return "ban" if "ban" in tree else "train"


def recipe_writing(run_dir: Path) -> str | None:
    """The packaged recipe whose output_dir holds ``run_dir`` (runs/table1-densenet-bc-90-60/gen0 ->
    table1-densenet-bc-90-60), or None."""
    import yaml  # noqa: PLC0415

    target = Path(run_dir).resolve()
    for name, path in available().items():
        try:
            output = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("output_dir")
        except yaml.YAMLError:
            continue
        if output and (target == Path(output).resolve() or Path(output).resolve() in target.parents):
            return name
    return None


def recipe_fields(path: Path) -> dict[str, str]:
    """The recipe's `# purpose:`, `# data:` and `# time:` lines (missing ones are empty)."""
    fields = dict.fromkeys(FIELDS, "")
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break  # the header is the leading comment block
        key, _, value = line[1:].strip().partition(":")
        if key in fields and not fields[key]:
            fields[key] = value.strip()
    return fields


def render_recipes(wrap: int = 116) -> str:
    """`bornagain recipes`: each recipe's name, purpose, data and expected time."""
    import textwrap  # noqa: PLC0415

    recipes = available()
    if not recipes:
        return "no recipes found: this installation carries none (reinstall bornagain-kd)\n"
    lines = [f"{len(recipes)} recipes: bornagain COMMAND --config NAME [key=value ...] (a file path works too; "
             "`bornagain config` explains every key)", ""]
    for name, path in recipes.items():
        fields = recipe_fields(path)
        lines.append(f"{name}    (bornagain {recipe_command(path)} --config {name})")
        for key in FIELDS:
            lines += textwrap.wrap(fields[key] or "(not stated)", wrap, initial_indent=f"  {key + ':':<9}",
                                   subsequent_indent=" " * 11)
    return "\n".join(lines) + "\n"
