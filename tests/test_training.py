"""Fine-tuning mechanics: freezing, frozen BatchNorm, learning-rate groups, the loop, resume."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from conftest import TINY_BACKBONE, make_images
from transferkit import ImageClassifier
from transferkit.backbones import backbone_stages, create_backbone
from transferkit.errors import ConfigError
from transferkit.training.freezing import train_mode
from transferkit.strategies.linear import fit_linear_classifier
from transferkit.strategies.network import configure_network, probe_head
from transferkit.strategies.registry import FitRequest, Settings
from transferkit.training import loop
from transferkit.training.augment import AUGMENT_PRESETS, build_augmentation
from transferkit.training.callbacks import CHECKPOINT_NAME, Checkpoint
from transferkit.training.inputs import TrainData, predict_logits
from transferkit.training.loop import TrainConfig, train_model
from transferkit.training.optim import build_optimizer, warmup_cosine
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def tiny_model(tiny_weights, num_classes=3, pretrained=True):
    model, preprocessing = create_backbone(
        TINY_BACKBONE, num_classes=num_classes, pretrained=pretrained, weights_path=tiny_weights if pretrained else None
    )
    return model, preprocessing


def tiny_data(n_per_class=6, size=32, seed=0):
    images, labels = make_images(n_per_class, size, seed)
    targets = np.searchsorted(sorted(set(labels)), labels)
    return images, targets


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, f"no tensors start with {prefix!r}"
    return any(not torch.equal(before[k], after[k]) for k in keys)


def train(model, head, backbone, preprocessing, epochs=1, **kwargs):
    config = TrainConfig(epochs=epochs, batch_size=6, lr=1e-2, patience=10, **kwargs)
    return train_model(model, (head, backbone), TrainData(tiny_data(), None, preprocessing), config=config, runtime=CPU, verbose=False)


def test_finetune_freezes_stem_and_first_stages_and_keeps_their_batchnorm_statistics(tiny_weights):
    model, preprocessing = tiny_model(tiny_weights)
    head, backbone, plan = configure_network(model, "finetune", freeze_stages=1, backbone_lr_factor=0.1)
    assert plan.frozen_stages == ("stem", "stage1")
    before = snapshot(model)
    train(model, head, backbone, preprocessing)
    after = snapshot(model)
    # Frozen: weights and BatchNorm running statistics untouched.
    assert not changed(before, after, "conv_stem")
    assert not changed(before, after, "bn1.")
    assert not changed(before, after, "blocks.0.")
    # Trainable: stage 2, the neck and the head all moved (running stats included).
    assert changed(before, after, "blocks.1.")
    assert changed(before, after, "bn2.running_mean")
    assert changed(before, after, "classifier")


def test_frozen_batchnorm_stays_in_eval_mode_and_trainable_batchnorm_trains(tiny_weights):
    model, _ = tiny_model(tiny_weights)
    configure_network(model, "finetune", freeze_stages=2, backbone_lr_factor=0.1)
    train_mode(model)
    assert model.bn1.training is False
    assert all(not m.training for m in model.blocks[0].modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in model.blocks[2].modules() if isinstance(m, nn.BatchNorm2d))
    assert model.bn2.training is True


def test_head_strategy_trains_only_the_new_head(tiny_weights):
    model, preprocessing = tiny_model(tiny_weights)
    head, backbone, plan = configure_network(model, "head", freeze_stages=None, backbone_lr_factor=0.1)
    assert plan.trainable_parameters == sum(p.numel() for p in model.get_classifier().parameters())
    before = snapshot(model)
    train(model, head, backbone, preprocessing)
    after = snapshot(model)
    assert changed(before, after, "classifier")
    assert [k for k in before if not torch.equal(before[k], after[k]) and not k.startswith("classifier")] == []


def test_full_and_scratch_train_every_stage(tiny_weights):
    for strategy in ("full", "scratch"):
        model, preprocessing = tiny_model(tiny_weights, pretrained=strategy == "full")
        head, backbone, plan = configure_network(model, strategy, freeze_stages=None, backbone_lr_factor=0.1)
        assert plan.frozen_stages == ()
        before = snapshot(model)
        train(model, head, backbone, preprocessing)
        after = snapshot(model)
        for prefix in ("conv_stem", "blocks.0.", "conv_head", "classifier"):
            assert changed(before, after, prefix), (strategy, prefix)
        assert plan.backbone_lr_factor == (1.0 if strategy == "scratch" else 0.1)


def test_backbone_trains_at_a_tenth_of_the_head_learning_rate(tiny_weights):
    model, _ = tiny_model(tiny_weights)
    head, backbone, _ = configure_network(model, "finetune", freeze_stages=1, backbone_lr_factor=0.1)
    optimizer = build_optimizer(head, backbone, TrainConfig(lr=0.02, backbone_lr_factor=0.1))
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"head": pytest.approx(0.02), "backbone": pytest.approx(0.002)}
    frozen = {id(p) for p in model.blocks[0].parameters()}
    assert not frozen & {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_freeze_out_of_range_is_a_clear_error(tiny_weights):
    model, _ = tiny_model(tiny_weights)
    n_stages = len([n for n, _ in backbone_stages(model) if n.startswith("stage")])
    with pytest.raises(ConfigError, match=f"between 0 and {n_stages}"):
        configure_network(model, "finetune", freeze_stages=n_stages + 1, backbone_lr_factor=0.1)
    with pytest.raises(ConfigError, match="freeze does not apply"):
        configure_network(model, "full", freeze_stages=2, backbone_lr_factor=0.1)


def test_warmup_then_cosine_schedule():
    values = [warmup_cosine(step, 4, 20) for step in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[-1] < 0.05


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_augmentation_presets_keep_shape_and_dtype(preset):
    transform = build_augmentation(preset)
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    result = image if transform is None else transform(image)
    assert result.shape == image.shape and result.dtype == torch.uint8
    if preset in ("standard", "strong"):
        torch.manual_seed(0)
        assert any(not torch.equal(transform(image), image) for _ in range(5))


def test_a_composition_without_flips_never_flips_and_presets_name_their_operations():
    from transferkit.training.augment import augmentation_operations, describe_augmentation, without_flips

    assert without_flips("standard") == "rotate,translate" and without_flips("strong") == "rotate,translate,scale,color"
    assert without_flips("none") == "none" and without_flips("rotate") == "rotate"
    assert augmentation_operations("hflip, translate")[0] == ("hflip", "translate")
    assert describe_augmentation("standard") == "horizontal flip; rotation up to 10 degrees; translation up to 10%"
    # an image whose two halves differ: a horizontal flip would swap them, translation alone never does
    image = torch.zeros((3, 16, 16), dtype=torch.uint8)
    image[:, :, :8] = 200
    flip_only = build_augmentation("hflip")
    torch.manual_seed(0)
    assert any(torch.equal(flip_only(image), image.flip(-1)) for _ in range(10))
    shift_only = build_augmentation("translate")
    torch.manual_seed(0)
    assert not any(torch.equal(shift_only(image), image.flip(-1)) for _ in range(20))
    # rot90: an exact turn by 0, 90, 180 or 270 degrees (no interpolation), each drawn; never with without_flips
    ramp = torch.arange(16 * 16, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16).contiguous()
    turns = build_augmentation("rot90")
    torch.manual_seed(0)
    seen = [turns(ramp) for _ in range(40)]
    exact = [torch.rot90(ramp, k, dims=(-2, -1)) for k in range(4)]
    assert all(any(torch.equal(s, e) for e in exact) for s in seen)
    assert all(any(torch.equal(s, e) for s in seen) for e in exact)
    assert without_flips("hflip,rot90,translate") == "translate"
    assert describe_augmentation("rot90,rotate") == "turn by a multiple of 90 degrees; rotation up to 10 degrees"
    custom = build_augmentation(lambda x: x.flip(-2))  # a callable is used as it is
    assert torch.equal(custom(image), image.flip(-2))


def test_unknown_augmentation_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match="none, light, standard, strong"):
        build_augmentation("heavy")
    with pytest.raises(ConfigError, match="hflip, vflip, rot90, rotate, translate, scale, color"):
        build_augmentation("rotate,twirl")


def test_early_stopping_restores_the_best_weights(tiny_weights, monkeypatch):
    model, preprocessing = tiny_model(tiny_weights)
    head, backbone, _ = configure_network(model, "full", freeze_stages=None, backbone_lr_factor=0.1)
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    states = []

    def fake_validate(model, *args):
        states.append(snapshot(model))
        return next(losses), 0.5, 0.5  # loss, accuracy, balanced accuracy

    monkeypatch.setattr(loop, "_validate", fake_validate)
    data = tiny_data()
    result = train_model(
        model, (head, backbone), TrainData(data, data, preprocessing),
        config=TrainConfig(epochs=6, batch_size=6, lr=1e-2, patience=2), runtime=CPU, verbose=False,
    )
    assert result.best_epoch == 2
    assert result.stopped_early and len(result.history) == 4
    final = snapshot(model)
    assert all(torch.equal(final[k], states[1][k]) for k in final)


def test_resume_after_interruption_gives_the_same_model(tiny_weights, tmp_path, monkeypatch):
    """A run killed during epoch 3 and resumed loses at most one epoch and ends identical."""
    config = TrainConfig(epochs=4, batch_size=6, lr=1e-2, patience=10)
    data = tiny_data()

    def run(checkpoint_dir, resume=False):
        model, preprocessing = tiny_model(tiny_weights)
        head, backbone, _ = configure_network(model, "finetune", freeze_stages=1, backbone_lr_factor=0.1)
        result = train_model(
            model, (head, backbone), TrainData(data, data, preprocessing), config=config, runtime=CPU,
            callbacks=[Checkpoint(checkpoint_dir, resume=resume, fingerprint={"seed": 0})], verbose=False,
        )
        return model, result

    reference, _ = run(tmp_path / "a")

    real_validate = loop._validate
    calls = {"n": 0}

    def interrupt_in_epoch_3(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validate(*args)

    monkeypatch.setattr(loop, "_validate", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(loop, "_validate", real_validate)
    state = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2

    resumed, result = run(tmp_path / "b", resume=True)
    assert result.resumed_from_epoch == 2 and len(result.history) == 4
    expected, got = snapshot(reference), snapshot(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


def test_resume_with_other_settings_is_refused(tiny_weights, tmp_path):
    model, preprocessing = tiny_model(tiny_weights)
    head, backbone, _ = configure_network(model, "head", freeze_stages=None, backbone_lr_factor=0.1)
    kwargs = dict(config=TrainConfig(epochs=1, batch_size=6), runtime=CPU, verbose=False)
    data = TrainData(tiny_data(), None, preprocessing)
    train_model(model, (head, backbone), data, callbacks=[Checkpoint(tmp_path, fingerprint={"lr": 1})], **kwargs)
    with pytest.raises(ConfigError, match="different settings \\(lr\\)"):
        train_model(model, (head, backbone), data, callbacks=[Checkpoint(tmp_path, resume=True, fingerprint={"lr": 2})], **kwargs)


def test_runtime_rejects_unknown_options():
    with pytest.raises(ConfigError, match="precision"):
        resolve_runtime("cpu", "fp8")
    with pytest.raises(ConfigError, match="fp16"):
        resolve_runtime("cpu", "fp16")
    with pytest.raises(ConfigError):
        resolve_runtime("tpu")


def test_runtime_auto_falls_back_to_what_the_cpu_supports(monkeypatch):
    from transferkit.training import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: False)
    assert resolve_runtime("cpu", "auto").precision == "fp32"
    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: True)
    assert resolve_runtime("cpu", "auto").precision == "bf16"


_ALLOCATOR_PROBE = """
import sys
import numpy as np
from transferkit import ImageClassifier
from transferkit.training.runtime import freed_memory_kept, keep_freed_memory, resolve_runtime
images = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
ImageClassifier("test_efficientnet", strategy="svm", weights=sys.argv[1], image_size=32, C=0.1, device="cpu",
                precision="fp32", cache_dir=False).fit(images, ["a", "b"] * 6)
