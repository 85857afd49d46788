"""One self-contained HTML file: inline CSS, figures embedded as base64 PNG data URIs, no script
and no network asset, so it opens anywhere (browser, CI artifact viewer, e-mail attachment)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from harness.report.document import FIGURE_CAPTIONS, Section
from harness.report.tables import Table

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1b1f23;
 max-width:1200px;margin:2em auto;padding:0 1em}
h1{font-size:1.7em;border-bottom:1px solid #ddd;padding-bottom:.3em}
h2{font-size:1.35em;margin-top:1.8em;border-bottom:1px solid #eee;padding-bottom:.2em}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;white-space:nowrap}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
td.best{font-weight:700;background:#e6f4ea!important}
p.note{color:#57606a;font-size:12px;margin:.2em 0}
code{background:#f3f5f7;padding:1px 4px;border-radius:3px;font-size:12px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#57606a;font-size:12px}
"""


def inline(text: str) -> str:
    """Escape, then render the little Markdown the sections use: `code` and **bold**."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def table_html(table: Table) -> str:
    parts = [f'<h3 id="{html.escape(table.name)}">{inline(table.title)}</h3>', "<table>",
             "<thead><tr>" + "".join(f"<th>{inline(h)}</th>" for h in table.header) + "</tr></thead>",
             "<tbody>"]
    for i, row in enumerate(table.rows):
        cells = "".join(f'<td class="best">{inline(c)}</td>' if (i, j) in table.strong
                        else f"<td>{inline(c)}</td>" for j, c in enumerate(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</tbody></table>")
    parts += [f'<p class="note">{inline(n)}</p>' for n in table.notes]
    return "\n".join(parts)


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def to_html(title: str, sections: list[Section], figures: dict[str, Path]) -> str:
    body = [f"<h1>{inline(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{inline(s.title)}</h2>")
        body += [f"<p>{inline(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{inline(b)}</li>" for b in s.bullets) + "</ul>")
        body += [table_html(t) for t in s.tables]
        for name in s.figures:
            body.append(f'<figure><img alt="{name}" src="{data_uri(figures[name])}">'
                        f"<figcaption>{html.escape(FIGURE_CAPTIONS.get(name, ''))}</figcaption></figure>")
        for caption, text in s.code:
            body.append(f"<details><summary>{inline(caption)}</summary><pre>{html.escape(text)}</pre></details>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
