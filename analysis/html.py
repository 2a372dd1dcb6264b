"""A self-contained HTML page: figures inlined as base64 PNG, CSS inline, no scripts, no network.

A `Section` collects HTML parts in order, and keeps each figure's PNG bytes and each table's DataFrame
so the CLI can also write them as files: the page and the files come from the same bytes.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

import pandas as pd

from analysis.style import to_png

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1280px; margin: 0 auto; padding: 0 24px 64px; }
h1 { margin: 28px 0 4px; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; margin-top: 48px; }
h3 { margin: 28px 0 8px; }
.sub { color: #57606a; margin: 0 0 16px; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 16px; }
nav ul { margin: 4px 0; columns: 2; list-style: none; padding-left: 8px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 16px; min-width: 170px; }
.card .v { font-size: 24px; font-weight: 600; } .card .l { color: #57606a; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child, .l { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 16px 0 24px; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 13px; max-width: 1000px; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; border-radius: 6px; padding: 8px 12px; }
.verdict { font-weight: 600; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
.row { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def figure_html(png: bytes, alt: str, caption: str) -> str:
    """A PNG inlined as a <figure> with its caption (escaped)."""
    return f"<figure>{img_tag(png, alt)}<figcaption>{esc(caption)}</figcaption></figure>"


def table_html(df: pd.DataFrame, floats: str = "{:.4f}", left: tuple[str, ...] = ()) -> str:
    """A DataFrame as an HTML table; floats formatted, every cell escaped; `left` columns left-aligned."""
    align = {c: ' class="l"' if c in left else "" for c in df.columns}
    head = "".join(f"<th{align[c]}>{esc(c)}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            text = "—" if v is None or (isinstance(v, float) and pd.isna(v)) else (
                floats.format(v) if isinstance(v, float) else str(v))
            cells.append(f"<td{align[c]}>{esc(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def cards(items: list[tuple[str, str]]) -> str:
    """Big-number cards: (value, label) pairs."""
    inner = "".join(f'<div class="card"><div class="v">{esc(v)}</div><div class="l">{esc(lab)}</div></div>'
                    for v, lab in items)
    return f'<div class="cards">{inner}</div>'


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def text(self, fragment: str) -> None:
        """Append trusted HTML (callers escape data with esc())."""
        self.parts.append(fragment)

    def note(self, message: str) -> None:
        self.parts.append(f'<p class="note">{esc(message)}</p>')

    def figure(self, name: str, fig, caption: str) -> None:
        """Render a matplotlib Figure once: kept as <name>.png and inlined with its caption."""
        png = to_png(fig)
        self.figures[name] = png
        self.parts.append(figure_html(png, name, caption))

    def table(self, name: str, df: pd.DataFrame, shown: pd.DataFrame | None = None, heading: str = "",
              **fmt) -> None:
        """Keep `df` as <name>.parquet and show `shown` (a display version, default df) as a table."""
        self.tables[name] = df
        if heading:
            self.parts.append(f"<h3>{esc(heading)}</h3>")
        self.parts.append(table_html(df if shown is None else shown, **fmt))

    def render(self) -> str:
        return f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n' + "\n".join(self.parts) + "\n</section>"


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)  # titles carry numbers
    body = "\n".join(s.render() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f'<h1>{esc(title)}</h1>\n<p class="sub">{esc(subtitle)}</p>\n'
            f"<nav><strong>Contents</strong><ul>{toc}</ul></nav>\n{body}\n</body>\n</html>\n")