library = freed_memory_kept(), resolve_runtime("cpu", "fp32").kept_memory
applied = keep_freed_memory()
print(library[0], library[1], applied, resolve_runtime("cpu", "fp32").kept_memory, resolve_runtime("cpu", "fp32").describe())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
@pytest.mark.parametrize("setting", ["default", "system"])
def test_only_the_entry_point_keeps_freed_memory_and_the_runtime_reports_it(setting, tiny_weights):
    # A library call (a fit in a notebook, a web server) must not change the process's allocator;
    # keep_freed_memory() does, unless TRANSFERKIT_ALLOCATOR=system; the runtime only reports it.
    import os
    import subprocess

    from transferkit.training import runtime as runtime_module

    env = dict(os.environ)
    env.pop(runtime_module.ALLOCATOR_ENV, None)
    if setting == "system":
        env[runtime_module.ALLOCATOR_ENV] = "system"
    done = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, str(tiny_weights)], env=env, capture_output=True, text=True, check=True)
    library_kept, library_reported, applied, reported, described = done.stdout.split(" ", 4)
    assert (library_kept, library_reported) == ("False", "False")
    expected = str(setting == "default" and platform.libc_ver()[0] == "glibc")
    assert applied == reported == expected
    assert ("freed memory kept" in described) is (expected == "True")


