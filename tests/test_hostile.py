"""Hostile but fair input (issue 14): never hang, never a traceback, never a silently wrong answer.

Each row of ``CASES`` is one kind of bad input, built at test time from a few 16 px PNGs per
class. It is run through the command line and checked for: the exit code (0 handled, 1 user
error, 2 bad usage), a message naming the file or value, no traceback, and that nothing is
lost (``check``). The five worst findings of the issue have their exact reproductions below
the table, with the fault-injection tests of the atomic model save.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_BACKBONE, write_image_folder
from transferkit.cli import app

runner = CliRunner()
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000", **(env or {})})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def fit_args(tiny_weights, tmp_path_factory) -> list:
    cache = tmp_path_factory.mktemp("hostile-cache")
    return ["--strategy", "svm", "--C", 1, "--backbone", TINY_BACKBONE, "--weights", tiny_weights, "--image-size", 16,
            "--device", "cpu", "--precision", "fp32", "--quiet", "--cache-dir", cache]


def mk(root: Path, n: int = 4) -> Path:
    """The issue's ``mk.py``: a few 16 px PNGs per class (red, green, blue)."""
    return write_image_folder(root, n_per_class=n, size=16)


@pytest.fixture(scope="module")
def model(fit_args, tmp_path_factory) -> Path:
    """One svm model fitted on mk data, shared by the evaluate/predict cases."""
    root = tmp_path_factory.mktemp("hostile-model")
    data, out = mk(root / "data"), root / "model"
    result = invoke("fit", data, "--out", out, *fit_args)
    assert result.exit_code == 0, result.output
    return out


# ---------------------------------------------------------------------------------------------
# The builders: each returns the command line (after "transferkit") for a fresh tmp folder.


@dataclass
class Case:
    kind: str
    build: Callable[[Path, list, Path], list]  # (tmp, fit_args, model) -> argv
    code: int
    says: tuple[str, ...] = ()  # substrings of the output ({tmp} is replaced)
    check: Callable[[Path, object], None] | None = None  # nothing lost: files, reports


def fit_on(data: Path, tmp: Path, fit_args: list, *extra) -> list:
    return ["fit", data, "--out", tmp / "out", "--json", tmp / "fit.json", *fit_args, *extra]


def with_file(make: Callable[[Path], None], *extra):
    """mk data with one extra entry in class red, made by ``make(path_dir)``; then fit."""

    def build(tmp, fit_args, model):
        data = mk(tmp / "data")
        make(data / "red")
        return fit_on(data, tmp, fit_args, *extra)

    return build


def fifo(folder: Path) -> None:
    os.mkfifo(folder / "x.png")


def dev_zero(folder: Path) -> None:
    os.symlink("/dev/zero", folder / "x.png")


def link_loop(folder: Path) -> None:
    os.symlink(folder / "b.png", folder / "a.png")
    os.symlink(folder / "a.png", folder / "b.png")


def broken_link(folder: Path) -> None:
    os.symlink(folder / "gone.png", folder / "x.png")


def truncated(folder: Path) -> None:
    data = (folder / "000.png").read_bytes()
    (folder / "x.png").write_bytes(data[: len(data) // 2])


def empty(folder: Path) -> None:
    (folder / "x.png").write_bytes(b"")


def text_file(folder: Path) -> None:
    (folder / "notes.txt").write_text("not an image")


def not_an_image_png(folder: Path) -> None:
    (folder / "x.png").write_text("hello")


def image_16bit(folder: Path) -> None:
    Image.fromarray((np.arange(256).reshape(16, 16) * 200).astype(np.uint16)).save(folder / "x.png")


def image_cmyk(folder: Path) -> None:
    Image.new("CMYK", (16, 16), (10, 200, 30, 0)).save(folder / "x.jpg")


def image_palette_alpha(folder: Path) -> None:
    Image.new("P", (16, 16), 3).save(folder / "x.gif", transparency=3)


def extra_class(name: str, suffix: str, fmt: str = "PNG"):
    def build(tmp, fit_args, model):
        data = mk(tmp / "data")
        (data / name).mkdir()
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 60, 120, 200)).save(data / name / f"img{i}{suffix}", format=fmt)
        return fit_on(data, tmp, fit_args)

    return build


