"""Issue 33: the command line as a newcomer meets it - one table of shared options, the words
of the command line in errors, predict's output, fast failures before torch is imported."""

from __future__ import annotations

import csv
import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_BACKBONE
from fitted_models import fit_tiny_model
from transferkit import DataError, ImageClassifier
from transferkit.cli import COMMAND_DATA_OPTIONS, SHARED_OPTIONS, app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _commands() -> dict[str, typer.models.CommandInfo]:
    return {c.name or c.callback.__name__: c for c in app.registered_commands}


def _options(callback) -> dict[str, inspect.Parameter]:
    """Flag -> the parameter declaring it, read from the command's signature."""
    hints = typing.get_type_hints(callback, include_extras=True)  # cli.py's annotations are strings
    found = {}
    for parameter in inspect.signature(callback).parameters.values():
        annotation = hints.get(parameter.name)
        for meta in getattr(annotation, "__metadata__", ()):
            if not isinstance(meta, typer.models.OptionInfo):
                continue
            # Annotated[..., typer.Option("--flag")] keeps the flag in `default`; no flag: from the name
            decls = [d for d in (meta.default, *(meta.param_decls or ())) if isinstance(d, str) and d.startswith("--")]
            for flag in decls or ["--" + parameter.name.replace("_", "-")]:
                found[flag] = parameter.replace(annotation=annotation)
    assert found or not hints, callback  # the walk must see the options
    return found


def test_every_shared_option_is_declared_from_the_one_table():
    """A flag that several commands share has one declaration (help, type) and one default."""
    defaults: dict[str, object] = {}
    for name, command in _commands().items():
        for flag, parameter in _options(command.callback).items():
            if flag not in SHARED_OPTIONS:
                continue
            assert parameter.annotation == SHARED_OPTIONS[flag], f"{name} {flag} is not declared from SHARED_OPTIONS"
            assert defaults.setdefault(flag, parameter.default) == parameter.default, f"{name} {flag}: another default"


@pytest.mark.parametrize("command", sorted(COMMAND_DATA_OPTIONS))
def test_commands_that_read_images_take_fits_data_options(command):
    flags = set(_options(_commands()[command].callback))
    assert set(COMMAND_DATA_OPTIONS[command]) <= flags, command
    assert set(COMMAND_DATA_OPTIONS[command]) <= set(_options(_commands()["fit"].callback))


@pytest.mark.parametrize("command", ["fit", "predict", "export-data"])
def test_help_reads_like_a_unix_tool(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.output and "{data}" not in result.output and "{model_dir}" not in result.output


@pytest.fixture(scope="module")
def model(image_folder, tiny_weights, tmp_path_factory) -> Path:
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("opts") / "model", strategy="logistic", image_size=16)


