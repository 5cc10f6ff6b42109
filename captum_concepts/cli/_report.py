"""A self-contained HTML report: PNG figures, each with a short text saying what it shows."""

from __future__ import annotations

import html
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1200px;
       padding: 1.5em 2em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.92em; }
.meta code { background: #f3f3f3; padding: 0 0.3em; }
nav { margin: 1em 0; font-size: 0.92em; }
nav a { margin-right: 1em; }
section { border-top: 1px solid #ddd; padding-top: 0.6em; margin-top: 1.4em; }
figure { display: flex; gap: 1.5em; align-items: flex-start; margin: 1em 0; }
figure img { max-width: 62%; height: auto; border: 1px solid #eee; image-rendering: auto; }
figcaption { flex: 1; font-size: 0.95em; }
figcaption h3 { margin: 0 0 0.4em 0; font-size: 1.02em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0c040; padding: 0.4em 0.8em; }
.warning { background: #fdecea; border-left-color: #d93025; font-weight: bold; }
"""


@dataclass
class _Section:
    title: str
    intro: str = ""
    blocks: List[str] = field(default_factory=list)


class Report:
    """Collects figures and text, saves figures as PNG under ``out/figures``, writes ``out/report.html``.

    Figures are closed once saved, so a long run never accumulates open figures.
    """

    def __init__(
        self, out_dir: os.PathLike, title: str, subtitle: str = "", start: Optional[float] = None
    ) -> None:
        """``start``: the ``time.perf_counter()`` the run began at (default: now), for the total time."""
        self.out_dir = Path(out_dir)
        self.fig_dir = self.out_dir / "figures"
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.subtitle = subtitle
        self.meta: List[str] = []
        self.warnings: List[str] = []
        self.sections: List[_Section] = []
        self._names: set = set()
        self.timings: List[tuple] = []
        self._start = time.perf_counter() if start is None else start
        self.figure_label = ""  # e.g. "untrained weights": added to every figure and its heading

    def add_meta(self, text: str, escape: bool = False) -> None:
        """One line under the title: HTML allowed (the caller controls it) unless ``escape``
        (text holding names from the user's files)."""
        self.meta.append(html.escape(_printable(text)) if escape else text)

    def add_warning(self, text: str) -> None:
        """A highlighted warning at the top of the report (plain text)."""
        self.warnings.append(text)

    def section(self, title: str, intro: str = "") -> None:
        self.sections.append(_Section(title, intro))

    def _current(self) -> _Section:
        if not self.sections:
            self.section("Results")
        return self.sections[-1]

    def add_figure(self, fig: Any, name: str, heading: str, text: str, dpi: int = 110) -> Path:
        """Save ``fig`` as ``figures/<name>.png`` and place it with ``heading`` and ``text`` beside it."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        base, i = slug, 1
        while slug in self._names:
            i += 1
            slug = f"{base}_{i}"
        self._names.add(slug)
        path = self.fig_dir / f"{slug}.png"
        if self.figure_label:
            heading = f"{heading} ({self.figure_label})"
            fig.text(0.0, 1.0, self.figure_label, color="tab:red", ha="left", va="bottom", fontsize=9)
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
        _close(fig)
        rel = f"figures/{slug}.png"
        self._current().blocks.append(
            f'<figure><img src="{html.escape(rel)}" alt="{html.escape(heading)}">'
            f"<figcaption><h3>{html.escape(heading)}</h3>{_paragraphs(text)}</figcaption></figure>"
        )
        return path

    def add_timing(self, what: str, seconds: float) -> None:
        self.timings.append((what, seconds))

    def add_text(self, text: str) -> None:
        self._current().blocks.append(_paragraphs(text))

    def add_note(self, text: str) -> None:
        self._current().blocks.append(f'<p class="note">{html.escape(text)}</p>')

    def add_table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
        cap = f"<p>{html.escape(caption)}</p>" if caption else ""
        self._current().blocks.append(f"{cap}<table><tr>{head}</tr>{body}</table>")

    def write(self) -> Path:
        elapsed = time.perf_counter() - self._start
        nav = "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(self.sections))
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f"<p>{html.escape(self.subtitle)}</p>")
        steps = ", ".join(f"{what} {sec:.1f} s" for what, sec in self.timings)
        meta = self.meta + [f"Total run time: {elapsed:.1f} s" + (f" ({steps})." if steps else ".")]
        parts.append("<div class='meta'>" + "<br>".join(meta) + "</div>")
        parts.extend(
            f'<p class="note warning">Warning: {html.escape(_printable(w))}</p>' for w in self.warnings
        )
        parts.append(f"<nav>{nav}</nav>")
        for i, s in enumerate(self.sections):
            parts.append(f"<section id='s{i}'><h2>{html.escape(s.title)}</h2>")
            if s.intro:
                parts.append(_paragraphs(s.intro))
            parts.extend(s.blocks)
            parts.append("</section>")
        parts.append("</body></html>")
        path = self.out_dir / "report.html"
        # names from the user's disk may hold bytes that are not UTF-8: replaced, never a crash
        path.write_text("\n".join(parts), encoding="utf-8", errors="replace")
        return path


def _printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td{' class=num' if numeric else ''}>{html.escape(_fmt(value))}</td>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _close(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def referenced_figures(report_html: str) -> List[str]:
    """The ``src`` of every ``<img>`` in a report (the figures ``--overwrite`` removes)."""
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', report_html)
