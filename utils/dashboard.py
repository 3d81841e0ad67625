"""The evaluation dashboard: one validation's COCO and operative metrics as rich tables.

Sections: summary (NEW BEST or the gap to the best), quality KPIs (COCO), operative KPIs at
the production confidence, trends over the last epochs as sparklines, threshold sweep, top
and worst classes, error health and top confusions. ``build_dashboard`` returns a rich
renderable; ``render_text`` gives the same as plain text (for files and tests).
-1 means "not measurable" everywhere (utils/coco_eval.py) and is shown as "-".
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence

from rich import box
from rich.columns import Columns
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from utils.coco_eval import METRIC_KEYS

SPARK_CHARS = "▁▂▃▄▅▆▇█"
TREND_KEYS = ("mAP", "mAP50", "f1", "precision", "recall")  # history fields drawn as sparklines
_LABELS = {"mAP": "mAP .50:.95", "mAP50": "AP50", "mAP75": "AP75", "mAP_small": "AP small",
           "mAP_medium": "AP medium", "mAP_large": "AP large", "AR1": "AR@1", "AR10": "AR@10",
           "AR100": "AR@100", "f1": "F1", "precision": "precision", "recall": "recall"}


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, low to high (▁ to █); '·' marks a value that is not measurable."""
    ok = [v for v in values if v is not None and math.isfinite(v) and v >= 0]
    lo, hi = (min(ok), max(ok)) if ok else (0.0, 0.0)
    chars = []
    for v in values:
        if v is None or not math.isfinite(v) or v < 0:
            chars.append("·")
        else:
            level = 0 if hi == lo else round((v - lo) / (hi - lo) * (len(SPARK_CHARS) - 1))
            chars.append(SPARK_CHARS[level])
    return "".join(chars)


def history_entry(metrics: dict, epoch: int) -> dict:
    """The scalars of one validation kept for the trends (COCO headline + operative P/R/F1)."""
    op = metrics.get("operative", {})
    return {"epoch": int(epoch), **{k: float(metrics[k]) for k in METRIC_KEYS},
            **{k: float(op.get(k, -1.0)) for k in ("precision", "recall", "f1")}}


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) or v < 0 else f"{v:.{digits}f}"


def _delta(now: float, before: float | None) -> Text:
    if before is None or now < 0 or before < 0:
        return Text("")
    d = now - before
    style = "green" if d > 0 else "red" if d < 0 else "dim"
    return Text(f"{d:+.3f}", style=style)


def _summary(metrics: dict, epoch: int | None, total_epochs: int | None, best_before: float | None,
             best_epoch: int | None, reference: dict | None, seconds: float | None) -> Panel:
    m = metrics["mAP"]
    parts = [Text(f"epoch {epoch}/{total_epochs}  " if epoch is not None else "", style="bold"),
             Text(f"mAP {_fmt(m, 4)}  ", style="bold")]
    if best_before is not None and best_before >= 0:
        if m > best_before:
            gain = f"NEW BEST (+{m - best_before:.4f} over {best_before:.4f})"
            parts.append(Text(gain, style="bold green"))
        else:
            at = f", epoch {best_epoch}" if best_epoch is not None else ""
            parts.append(Text(f"{m - best_before:+.4f} vs best {best_before:.4f}{at}", style="yellow"))
    elif best_before is not None:
        parts.append(Text("NEW BEST (first validation)", style="bold green"))
    if reference:
        parts.append(Text(f"checkpoint epoch {reference.get('epoch', '?')} recorded mAP "
                          f"{_fmt(reference.get('mAP', -1.0), 4)}", style="cyan"))
    n, total = metrics.get("num_images", 0), metrics.get("num_images_total", metrics.get("num_images", 0))
    scope = f"evaluated {n} of {total} images" if n != total else f"{n} images"
    foot = f"{scope} | {metrics.get('backend', '?')}"
    if seconds is not None:
        foot += f" | metrics in {seconds:.2f} s"
    lines = [Text.assemble(*parts), Text(foot, style="dim")]
    if "max_det" in metrics:
        lines.append(max_det_line(metrics["max_det"]))
    return Panel(Group(*lines), title="evaluation", expand=True)


