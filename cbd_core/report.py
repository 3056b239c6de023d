"""One run as one self-contained HTML file: to hand in, mail, or open years later without the app.

    html_report(run) -> str       the page; `python -m cbd_core report RUN_ID --out run.html` writes it

It holds the run's settings, its verdict with the undefended baseline it is measured against, the CA /
ASR / RA table, the per-epoch figures, the training curves and the histogram of per-sample weights (or
suspicion). Figures are inline SVG drawn with matplotlib's object API (no pyplot state, no display):
vector, a few tens of kB each, with text turned into paths, so the file references no font, script,
stylesheet or image outside itself and renders the same offline. (Plotly's own HTML export would be
interactive but carries plotly.js, about 4.5 MB per file.) A run that failed, was cancelled or has not
finished yet gets a report too, with a note saying so at the top and whatever it wrote so far.
"""

from __future__ import annotations

import html
import io
import json
import re
from typing import Any

import numpy as np

from . import capture, verdicts
from .data import dataset_label
from .palette import CLEAN_COLOUR, PHASE_COLOURS, POISONED_COLOUR
from .text import number, pct
from .runs import RunDir, now_iso

ASR_STYLE = (0, (5, 3))

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; max-width: 980px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
.meta { color: #666; } code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; }
.note { padding: 0.8em 1em; border-radius: 6px; margin: 1em 0; }
.removed { background: #e6f4ea; border-left: 5px solid #2e7d32; }
.weakened { background: #fff4e0; border-left: 5px solid #ef8f00; }
.persists { background: #fdecea; border-left: 5px solid #c62828; }
.na, .unfinished { background: #eef3fb; border-left: 5px solid #4c78a8; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd;
       text-align: left; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.92em; } svg { max-width: 100%; height: auto; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _markdown(text: str) -> str:
    """The little markdown the verdict sentences use (**bold**, `code`, a hard line break) as HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return out.replace("  \n", "<br>")


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _pct(value: Any) -> str:
    """Any summary value as a percentage ("n/a" unless it is a finite number)."""
    return pct(number(value))


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def _svg(fig: Any) -> str:
    """A matplotlib Figure as an inline <svg> element: no XML prologue, DOCTYPE or metadata (which
    name web addresses), text as paths."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "backdoor-lab"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight",
                    metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def curves_svg(metrics: list[dict[str, Any]], defense: str | None = None) -> str | None:
    """Clean accuracy (solid) and attack success rate (dashed) per stage, one colour per phase (named by
    the defense's registry entry, e.g. CBD's "f_C" as "deconfounded f_C")."""
    from matplotlib.figure import Figure

    from .defenses import defense_or_none

    registered = defense_or_none(defense)

    points = [m for m in metrics if isinstance(m.get("clean_accuracy"), (int, float))]
    if not points:
        return None
    fig = Figure(figsize=(8.5, 3.6))
    ax = fig.add_subplot()
    phases = list(dict.fromkeys(str(m.get("phase")) for m in points))
    for colour, phase in zip(PHASE_COLOURS * 4, phases):
        x = [i + 1 for i, m in enumerate(points) if str(m.get("phase")) == phase]
        lines = [m for m in points if str(m.get("phase")) == phase]
        name = registered.phase_title(phase) if registered else phase
        ax.plot(x, [_number(m.get("clean_accuracy")) for m in lines], marker="o", color=colour, ms=4,
                label=f"{name}: clean accuracy")
        ax.plot(x, [_number(m.get("attack_success_rate")) for m in lines], marker="x", ls=ASR_STYLE, color=colour,
                ms=5, label=f"{name}: attack success")
    from matplotlib.ticker import MaxNLocator

    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # stages are whole numbers
    ax.set_xlabel("stage (epochs of every phase, in order)")
    ax.set_ylabel("share of test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _svg(fig)


def curves_hint(defense: str | None) -> str:
    """What the run's defense says to look for in its curves ("" for none or an unknown defense)."""
    from .defenses import defense_or_none

    registered = defense_or_none(defense)
    return registered.curves_hint if registered else ""


def weights_svg(record: dict[str, np.ndarray] | None, defense: str | None = None) -> tuple[str | None, str]:
    """Histogram of the final per-sample score the run's defense declares (`Defense.sample_view`, e.g.
    CBD's weight), else of its suspicion, poisoned vs clean, and its caption; (None, why) when the run
    has no per-sample scores."""
    from matplotlib.figure import Figure

    from .defenses import defense_or_none

    if not record or "is_poisoned" not in record:
        return None, "The run kept no per-sample record (sample_weights.npz)."
    poisoned = np.asarray(record["is_poisoned"], dtype=bool)
    registered = defense_or_none(defense)
    view = registered.sample_view if registered else None
    if view is not None and view.score in record:
        values = np.atleast_2d(np.asarray(record[view.score], dtype=np.float64))[-1]
        if view.log_scale:
            values = np.log10(np.maximum(values, 1e-12))
        axis = f"{view.score_title}{' (log10)' if view.log_scale else ''}, at the end"
        side = "left of" if view.suspicious == "low" else "right of"
        caption = (f"{registered.title}: {view.heading}. The samples it suspects sit at the "
                   f"{view.suspicious} end: poisoned samples (red) should sit {side} clean ones (blue).")
    elif "suspicion" in record and np.isfinite(np.asarray(record["suspicion"], dtype=np.float64)).any():
        values = np.asarray(record["suspicion"], dtype=np.float64)
        axis, caption = "suspicion (higher = more suspected)", (
            "The defense's per-sample suspicion: poisoned samples (red) should sit to the right of clean ones (blue).")
    else:
        return None, "This defense scores no individual samples, so there is no weight histogram."
    finite = np.isfinite(values)
    edges = np.histogram_bin_edges(values[finite], bins=40)
    fig = Figure(figsize=(8.5, 3.0))
    ax = fig.add_subplot()
    for name, mask, colour in (("clean", ~poisoned, CLEAN_COLOUR), ("poisoned", poisoned, POISONED_COLOUR)):
        ax.hist(values[mask & finite], bins=edges, color=colour, alpha=0.65, label=f"{name} ({int(mask.sum()):,})")
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))  # 1, 10, 100, not 10²
    ax.set_xlabel(axis)
    ax.set_ylabel("training samples (log)")
    ax.legend(fontsize=9, frameon=False)
    ax.grid(alpha=0.3)
    return _svg(fig), caption


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...], numeric_from: int = 1) -> str:
    head = "".join(f"<th{' class=num' if i >= numeric_from else ''}>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i >= numeric_from else ''}>{html.escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STATE_NOTES = {
    "queued": "This run is still waiting in the queue: nothing has been trained yet.",
    "running": "This run is still training: the figures below are what it had written when this report was made, "
               "and there is no verdict yet.",
    "failed": "This run failed, so it has no final figures and no verdict; below is what it wrote before it stopped.",
    "cancelled": "This run was cancelled, so it has no final figures and no verdict; below is what it wrote before "
                 "it stopped.",
}


def html_report(run: RunDir) -> str:
    """The run as one self-contained HTML page (see the module docstring). Raises a UserInputError
    (RunUnreadable) when its config.json cannot be read."""
    config = run.config()
    status = run.status()
    state = str(status.get("state", "?"))
    summary = run.summary() if state == "done" else None
    baseline = verdicts.lookup_baseline(config, run.path.parent) if summary else None
    result, banner = verdicts.banner_text(summary, baseline, state)
    metrics = run.metrics()
    try:
        record = run.arrays("sample_weights")
    except Exception:  # a damaged npz: the report says so instead of failing
        record = None

    title = (f"{config.get('defense')} against {config.get('attack')} at {100 * float(config.get('poison_rate', 0)):g} % "
             f"on {dataset_label(config)}, seed {config.get('seed')}")
    parts = [f"<h1>Backdoor Lab: {html.escape(title)}</h1>",
             f"<p class=meta>Run <code>{html.escape(run.run_id)}</code> · state <strong>{html.escape(state)}</strong>"
             f" · report made {html.escape(now_iso())}</p>"]
    if state != "done":
        error = status.get("error")
        note = STATE_NOTES.get(state, f"This run is {state}; it has no final figures.")
        parts.append(f"<div class='note unfinished'><strong>Not a finished run.</strong> {html.escape(note)}"
                     + (f"<br>Error: <code>{html.escape(str(error))}</code>" if error else "") + "</div>")
    css = {verdicts.REMOVED: "removed", verdicts.WEAKENED: "weakened", verdicts.PERSISTS: "persists",
           verdicts.MADE_WORSE: "persists"}.get(result, "na")
    parts.append(f"<h2>Verdict</h2><div class='note {css}'>{_markdown(banner)}</div>")
    f_b = capture.f_b_sentences(capture.read_f_b(summary, metrics)) if summary and "f_b_capture" in summary else []
    if f_b:  # the same two questions, answered the same way, as the Lesson's step 2
        parts.append("<h2>What f_B did</h2><p>" + " ".join(_markdown(s) for s in f_b) + "</p>")

    parts.append("<h2>Results</h2>")
    if summary:
        base = baseline.summary if baseline is not None and baseline.state == "done" else None
        rows = [("this run", _pct(summary.get("clean_accuracy")), _pct(summary.get("attack_success_rate")),
                 _pct(summary.get("robust_accuracy")))]
        if base:
            rows.append((f"undefended baseline ({baseline.run_id})", _pct(base.get("clean_accuracy")),
                         _pct(base.get("attack_success_rate")), _pct(base.get("robust_accuracy"))))
        parts.append(_table(rows, ("", "clean accuracy (CA)", "attack success rate (ASR)", "robust accuracy (RA)")))
        extra = [("poisoned training images", f"{_count(summary.get('poisoned_samples'))} of "
                                              f"{_count(summary.get('train_samples'))}"),
                 ("poison-detection AUROC", f"{summary['poison_detection_auroc']:.3f}"
                  if isinstance(summary.get("poison_detection_auroc"), (int, float)) else "n/a"),
                 ("model", str(summary.get("model"))), ("device", str(summary.get("device"))),
                 ("training time", f"{summary.get('seconds', 0):.0f} s")]
        parts.append(_table(extra, ("", "")))
        parts.append("<p class=meta>CA: share of untouched test images classified right. ASR: share of triggered "
                     "test images (target class left out) sent to the target label; lower is better for a defense. "
                     "RA: share of those triggered images still given their true label.</p>")
    else:
        parts.append("<p>No final figures: the run did not finish.</p>")

    parts.append("<h2>Training curves</h2>")
    curves = curves_svg(metrics, config.get("defense"))
    if curves:
        parts.append(f"<figure>{curves}<figcaption>Solid: clean accuracy; dashed: attack success rate, after each "
                     f"stage. {html.escape(curves_hint(config.get('defense')))}</figcaption></figure>")
        rows = [(str(m.get("phase")), str(m.get("epoch")), _pct(m.get("clean_accuracy")),
                 _pct(m.get("attack_success_rate")), _pct(m.get("robust_accuracy")),
                 f"{m['elapsed_seconds']:.1f}" if isinstance(m.get("elapsed_seconds"), (int, float)) else "")
                for m in metrics]
        parts.append(_table(rows, ("phase", "epoch", "CA", "ASR", "RA", "seconds"), numeric_from=1))
    else:
        parts.append("<p>No epoch finished, so there are no curves.</p>")

    parts.append("<h2>Per-sample weights</h2>")
    histogram, caption = weights_svg(record, config.get("defense"))
    parts.append(f"<figure>{histogram}<figcaption>{html.escape(caption)}</figcaption></figure>" if histogram
                 else f"<p>{html.escape(caption)}</p>")

    parts.append("<h2>Settings (config.json)</h2><p>Everything needed to train this run again, seed included.</p>"
                 f"<pre>{html.escape(json.dumps(config, indent=2, sort_keys=True))}</pre>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
