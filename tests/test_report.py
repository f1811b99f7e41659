"""The HTML report: every section, numbers equal to `evaluate --json`, user strings escaped, heatmaps; compare's report."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_BACKBONE, make_images
from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit.cli import app

runner = CliRunner()
# Class and file names a user might have, and an attacker would: markup and both quotes.
HOSTILE_CLASSES = {"red": '<script>alert("x")</script>', "green": "O'Brien \"quoted\"", "blue": "plain & simple"}
HOSTILE_FILE = "<img src=x onerror=alert(1)>"
MODEL_SECTIONS = ("metrics", "per-class", "confusion", "curves", "advice", "mistakes")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """A CSV of colour images under hostile class and file names (a class name may hold a "/")."""
    root = tmp_path_factory.mktemp("hostile")
    images, labels = make_images(n_per_class=6, size=32, seed=3)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / f"{HOSTILE_FILE}{i}.png")
            writer.writerow([f"{HOSTILE_FILE}{i}.png", HOSTILE_CLASSES[label]])
    return root / "labels.csv"


@pytest.fixture(scope="module")
def hostile_model(hostile_folder, tiny_weights, tmp_path_factory):
    return fit_tiny_model(hostile_folder, tiny_weights, tmp_path_factory.mktemp("m") / "model", epochs=2)


def test_report_has_every_section_and_the_numbers_of_evaluate(hostile_model, hostile_folder, tmp_path):
    result = invoke("evaluate", hostile_model, hostile_folder, "--json", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    result = invoke("report", hostile_model, hostile_folder, "--out", tmp_path / "report", "--positive", HOSTILE_CLASSES["red"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    for section in MODEL_SECTIONS:
        assert f'<section id="{section}">' in html, section
    reported = json.loads((tmp_path / "report" / "report.json").read_text())["metrics"]
    evaluated.pop("seconds")
    evaluated.pop("skipped")  # the files evaluate --skip-bad left out: a list of the command, not a score
    assert {k: reported[k] for k in evaluated} == evaluated
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert f'data-metric="{key}">{evaluated[key]:.4f}<' in html
    # --positive: the binary view "red's hostile name against the rest", computed by scikit-learn
    assert reported["binary_positive"] == [HOSTILE_CLASSES["red"]]
    assert f'data-metric="binary_accuracy">{reported["binary_accuracy"]:.4f}<' in html
    # Curves from the fit history, and the figures both inline and as files.
    assert "training_curves.png" in {p.name for p in (tmp_path / "report").iterdir()}
    assert html.count('src="data:image/png;base64,') >= 3 and "src=\"http" not in html


def test_user_strings_are_escaped(hostile_model, hostile_folder, tmp_path):
    result = invoke("report", hostile_model, hostile_folder, "--out", tmp_path / "report", "--mistakes", 24)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html  # the class name, as text
    assert "O&#39;Brien &#34;quoted&#34;" in html and "plain &amp; simple" in html
    mistakes = json.loads((tmp_path / "report" / "report.json").read_text())["mistakes"]
    if mistakes:  # file names appear in the mistakes grid only
        assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_mistakes_are_the_most_confident_with_a_heatmap_each(hostile_model, hostile_folder, tmp_path):
    result = invoke("report", hostile_model, hostile_folder, "--out", tmp_path / "report", "--mistakes", 3)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    mistakes = report["mistakes"]
    wrong = report["metrics"]["n"] - int(np.trace(np.array(report["metrics"]["confusion_matrix"])))
    assert len(mistakes) == min(3, wrong)
    assert all(m["true"] != m["predicted"] for m in mistakes)
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    for m in mistakes:
        heatmap = Image.open(tmp_path / "report" / f"mistake_{m['rank']:02d}_heatmap.png")
        assert heatmap.size[0] >= 32
    html = (tmp_path / "report" / "report.html").read_text()
    assert len(re.findall(r'class="mistake"', html)) == len(mistakes)


def test_advice_section_shows_the_advisors_measurements_and_race(hostile_model, hostile_folder, tmp_path):
    advice = {
        "strategy": "svm", "freeze": None, "image_size": 32, "reasons": ["fewer than 1000 images <small>"], "warnings": [],
        "domain_shift": {"score": 0.5, "stages": {"stem": 0.1, "stage1": 0.7}, "imagenet_entropy": 0.9},
        "transferability": {TINY_BACKBONE: {"bottleneck": 0.3, "stages": {"stem": -0.2, "stage1": 0.1}}},
        "race": {"verdict": "the measurement agrees with the rule", "results": [{"strategy": "svm", "folds": [{}, {}], "cv_mean": 0.9, "fit_seconds": 3.0}]},
    }
    (tmp_path / "advice.json").write_text(json.dumps(advice))
    result = invoke("report", hostile_model, hostile_folder, "--out", tmp_path / "report", "--advice", tmp_path / "advice.json")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    advice_html = html.split('<section id="advice">')[1].split("</section>")[0]
    assert "fewer than 1000 images &lt;small&gt;" in advice_html and "the measurement agrees with the rule" in advice_html
    assert "domain shift per stage" in advice_html and "LogME per stage" in advice_html
    assert {"domain_shift.png", f"logme_{TINY_BACKBONE}.png"} <= {p.name for p in (tmp_path / "report").iterdir()}


def test_an_auto_models_report_shows_its_search(image_folder, tiny_weights, tmp_path):
    # issue 33 item 7: a model whose auto search raced its candidates was reported as "No race"
    model = fit_tiny_model(image_folder, tiny_weights, tmp_path / "model", strategy="auto", budget_minutes=None)
    advice = json.loads((model / "config.json").read_text())["advice"]
    trials = advice["trials"]
    assert len([t for t in trials if t["accuracy"] is not None]) >= 2
    result = invoke("report", model, image_folder, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    advice_html = html.split('<section id="advice">')[1].split("</section>")[0]
    assert "No race" not in advice_html and "The search" in advice_html
    rows = re.findall(r"<tr( class=\"winner\")?><td>(.*?)</td>.*?</tr>", advice_html.split("The search")[1], re.S)
    labels = [label for _, label in rows]
    assert labels == [t["label"] for t in trials]  # every candidate, in the order they ran
    winners = [label for marked, label in rows if marked]
    assert winners == [t["label"] for t in trials][advice["chosen"]:advice["chosen"] + 1]
    assert advice["strategy"] == trials[advice["chosen"]]["strategy"]
    for trial in trials:
        if trial["accuracy"] is not None:
            assert f"{trial['accuracy']:.4f}" in advice_html
    assert advice["reasons"][-1].split(":")[0] in advice_html  # the decision, in the reasons
    # a race from `advise --measure` (--advice) joins the search rather than hiding it
    race = {"strategy": "svm", "reasons": [], "race": {"verdict": "the race agrees", "results": []}}
    (tmp_path / "advice.json").write_text(json.dumps(race))
    result = invoke("report", model, image_folder, "--out", tmp_path / "raced", "--advice", tmp_path / "advice.json", "--mistakes", 0)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "raced" / "report.html").read_text()
    assert "The search" in html and "the race agrees" in html and "No race" not in html


def test_the_winner_of_advice_saved_before_it_was_recorded_is_found_from_its_settings():
    from transferkit.report.build import search_trials

    settings = {"strategy": "svm", "image_size": 32, "class_weight": None, "symmetries": "none", "feature_layers": "bottleneck", "freeze": None}
    advice = {**settings, "trials": [{**settings, "class_weight": "balanced", "accuracy": 0.9}, {**settings, "accuracy": 0.8},
                                     {**settings, "accuracy": None, "skipped": "over budget"}]}
    assert [t["winner"] for t in search_trials(advice)] == [False, True, False]
    assert [t["winner"] for t in search_trials({**advice, "chosen": 0})] == [True, False, False]
    assert search_trials({"strategy": "svm", "trials": None}) == []


def test_no_race_is_said_only_when_there_was_none(hostile_model, hostile_folder, tmp_path):
    result = invoke("report", hostile_model, hostile_folder, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    advice_html = (tmp_path / "report" / "report.html").read_text().split('<section id="advice">')[1].split("</section>")[0]
    assert "explicit strategy" in advice_html and "The search" not in advice_html


def test_evaluate_report_and_predict_explain(hostile_model, hostile_folder, tmp_path):
    result = invoke("evaluate", hostile_model, hostile_folder, "--report", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "report.html").is_file()
    images = sorted(hostile_folder.parent.glob("*.png"))[:4]
    result = invoke("predict", hostile_model, *images, "--explain", tmp_path / "heatmaps")
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "heatmaps").iterdir())
    assert len(written) == 4 and all(p.name.endswith(".heatmap.png") for p in written)
    panel = np.asarray(Image.open(written[0]).convert("RGB"))
    assert panel.shape[0] >= 160 and panel.shape[1] > 2 * 160  # the image, the overlay and the colour scale, enlarged


def test_a_binary_models_explain_maps_images_predicted_as_either_class(tiny_weights, tmp_path):
    # issue 33 item 4: a 2-class svm model's folded head has a constant logit for class 0, and every
    # image predicted as class 0 got "no useful heatmap"
    import shutil

    from conftest import write_image_folder

    folder = write_image_folder(tmp_path / "data", n_per_class=6, size=32)
    shutil.rmtree(folder / "blue")
    model = fit_tiny_model(folder, tiny_weights, tmp_path / "model", strategy="svm")
    images = sorted(folder.rglob("*.png"))
    result = invoke("predict", model, *images, "--explain", tmp_path / "heatmaps", "--json", tmp_path / "predictions.json")
    assert result.exit_code == 0, result.output
    predicted = {row["label"] for row in json.loads((tmp_path / "predictions.json").read_text())["predictions"]}
    assert predicted == {"green", "red"}
    for path in sorted((tmp_path / "heatmaps").iterdir()):
        panel = np.asarray(Image.open(path).convert("RGB")).astype(int)
        middle = panel[:160, 168:328]
        assert np.ptp(middle, axis=2).max() > 40, path.name  # a coloured overlay, not the greyed "no useful map"


def test_compare_report_has_the_cv_table_and_chart(image_folder, tiny_weights, tmp_path):
    result = invoke(
        "compare", image_folder, "--strategies", "svm,logistic", "--cv", 2, "--backbone", TINY_BACKBONE, "--weights", tiny_weights,
        "--image-size", 32, "--device", "cpu", "--json", tmp_path / "compare.json", "--report", tmp_path / "report",
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    comparison = json.loads((tmp_path / "compare.json").read_text())
    assert '<section id="cv-table">' in html and '<section id="cv-chart">' in html and (tmp_path / "report" / "compare.png").is_file()
    for result in comparison["results"]:
        assert f"{result['cv_mean']:.4f} ± {result['cv_std']:.4f}" in html


def test_report_errors_are_user_errors(hostile_model, tmp_path):
    result = invoke("report", hostile_model, tmp_path / "missing", "--out", tmp_path / "r")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (tmp_path / "advice.json").write_text("{not json")
    result = invoke("report", hostile_model, tmp_path, "--out", tmp_path / "r", "--advice", tmp_path / "advice.json")
    assert result.exit_code == 1


def test_a_pixels_model_reports_without_heatmaps(tmp_path):
    import transferkit
    from conftest import make_images
    from transferkit.data import ImageSet
    from transferkit.report.build import write_report

    images, labels = make_images(6, 16)
    labels = labels[::-1]  # some mistakes to show
    clf = transferkit.ImageClassifier(strategy="pixels", image_size=16, device="cpu", precision="fp32", cache_dir=False).fit(images, labels)
    path = write_report(clf, ImageSet(sources=list(images), labels=list(reversed(labels))), tmp_path / "r", data_name="x", top_mistakes=3, progress=False)
    assert "no heatmap: this model has no convolutional stages" in path.read_text()


def test_a_report_removes_the_files_it_wrote_before_and_no_longer_writes(tmp_path):
    # issue 33 item 17: mistake PNGs of an earlier run stayed in the folder after --mistakes 0
    import transferkit
    from transferkit.data import ImageSet
    from transferkit.report.build import write_report

    images, labels = make_images(6, 16)
    clf = transferkit.ImageClassifier(strategy="pixels", image_size=16, device="cpu", precision="fp32", cache_dir=False).fit(images, labels)
    wrong = ImageSet(sources=list(images), labels=list(reversed(labels)))
    out = tmp_path / "r"

    def mistake_files():
        return sorted(p.name for p in out.glob("mistake_*"))

    write_report(clf, wrong, out, data_name="x", top_mistakes=3, progress=False)
    assert len(mistake_files()) == 6
    (out / "mine.png").write_bytes(b"the user's")  # not the report's: stays
    write_report(clf, wrong, out, data_name="x", top_mistakes=0, progress=False)
    assert mistake_files() == [] and (out / "mine.png").read_bytes() == b"the user's"
    assert {"report.html", "report.json", "confusion_counts.png"} <= {p.name for p in out.iterdir()}
    # a report written before the list of files existed: its mistakes are found from report.json
    write_report(clf, wrong, out, data_name="x", top_mistakes=2, progress=False)
    summary = json.loads((out / "report.json").read_text())
    del summary["files"]
    (out / "report.json").write_text(json.dumps(summary))
    write_report(clf, wrong, out, data_name="x", top_mistakes=1, progress=False)
    assert mistake_files() == ["mistake_01.png", "mistake_01_heatmap.png"] and (out / "mine.png").exists()


def test_augment_preview_gives_torch_only_writable_arrays(image_folder, tmp_path, monkeypatch):
    # issue 33 item 17: the cached images are a read-only memory map, and torch.from_numpy on them
    # warned "The given NumPy array is not writable" (once per process, so checked at the call)
    import torch

    from transferkit.data import resolve_data
    from transferkit.report.augment_preview import write_augment_preview

    real, seen = torch.from_numpy, []

    def from_numpy(array):
        seen.append(array.flags.writeable)
        return real(array)

    monkeypatch.setattr(torch, "from_numpy", from_numpy)
    write_augment_preview(resolve_data(image_folder), tmp_path / "aug", presets=["standard"], per_class=1, views=2, image_size=32)
    assert seen and all(seen)


def test_augment_preview_writes_one_grid_per_preset(image_folder, tmp_path):
    result = invoke("augment-preview", image_folder, "--out", tmp_path / "aug", "--presets", "none,strong", "--views", 3,
                    "--image-size", 32)
    assert result.exit_code == 0, result.output
    grids = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in (tmp_path / "aug").iterdir()}
    assert set(grids) == {"augment_none.png", "augment_strong.png"}
    none, strong = grids["augment_none.png"], grids["augment_strong.png"]
    assert none.shape == strong.shape and none.shape[0] >= 6 * 32  # 2 images of each of 3 classes, one row each
    first_row = slice(20, 52)
    image = none[first_row, 96:128]
    assert all(np.array_equal(image, none[first_row, 96 + k * 36 : 128 + k * 36]) for k in range(1, 4))  # none: unchanged
    assert not all(np.array_equal(image, strong[first_row, 96 + k * 36 : 128 + k * 36]) for k in range(1, 4))
    bad = invoke("augment-preview", image_folder, "--out", tmp_path / "x", "--presets", "wild")
    assert bad.exit_code == 2 and "wild" in bad.output
