"""The code blocks of README.md and docs/*.md, and how to run them.

A fenced block's info string says what it is:

    ```bash            run by tests/test_docs.py (seconds)
    ```bash long       run by `python tests/doc_blocks.py --long` (real data, minutes)
    ```bash ci         install and test commands (.ci/run installs the pinned versions, then runs the test command)
    ```bash sketch     shown, never run: placeholders (HOST), several machines
    ```python          run by the test, like bash
    ```python file=F   not run: saved as F for the blocks after it (a model file, a data script)
    ```text, ```yaml   output or content, never run

The blocks of one page run in order in one fresh folder holding links to the repository's configs/ and
benchmarks/, so a page reads like a session a user types. `python tests/doc_blocks.py --long` runs every
block but `ci` and `sketch`, the long ones in the repository itself (the recipes read ../shared/data relative to
it: run it in a fresh clone, as it writes runs/), and prints each one's wall time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*(.*)$")
RUNNABLE = ("bash", "python")
KNOWN = ("bash", "python", "text", "yaml", "")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int             # 1-based line of the opening fence
    lang: str             # bash, python, text, ...
    tags: tuple[str, ...]  # long, ci, sketch, file=NAME
    text: str

    @property
    def file(self) -> str | None:
        return next((t.split("=", 1)[1] for t in self.tags if t.startswith("file=")), None)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, in order."""
    out, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        out.append(Block(page, start + 1, m.group(1), tuple(m.group(2).split()), "\n".join(body) + "\n"))
        i += 1
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ, BORNAGAIN_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    bin_dir = str(Path(sys.executable).parent)  # the interpreter running this: its `bornagain` script
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def prepare_folder(folder: Path) -> None:
    """A user's working folder: the repository's recipes and benchmarks reachable as from a clone (long
    blocks run in the repository itself, where the recipes' ../shared/data paths resolve)."""
    for name in ("configs", "benchmarks"):
        (folder / name).symlink_to(REPO / name)


def run_block(block: Block, folder: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run (or save) one block in ``folder``; the completed process (returncode 0 for a saved file)."""
    if block.file:
        (folder / block.file).write_text(block.text)
        return subprocess.CompletedProcess([], 0, "", "")
    cmd = ["bash", "-euo", "pipefail", "-c", block.text] if block.lang == "bash" else [sys.executable, "-c", block.text]
    return subprocess.run(cmd, cwd=folder, env=_env(), capture_output=True, text=True, timeout=timeout)


def page_blocks(page: Path, *, long: bool) -> list[Block]:
    """The blocks a run of this page executes: runnable, not `ci`, and `long` ones only when asked."""
    return [b for b in blocks(page) if b.lang in RUNNABLE and not {"ci", "sketch"} & set(b.tags)
            and (long or "long" not in b.tags)]


def main(argv: list[str]) -> int:
    """`python tests/doc_blocks.py --long [PAGE ...]`: every block (long ones too), in the repository itself
    (recipes read ../shared/data relative to it), printing each block's wall time."""
    pages = [Path(p).resolve() for p in argv if not p.startswith("--")] or PAGES
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for page in pages:
            folder = Path(tmp) / page.stem
            folder.mkdir()
            todo = page_blocks(page, long="--long" in argv)
            for block in todo:
                cwd = REPO if "long" in block.tags else folder
                if cwd is folder and not (folder / "configs").exists():
                    prepare_folder(folder)
                start = time.perf_counter()
                done = run_block(block, cwd, timeout=6 * 3600)
                status = "ok" if done.returncode == 0 else f"FAILED ({done.returncode})"
                print(f"{block.where}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
                if done.returncode:
                    failed += 1
                    print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
