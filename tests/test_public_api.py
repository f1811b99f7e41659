"""Everything the README and docs/ARCHITECTURE.md show as public API imports from `transferkit`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import transferkit

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def classes_defined_in_transferkit() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "transferkit").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names |= {node.name for node in tree.body if isinstance(node, ast.ClassDef) and not node.name.startswith("_")}
    return names


def names_the_readme_uses() -> set[str]:
    """``transferkit.NAME`` (last part of any dotted path), ``from transferkit import NAME`` in
    its Python blocks, and every `Name` in backticks that is a class of transferkit's."""
    names = {dotted.split(".")[-1] for dotted in re.findall(r"\btransferkit\.([A-Za-z_][\w.]*\w)", README)}
    for block in PYTHON_BLOCKS:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "transferkit":
                names |= {alias.name for alias in node.names}
    quoted = set(re.findall(r"`([A-Z][A-Za-z0-9]+)`", README))
    return names | (quoted & classes_defined_in_transferkit())


def test_the_readme_shows_the_feature_recipe_and_the_estimator():
    assert {"ImageClassifier", "BottleneckFeatures", "save", "load", "AdviceThresholds"} <= names_the_readme_uses()


@pytest.mark.parametrize("name", sorted(names_the_readme_uses()))
def test_every_name_the_readme_uses_imports_from_the_top(name):
    assert name in transferkit.__all__, f"the README uses {name}; add it to transferkit/__init__.py's __all__"
    exec(f"from transferkit import {name}", {})


def test_the_architecture_doc_public_api_line_is_true():
    line = next(line for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines() if "public API only" in line)
    listed = [name.strip() for name in line.split(":", 1)[1].split(",") if name.strip() not in ("", "...")]
    assert listed and all(name in transferkit.__all__ for name in listed), listed


@pytest.mark.parametrize("name", transferkit.__all__)
def test_every_public_name_exists(name):
    assert getattr(transferkit, name) is not None


def test_dir_lists_the_whole_public_api_before_first_use():
    import subprocess
    import sys

    # A fresh interpreter: nothing loaded yet, so dir() must list the lazy names itself.
    code = "import transferkit, sys; print(sorted(set(transferkit.__all__) - set(dir(transferkit))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


HEAVY = ("torch", "sklearn", "scipy", "timm", "matplotlib")
"""What a light command must not import: torch alone takes 3-5 s on a 2-core machine."""


@pytest.mark.parametrize("argv, absent", [
    (["--version"], HEAVY),
    (["cache", "info"], HEAVY),
    (["info"], HEAVY),
    (["info", "--json", "-"], HEAVY),
    (["models"], HEAVY),
    (["info", "--torch"], ("sklearn", "scipy", "timm", "matplotlib")),  # torch's view: torch, nothing more
])
def test_light_commands_import_only_what_they_need(argv, absent, tmp_path):
    # What keeps `transferkit info` under 2 s on 2 cores (issue 21; the time itself is measured
    # by benchmarks/info_speed.py, not here).
    import subprocess
    import sys

    code = ("import sys\nfrom transferkit import cli\nsys.argv = ['transferkit', *sys.argv[1:]]\ntry:\n    cli.main()\n"
            "except SystemExit:\n    pass\nprint('LOADED', sorted(m for m in sys.modules if '.' not in m))")
    env = {**__import__("os").environ, "TRANSFERKIT_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    assert "LOADED" in result.stdout, result.stderr
    loaded = result.stdout.rsplit("LOADED", 1)[1]
    assert not [name for name in absent if f"'{name}'" in loaded], loaded


def test_version_option_prints_the_version():
    from typer.testing import CliRunner

    from transferkit.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"transferkit {transferkit.__version__}"