@pytest.fixture()
def folder_with_a_truncated_jpeg(image_folder, tmp_path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    for label in ("blue", "green", "red"):
        (data / label).mkdir(parents=True)
        for source in sorted((image_folder / label).glob("*.png"))[:2]:
            (data / label / source.name).write_bytes(source.read_bytes())
    Image.new("RGB", (20, 20), (200, 40, 40)).save(data / "red" / "cut.jpg")
    bad = data / "red" / "cut.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    return data, bad


@pytest.mark.parametrize("command", ["predict", "evaluate", "report"])
def test_the_option_an_error_recommends_exists(command, model, folder_with_a_truncated_jpeg, tmp_path):
    """Issue 33 item 2: predict and evaluate said 'pass --skip-bad', then 'No such option'."""
    data, bad = folder_with_a_truncated_jpeg
    extra = ["--out", tmp_path / "report", "--mistakes", 0] if command == "report" else []
    failed = invoke(command, model, data, *extra)
    assert failed.exit_code == 1 and "--skip-bad" in failed.output and "skip_bad=True" not in failed.output
    result = invoke(command, model, data, *extra, "--skip-bad", "--quiet")
    assert result.exit_code == 0, result.output
    assert "cut.jpg" in result.output  # the skipped file is named, also with --quiet


def test_predict_keeps_input_order_prints_a_header_and_json_parses(model, image_folder, tmp_path):
    files = [image_folder / "red" / "000.png", image_folder / "blue" / "016.png", image_folder / "green" / "008.png"]
    files = [f if f.exists() else sorted((image_folder / f.parent.name).glob("*.png"))[0] for f in files]
    result = runner.invoke(app, ["predict", str(model), *map(str, files), "--top-k", "2", "--csv", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].split("\t") == ["path", "label", "probability", "label_2", "probability_2", "novelty", "unknown"]  # --csv also prints
    assert [line.split("\t")[0] for line in lines[1:]] == [str(f) for f in files]  # the order given, not sorted
    with open(tmp_path / "p.csv") as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == [str(f) for f in files]
    as_json = runner.invoke(app, ["predict", str(model), *map(str, files), "--top-k", "2", "--json", "-"])
    payload = json.loads(as_json.stdout)  # stdout is the JSON alone
    first = payload["predictions"][0]
    assert [item["label"] for item in first["top_k"]][0] == first["label"] and len(first["top_k"]) == 2  # a list, as serve


def test_evaluate_json_to_stdout_is_json_alone(model, image_folder):
    result = runner.invoke(app, ["evaluate", str(model), str(image_folder), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["n"] == 24


def test_cli_errors_name_flags_not_python_parameters(image_folder, tmp_path):
    result = invoke("fit", image_folder, "--out", tmp_path / "m", "--class-weight", "balance", "--quiet")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "Received: --class-weight balance. Did you mean 'balanced'?" in text and "ImageClassifier" not in text
    preview = invoke("augment-preview", image_folder, "--out", tmp_path / "p", "--presets", "mega")
    assert "--presets" in preview.output and "augment=" not in preview.output


def test_debug_may_follow_the_command(tmp_path):
    code = ("import sys; from transferkit.cli import main; sys.argv = ['transferkit', 'fit', sys.argv[1], '--out', sys.argv[2], '--debug']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nexcept Exception as exc:\n    print(type(exc).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing"), str(tmp_path / "m")], capture_output=True, text=True)
    assert "No such option" not in result.stderr
    assert "DataError" in result.stdout  # --debug let the exception through


@pytest.mark.parametrize("argv", [["fit", "{missing}", "--out", "{out}"], ["evaluate", "{out}", "{missing}"],
                                  ["predict", "{out}", "{missing}"], ["compare", "{missing}"], ["advise", "{missing}"]])
def test_a_wrong_data_path_fails_before_torch_is_imported(argv, tmp_path):
    """Issue 33 item 11: every data error took ~4 s (torch imported before the path was checked)."""
    (tmp_path / "model").mkdir()
    args = [a.format(missing=tmp_path / "missing", out=tmp_path / "model") for a in argv]
    code = ("import sys; from transferkit.cli import main; sys.argv = ['transferkit', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.stdout.split() == ["exit", "1", "False"], (result.stdout, result.stderr)
    assert "missing" in result.stderr


def test_export_data_takes_out_like_every_command(image_folder, tmp_path):
    result = invoke("export-data", image_folder, "--out", tmp_path / "copy")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["blue", "green", "red"]
    legacy = invoke("export-data", image_folder, tmp_path / "copy2")
    assert legacy.exit_code == 0 and "deprecated" in legacy.output


@pytest.mark.parametrize(("array", "hint"), [
    (np.random.default_rng(0).random((4, 8, 8, 3)), "np.rint(x * 255)"),  # 0-1 floats: scale, never clip to black
    (np.full((4, 8, 8, 3), 200.0), "np.rint(x).astype(np.uint8)"),
    (np.full((4, 8, 8), 40000, dtype=np.uint16), "x // 257"),
])
def test_the_uint8_hint_fits_the_values(array, hint):
    with pytest.raises(DataError) as caught:
        ImageClassifier().fit(array, ["a", "b"] * 2)
    assert hint in str(caught.value) and "np.clip(x, 0, 255)" not in str(caught.value)
