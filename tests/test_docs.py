"""The README and docs/ stay true: their code blocks run, the config reference is the code's, the README
stays a front door, and the CLI helps itself (--version, config, models)."""

import re
import shutil

import pytest

from bornagain_kd.cli import main
from bornagain_kd.config_doc import COMMANDS, command_keys, render_markdown
from doc_blocks import KNOWN, PAGES, REPO, blocks, page_blocks, prepare_folder, run_block

PAGE_IDS = [str(p.relative_to(REPO)) for p in PAGES]
# pages whose blocks a test of their own runs, with assertions on what they print
DEDICATED = {REPO / "docs" / "api.md": "tests/test_own_model.py::test_api_page_example_runs_verbatim"}
RUN_HERE = [p for p in PAGES if p not in DEDICATED and page_blocks(p, long=False)]


def test_the_configuration_reference_is_generated_from_the_code():
    page = REPO / "docs" / "configuration.md"
    assert page.read_text() == render_markdown(), (
        "docs/configuration.md is stale: regenerate it with `bornagain config --markdown > docs/configuration.md`")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_key_has_a_default_and_a_meaning(command, capsys):
    keys = command_keys(command)
    assert keys and all(k.meaning for k in keys), [k.key for k in keys if not k.meaning]
    assert main(["config", command]) == 0
    out = capsys.readouterr().out
    for k in keys:  # one line each: key = default  # meaning
        assert re.search(rf"^{re.escape(k.key)} = {re.escape(k.default)}\s+# \S", out, re.M), k.key
    assert ("ban.generations" in out) == (command == "ban") and ("bam.targets" in out) == (command == "bam")


def test_version_and_models(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and re.fullmatch(r"bornagain \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "wrn-{depth}-{width}" in out
    # counted on the meta device (WRN-28-10: 36.54M, ResNet-1001: 10.35M), beside the BAN paper's Table 2 figures
    assert re.search(r"wrn-28-10\s+36\.54M\s+36M", out) and re.search(r"preresnet-1001\s+10\.35M\s+10\.2M", out)


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in re.findall(r"\]\((docs/[^)#]+)\)", readme):  # every link to docs/ resolves
        assert (REPO / page).is_file(), page
    assert {p.name for p in (REPO / "docs").glob("*.md")} <= set(re.findall(r"docs/([\w-]+\.md)", readme))


def test_the_readme_test_command_is_what_ci_runs():
    ci = [b for b in blocks(REPO / "README.md") if "ci" in b.tags]
    command = next(line.split("#")[0].strip() for b in ci for line in b.text.splitlines() if "pytest" in line)
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
    # and the README installs the extras CI installs before it: what the tests use
    extras = lambda text: re.findall(r'-e "\.\[([^\]]*)\]"', text)  # noqa: E731
    readme = [e for b in ci for e in extras(b.text)]
    assert readme and readme == extras((REPO / ".ci" / "run").read_text())


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_code_blocks_are_known_kinds(page):
    for block in blocks(page):
        assert block.lang in KNOWN, f"{block.where}: unknown block kind {block.lang!r}"
        assert set(block.tags) <= {"long", "ci", "sketch"} | {t for t in block.tags if t.startswith("file=")}, block.where
        if block.lang == "bash":  # a comment after a line continuation silently ends the command
            assert not re.search(r"\\\s+#", block.text), f"{block.where}: `\\` followed by a comment"


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_HERE, ids=[str(p.relative_to(REPO)) for p in RUN_HERE])
def test_code_blocks_run(page, tmp_path):
    """A page's short blocks, in order, in a fresh folder, as a user would paste them."""
    prepare_folder(tmp_path)
    for block in page_blocks(page, long=False):
        done = run_block(block, tmp_path, timeout=300)
        assert done.returncode == 0, f"{block.where} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
