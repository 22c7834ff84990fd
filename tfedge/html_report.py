"""A self-contained HTML report of one model: figures and tables in one file.

:func:`write_report` writes ``report.html`` for the team that receives a
model: accuracy and size after each stage of the pipeline (float, pruned,
QAT, int8), latency and instructions per target, per-layer weight sparsity
and per-layer int8 quantization error, the model's README (its tables) and
links to the bundles. Everything is in the one file: figures are drawn with
matplotlib and embedded as base64 PNG, the style is inline, and nothing is
loaded from the network (no script, font or stylesheet from elsewhere), so
the page opens offline and can be mailed or archived as is.

Inputs are plain JSON-ready data (the ``to_dict()`` of tfedge's reports), so
this module needs neither TensorFlow nor LiteRT; matplotlib is imported when
a figure is drawn. The file is written atomically (a temporary file in the
same folder, then ``os.replace``).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from typing import Any, Sequence

from tfedge.report import write_atomic

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 72em; padding: 0 1em; color: #1b1f23; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { border: 1px solid #d0d7de; padding: .25em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(30em, 1fr)); gap: 1em; }
.note { color: #57606a; }
"""


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into memory
    import matplotlib.pyplot as plt

    return plt


def figure_data_uri(fig: Any) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI; closes the figure."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def stages_figure(stages: Sequence[dict[str, Any]]) -> str | None:
    """Accuracy and size after each stage, side by side (a PNG data URI).

    Args:
        stages: ``{"stage", "accuracy" (0-1 or None), "size_bytes" (or None)}``
            per stage, in pipeline order.
    """
    if not stages:
        return None
    plt = _pyplot()
    names = [s["stage"] for s in stages]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    accuracy = [100 * s["accuracy"] if s.get("accuracy") is not None else 0 for s in stages]
    bars = left.bar(names, accuracy, color="#4c72b0")
    left.bar_label(bars, labels=[f"{a:.2f}%" if s.get("accuracy") is not None else "-"
                                 for a, s in zip(accuracy, stages)], fontsize=8)
    low = min([a for a in accuracy if a] or [0])
    left.set_ylim(max(0, low - 5), 100.5)
    left.set_ylabel("test accuracy (%)")
    left.set_title("accuracy after each stage")
    positions = list(range(len(stages)))
    series = [("size_bytes", "as stored", "#55a868")]
    if any(s.get("compressed_bytes") for s in stages):
        series.append(("compressed_bytes", "zlib-compressed", "#dd8452"))
    width = 0.8 / len(series)
    for k, (key, label, color) in enumerate(series):
        sizes = [s[key] / 1024 if s.get(key) else 0 for s in stages]
        bars = right.bar([p + (k - (len(series) - 1) / 2) * width for p in positions], sizes,
                         width, label=label, color=color)
        right.bar_label(bars, labels=[f"{v:,.0f}" if v else "-" for v in sizes], fontsize=7)
    right.set_xticks(positions, names)
    right.legend(fontsize=8)
    right.set_ylabel("size (KiB)")
    right.set_title("size after each stage")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return figure_data_uri(fig)