def classes_are(*names):
    def check(tmp, result):
        assert json.loads((tmp / "fit.json").read_text())["classes"] == sorted(names)

    return check


def skipped_has(*fragments):
    def check(tmp, result):
        reasons = " ".join(f"{s['path']} {s['reason']}" for s in json.loads((tmp / "fit.json").read_text())["skipped"])
        for fragment in fragments:
            assert fragment in reasons

    return check


def link_class_to_root(tmp, fit_args, model):
    data = mk(tmp / "data")
    os.symlink(data, data / "loop")
    return fit_on(data, tmp, fit_args)


def link_inside_class(tmp, fit_args, model):
    data = mk(tmp / "data")
    os.symlink(data / "red", data / "red" / "again")
    return fit_on(data, tmp, fit_args)


def link_class_twice(tmp, fit_args, model):
    data = mk(tmp / "data")
    os.symlink(data / "red", data / "rouge")
    return fit_on(data, tmp, fit_args)


def data_is_fifo(tmp, fit_args, model):
    os.mkfifo(tmp / "data")
    return fit_on(tmp / "data", tmp, fit_args)


def one_class(tmp, fit_args, model):
    data = mk(tmp / "data")
    shutil.rmtree(data / "red")
    shutil.rmtree(data / "green")
    return fit_on(data, tmp, fit_args)


def empty_class(tmp, fit_args, model):
    data = mk(tmp / "data")
    (data / "empty").mkdir()
    return fit_on(data, tmp, fit_args)


def bomb(tmp, fit_args, model):
    data = mk(tmp / "data")
    Image.new("RGB", (64, 64)).save(data / "red" / "bomb.png")  # over the lowered pixel limit below
    return fit_on(data, tmp, fit_args)


# CSV files ----------------------------------------------------------------------------------


def csv_case(body: str, *extra, encoding: str = "utf-8", fifo: bool = False, label=None):
    """mk data plus labels.csv: ``{red}`` etc. stand for the class folders' first images."""

    def build(tmp, fit_args, model):
        data = mk(tmp / "data")
        rows = "path,label\n" + "".join(
            f"data/{c}/{i:03d}.png,{label if label and c == 'red' else c}\n"
            for k, c in enumerate(("red", "green", "blue"))
            for i in range(4 * k, 4 * k + 4)
        )
        path = tmp / "labels.csv"
        path.write_bytes((rows + body).encode(encoding))
        if fifo:
            os.mkfifo(tmp / "data" / "fifo.png")
        return fit_on(path, tmp, fit_args, *extra)

    return build


def utf16_no_bom(tmp, fit_args, model):
    build = csv_case("")
    argv = build(tmp, fit_args, model)
    (tmp / "labels.csv").write_bytes((tmp / "labels.csv").read_text().encode("utf-16-le"))
    return argv


# Output folders -----------------------------------------------------------------------------


def out_is_file(tmp, fit_args, model):
    data = mk(tmp / "data")
    (tmp / "out").write_text("my notes")
    return ["fit", data, "--out", tmp / "out", *fit_args]


def out_unwritable(tmp, fit_args, model):
    data = mk(tmp / "data")
    (tmp / "locked").mkdir()
    os.chmod(tmp / "locked", 0o500)
    return ["fit", data, "--out", tmp / "locked" / "model", *fit_args]


def out_foreign_config(tmp, fit_args, model):
    data = mk(tmp / "data")
    (tmp / "out").mkdir()
    (tmp / "out" / "config.json").write_text('{"theirs": true}')
    os.chmod(tmp / "out" / "config.json", 0o600)
    return ["fit", data, "--out", tmp / "out", *fit_args]


def out_foreign_folder(tmp, fit_args, model):
    data = mk(tmp / "data")
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("years of work")
    return ["fit", data, "--out", tmp / "out", *fit_args]


def out_previous_model(tmp, fit_args, model):
    data = mk(tmp / "data")
    shutil.copytree(model, tmp / "out")
    (tmp / "out" / "notes.txt").write_text("kept")
    (tmp / "out" / "checkpoint.pt").write_bytes(b"stale")
    return ["fit", data, "--out", tmp / "out", *fit_args]


