"""The README and docs/ cannot go stale: the sample's CSV is what annotate writes, every Python
block runs, every synopsis names exactly the options of --help, every link points somewhere."""
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from avemo_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(lang: str) -> list[tuple[Path, str]]:
    return [(page, block) for page in PAGES
            for block in re.findall(rf"```{lang}\n(.*?)```", page.read_text(), flags=re.S)]


def test_the_readme_is_short_and_reaches_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name
    for page in PAGES:  # every relative link resolves
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), (page.name, target)


def test_the_sample_csv_in_docs_is_what_annotate_writes(tmp_path):
    code = CliRunner().invoke(main, ["annotate", str(ROOT / "examples" / "sample.mp4"), "-o",
                                     str(tmp_path), "-q"]).exit_code
    assert code == 0
    assert (tmp_path / "sample.avemo.csv").read_bytes() == \
        (ROOT / "docs" / "sample.avemo.csv").read_bytes(), \
        "docs/sample.avemo.csv is stale: run examples/make_readme_figures.sh"


@pytest.mark.parametrize("page, block", _blocks("python"),
                         ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_python_block_runs(page, block, tmp_path):
    """Run as a user would, from a folder holding the bundled examples (default model)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, f"{page.name}:\n{block}\n{proc.stderr[-2000:]}"


def test_synopses_list_every_option_of_help():
    """Each subcommand's synopses in the README and docs name exactly the options its --help
    shows (the README's short examples and the docs' full synopses together)."""
    documented: dict[str, set] = {}
    for _, block in [*_blocks(""), *_blocks("bash")]:
        command = None
        for line in block.splitlines():
            m = re.match(r"avemo (\w+)", line.strip())
            command = m.group(1) if m else (command if line.startswith(" ") else None)
            if command:
                documented.setdefault(command, set()).update(
                    re.findall(r"(?<![\w-])(--?[\w-]+)", line.split("#")[0]))
    ctx = click.Context(main)
    for name, cmd in main.commands.items():
        shown = {opt for p in cmd.get_params(ctx) if isinstance(p, click.Option) and not p.hidden
                 for opt in [*p.opts, *p.secondary_opts] if opt.startswith("--")} - {"--help"}
        listed = {o for o in documented.get(name, set()) if o.startswith("--")}
        assert shown == listed, (name, "missing from the docs:", shown - listed,
                                 "not an option:", listed - shown)


def test_the_licences_agree_everywhere():
    """The code is MIT; the shipped weights carry their training data's most restrictive terms
    (CC BY-NC-SA 4.0, research only): LICENSE, weights/LICENSE.md, the package metadata, the
    README and the model card say the same."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "MIT" in (ROOT / "LICENSE").read_text()
    assert ("weights/LICENSE.md" in \
        (ROOT / "LICENSE").read_text())
    terms = (ROOT / "weights" / "LICENSE.md").read_text()
    assert "CC BY-NC-SA 4.0" in terms
    assert "research use only" in terms
    assert set(meta["tool"]["setuptools"]["license-files"]) == {"LICENSE", "weights/LICENSE.md"}
    assert "MIT" in meta["project"]["license"]["text"]
    assert "CC BY-NC-SA 4.0" in meta["project"]["license"]["text"]
    for page in ("README.md", "weights/MODEL_CARD.md"):
        text = (ROOT / page).read_text()
        assert "CC BY-NC-SA 4.0" in text, page
        assert "non-commercial research only" in text, page


def test_the_model_card_says_what_the_shipped_models_own_run_measured():
    """Every table and figure of the default model's scores in weights/MODEL_CARD.md (and the
    summaries in docs/models.md and the README) is what examples/model_card.py renders from
    weights/default_metrics.json (written by the recipe), and every part it renders is shown."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import model_card
    finally:
        sys.path.remove(str(ROOT / "examples"))
    marked = [name for page in model_card.PAGES
              for _, name, _, _ in model_card.REGION.findall(page.read_text())]
    assert sorted(marked) == sorted(model_card.RENDER), marked
    assert model_card.main(["--check"]) == 0, "run python examples/model_card.py"
    assert "TODO" not in (ROOT / "weights" / "MODEL_CARD.md").read_text()