def targets_figure(benchmark: dict[str, Any]) -> str | None:
    """Instructions per inference and latency per target (a PNG data URI).

    Args:
        benchmark: ``tfedge.bench(...).to_dict()``.
    """
    targets = benchmark.get("targets") or []
    host = (benchmark.get("host") or {}).get("latency_ms") or {}
    if not targets and not host:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    counted = [t for t in targets if t.get("instructions")]
    if counted:
        bars = left.bar([f"{t['target']}\n({t['qemu_cpu']})" for t in counted],
                        [t["instructions"] / 1e6 for t in counted], color="#8172b2")
        left.bar_label(bars, labels=[f"{t['instructions']:,}" for t in counted], fontsize=8)
        left.set_ylabel("million instructions")
    else:
        left.text(0.5, 0.5, "no emulated run", ha="center", va="center")
    left.set_title("aarch64 instructions per inference (exact, qemu)")
    names, values = [], []
    if host.get("p50") is not None:
        names.append("host p50\n(measured)")
        values.append(host["p50"])
    for t in targets:
        estimate = t.get("instruction_estimate_ms") or t.get("mac_estimate_ms")
        if estimate is not None:
            how = "instr." if t.get("instruction_estimate_ms") else "MACs"
            names.append(f"{t['target']}\n(est., {how})")
            values.append(estimate)
    bars = right.bar(names, values, color="#c44e52")
    right.bar_label(bars, labels=[f"{v:.3g} ms" for v in values], fontsize=8)
    if values and min(values) > 0 and max(values) / min(values) > 30:
        right.set_yscale("log")  # host and microcontroller differ by orders of magnitude
    right.set_ylabel("ms per inference, one thread")
    right.set_title("latency: host measured, devices estimated")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return figure_data_uri(fig)


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def layers_figure(rows: Sequence[dict[str, Any]], value: str, *, title: str, xlabel: str,
                  name: str = "layer", percent: bool = False, limit: int = 40) -> str | None:
    """One horizontal bar per layer (a PNG data URI).

    Args:
        rows: one dict per layer with ``name`` and ``value`` keys.
        value: the key of the value to plot (rows without it are left out).
        title: the figure's title.
        xlabel: the value axis label.
        name: the key of the layer name.
        percent: plot ``100 * value``.
        limit: at most this many layers (the first ones, in the given order).
    """
    rows = [r for r in rows if r.get(value) is not None][:limit]
    if not rows:
        return None
    plt = _pyplot()
    scale = 100.0 if percent else 1.0
    fig, axis = plt.subplots(figsize=(10, 0.8 + 0.22 * len(rows)))
    labels = [_short(str(r[name])) for r in rows]
    axis.barh(range(len(rows)), [scale * float(r[value]) for r in rows], color="#4c72b0")
    axis.set_yticks(range(len(rows)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    fig.tight_layout()
    return figure_data_uri(fig)


# ----------------------------------------------------------------------------
# Markdown (the README) and tables
# ----------------------------------------------------------------------------
def _inline(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def markdown_html(markdown: str, *, top_level: int = 2) -> str:
    """The small Markdown subset tfedge's READMEs use, as HTML.

    Headings (``#``), fenced code blocks (the text tables), ``-`` lists,
    paragraphs and inline code; headings are shifted to start at
    ``<h{top_level}>``. Everything is HTML-escaped.
    """
    out: list[str] = []
    in_code = in_list = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            if in_list:
                out.append("</ul>")
                in_list = False
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading:
            level = min(6, len(heading.group(1)) + top_level - 1)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_code:
        out.append("</pre>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; numbers are right-aligned."""
    def cell(value):
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        text = f"{value:,}" if isinstance(value, int) and numeric else (
            f"{value:.4g}" if numeric else str(value))
        return f'<td class="num">{text}</td>' if numeric else f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ----------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------
def _figure(uri: str | None, caption: str) -> str:
    if uri is None:
        return f'<p class="note">{html.escape(caption)}: no data.</p>'
    return (f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_report(*, title: str, summary: str = "",
                  stages: Sequence[dict[str, Any]] = (),
                  benchmark: dict[str, Any] | None = None,
                  sparsity: Sequence[dict[str, Any]] = (),
                  quantization_errors: Sequence[dict[str, Any]] = (),
                  readme: str = "", links: dict[str, str] | None = None) -> str:
    """The report page as HTML text (see :func:`write_report` for the arguments)."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if summary:
        parts.append(f"<p>{_inline(summary)}</p>")
    if links:
        parts.append("<h2>Files and bundles</h2><ul>" + "".join(
            f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>'
            for label, href in links.items()) + "</ul>")
    if stages:
        parts.append("<h2>Accuracy and size after each stage</h2>")
        parts.append(_figure(stages_figure(stages), "accuracy and size per stage"))
        parts.append(table_html(
            ["stage", "test accuracy", "zero kernel weights", "size (bytes)",
             "zlib-compressed (bytes)", "how the size is counted"],
            [[s["stage"], "-" if s.get("accuracy") is None else f"{100 * s['accuracy']:.2f}%",
              "-" if s.get("kernel_sparsity") is None else f"{100 * s['kernel_sparsity']:.1f}%",
              s.get("size_bytes") if s.get("size_bytes") is not None else "-",
              s.get("compressed_bytes") if s.get("compressed_bytes") is not None else "-",
              s.get("size_note", "")] for s in stages]))
    if benchmark:
        parts.append("<h2>Latency and instructions per target</h2>")
        parts.append(_figure(targets_figure(benchmark), "instructions and latency per target"))
        rows = [[t["target"], t.get("qemu_cpu") or "-",
                 t["instructions"] if t.get("instructions") else "-",
                 {True: "yes", False: "NO", None: "-"}[t.get("outputs_match")],
                 "-" if t.get("instruction_estimate_ms") is None
                 else f"{t['instruction_estimate_ms']:.3g}",
                 "-" if t.get("mac_estimate_ms") is None else f"{t['mac_estimate_ms']:.3g}",
                 t.get("note", "")] for t in benchmark.get("targets") or []]
        parts.append(table_html(["target", "qemu cpu", "instructions", "= host (bit-exact)",
                                 "est. ms (instr.)", "est. ms (MACs)", "note"], rows))
    if sparsity:
        parts.append("<h2>Per-layer weight sparsity</h2>")
        parts.append(_figure(layers_figure(sparsity, "sparsity", title="fraction of zero "
                                           "weights per kernel", xlabel="sparsity (%)",
                                           percent=True, limit=80),
                             "per-layer sparsity"))
    if quantization_errors:
        parts.append("<h2>Per-layer int8 quantization error</h2>")
        ranked = sorted(quantization_errors,
                        key=lambda r: -(r.get("rmse_over_scale") or 0.0))
        parts.append(_figure(layers_figure(
            ranked, "rmse_over_scale", title="RMSE of each layer's int8 output / its "
            "quantization step (0.29 = rounding only), worst first",
            xlabel="RMSE / scale"), "per-layer quantization error"))
    if readme:
        parts.append('<h2>README</h2><div class="readme">'
                     + markdown_html(readme, top_level=3) + "</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, *, title: str, summary: str = "",
                 stages: Sequence[dict[str, Any]] = (),
                 benchmark: dict[str, Any] | None = None,
                 sparsity: Sequence[dict[str, Any]] = (),
                 quantization_errors: Sequence[dict[str, Any]] = (),
                 readme: str = "", links: dict[str, str] | None = None) -> str:
    """Writes the self-contained HTML report, atomically.

    Args:
        path: the ``.html`` file to write (its folder is created).
        title: the page title.
        summary: one paragraph under the title (``code`` spans allowed).
        stages: accuracy and size per stage, in order: dicts with
            ``stage``, ``accuracy`` (0-1 or None), ``size_bytes`` and
            optionally ``compressed_bytes``, ``kernel_sparsity`` (0-1) and
            ``size_note``.
        benchmark: ``tfedge.bench(...).to_dict()``, or None.
        sparsity: per-layer rows with ``layer`` and ``sparsity`` (0-1), e.g.
            ``tfedge.sparsity_report(model).rows``.
        quantization_errors: ``tfedge.debug_quantization(...).to_dict()
            ["layers"]`` (``layer``, ``rmse_over_scale``, ...).
        readme: the model's README (Markdown; its tables are code blocks).
        links: link text -> relative path (the bundles, the model, the card).

    Returns:
        The path written.

    Example:

    >>> tfedge.html_report.write_report(  # doctest: +SKIP
    ...     "tflite_models/digits/report.html", title="digits",
    ...     stages=[{"stage": "float", "accuracy": 0.99, "size_bytes": 2_300_000}],
    ...     benchmark=bench_report.to_dict(), links={"micro bundle": "micro/"})
    'tflite_models/digits/report.html'
    """
    text = render_report(title=title, summary=summary, stages=stages, benchmark=benchmark,
                         sparsity=sparsity, quantization_errors=quantization_errors,
                         readme=readme, links=links)
    return write_atomic(path, text)  # the one writer: a kill leaves the old report or the new