def untouched(name: str, text: str):
    def check(tmp, result):
        assert (tmp / name).read_text() == text

    return check


def previous_model_replaced(tmp, result):
    names = sorted(p.name for p in (tmp / "out").iterdir())
    assert names == ["MODEL_CARD.md", "config.json", "model.safetensors", "notes.txt", "novelty.safetensors"], names  # notes kept, checkpoint gone
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out.")]  # no leftovers beside


# Options ------------------------------------------------------------------------------------


def option(*extra, strategy: str | None = None):
    def build(tmp, fit_args, model):
        data = mk(tmp / "data")
        args = list(fit_args)
        if strategy is not None:
            args[args.index("--strategy") + 1] = strategy
        return ["fit", data, "--out", tmp / "out", *args, *extra]

    return build


def nothing_written(tmp, result):
    assert not (tmp / "out").exists()


# Markup and names ---------------------------------------------------------------------------


def markup_folder(tmp, fit_args, model):
    data = mk(tmp / "data")
    os.rename(data / "red", data / "[red]")
    return fit_on(data, tmp, fit_args)


def evaluate_prints(*names):
    """Fit succeeded: evaluate it on the same data and find each class name printed literally."""

    def check(tmp, result):
        argv = json.loads((tmp / "fit.json").read_text())["data"]
        evaluated = invoke("evaluate", tmp / "out", argv)
        assert evaluated.exit_code == 0, evaluated.output
        for name in names:
            assert f" {name} " in evaluated.output, evaluated.output

    return check


def markup_path_missing(tmp, fit_args, model):
    return ["fit", tmp / "[bold]data[/x]", "--out", tmp / "out", *fit_args]


# Model folders, evaluate, predict -----------------------------------------------------------


def edited_config(field: str, value):
    def build(tmp, fit_args, model):
        shutil.copytree(model, tmp / "m")
        config = json.loads((tmp / "m" / "config.json").read_text())
        config[field] = value
        (tmp / "m" / "config.json").write_text(json.dumps(config))
        return ["evaluate", tmp / "m", mk(tmp / "data")]

    return build


def pickled_weights(tmp, fit_args, model):
    import pickle

    shutil.copytree(model, tmp / "m")
    (tmp / "m" / "model.safetensors").write_bytes(pickle.dumps({"evil": 1}))
    return ["evaluate", tmp / "m", mk(tmp / "data")]


def unknown_class(*extra):
    def build(tmp, fit_args, model):
        data = mk(tmp / "data")
        (data / "purple").mkdir()
        for i in range(4):
            Image.new("RGB", (16, 16), (120, 0, 120)).save(data / "purple" / f"p{i}.png")
        return ["evaluate", model, data, "--json", tmp / "eval.json", *extra]

    return build


def unknown_scored_as_errors(tmp, result):
    metrics = json.loads((tmp / "eval.json").read_text())
    assert metrics["n"] == 16 and metrics["unknown_classes"] == {"purple": 4}
    assert metrics["per_class"]["purple"]["recall"] == 0.0 and metrics["accuracy"] <= 12 / 16


def predict_non_utf8(tmp, fit_args, model):
    data = mk(tmp / "data")
    os.rename(os.fsencode(data / "red" / "000.png"), os.path.join(os.fsencode(data / "red"), b"caf\xe9.png"))
    return ["predict", model, data, "--csv", tmp / "p.csv"]


def all_rows(n: int):
    def check(tmp, result):
        assert (tmp / "p.csv").read_bytes().count(b"\n") == n + 1

    return check


def predict_fifo(tmp, fit_args, model):
    os.mkfifo(tmp / "x.png")
    return ["predict", model, tmp / "x.png"]


def predict_text(tmp, fit_args, model):
    (tmp / "x.txt").write_text("hi")
    return ["predict", model, tmp / "x.txt"]


def predict_extensionless(tmp, fit_args, model):
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp / "photo", format="PNG")
    return ["predict", model, tmp / "photo"]


def predict_csv_is_folder(tmp, fit_args, model):
    (tmp / "p.csv").mkdir()
    return ["predict", model, mk(tmp / "data"), "--csv", tmp / "p.csv"]


