"""Precision by measurement, and the same table for any --jobs, backend and thread count.

This suite runs on CPUs without native bf16 too: there, ``cpu_supports_bf16`` is patched to
say yes, so ``precision="auto"`` takes the bf16 path, whose kernels are then emulated. The
mechanism under test (timing once per machine and network, checking against fp32 on the data,
fixed threads and fp32 in CV jobs) is the real one; only the CPU flag is faked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import TINY_BACKBONE, make_images
from transferkit import ImageClassifier
from transferkit.cli import app
from transferkit.strategies.features import FeatureExtractor, model_digest
from transferkit.training import runtime as runtime_module
from transferkit.strategies.linear import JUDGE_SAMPLE, judge_by_predictions, settle_feature_precision
from transferkit.training.runtime import (
    MIN_AGREEMENT,
    judge_predictions,
    job_threads,
    in_reproducible_job,
    measured_inference_precision,
    reproducible_job,
    resolve_runtime,
    speed_file,
)


@pytest.fixture
def bf16_native(monkeypatch):
    """A CPU that reports native bf16 (AVX-512 BF16 / AMX), whatever this one has."""
    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: True)


def _extractor(tiny_weights, cache, precision="auto"):
    return FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=resolve_runtime("cpu", precision), cache_dir=cache)


def _write_speed(cache, tiny_weights, size, fp32, bf16):
    """What a first run measured on this machine (the file measured_inference_precision keeps)."""
    extractor = _extractor(tiny_weights, False, "fp32")
    key = f"features|{model_digest(extractor.model, 'v2')}|{size}"
    path = speed_file(cache, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fp32": fp32, "bf16": bf16, "key": key}))
    return path


def test_auto_without_native_bf16_is_fp32_and_says_why(monkeypatch):
    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: False)
    runtime = resolve_runtime("cpu", "auto")
    assert runtime.precision == "fp32" and "no native bf16" in runtime.precision_reason


def _settled(tiny_weights, cache, images, labels):
    """The fit's verdict on this runtime, and an extractor built on it (which adopts it)."""
    params = {"backbone": TINY_BACKBONE, "weights": str(tiny_weights), "cache_dir": cache}
    targets = np.unique(labels, return_inverse=True)[1]
    runtime = settle_feature_precision(resolve_runtime("cpu", "auto"), params, images, targets)
    return runtime, FeatureExtractor.from_params(params, runtime)


