"""Reason and epoch lines at 60 and 80 columns: prose wraps with a hanging indent, and no
identifier, number or key=value is split (issue 21: "... train a linear /" + "SVM";
"acc 0.636 * 7.0 /" + "img/s 18.3s")."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from transferkit.lines import Wrapped, pack
from transferkit.training.history import BEST_EPOCH_NOTE, EpochRecord

WIDTHS = [60, 80]
REASON = ("1,968 images in 4 classes is small for fine-tuning EfficientNet-Lite0 (4.7M parameters): the rule small_data=1000 "
          "says train a linear SVM on the frozen bottleneck features at image_size=224, C by inner CV over 0.0003-0.03")


def render(renderable, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), emoji=False, markup=False, highlight=False)
    console.print(renderable)
    return console.file.getvalue()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_reason_wraps_with_a_hanging_indent_and_no_word_split(width):
    output = render(Wrapped.prose(REASON, first="  - "), width)
    lines = output.rstrip("\n").splitlines()
    assert len(lines) > 1 and lines[0].startswith("  - ")
    assert all(line.startswith("    ") and not line.startswith("     ") for line in lines[1:]), output
    assert max(len(line) for line in lines) <= width
    assert " ".join(line.strip() for line in lines).removeprefix("- ") == " ".join(REASON.split())
    for token in REASON.split():  # every token on one line, whole
        assert any(re.search(rf"(^|\s){re.escape(token)}(\s|$)", line) for line in lines), token


@pytest.mark.parametrize("width", WIDTHS)
def test_an_epoch_line_breaks_only_between_its_fields(width):
    record = EpochRecord(epoch=7, train_loss=0.43215, train_accuracy=0.8123, val_loss=0.51234, val_accuracy=0.6364,
                         lr=1e-3, seconds=7.04, images_per_second=18.31)
    output = render(record.describe(best=True), width)
    lines = output.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= width
    fields = ["epoch   7", "train loss 0.4321 acc 0.812", "val loss 0.5123 acc 0.636 *", "18.3 img/s", "7.0 s"]
    for field in fields:
        assert sum(field in line for line in lines) == 1, (field, output)
    assert all(line.startswith(" " * 11) for line in lines[1:]), output
    assert str(record.describe(best=False)) == "epoch   7  train loss 0.4321 acc 0.812  val loss 0.5123 acc 0.636  18.3 img/s  7.0 s"


def test_the_best_epoch_mark_is_explained():
    assert BEST_EPOCH_NOTE.startswith("* marks the best epoch")


def test_pack_keeps_a_unit_longer_than_the_line_whole():
    assert pack(["short", "x" * 30, "end"], 10, first="- ") == ["- short", "  " + "x" * 30, "  end"]
    assert pack([], 10, first="- ") == ["- "]