def test_the_cli_entry_point_keeps_freed_memory():
    import os
    import subprocess

    code = "from transferkit import cli\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\nprint(cli.__name__, __import__('transferkit.training.runtime', fromlist=['x']).freed_memory_kept())"
    env = {k: v for k, v in os.environ.items() if k != "TRANSFERKIT_ALLOCATOR"}
    done = subprocess.run([sys.executable, "-c", code, "--help"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().endswith(str(platform.libc_ver()[0] == "glibc"))


def test_bf16_autocast_matches_fp32_within_bf16_tolerance(tiny_weights):
    model, preprocessing = tiny_model(tiny_weights)
    images, _ = tiny_data(2)
    fp32 = predict_logits(model, images, preprocessing, resolve_runtime("cpu", "fp32"))
    bf16 = predict_logits(model, images, preprocessing, resolve_runtime("cpu", "bf16"))
    plain = predict_logits(model, images, preprocessing, resolve_runtime("cpu", "fp32", channels_last=False))
    torch.testing.assert_close(plain, fp32, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.1)


def test_prefix_then_suffix_equals_the_whole_network(tiny_weights):
    from transferkit.backbones import Suffix, frozen_prefix_depth, prefix_forward

    model, _ = tiny_model(tiny_weights)
    x = torch.randn(2, 3, 32, 32)
    for strategy, freeze in (("finetune", 1), ("finetune", 2), ("head", None)):
        _, _, plan = configure_network(model, strategy, freeze_stages=freeze, backbone_lr_factor=0.1)
        start = frozen_prefix_depth(model)
        assert start == (freeze if freeze else -1)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(Suffix(model, start)(prefix_forward(model, x, start)), model(x))
    model = tiny_model(tiny_weights)[0]
    configure_network(model, "full", freeze_stages=None, backbone_lr_factor=0.1)
    assert frozen_prefix_depth(model) is None


@pytest.mark.parametrize("strategy,freeze", [("finetune", 2), ("head", None)])
def test_training_on_cached_prefix_matches_the_plain_loop_without_augmentation(tiny_weights, strategy, freeze):
    """Same data, no augmentation: the cached-prefix loop computes the same updates."""
    results = []
    for views in (0, 1):
        torch.manual_seed(0)  # the same new head for both runs
        model, preprocessing = tiny_model(tiny_weights)
        head, backbone, _ = configure_network(model, strategy, freeze_stages=freeze, backbone_lr_factor=0.1)
        config = TrainConfig(epochs=2, batch_size=6, lr=1e-2, patience=10, prefix_views=views)
        data = tiny_data()
        result = train_model(
            model, (head, backbone), TrainData(data, data, preprocessing), config=config, runtime=CPU, verbose=False,
        )
        results.append((snapshot(model), [r.val_loss for r in result.history]))
    (plain, plain_losses), (cached, cached_losses) = results
    # fp16 storage of the cached activations is the only difference; Adam amplifies it on
    # near-zero gradients, so compare the whole update, not each weight.
    assert cached_losses == pytest.approx(plain_losses, rel=1e-3)
    torch.manual_seed(0)
    start = snapshot(tiny_model(tiny_weights)[0])
    keys = [k for k in plain if plain[k].is_floating_point()]
    moved = torch.cat([(plain[k] - start[k]).flatten() for k in keys])
    differ = torch.cat([(cached[k] - plain[k]).flatten() for k in keys])
    assert moved.norm() > 0 and differ.norm() / moved.norm() < 0.01


def test_cached_prefix_gives_the_same_gradients(tiny_weights):
    from transferkit.backbones import Suffix, prefix_forward

    model, preprocessing = tiny_model(tiny_weights)
    configure_network(model, "finetune", freeze_stages=2, backbone_lr_factor=0.1)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    grads = []
    for forward in (lambda: model(x), lambda: Suffix(model, 2)(prefix_forward(model, x, 2).half().float())):
        model.zero_grad()
        nn.functional.cross_entropy(forward(), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=1e-4)


def test_prefix_views_cycle_through_augmented_copies(tiny_weights):
    from transferkit.training.prefix import cache_activations

    model, preprocessing = tiny_model(tiny_weights)
    pixels, _ = tiny_data(2)
    views = cache_activations(
        model, 1, pixels, preprocessing=preprocessing, runtime=CPU, augment=build_augmentation("strong"), views=3, seed=0
    )
    assert len(views) == 3 and views[0].dtype == torch.float16
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    again = cache_activations(
        model, 1, pixels, preprocessing=preprocessing, runtime=CPU, augment=build_augmentation("strong"), views=3, seed=0
    )
    assert all(torch.equal(a, b) for a, b in zip(views, again))


def test_no_weight_decay_on_biases_and_normalisation_weights(tiny_weights):
    model, _ = tiny_model(tiny_weights)
    head, backbone, _ = configure_network(model, "finetune", freeze_stages=1, backbone_lr_factor=0.1)
    optimizer = build_optimizer(head, backbone, TrainConfig(lr=0.02, backbone_lr_factor=0.1, weight_decay=0.05))
    groups = {(g["name"], g["weight_decay"]): g for g in optimizer.param_groups}
    assert set(groups) == {("head", 0.05), ("head", 0.0), ("backbone", 0.05), ("backbone", 0.0)}
    names = {id(p): name for name, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "classifier.bias" in no_decay and "classifier.weight" in decay
    assert "bn2.weight" in no_decay and "bn2.bias" in no_decay and "conv_head.weight" in decay
    assert all(p.ndim <= 1 for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"])
    assert all(p.ndim > 1 for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_early_stopping_callback_keeps_the_best_weights_and_sets_stop():
    from transferkit.training.callbacks import EarlyStopping, TrainState
    from transferkit.training.history import EpochRecord, TrainResult

    model = nn.Linear(2, 2)
    state = TrainState(model=model, optimizer=None, scheduler=None, scaler=None, runtime=CPU, console=None, callbacks=[])
    stopping = EarlyStopping(patience=2)
    stopping.on_train_start(state)
    stops = []
    for epoch, val_loss in enumerate([1.0, 0.4, 0.6, 0.5], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        state.result.history.append(EpochRecord(epoch, 0.0, 0.0, val_loss, 0.5, 0.1, 1.0, 1.0))
        stopping.on_epoch_end(state)
        stops.append(state.stop)
    assert stops == [False, False, False, True] and state.result.best_epoch == 2
    stopping.on_train_end(state)
    assert torch.all(model.weight == 2)
    # Nothing held out: every epoch is the best and the last weights stay.
    state.result = TrainResult()
    stopping.on_train_start(state)
    with torch.no_grad():
        model.weight.fill_(5)
    state.result.history.append(EpochRecord(1, 0.5, 0.5, None, None, 0.1, 1.0, 1.0))
    stopping.on_epoch_end(state)
    stopping.on_train_end(state)
    assert state.result.best_epoch == 1 and torch.all(model.weight == 5)


def test_checkpoint_resume_restores_the_early_stopping_state(tiny_weights, tmp_path, monkeypatch):
    """A run stopped early is resumed as stopped, with its best epoch and best weights."""
    model, preprocessing = tiny_model(tiny_weights)
    head, backbone, _ = configure_network(model, "head", freeze_stages=None, backbone_lr_factor=0.1)
    losses = iter([1.0, 0.5, 0.7, 0.8])
    monkeypatch.setattr(loop, "_validate", lambda *args: (next(losses), 0.5, 0.5))
    data = TrainData(tiny_data(), tiny_data(), preprocessing)
    config = TrainConfig(epochs=6, batch_size=6, patience=2)
    first = train_model(model, (head, backbone), data, config=config, runtime=CPU, callbacks=[Checkpoint(tmp_path)], verbose=False)
    best = snapshot(model)
    assert first.best_epoch == 2 and len(first.history) == 4

    again, _ = tiny_model(tiny_weights)
    head, backbone, _ = configure_network(again, "head", freeze_stages=None, backbone_lr_factor=0.1)
    resumed = train_model(
        again, (head, backbone), data, config=config, runtime=CPU, callbacks=[Checkpoint(tmp_path, resume=True)], verbose=False
    )
    assert resumed.resumed_from_epoch == 4 and resumed.best_epoch == 2 and len(resumed.history) == 4
    assert all(torch.equal(best[k], v) for k, v in snapshot(again).items())


def test_runtime_decides_the_grad_scaler_and_inference_never_wraps_in_ddp():
    assert CPU.grad_scaler().is_enabled() is False
    distributed = resolve_runtime("cpu", "fp32").__class__(device=torch.device("cpu"), world_size=2)
    model = nn.Linear(2, 2)
    assert distributed.prepare_model(model) is model  # no DDP wrapper, and no collective started
    assert distributed.prepare_model(model, train=False) is model


def test_training_never_names_the_layers_of_a_particular_backbone():
    """Architecture-specific surgery lives in backbones/; training/ asks it."""
    import re
    from pathlib import Path

    import transferkit.training

    folder = Path(transferkit.training.__file__).parent
    pattern = re.compile(r"\b(blocks|bn1|bn2|conv_head|conv_stem|global_pool)\b|timm\.models")
    found = {
        f"{path.name}:{number}": line.strip()
        for path in sorted(folder.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    }
    assert found == {}


def test_training_precision_on_a_cpu_is_the_faster_one_by_measurement(tiny_weights):
    import dataclasses

    from transferkit.training.runtime import fastest_training_precision

    model, _ = tiny_model(tiny_weights)
    batch = torch.randn(4, 3, 32, 32)
    auto_bf16 = dataclasses.replace(resolve_runtime("cpu", "fp32"), precision="bf16", auto_precision=True)
    chosen = fastest_training_precision(auto_bf16, model, batch)
    seconds = chosen.measured["training_step_seconds"]
    assert set(seconds) == {"fp32", "bf16"} and chosen.precision == min(seconds, key=seconds.get)
    assert all(p.grad is None for p in model.parameters())  # the measurement leaves no gradients behind
    explicit = dataclasses.replace(auto_bf16, auto_precision=False)  # the user asked for bf16: kept
    assert fastest_training_precision(explicit, model, batch) is explicit
    assert fastest_training_precision(resolve_runtime("cpu", "fp32"), model, batch).measured is None


def test_training_precision_keeps_each_precisions_fastest_step(tiny_weights, monkeypatch):
    """One slow fp32 step (noise) does not choose bf16: each precision's fastest of three counts."""
    import dataclasses
    import itertools
    from types import SimpleNamespace

    import transferkit.training.runtime as runtime_module

    # the timed steps' durations in the order they run, three rounds of (fp32, bf16): each read
    # twice (its start, its end); one fp32 step slowed by noise, the other two faster than bf16's
    durations = iter([0.9, 0.40, 0.30, 0.41, 0.31, 0.42])
    clock = itertools.accumulate(next(durations) if i % 2 else 0.0 for i in range(12))
    monkeypatch.setattr(runtime_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    model, _ = tiny_model(tiny_weights)
    auto_bf16 = dataclasses.replace(resolve_runtime("cpu", "fp32"), precision="bf16", auto_precision=True)
    chosen = runtime_module.fastest_training_precision(auto_bf16, model, torch.randn(2, 3, 32, 32))
    assert chosen.precision == "fp32" and chosen.measured["training_step_seconds"] == pytest.approx({"fp32": 0.30, "bf16": 0.40})


# --------------------------------------------------------------------- linear probe, then fine-tune
def _probe_request(images, targets, n_classes=3, C="auto"):
    return FitRequest(pixels=images, targets=targets, classes=np.arange(n_classes), settings=Settings("full", None, 32, None),
                      params={"C": C, "seed": 0}, runtime=CPU, console=Console(quiet=True))


def test_the_probe_is_folded_into_the_head_so_the_network_predicts_what_the_probe_predicts(tiny_weights):
    model, preprocessing = tiny_model(tiny_weights)
    images, targets = tiny_data()
    before = predict_logits(model, images, preprocessing, CPU)
    features = []
    hook = model.get_classifier().register_forward_hook(lambda m, i, o: features.append(i[0].detach()))
    predict_logits(model, images, preprocessing, CPU)
    hook.remove()
    pipeline, _ = fit_linear_classifier(torch.cat(features).numpy(), targets, np.arange(len(targets)), strategy="logistic",
                                        C=0.01, seed=0)

    probe = probe_head(model, _probe_request(images, targets, C=0.01), preprocessing)
    after = predict_logits(model, images, preprocessing, CPU)
    np.testing.assert_allclose(after.numpy(), pipeline.decision_function(torch.cat(features).numpy()), atol=1e-4)
    assert probe.C == 0.01 and probe.images == len(targets)
    assert probe.train_accuracy == float((after.argmax(1).numpy() == targets).mean())
    assert not torch.allclose(before, after)


def test_no_probe_when_a_class_has_no_training_image(tiny_weights):

    model, preprocessing = tiny_model(tiny_weights, num_classes=4)
    images, targets = tiny_data()  # classes 0-2 only
    weight = model.get_classifier().weight.detach().clone()
    assert probe_head(model, _probe_request(images, targets, n_classes=4), preprocessing) is None
    assert torch.equal(model.get_classifier().weight, weight)


@pytest.mark.parametrize("strategy", ["head", "finetune", "full"])
def test_a_network_starts_from_the_probe_when_told(tiny_params, strategy):
    images, labels = make_images(8, 32)
    # a learning rate of ~0 leaves the head where it started: the probe's answers, or a random head's
    params = dict(tiny_params, strategy=strategy, epochs=1, lr=1e-12)
    probed = ImageClassifier(**dict(params, head_init="probe")).fit(images, labels)
    random = ImageClassifier(**params).fit(images, labels)
    assert probed.history_["head_init"]["init"] == "probe" and random.history_["head_init"] == "random"
    assert probed.history_["head_init"]["train_accuracy"] == 1.0  # colours: linearly separable in any features
    if strategy == "head":  # frozen BatchNorm: the features the probe saw are the ones the head gets
        probed_accuracy, random_accuracy = ((m.predict(images) == np.array(labels)).mean() for m in (probed, random))
        assert probed_accuracy == 1.0 and random_accuracy <= 0.6
