"""One self-contained HTML page from report sections.

Everything the page needs is inside it: the stylesheet (``style.css`` of this
package) is inlined, figures are ``data:image/png;base64`` URIs, and there is
no script and no external reference (not even a favicon request), so the file
can be mailed, archived or opened offline and shows the same everywhere.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from importlib import resources

from .render import Figure, Note, Section, Table

__all__ = ["render_html"]


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _stylesheet() -> str:
    return resources.files(__package__).joinpath("style.css").read_text(encoding="utf-8")


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(fig.title)}">'
            f"<figcaption><b>{_esc(fig.title)}.</b> {_esc(fig.caption)}</figcaption></figure>")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table(table: Table) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in table.columns)
    rows = []
    for row in table.rows:
        css = ' class="missing"' if row and str(row[-1]).startswith("missing") else ""
        cells = "".join(f'<td class="num">{_esc(c)}</td>' if _is_number(str(c))
                        else f"<td>{_esc(c)}</td>" for c in row)
        rows.append(f"<tr{css}>{cells}</tr>")
    return (f"<table><caption>{_esc(table.title)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _item(item) -> str:
    if isinstance(item, Figure):
        return _figure(item)
    if isinstance(item, Table):
        return _table(item)
    if isinstance(item, Note):
        return f'<p class="note">{_esc(item.text)}</p>'
    raise TypeError(f"cannot render a report item of type {type(item).__name__}")


def render_html(sections: Sequence[Section], *, title: str, subtitle: Sequence[str] = (),
                footer: str = "") -> str:
    """The report page.

    Parameters
    ----------
    sections : sequence of Section
        In display order; each gets an entry in the table of contents.
    title : str
        Page title and main heading.
    subtitle : sequence of str
        Lines under the heading (repository, collection, date...).
    footer : str
        Closing line.

    Returns
    -------
    str
        The HTML document.
    """
    anchors, body = [], []
    used: set[str] = set()
    for section in sections:
        anchor = _anchor(section.title)
        while anchor in used:
            anchor += "-x"
        used.add(anchor)
        anchors.append((anchor, section.title))
        parts = [f'<section id="{anchor}"><h2>{_esc(section.title)}</h2>']
        if section.intro:
            parts.append(f'<p class="intro">{_esc(section.intro)}</p>')
        parts += [_item(i) for i in section.items]
        parts.append("</section>")
        body.append("\n".join(parts))
    toc = "".join(f'<li><a href="#{a}">{_esc(t)}</a></li>' for a, t in anchors)
    lines = "".join(f"<p>{_esc(s)}</p>" for s in subtitle)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{_stylesheet()}</style>\n</head>\n<body>\n"
        f"<header><h1>{_esc(title)}</h1>{lines}<nav><ol>{toc}</ol></nav></header>\n"
        + "\n".join(body)
        + f"\n<footer>{_esc(footer)}</footer>\n</body>\n</html>\n")
