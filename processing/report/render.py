"""The report's building blocks: figures, notes, sections, and PNG rendering.

Figures are drawn with matplotlib's object API on the Agg canvas
(:class:`matplotlib.figure.Figure`, never ``pyplot``), so report generation
holds no global state, opens no window and works on a machine without a
display.  Each figure family module returns one :class:`Section`; a section
holds :class:`Figure` items (a PNG plus its caption) and :class:`Note` items
(what is missing, and how to produce it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BAND_COLORS", "Figure", "Note", "Section", "Table", "band_color", "new_figure",
           "robust_sigma", "to_png"]

#: Plot colours of the bands (Rubin's usual u-y palette, darkened for a white page).
BAND_COLORS = {"u": "#1f5fbf", "g": "#2ca02c", "r": "#d62728", "i": "#ff7f0e",
               "z": "#9467bd", "y": "#8c564b"}

#: Resolution of the PNGs (dots per inch); figure sizes are in inches.
DPI = 90


def band_color(band: str) -> str:
    """Plot colour of a band (grey for a band outside u-y)."""
    return BAND_COLORS.get(str(band), "#555555")


def robust_sigma(values) -> float:
    """1.4826 x the median absolute deviation of the finite values (NaN when none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


@dataclass(frozen=True)
class Figure:
    """One rendered figure.

    Attributes
    ----------
    title : str
        Short heading.
    caption : str
        What the figure shows and what "good" looks like (plain text).
    png : bytes
        The image, PNG-encoded.
    """

    title: str
    caption: str
    png: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Figure({self.title!r}, {len(self.png)} bytes)"


@dataclass(frozen=True)
class Note:
    """A message shown instead of a figure: what is missing and how to make it."""

    text: str


@dataclass(frozen=True)
class Table:
    """A small table of numbers shown with a figure (already formatted as text).

    Attributes
    ----------
    title : str
        Heading.
    columns : tuple of str
        Column headings (with units).
    rows : tuple of tuple of str
        Cells, row by row.
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass
class Section:
    """A titled group of figures and notes.

    Attributes
    ----------
    title : str
        Section heading.
    intro : str
        One or two sentences on what the section checks.
    items : list of Figure, Table or Note
        In display order.
    """

    title: str
    intro: str = ""
    items: list = field(default_factory=list)

    @property
    def figures(self) -> list[Figure]:
        """The figures of the section."""
        return [i for i in self.items if isinstance(i, Figure)]

    @property
    def notes(self) -> list[Note]:
        """The notes of the section."""
        return [i for i in self.items if isinstance(i, Note)]

    def note(self, text: str) -> None:
        """Append a :class:`Note`."""
        self.items.append(Note(text))

    def __repr__(self) -> str:
        return (f"Section({self.title!r}, {len(self.figures)} figures, "
                f"{len(self.notes)} notes)")


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, *,
               margins: tuple[float, float, float, float] = (0.75, 0.15, 0.6, 0.3),
               wspace: float = 0.3, hspace: float = 0.3, **kwargs):
    """A matplotlib figure (Agg, no pyplot) with a fixed grid of axes.

    The layout is fixed (margins in inches) rather than solved by a layout
    engine: measured on the demo report, constrained layout spent ~3 s of ~9 s
    computing tight bounding boxes.

    Parameters
    ----------
    width, height : float
        Figure size, inches.
    nrows, ncols : int
        Grid of axes.
    margins : tuple of float
        Left, right, bottom, top margins, inches (room for labels and titles).
    wspace, hspace : float
        Gaps between axes, fractions of the mean axes width / height.
    **kwargs
        Passed to :meth:`matplotlib.figure.Figure.subplots` (``squeeze`` is False).

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : numpy.ndarray
        ``(nrows, ncols)`` axes.
    """
    from matplotlib.figure import Figure as MplFigure

    left, right, bottom, top = margins
    fig = MplFigure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=wspace, hspace=hspace)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