def max_det_line(report: dict) -> Text:
    """One sentence on the max_det cap (``utils.metrics.max_det_report``), yellow when it cut detections."""
    n, total, cap = report["images_over"], report["num_images"], report["max_det"]
    if not n:
        return Text(f"max_det {cap} not reached in any of {total} images (no detections dropped)", style="dim")
    if report["exact"]:
        what = f"{report['dropped']} detections beyond it dropped"
    else:  # only the kept counts are known: an image holding exactly max_det may have lost some
        what = "detections beyond it may have been dropped"
    return Text(f"max_det {cap} reached in {n} of {total} images ({what}; raise eval.max_det to keep them)",
                style="yellow")


def _table(title: str, *columns: tuple[str, str]) -> Table:
    """A compact table: ``columns`` are (header, justify) pairs."""
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
              show_edge=False, min_width=len(title))
    for header, justify in columns:
        t.add_column(header, justify=justify)
    return t


def _quality(metrics: dict, previous: dict | None) -> Table:
    t = _table("quality (COCO)", ("metric", "left"), ("value", "right"), ("Δ prev", "right"))
    for k in METRIC_KEYS:
        t.add_row(_LABELS[k], _fmt(metrics[k]), _delta(metrics[k], previous.get(k) if previous else None))
    return t


def _operative(op: dict) -> Table:
    t = _table(f"operative @ conf {op['conf']:.2f}, IoU {op['match_iou']:.2f}", ("metric", "left"),
               ("value", "right"))
    for name, value in (("precision", _fmt(op["precision"])), ("recall", _fmt(op["recall"])),
                        ("F1", _fmt(op["f1"])), ("TP / FP / FN", f"{op['tp']} / {op['fp']} / {op['fn']}"),
                        ("mean IoU of TP", _fmt(op["mean_iou_tp"])),
                        ("best F1 @ conf", f"{_fmt(op['best_f1'])} @ {_fmt(op['best_f1_conf'], 2)}"),
                        ("dets/image mean", f"{op['dets_per_image_mean']:.1f}"),
                        ("dets/image p95", f"{op['dets_per_image_p95']:.1f}")):
        t.add_row(name, value)
    return t


def _trends(history: Sequence[dict], last: int) -> Table | None:
    hist = list(history)[-last:]
    if len(hist) < 2:
        return None
    t = _table(f"trends, epochs {hist[0]['epoch']}..{hist[-1]['epoch']}", ("metric", "left"),
               ("trend", "left"), ("first", "right"), ("last", "right"), ("best", "right"))
    for k in TREND_KEYS:
        vals = [float(h.get(k, -1.0)) for h in hist]
        ok = [v for v in vals if v >= 0]
        t.add_row(_LABELS[k], Text(sparkline(vals), style="cyan"), _fmt(vals[0]), _fmt(vals[-1]),
                  _fmt(max(ok) if ok else -1.0))
    return t


def _sweep(op: dict) -> Table:
    heads = ("conf", "P", "R", "F1", "TP", "FP", "FN", "dets/img")
    t = _table("threshold sweep", *((c, "right") for c in heads), ("", "left"))
    marked = (("prod", op["conf"]), ("best F1", op["best_f1_conf"]))
    for r in op["sweep"]:
        marks = [m for m, c in marked if abs(r["conf"] - c) < 1e-9]
        t.add_row(f"{r['conf']:.2f}", _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), str(r["tp"]),
                  str(r["fp"]), str(r["fn"]), f"{r['dets_per_image']:.1f}", ", ".join(marks),
                  style="bold" if marks else None)
    return t


def _classes(metrics: dict, k: int) -> Table:
    """Top and worst k classes by COCO AP (all of them, best first, when there are few)."""
    op_rows = {r["name"]: r for r in metrics["operative"]["per_class"]}
    rows = sorted(metrics["per_class"], key=lambda r: -r["AP"])
    scored = [r for r in rows if r["AP"] >= 0]
    shown = [("", r) for r in rows] if len(rows) <= 2 * k else (
        [("top", r) for r in scored[:k]] + [("worst", r) for r in scored[-k:]])
    t = _table("classes by AP", ("", "left"), ("class", "left"),
               *((c, "right") for c in ("AP", "AP50", "P", "R", "F1", "GT", "det")))
    for tag, r in shown:
        o = op_rows.get(r["name"], {})
        dets = o.get("tp", 0) + o.get("fp", 0)
        t.add_row(tag, r["name"], _fmt(r["AP"]), _fmt(r["AP50"]), _fmt(o.get("precision")),
                  _fmt(o.get("recall")), _fmt(o.get("f1")), str(r["num_gt"]), str(dets))
    return t