RED = "red/"
CASES = [
    # special files and links
    Case("fifo named x.png in a class folder", with_file(fifo), 1, ("x.png", "FIFO", "--skip-bad")),
    Case("symlink to /dev/zero named x.png", with_file(dev_zero), 1, ("x.png", "character device")),
    Case("FIFO with --skip-bad --quiet is listed", with_file(fifo, "--skip-bad"), 0, ("x.png", "FIFO"), skipped_has("x.png")),
    Case("symlink loop between two files", with_file(link_loop), 1, ("a.png", "symbolic link loop")),
    Case("dangling symlink", with_file(broken_link), 1, ("x.png", "broken symbolic link")),
    Case("class folder linking to the data root", link_class_to_root, 0, ("loop", "symbolic link loop"), classes_are("blue", "green", "red")),
    Case("folder linking to its own parent inside a class", link_inside_class, 0, ("again",), classes_are("blue", "green", "red")),
    Case("second name (symlink) of a class folder", link_class_twice, 0, ("rouge", "already read"), classes_are("blue", "green", "red")),
    Case("data argument is a FIFO", data_is_fifo, 1, ("data", "FIFO")),
    # image files
    Case("truncated PNG", with_file(truncated), 1, ("x.png", "truncated")),
    Case("empty file", with_file(empty), 1, ("x.png", "empty")),
    Case("text saved as .png", with_file(not_an_image_png), 1, ("x.png", "not an image")),
    Case("text file in a class folder", with_file(text_file), 0, ("notes.txt", "left out"), skipped_has("notes.txt")),
    Case("decompression bomb", bomb, 1, ("bomb.png", "DecompressionBomb")),
    Case("16-bit grayscale image", with_file(image_16bit), 0),
    Case("CMYK JPEG", with_file(image_cmyk), 0),
    Case("palette GIF with transparency", with_file(image_palette_alpha), 0),
    Case(".jfif images", extra_class("jfif", ".jfif", "JPEG"), 0, (), classes_are("blue", "green", "jfif", "red")),
    Case("images without an extension", extra_class("noext", "", "PNG"), 0, (), classes_are("blue", "green", "noext", "red")),
    Case("a single class", one_class, 1, ("at least 2 classes",)),
    Case("an empty class folder", empty_class, 1, ("'empty' has no images",)),
    # CSV files
    Case("UTF-16 CSV with BOM", csv_case("", encoding="utf-16"), 0, (), classes_are("blue", "green", "red")),
    Case("UTF-16 CSV without BOM", utf16_no_bom, 1, ("labels.csv", "UTF-16")),
    Case("Latin-1 CSV", csv_case("data/red/000.png,rouge é\n", encoding="latin-1"), 1, ("labels.csv", "line 14", "UTF-8")),
    Case("CSV label NaN", csv_case("data/red/000.png,NaN\n"), 1, ("line 14", "NaN")),
    Case("CSV label empty", csv_case("data/red/000.png,\n"), 1, ("line 14", "missing")),
    Case("CSV duplicate row", csv_case("data/red/000.png,red\n"), 0, ("line 14", "repeats line 2"), skipped_has("repeats line 2")),
    Case("CSV contradictory rows", csv_case("data/red/000.png,blue\n"), 1, ("000.png", "line 2 says 'red'", "line 14 says 'blue'")),
    Case("CSV names a missing file", csv_case("data/red/gone.png,red\n"), 1, ("gone.png", "line 14", "file not found")),
    Case("CSV names a FIFO", csv_case("data/fifo.png,red\n", fifo=True), 1, ("fifo.png", "FIFO")),
    Case("CSV without a label column", lambda tmp, a, m: fit_on(_write(tmp / "l.csv", "path,class\nx.png,a\n"), tmp, a), 1, ("l.csv", "label")),
    # output folders
    Case("--out is a file", out_is_file, 1, ("is a file",), untouched("out", "my notes")),
    Case("--out in a read-only folder", out_unwritable, 1, ("locked", "not writable")),
    Case("--out holds a foreign config.json", out_foreign_config, 1, ("config.json", "not written by transferkit"), untouched("out/config.json", '{"theirs": true}')),
    Case("--out is a non-empty folder that is no model", out_foreign_folder, 1, ("thesis.tex", "refusing"), untouched("out/thesis.tex", "years of work")),
    Case("--out holds a previous model", out_previous_model, 0, (), previous_model_replaced),
    Case("--json is a folder", lambda tmp, a, m: fit_on(mk(tmp / "data"), tmp, a, "--json", tmp), 2, ("--json", "folder")),
    # options
    Case("--C inf", option("--C", "inf"), 2, ("--C", "inf"), nothing_written),
    Case("--C -1", option("--C", "-1"), 2, ("--C", "-1"), nothing_written),
    Case("--batch-size 1 --strategy full", option("--batch-size", 1, strategy="full"), 2, ("--batch-size", "BatchNorm"), nothing_written),
    Case("--freeze 99 with svm", option("--freeze", 99), 2, ("--freeze", "svm"), nothing_written),
    Case("unknown --strategy", option(strategy="magic"), 2, ("magic",), nothing_written),
    Case("--epochs many", option("--epochs", "many"), 2, ("--epochs", "valid integer"), nothing_written),
    # markup
    Case("CSV class named [/x]", csv_case("", label="[/x]"), 0, (), evaluate_prints("[/x]", "blue")),
    Case("class folder named [red]", markup_folder, 0, (), evaluate_prints("[red]", "blue")),
    Case("path holding rich markup", markup_path_missing, 1, ("[bold]data[/x]",)),
    # model folders, evaluate and predict
    Case("config.json image_size is text", edited_config("image_size", "big"), 1, ("image_size", "'big'")),
    Case("config.json classes is a string", edited_config("classes", "abc"), 1, ("classes",)),
    Case("config.json preprocessing is broken", edited_config("preprocessing", {"mean": "x"}), 1, ("preprocessing",)),
    Case("pickle instead of safetensors", pickled_weights, 1, ("model.safetensors",)),
    Case("evaluate with a class the model never saw", unknown_class(), 1, ("'purple' (4 images)", "--unknown-as-errors")),
    Case("evaluate --unknown-as-errors", unknown_class("--unknown-as-errors"), 0, ("purple",), unknown_scored_as_errors),
    Case("predict --csv with a non-UTF-8 file name", predict_non_utf8, 0, ("p.csv",), all_rows(12)),
    Case("predict on a FIFO", predict_fifo, 1, ("x.png", "FIFO")),
    Case("predict on a text file", predict_text, 1, ("x.txt",)),
    Case("predict on an extension-less image", predict_extensionless, 0, ("photo",)),
    Case("predict --csv is a folder", predict_csv_is_folder, 2, ("--csv", "folder")),
    Case("evaluate a missing model folder", lambda tmp, a, m: ["evaluate", tmp / "nothing", mk(tmp / "data")], 1, ("nothing", "no model folder")),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_hostile_input(case, fit_args, model, tmp_path, monkeypatch):
    if ROOT_USER and case.kind == "--out in a read-only folder":
        pytest.skip("root writes anywhere")
    if case.kind == "decompression bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is a bomb, 16x16 is not
    argv = case.build(tmp_path, fit_args, model)
    started = time.perf_counter()
    result = invoke(*argv)
    output = flat(result.output)
    assert result.exit_code == case.code, result.output
    assert "Traceback" not in result.output
    for fragment in case.says:
        assert flat(fragment) in output, (fragment, result.output)
    if case.check is not None:
        case.check(tmp_path, result)
    assert time.perf_counter() - started < 60  # never a hang


def test_the_corpus_covers_at_least_40_kinds():
    assert len({c.kind for c in CASES}) == len(CASES) >= 40


# ---------------------------------------------------------------------------------------------
# Python API: labels


@pytest.mark.parametrize(
    "labels, says",
    [
        (np.array([["a"], ["b"]] * 4), "labels.ravel()"),
        (["a", None] * 4, "labels[1]: the label is missing (None)"),
        (["a", float("nan")] * 4, "labels[1]: the label is missing (NaN)"),
        (["a", ["b"]] * 4, "labels[1]: expected a scalar label"),
        (["a", ""] * 4, "labels[1]: the label is missing"),
    ],
    ids=["shape (N, 1)", "None", "NaN", "a list", "empty"],
)
def test_array_labels_are_validated(labels, says):
    from transferkit.data import resolve_data
    from transferkit.errors import DataError

    images = np.zeros((8, 16, 16, 3), np.uint8)
    with pytest.raises(DataError) as error:
        resolve_data(images, labels)
    assert says in str(error.value)


# ---------------------------------------------------------------------------------------------
# The five worst findings, reproduced exactly


def test_1_a_dev_zero_symlink_or_fifo_never_hangs_the_real_program(tmp_path, tiny_weights):
    """Reproduction 1, through the installed entry point in a separate process (a hang would time out)."""
    data = mk(tmp_path / "data")
    os.symlink("/dev/zero", data / "red" / "x.png")
    os.mkfifo(data / "green" / "y.png")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", "from transferkit.cli import main; main()", "fit", str(data), "--out", str(tmp_path / "m"),
         "--strategy", "svm", "--backbone", TINY_BACKBONE, "--weights", str(tiny_weights), "--image-size", "16"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "1000"},
    )
    assert result.returncode == 1, result.stderr
    assert "x.png" in result.stderr and "y.png" in result.stderr and "Traceback" not in result.stderr
    assert time.perf_counter() - started < 120