def test_the_speed_is_measured_once_per_machine_and_network(bf16_native, tiny_weights, tmp_path, monkeypatch):
    images, labels = make_images(4, 32)
    forwards = []
    real = FeatureExtractor._forward
    monkeypatch.setattr(FeatureExtractor, "_forward", lambda self, rt, batch: forwards.append((rt.precision, len(batch))) or real(self, rt, batch))
    runtime, first = _settled(tiny_weights, tmp_path, images, labels)
    first.transform(images)
    files = list((tmp_path / "precision").glob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["fp32"] > 0 and record["bf16"] > 0 and "threads" in record["machine"]
    timed = [call for call in forwards if call[1] == runtime_module.SPEED_BATCH]
    assert sorted(p for p, _ in timed) == ["bf16", "bf16", "fp32", "fp32"]  # warm + timed, each
    assert first.runtime.precision in ("fp32", "bf16") and first.runtime.precision_reason.startswith("measured")
    assert first.runtime.precision == runtime.feature_verdict["precision"]
    assert runtime.precision == "bf16" and runtime.auto_precision  # training still measures its own

    forwards.clear()  # a second fit (same machine and network) reads the timing
    second, _ = _settled(tiny_weights, tmp_path, images[:8], labels[:8])
    assert not [call for call in forwards if call[1] == runtime_module.SPEED_BATCH]
    assert second.feature_verdict["measured"]["inference"]["images_per_second"]["fp32"] == pytest.approx(record["fp32"])


@pytest.mark.parametrize("agreement, loss, accepted", [
    (1.0, 0, True),                     # the same predictions everywhere
    (0.96, 0, True),                    # above MIN_AGREEMENT; as many images won as lost
    (0.94, 0, False),                   # below MIN_AGREEMENT, even at the same accuracy
    (0.985, 3, True),                   # 3 images lost: within 2 standard errors of the paired difference
    (0.98, 4, False),                   # 4 lost: beyond them
    (0.96, 2, True),                    # 2 lost net, among 8 disagreements
])
def test_the_rule_judges_predictions_on_both_sides_of_its_thresholds(agreement, loss, accepted):
    n = 200
    targets = np.arange(n) % 4
    fp32 = targets.copy()
    bf16 = targets.copy()
    differ = round((1 - agreement) * n)
    wrong = (targets + 1) % 4
    bf16[:loss] = wrong[:loss]  # images bf16 gets wrong and fp32 right
    swapped = differ - loss  # the rest of the disagreements cancel: as many won by bf16 as lost
    fp32[loss:loss + swapped // 2] = wrong[loss:loss + swapped // 2]
    bf16[loss + swapped // 2:loss + swapped] = wrong[loss + swapped // 2:loss + swapped]
    verdict, figures = judge_predictions(fp32, bf16, targets)
    assert figures["prediction_agreement"] == pytest.approx(1 - differ / n)
    assert figures["accuracy_loss"] == pytest.approx(loss / n)
    assert verdict is accepted and MIN_AGREEMENT == 0.95


def test_faster_bf16_is_used_only_when_its_predictions_hold_up(bf16_native, tiny_weights, tmp_path, monkeypatch):
    images, labels = make_images(8, 32)
    _write_speed(tmp_path, tiny_weights, 32, fp32=100.0, bf16=300.0)
    reference = _extractor(tiny_weights, False, "fp32").transform(images)

    runtime, chosen = _settled(tiny_weights, tmp_path, images, labels)
    record = runtime.feature_verdict["measured"]["inference"]
    assert runtime.feature_verdict["precision"] == "bf16" and "agrees with fp32" in runtime.feature_verdict["why"]
    assert record["prediction_agreement"] >= MIN_AGREEMENT and record["images"] == len(images)
    features = chosen.transform(images)
    assert chosen.runtime.precision == "bf16" and not np.array_equal(features, reference)  # bf16's own features

    # bf16 features that carry no information: the classifier's predictions from them fall apart
    real = FeatureExtractor._forward
    monkeypatch.setattr(FeatureExtractor, "_forward", lambda self, rt, batch: (
        torch.randn_like(real(self, rt, batch).float()) if rt.precision == "bf16" else real(self, rt, batch)))
    _write_speed(tmp_path / "other", tiny_weights, 32, fp32=100.0, bf16=300.0)
    refused, extractor = _settled(tiny_weights, tmp_path / "other", images, labels)
    assert refused.feature_verdict["precision"] == "fp32" and "does not agree" in refused.feature_verdict["why"]
    np.testing.assert_array_equal(extractor.transform(images), reference)


def test_without_labelled_images_frozen_features_stay_fp32(bf16_native, tiny_weights, tmp_path):
    images, _ = make_images(3, 32)
    extractor = _extractor(tiny_weights, tmp_path)
    np.testing.assert_array_equal(extractor.transform(images), _extractor(tiny_weights, False, "fp32").transform(images))
    assert extractor.runtime.precision == "fp32" and "judges it on its labelled images" in extractor.runtime.precision_reason


def test_the_judge_refuses_bf16_when_a_class_has_one_image(tiny_weights):
    verdict, figures = judge_by_predictions(np.array([0, 0, 0, 1]))(torch.zeros(4, 3), torch.zeros(4, 3))
    assert not verdict and "too few" in figures["why"]
    assert JUDGE_SAMPLE >= 200  # enough images that the 3 lost ones the rule allows are at most 1.5 points


def test_slower_bf16_is_not_used(bf16_native, tiny_weights, tmp_path):
    images, labels = make_images(3, 32)
    _write_speed(tmp_path, tiny_weights, 32, fp32=300.0, bf16=100.0)
    _, extractor = _settled(tiny_weights, tmp_path, images, labels)
    np.testing.assert_array_equal(extractor.transform(images), _extractor(tiny_weights, False, "fp32").transform(images))
    assert extractor.runtime.precision == "fp32" and "not 1.1x faster" in extractor.runtime.precision_reason


def test_network_predictions_under_auto_are_the_fp32_ones(bf16_native, tiny_params, tmp_path):
    """On a bf16-native CPU, precision='auto' predicts exactly as fp32 (issue 33 item 3: one
    answer from predict, serve and the ONNX file)."""
    images, labels = make_images(6, 32)
    classifier = ImageClassifier(**dict(tiny_params, epochs=1, cache_dir=str(tmp_path))).fit(images, labels)
    reference = classifier.predict_proba(images)
    classifier.set_params(precision="auto")
    np.testing.assert_array_equal(classifier.predict_proba(images), reference)


def test_fit_json_records_the_inference_precision_and_why(bf16_native, image_folder, tiny_weights, tmp_path):
    result = CliRunner().invoke(app, [
        "fit", str(image_folder), "--out", str(tmp_path / "m"), "--strategy", "logistic", "--C", "1", "--backbone", TINY_BACKBONE,
        "--weights", str(tiny_weights), "--image-size", "32", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
        "--json", str(tmp_path / "fit.json"), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    precision = json.loads((tmp_path / "fit.json").read_text())["precision"]
    assert precision["chosen"] in ("fp32", "bf16") and precision["why"].startswith("measured")
    assert set(precision["measured"]["inference"]["images_per_second"]) == {"fp32", "bf16"}
    assert precision["measured"]["inference"]["required_agreement"] == MIN_AGREEMENT


def test_a_cv_job_uses_fixed_threads_and_fp32_for_auto(bf16_native, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_JOB_THREADS", "1")
    outside = torch.get_num_threads()
    assert resolve_runtime("cpu", "auto").precision == "bf16"
    with reproducible_job() as threads:
        assert threads == 1 and torch.get_num_threads() == 1
        runtime = resolve_runtime("cpu", "auto")
        assert runtime.precision == "fp32" and not runtime.auto_precision and "cross-validation job" in runtime.precision_reason
        assert resolve_runtime("cpu", "bf16").precision == "bf16"  # an explicit choice is kept
    assert torch.get_num_threads() == outside
    monkeypatch.setenv("TRANSFERKIT_JOB_THREADS", "0")
    with pytest.raises(Exception, match="TRANSFERKIT_JOB_THREADS expected a positive integer"):
        job_threads()


def _compare_table(folder, tiny_weights, tmp_path, name, *extra):
    args = ["compare", str(folder), "--strategies", "svm,finetune", "--cv", "2", "--backbone", TINY_BACKBONE,
            "--weights", str(tiny_weights), "--image-size", "32", "--epochs", "2", "--device", "cpu",
            "--cache-dir", str(tmp_path / f"cache-{name}"), "--json", str(tmp_path / f"{name}.json"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / f"{name}.json").read_text())
    return [(r["strategy"], r["fold_scores"], r["balanced_accuracy"], r["macro_f1"]) for r in report["results"]]


@pytest.mark.parametrize("precision", [[], ["--precision", "bf16"]], ids=["default", "forced-bf16"])
def test_compare_jobs_2_equals_jobs_1(precision, image_folder, tiny_weights, tmp_path):
    """Separate caches: each run computes its own features. Training steps differ in the last bits
    with the thread count (fp32 too), so without fixed job threads the head/finetune rows drift."""
    one = _compare_table(image_folder, tiny_weights, tmp_path, "jobs1", "--jobs", "1", *precision)
    two = _compare_table(image_folder, tiny_weights, tmp_path, "jobs2", "--jobs", "2", *precision)
    assert one == two
    assert [name for name, *_ in one] == ["svm", "finetune"]


def test_compare_on_a_bf16_native_cpu_is_the_same_with_threads(bf16_native, image_folder, tiny_weights, tmp_path):
    # threading: the patched CPU flag holds in the workers too
    one = _compare_table(image_folder, tiny_weights, tmp_path, "jobs1", "--jobs", "1")
    two = _compare_table(image_folder, tiny_weights, tmp_path, "threads2", "--jobs", "2", "--backend", "threading")
    assert one == two


def test_a_fold_job_trains_the_same_model_whatever_threads_its_worker_had(tiny_params):
    """The mechanism itself: loky gives a worker cores/jobs threads, --jobs 1 all of them."""
    images, labels = make_images(6, 32)
    outside = torch.get_num_threads()
    probabilities = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with reproducible_job():
                model = ImageClassifier(**dict(tiny_params, strategy="full", epochs=2, cache_dir=False)).fit(images, labels)
                probabilities.append(model.predict_proba(images))
    finally:
        torch.set_num_threads(outside)
    np.testing.assert_array_equal(probabilities[0], probabilities[1])


def test_info_shows_the_rule_and_what_was_measured_here(bf16_native, tiny_weights, tmp_path, monkeypatch):
    from transferkit.info import system_info
    from transferkit.report.tables import info_rows, info_table

    monkeypatch.setattr("transferkit.info.native_bf16", lambda: True)

    images, labels = make_images(2, 32)
    _settled(tiny_weights, tmp_path, images, labels)  # measures and keeps the speeds
    precision = system_info(tmp_path)["precision"]
    (measured,) = precision["inference_measurements"]
    assert measured["what"] == "features" and measured["image_size"] == "32"
    assert measured["fp32_images_per_second"] > 0 and measured["bf16_images_per_second"] > 0
    assert "agreement with fp32" in precision["auto_cpu"] and precision["job_threads"] >= 1
    assert system_info(tmp_path, torch_view=True)["precision"]["inference_measurements"] == [measured]  # torch's key, in full
    rows = dict(info_rows(system_info(tmp_path)))
    assert rows["measured speed"].startswith("features of ") and "threads per cv job" in rows
    # the key stays on one line of an 80-column terminal (the table test finds every key whole)
    console = Console(width=80, record=True)
    console.print(info_table(system_info(tmp_path)))
    assert any(line.lstrip("│ ").startswith("measured speed") for line in console.export_text().splitlines())


def test_overlapping_jobs_keep_the_job_threads_until_the_last_one_leaves():
    """Jobs of the threading backend overlap: the first to leave must not restore the count under the other."""
    import threading

    outside = torch.get_num_threads()
    entered, first_left, seen = threading.Barrier(2), threading.Event(), {}

    def job(name):
        with reproducible_job() as threads:
            entered.wait()
            if name == "first":
                seen["threads"] = threads
            else:
                first_left.wait()
                seen["during"] = torch.get_num_threads()  # the first job has left; this one still runs
        if name == "first":
            first_left.set()

    workers = [threading.Thread(target=job, args=(name,)) for name in ("first", "second")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen["during"] == seen["threads"] and torch.get_num_threads() == outside
    assert not in_reproducible_job()


def test_the_threading_backend_runs_one_job_at_a_time_so_its_random_draws_are_the_sequential_ones():
    """torch's random generator is one per process: jobs of the threading backend must not interleave."""
    import threading
    import time

    from transferkit.evaluation.jobs import run_parallel

    lock, state = threading.Lock(), {"running": 0, "most": 0}

    def job(seed):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        torch.manual_seed(seed)
        first = torch.rand(3)
        time.sleep(0.05)  # a second job running now would reseed under this one
        drawn = torch.cat([first, torch.rand(3)])
        with lock:
            state["running"] -= 1
        return drawn

    threaded = list(run_parallel(job, [(seed,) for seed in range(4)], backend="threading", n_jobs=2))
    sequential = list(run_parallel(job, [(seed,) for seed in range(4)], backend="sequential", n_jobs=1))
    assert state["most"] == 1
    assert all(torch.equal(a, b) for a, b in zip(threaded, sequential))


def test_every_prediction_path_decides_precision_in_one_place(monkeypatch):
    """precision='auto' predicts in fp32 on a CPU even where bf16 is native (the ONNX file is
    fp32; one model, one answer); an explicit bf16 is kept."""
    import transferkit.training.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.resolve_runtime("cpu", "auto").precision == "bf16"  # training may still measure bf16
    chosen = runtime.prediction_runtime("cpu", "auto")
    assert chosen.precision == "fp32" and not chosen.auto_precision and "ONNX" in chosen.precision_reason
    assert runtime.prediction_runtime("cpu", "bf16").precision == "bf16"


def test_validation_runs_in_the_precision_predictions_use(bf16_native, tiny_params, monkeypatch):
    """Issue 33 item 8: the epoch table's validation accuracy is the figure the fitted model gives
    (a bf16 training run validated in bf16, predictions ran in fp32: 0.733 in the table, 0.750 reported)."""
    import transferkit.training.loop as loop

    seen = []
    real = loop.for_predictions
    monkeypatch.setattr(loop, "for_predictions", lambda runtime: seen.append(real(runtime)) or seen[-1])
    images, labels = make_images(6, 32)
    ImageClassifier(**dict(tiny_params, epochs=1, precision="auto")).fit(images, labels)
    assert seen and all(runtime.precision == "fp32" for runtime in seen)