def _health(metrics: dict) -> Table:
    op = metrics["operative"]
    t = _table("error health", ("check", "left"), ("value", "right"))
    fp, fn, n = op["fp_kinds"], op["fn_kinds"], op["num_images"]
    for name, value in (("FP background", fp["background"]), ("FP poor localization", fp["localization"]),
                        ("FP duplicate", fp["duplicate"]), ("FP wrong class", fp["confused"]),
                        ("FN missed", fn["missed"]), ("FN wrong class", fn["confused"]),
                        ("on ignore regions", op["ignored"])):
        t.add_row(name, str(value))
    t.add_row("images without dets", _warn(op["images_without_dets"], n))
    cap = metrics.get("max_det")
    if cap is not None and cap["exact"]:  # the images that lost detections to the cap
        t.add_row(f"images over max_det {cap['max_det']}", _warn(cap["images_over"], n))
    else:
        t.add_row("images at max_det", _warn(op["images_at_max_det"], n))
    no_gt = [r["name"] for r in metrics["per_class"] if r["num_gt"] == 0]
    t.add_row("classes without GT", Text(", ".join(no_gt) or "none", style="yellow" if no_gt else ""))
    for w in op["worst_images"][:3]:
        name = w["image"].replace("\\", "/").rsplit("/", 1)[-1]
        t.add_row(f"worst: {name}", f"FP {w['fp']}, FN {w['fn']}")
    return t


def _warn(n: int, total: int) -> Text:
    return Text(f"{n} of {total}", style="yellow" if n else "")


def _confusions(op: dict) -> Table:
    t = _table("top confusions", ("true", "left"), ("predicted as", "left"), ("count", "right"),
               ("share of true", "right"))
    for c in op["top_confusions"]:
        t.add_row(c["true"], c["pred"], str(c["count"]), _fmt(c["share"]))
    if not op["top_confusions"]:
        t.add_row("none", "", "", "")
    return t


def build_dashboard(metrics: dict, history: Sequence[dict] = (), *, epoch: int | None = None,
                    total_epochs: int | None = None, best_before: float | None = None,
                    reference: dict | None = None, trend_epochs: int = 10, top_k: int = 3,
                    seconds: float | None = None) -> Group:
    """All sections for ``metrics`` (core.evaluation.evaluator output, with "operative").

    history: earlier ``history_entry`` dicts, oldest first (this validation may be the last).
    best_before: best mAP before this validation (training); None hides the NEW BEST line.
    reference: {"epoch", "mAP"} recorded in the checkpoint (--task val).
    seconds: how long the metric computation took (shown in the summary).
    Tables sit side by side when the console is wide enough and stack otherwise.
    """
    past = [h for h in history if epoch is None or h["epoch"] < epoch]
    best_epoch = max(past, key=lambda h: h["mAP"])["epoch"] if past else None
    op = metrics["operative"]
    tables = [_quality(metrics, past[-1] if past else None), _operative(op), _trends(history, trend_epochs),
              _sweep(op), _classes(metrics, top_k), _health(metrics), _confusions(op)]
    return Group(_summary(metrics, epoch, total_epochs, best_before, best_epoch, reference, seconds),
                 Columns([t for t in tables if t is not None], padding=(0, 3)))


def render_text(renderable, width: int = 140) -> str:
    """Plain text (no colour codes) of a rich renderable, ``width`` characters wide."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(renderable)
    return buf.getvalue()


def print_dashboard(renderable, console: Console | None = None) -> None:
    """Print to the terminal (stderr, with the log lines), in colour when it is a terminal."""
    (console or Console(stderr=True)).print(renderable)
