"""Where a reused BAN teacher (``ban.teacher_run``) comes from: a run directory, a folder `bornagain export` wrote,
or such a folder on the Hugging Face hub (``hf://owner/name``, or ``hf://owner/name@revision``).

An exported folder holds what a finished run directory holds for its students (model.safetensors, results.json,
metrics.jsonl, test_probs.safetensors) and, instead of config.yaml, config.json: the run's recorded config under
"config" beside what rebuilds the model (pipelines/export.py). So a folder is checked and read as the run itself
(pipelines/ban.py check_teacher_run): only the file its config comes from differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from bornagain_kd.config import load_yaml
from bornagain_kd.errors import UserError, describe
from bornagain_kd.files import read_json, write_json

EXPORT_FORMAT = "bornagain-vision-teacher/1"  # config.json's "bornagain_format": a folder `bornagain export` wrote
HUB_PREFIX = "hf://"
INSTALL = 'pip install "bornagain-kd[hf]"'


def read_export_config(folder: Path) -> dict | None:
    """An exported folder's config.json, or None when ``folder`` is not one."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("bornagain_format") == EXPORT_FORMAT else None


def teacher_config_tree(run_dir: Path, key: str = "ban.teacher_run") -> dict:
    """The config tree a teacher was trained with, as it was recorded: a run directory's config.yaml, an exported
    folder's config.json "config"."""
    exported = read_export_config(run_dir)
    if exported is not None:
        return exported["config"]
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{key}={run_dir} has no config.yaml (nor an exported config.json), so its data and "
                        "schedule cannot be checked: point it at a run made by `bornagain ban` or `bornagain train`, "
                        "or at a folder `bornagain export` wrote")
    return load_yaml(run_dir / "config.yaml")


def unfinished_teacher_message(run_dir: Path, model: str) -> str:
    """Why ``ban.teacher_run`` cannot be used yet, and the fix: where a packaged recipe writes that folder (a Table 2
    recipe's default teacher is table1-densenet-bc-90-60's gen0/), the command that makes it."""
    from bornagain_kd.recipes import recipe_writing  # noqa: PLC0415

    state = "does not exist" if not run_dir.exists() else "is not a finished run (no results.json)"
    recipe = recipe_writing(run_dir)
    resume = " --resume" if run_dir.exists() else ""  # begun: continued, not started again
    first = (f"run configs/{recipe}.yaml first (bornagain ban --config {recipe}{resume}), or set ban.teacher_run to "
             f"another finished {model} run (null: train the teacher here)" if recipe else
             f"finish that run first, or set ban.teacher_run to a finished {model} run (null: train the teacher here)")
    return f"ban.teacher_run={run_dir} {state}: {first}"


def split_hub_id(text: str) -> tuple[str, str | None]:
    """'hf://owner/name@rev' -> ('owner/name', 'rev'); no '@': revision None (the default branch)."""
    repo, _, revision = text[len(HUB_PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"ban.teacher_run={text}: a hub teacher is hf://OWNER/NAME (optionally @REVISION)")
    return repo, revision or None


PIN = "teacher_source.json"
"""In a sequence's output: the hub commit its ``hf://`` teacher resolved to on first use ({"teacher_run", "commit"})."""


def local_teacher(path: str, output: Path | None = None) -> Path:
    """The local folder of a teacher: a path as given; an ``hf://`` id downloaded (or found in the hub's cache) by
    huggingface_hub.snapshot_download, at the commit ``output`` pinned on first use (``pin_teacher``) where it has
    one: a resumed sequence keeps its teacher when the hub's branch has moved since. Offline without a cached
    copy: a UserError saying so."""
    if not path.startswith(HUB_PREFIX):
        return Path(path)
    repo, revision = split_hub_id(path)
    pinned = _read_pin(output)
    if pinned.get("teacher_run") == path:
        revision = pinned["commit"]
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415  (optional: the hf extra)
    except ImportError:
        raise UserError(f"ban.teacher_run={path} needs the huggingface_hub package: {INSTALL}") from None
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision))
    except Exception as e:  # noqa: BLE001 - offline, no such repository, no access: the library's many errors
        at = f" at commit {revision}, which {output} was started with," if pinned.get("teacher_run") == path else ""
        raise UserError(f"ban.teacher_run={path}: cannot fetch {repo}{at} from the Hugging Face hub "
                        f"({describe(e, 200)}); fetch it once while online (HF_HUB_OFFLINE unset; private "
                        "repositories need `hf auth login`), or download the folder and give its path") from None


def pin_teacher(output: Path, path: str, folder: Path) -> None:
    """Record in ``output`` the commit an ``hf://`` teacher resolved to (snapshot_download's folder is
    .../snapshots/<commit>), once: every --resume then fetches that commit, not the branch's latest."""
    if path.startswith(HUB_PREFIX) and _read_pin(output).get("teacher_run") != path:
        write_json(output / PIN, {"teacher_run": path, "commit": folder.name})


def _read_pin(output: Path | None) -> dict:
    if output is None or not (output / PIN).is_file():
        return {}
    pinned = read_json(output / PIN)
    return pinned if isinstance(pinned, dict) and "commit" in pinned else {}