def test_ctrl_c_stops_a_fit_promptly_and_says_how_to_resume(tmp_path, tiny_weights):
    """SIGINT during training: exit 130 within seconds, no traceback, no model half-written."""
    data = mk(tmp_path / "data", n=8)
    out = tmp_path / "m"
    process = subprocess.Popen(
        [sys.executable, "-c", "from transferkit.cli import main; main()", "fit", str(data), "--out", str(out),
         "--strategy", "finetune", "--epochs", "500", "--patience", "500", "--backbone", TINY_BACKBONE,
         "--weights", str(tiny_weights), "--image-size", "16", "--batch-size", "4", "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "1000"},
        # A shell's background job inherits SIGINT ignored, and Python then keeps it ignored: give the
        # fit the default disposition, as a terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 90
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert (out / "checkpoint.pt").exists(), process.communicate(timeout=30)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()


def _corrupt_npy(path: Path, how: str) -> None:
    """Zero or bit-flip the data part of a .npy file (its header stays valid)."""
    raw = bytearray(path.read_bytes())
    header = raw.index(b"\n") + 1
    if how == "zero":
        raw[header:] = bytes(len(raw) - header)
    else:
        raw[header + (len(raw) - header) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("part, how", [("features", "zero"), ("features", "flip"), ("images", "zero"), ("images", "flip")])
def test_2_a_corrupted_cache_never_changes_answers(part, how, fit_args, tmp_path):
    cache = tmp_path / "cache"
    args = [a if a != fit_args[fit_args.index("--cache-dir") + 1] else cache for a in fit_args]
    data = mk(tmp_path / "data")
    assert invoke("fit", data, "--out", tmp_path / "m", *args).exit_code == 0
    runtime = ["--cache-dir", cache, "--precision", "fp32"]  # where and how to predict: not saved with the model
    first = invoke("evaluate", tmp_path / "m", data, "--json", tmp_path / "a.json", *runtime)
    assert first.exit_code == 0, first.output
    files = [p for p in (cache / part).rglob("*.npy")]
    assert files
    for path in files:
        _corrupt_npy(path, how)
    second = invoke("evaluate", tmp_path / "m", data, "--json", tmp_path / "b.json", *runtime)
    assert second.exit_code == 0, second.output
    assert "damaged" in second.output and "Traceback" not in second.output
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a["accuracy"] == b["accuracy"] and a["confusion_matrix"] == b["confusion_matrix"]


def test_concurrent_writers_of_one_feature_cache_stay_consistent(tmp_path):
    """Two writers of the same entries (threads here; processes in benchmarks/soak.py) leave valid shards."""
    from concurrent.futures import ThreadPoolExecutor

    from transferkit.strategies.features import FeatureCache

    values = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    keys = [f"k{i}" for i in range(50)]

    def write(seed: int) -> None:
        FeatureCache(tmp_path, "m").put(keys, values)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(8)))
    with _no_warning():
        cache = FeatureCache(tmp_path, "m")
    np.testing.assert_array_equal(cache.get(keys), values)


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def test_3_a_bad_out_fails_before_any_training(fit_args, tmp_path):
    data = mk(tmp_path / "data")
    (tmp_path / "file").write_text("x")
    result = invoke("fit", data, "--out", tmp_path / "file", *fit_args)
    assert result.exit_code == 1 and "is a file" in result.output
    assert "fitted" not in result.output  # nothing trained, nothing lost


def test_4_a_checkpoint_is_removed_after_a_successful_fit(tiny_weights, tmp_path):
    data = mk(tmp_path / "data")
    result = invoke("fit", data, "--out", tmp_path / "m", "--strategy", "finetune", "--epochs", 1, "--backbone", TINY_BACKBONE,
                    "--weights", tiny_weights, "--image-size", 16, "--batch-size", 4, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors", "novelty.safetensors"]


# ---------------------------------------------------------------------------------------------
# Fault injection: fail or kill between every two steps of a save, then load


@pytest.fixture(scope="module")
def two_models(fit_args, tmp_path_factory):
    from transferkit import load

    root = tmp_path_factory.mktemp("two")
    data = mk(root / "data")
    assert invoke("fit", data, "--out", root / "a", *fit_args).exit_code == 0
    other = list(fit_args)
    other[other.index("--C") + 1] = 0.01
    assert invoke("fit", data, "--out", root / "b", *other).exit_code == 0
    return load(root / "a"), load(root / "b"), data


def _weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize("step", ["folder-created", "weights-written", "config-written", "extras-linked",
                                  "old-moved-aside", "new-in-place", "old-removed"])
@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_save_cut_at_any_step_leaves_the_old_or_the_new_model(two_models, step, fault, tmp_path):
    from transferkit import load, persistence, save

    old, new, data = two_models
    target = tmp_path / "model"
    save(old, target)
    (target / "notes.txt").write_text("mine")
    old_bytes = _weights(target)

    def hook(name: str) -> None:
        if name == step:
            if fault == "kill":
                os._exit(9)  # like kill -9: no cleanup, no finally
            raise RuntimeError(f"injected at {name}")

    if fault == "raise":
        persistence._fault_hook = hook
        try:
            with pytest.raises(RuntimeError, match="injected"):
                save(new, target)
        finally:
            persistence._fault_hook = None
    else:
        pid = os.fork()
        if pid == 0:  # the child saves and is killed at the step
            try:
                persistence._fault_hook = hook
                save(new, target)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    loaded = load(target)  # finishes a swap that a kill cut between the two renames
    weights = _weights(target)
    new_bytes = _weights_of(new, tmp_path)
    assert weights in (old_bytes, new_bytes)
    if fault == "raise" and persistence.SAVE_STEPS.index(step) <= persistence.SAVE_STEPS.index("old-moved-aside"):
        assert weights == old_bytes  # a failed save puts the old model back
    assert list(loaded.classes_) == ["blue", "green", "red"]
    assert (target / "notes.txt").read_text() == "mine"
    save(new, target)  # and the next save works and cleans up what a kill left beside
    assert _weights(target) == new_bytes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")) == []


def _weights_of(classifier, tmp_path: Path) -> bytes:
    from transferkit import save

    folder = tmp_path / "reference"
    if not folder.exists():
        save(classifier, folder)
    return _weights(folder)


# ---------------------------------------------------------------------------------------------
# The CLI's edge: an unexpected error is one line (exit 1); --debug shows its traceback


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(model, tmp_path, monkeypatch):
    from transferkit import persistence

    def broken(path, **runtime):
        raise TypeError("something unforeseen")

    monkeypatch.setattr(persistence, "load_model", broken)
    data = mk(tmp_path / "data")
    result = invoke("evaluate", model, data)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unexpected TypeError: something unforeseen" in flat(result.output) and "--debug" in result.output
    result = invoke("--debug", "evaluate", model, data)
    assert isinstance(result.exception, TypeError)  # re-raised: typer prints the traceback


def test_config_errors_are_usage_errors(tmp_path):
    result = invoke("fit", mk(tmp_path / "data"), "--out", tmp_path / "m", "--augment", "wild", "--quiet")
    assert result.exit_code == 2 and "wild" in result.output and "Traceback" not in result.output
