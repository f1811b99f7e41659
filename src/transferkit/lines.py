"""Terminal lines that wrap between words, never inside one, with a hanging indent.

A terminal of 80 columns wrapped transferkit's reason and epoch lines wherever the width ran
out ("... train a linear /" + "SVM"; "acc 0.636 * 7.0 /" + "img/s 18.3s"). Here the units of a
line are kept whole: a word of prose, an identifier, a number, a ``key=value`` pair, or a
group of them that reads as one ("val loss 0.5123"). :func:`pack` puts as many units on a line
as fit; continuation lines are indented under the first line's text. :class:`Wrapped` does the
same at print time, for whatever width the console has::

    console.print(Wrapped.prose("the data set is small: train a linear SVM", first="  - "))

A unit longer than the whole width is printed whole on a line of its own, past the edge
rather than cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text


def pack(units: Iterable[str], width: int, *, first: str = "", indent: str | None = None, separator: str = " ") -> list[str]:
    """Lines of at most ``width`` characters holding ``units`` in order, none of them split.

    Parameters
    ----------
    units : iterable of str
        What may not be broken (words, numbers, ``key=value``, "loss 0.51").
    width : int
        The line width (a console's ``width``).
    first : str
        Text the first line starts with (a bullet such as ``"  - "``).
    indent : str, optional
        What continuation lines start with (default: spaces as wide as ``first``: a hanging indent).
    separator : str
        Between two units on one line.

    Examples
    --------
    >>> pack(["epoch 3", "train loss 0.4321", "val loss 0.5123"], 24)
    ['epoch 3', 'train loss 0.4321', 'val loss 0.5123']
    >>> pack("a linear SVM on image_size=224 features".split(), 20, first="  - ")
    ['  - a linear SVM on', '    image_size=224', '    features']
    """
    indent = " " * len(first) if indent is None else indent
    lines: list[str] = []
    line, empty = first, True
    for unit in units:
        if not unit:
            continue
        candidate = unit if empty else line + separator + unit
        if empty:
            line = line + unit
            empty = False
        elif len(candidate) <= width:
            line = candidate
        else:
            lines.append(line)
            line = indent + unit
    if not empty or not lines:
        lines.append(line)
    return lines


class Wrapped:
    """A rich renderable: ``units`` packed (:func:`pack`) to the width it is printed at.

    ``str()`` gives the units on one line, as a log file or a test reads them.
    """

    def __init__(self, units: Sequence[str], *, first: str = "", indent: str | None = None, separator: str = " ", style: str = ""):
        self.units, self.first, self.indent, self.separator, self.style = list(units), first, indent, separator, style

    @classmethod
    def prose(cls, text: str, *, first: str = "", indent: str | None = None) -> Wrapped:
        """Text wrapped at its spaces (every word a unit), e.g. a reason after a bullet."""
        return cls(text.split(), first=first, indent=indent)

    def lines(self, width: int) -> list[str]:
        return pack(self.units, width, first=self.first, indent=self.indent, separator=self.separator)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines(options.max_width):
            # no_wrap + overflow "ignore": a unit wider than the terminal runs past the edge, whole
            yield Text(line, style=self.style, no_wrap=True, overflow="ignore", end="\n")

    def __str__(self) -> str:
        return self.first + self.separator.join(unit for unit in self.units if unit)
