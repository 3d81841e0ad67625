"""--task compare: training runs side by side, one row per configuration.

``compare_runs(patterns, out_dir)`` reads the run directories (core/evaluation/run_table.py), keeps
as columns only the config fields whose values differ between the runs, and folds runs that differ
only in ``train.seed`` into one row. It prints rich tables and writes compare.md, compare.csv and
compare.png (mAP and loss per epoch of every run, labelled by the fields that differ) into out_dir.
A directory without config.json is not a training run: it is listed and skipped (``runs/*`` also
matches caches and earlier comparisons).

Three tables share the row number ``#`` and the differing config fields, so each stays readable at
4-8 runs in a terminal: runs (folders, n, status, epochs, model size, throughput, wall time),
accuracy (best and final mAP / AP50 / AP75) and the final AP per class. A number of a row of n > 1
runs reads ``mean ± std`` (sample std; ``(k/n)`` when only k runs have it yet); the highest mean of
each accuracy column is bold. compare.csv holds the same numbers unformatted, the std in
``<column>_std`` columns.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from loguru import logger
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.evaluation.run_table import (
    SEED_KEY,
    Row,
    Stat,
    differing_keys,
    expand_run_dirs,
    group_runs,
    load_runs,
    numeric_columns,
    row_label,
    run_label,
    short_text,
    value_text,
)
from utils.plots import plot_run_curves

ACCURACY = ("best_epoch", "best_mAP", "best_mAP50", "best_mAP75", "final_mAP", "final_mAP50", "final_mAP75")
LABELS = {"best_epoch": "best ep", "best_mAP": "best mAP", "best_mAP50": "best AP50", "best_mAP75": "best AP75",
          "final_mAP": "final mAP", "final_mAP50": "final AP50", "final_mAP75": "final AP75",
          "params_M": "params M", "GFLOPs": "GFLOPs", "train_img_per_s": "train img/s", "wall_s": "wall h:m:s"}
NOT_RANKED = ("best_epoch", "params_M", "GFLOPs", "wall_s")  # no "better" direction: never bold
FIXED_BY_CONFIG = ("params_M", "GFLOPs")  # a seed cannot change them: shown without a std
NUMERIC_HEADERS = {"#", "n", "epochs", *LABELS.values()}  # right-aligned (and "AP <class>")
PIPED_WIDTH = 1000  # console width when stdout is not a terminal (tables take only what they need)
MAX_VALUE_CHARS = 24  # a longer config value is cut in the tables (compare.csv keeps it whole)
MAX_CONSOLE_CLASSES = 12  # more classes: the per-class table only in compare.md / compare.csv
STATUS_STYLE = {"finished": "green", "in progress": "yellow", "crashed": "bold red", "failed": "bold red",
                "interrupted": "magenta", "stopped early": "cyan"}
TITLES = ("runs", "accuracy (best: the epoch with the best train.monitor, as best.pth; final: the last "
          "validation)", "final AP per class")
Cell = tuple[str, bool]  # text, bold


def compare_runs(patterns: list[str], out_dir: Path, width: int | None = None) -> list[Row]:
    """The task: read the runs, print the tables, write compare.md, compare.csv and compare.png.

    patterns: run directories or globs; out_dir: where the files go (a glob matching it, as a quoted
    'runs/*' does, leaves it out); width: console width (None: the terminal's; when piped, as wide
    as the tables need).
    Raises FileNotFoundError when a pattern names nothing or no directory is a training run.
    """
    if not patterns:
        raise FileNotFoundError("--task compare needs run directories: python main.py --task compare runs/a "
                                "runs/b (or a glob such as 'runs/*')")
    out_dir = Path(out_dir)
    paths = [p for p in expand_run_dirs(patterns) if p.resolve() != out_dir.resolve()]
    runs, skipped = load_runs(paths)
    if skipped:
        logger.warning(f"not training runs (no config.json), skipped: {', '.join(map(str, skipped))}")
    if not runs:
        raise FileNotFoundError(f"none of {', '.join(patterns)} is a training run directory (one holds the "
                                "config.json that --task train writes when it starts)")
    keys = differing_keys(runs)
    rows = group_runs(runs, keys)
    print_tables(rows, keys, skipped, width)
    for path in (write_markdown(rows, keys, skipped, out_dir / "compare.md"),
                 write_csv(rows, keys, out_dir / "compare.csv"), write_plot(rows, keys, out_dir / "compare.png")):
        logger.info(f"wrote {path}")
    return rows


def number_text(col: str, x: float) -> str:
    """One number of column ``col``: AP to 4 decimals, wall time as h:mm:ss, the rest by magnitude."""
    if col == "wall_s":
        s = round(x)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if col == "best_epoch":
        return f"{x:.1f}" if x != round(x) else f"{x:.0f}"
    if col in ("params_M", "GFLOPs"):
        return f"{x:.2f}"
    if col == "train_img_per_s":
        return f"{x:.1f}"
    return f"{x:.4f}"


def stat_text(col: str, s: Stat | None, n: int) -> str:
    """``mean ± std`` (n > 1), the value (n = 1), or "-" when no run measured it."""
    if s is None:
        return "-"
    spread = s.std is not None and col not in FIXED_BY_CONFIG
    text = number_text(col, s.mean) + (f" ± {number_text(col, s.std)}" if spread else "")
    return text + (f" ({s.count}/{n})" if s.count < n else "")


def _bests(rows: list[Row], cols: list[str]) -> dict[str, float]:
    """The highest mean of each ranked column (accuracy, throughput) over the rows, where the means differ."""
    out = {}
    for col in cols:
        means = [r.stats[col].mean for r in rows if r.stats.get(col) is not None]
        if col not in NOT_RANKED and len(set(means)) > 1:
            out[col] = max(means)
    return out


def cell_value(value) -> str:
    """A config value in a table cell: ``value_text``, cut to MAX_VALUE_CHARS with "…" (a list of
    anchors would fill the screen); compare.csv and each run's config.json hold the whole value."""
    return short_text(value, MAX_VALUE_CHARS)


def _ident(row: Row, keys: list[str]) -> list[Cell]:
    """The cells that name a row: its differing field values, or its run names when none differ."""
    return [(cell_value(row.config[k]), False) for k in keys] if keys else [(row_label(row, keys), False)]


def _numbers(rows: list[Row], cols: list[str]) -> list[list[Cell]]:
    bests = _bests(rows, cols)
    return [[(stat_text(c, r.stats.get(c), len(r.runs)),
              r.stats.get(c) is not None and r.stats[c].mean == bests.get(c)) for c in cols] for r in rows]


def tables(rows: list[Row], keys: list[str], max_classes: int | None = None,
           sep: str = "\n") -> list[tuple[str, list[str], list[list[Cell]]]]:
    """(title, headers, cells) of the runs, accuracy and per-class tables; the per-class one only when
    there are classes (and at most ``max_classes``). ``sep`` joins a row's run names."""
    cols = numeric_columns([run for r in rows for run in r.runs])
    classes = [c for c in cols if c.startswith("AP_")]
    ident = keys or ["run"]
    cost = ["params_M", "GFLOPs", "train_img_per_s", "wall_s"]
    out = [(TITLES[0], ["#", "runs", "n", "status", *keys, "epochs", *(LABELS[c] for c in cost)],
            [[(str(i), False), (sep.join(run.name for run in r.runs), False), (str(len(r.runs)), False),
              (r.status, False), *_ident(r, keys)[:len(keys)], (r.epochs, False), *nums]
             for i, (r, nums) in enumerate(zip(rows, _numbers(rows, cost)), 1)])]
    for title, group in ((TITLES[1], list(ACCURACY)), (TITLES[2], classes)):
        if not group or (group is classes and max_classes is not None and len(classes) > max_classes):
            continue
        headers = ["#", *ident, *(LABELS.get(c) or "AP " + c[3:] for c in group)]
        out.append((title, headers, [[(str(i), False), *_ident(r, keys), *nums]
                                     for i, (r, nums) in enumerate(zip(rows, _numbers(rows, group)), 1)]))
    return out


def print_tables(rows: list[Row], keys: list[str], skipped: list[Path], width: int | None = None) -> None:
    """The tables on stdout (in colour on a terminal; as wide as they need when piped, unless ``width``)."""
    # emoji=False: a header such as "h:m:s" must not become an emoji code.
    console = Console(width=width, emoji=False) if width else Console(emoji=False)
    if not console.is_terminal and not width:
        console = Console(width=PIPED_WIDTH, emoji=False)  # a file or pager scrolls: no folded headers
    n_runs = sum(len(r.runs) for r in rows)
    console.print(Text(f"{n_runs} runs in {len(rows)} rows; columns: the config fields that differ "
                       f"({', '.join(keys) or 'none'}); rows fold runs that differ only in {SEED_KEY} "
                       "(mean ± sample std over n)", style="bold"))
    for title, headers, cells in tables(rows, keys, MAX_CONSOLE_CLASSES):
        console.print(_rich_table(title, headers, cells, status_col=3 if title == TITLES[0] else None))
    classes = [c for c in numeric_columns([run for r in rows for run in r.runs]) if c.startswith("AP_")]
    if len(classes) > MAX_CONSOLE_CLASSES:
        console.print(f"AP of each of the {len(classes)} classes: see compare.md and compare.csv")
    if skipped:
        console.print(f"skipped (not training runs): {', '.join(map(str, skipped))}", style="yellow")


def _rich_table(title: str, headers: list[str], cells: list[list[Cell]], status_col: int | None) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_lines=False)
    for h in headers:
        table.add_column(Text(h), justify="right" if _numeric(h) else "left", overflow="fold", max_width=40)
    for row in cells:
        texts = [Text(t, style="bold" if bold else "") for t, bold in row]
        if status_col is not None:
            texts[status_col].stylize(STATUS_STYLE.get(row[status_col][0], "yellow"))
        table.add_row(*texts)
    return table


def _numeric(header: str) -> bool:
    return header in NUMERIC_HEADERS or header.startswith("AP ")


def markdown(rows: list[Row], keys: list[str], skipped: list[Path]) -> str:
    """compare.md: what was compared, the three tables (best means in bold) and the plot."""
    n_runs = sum(len(r.runs) for r in rows)
    lines = [f"# Comparison of {n_runs} training runs", "",
             f"Columns: the config fields that differ between the runs ({', '.join(f'`{k}`' for k in keys) or 'none'})."
             f" Runs that differ only in `{SEED_KEY}` share a row: its numbers are mean ± sample standard "
             "deviation over its n runs; `(k/n)`: only k of them have the value yet.", ""]
    if skipped:
        lines += [f"Skipped (not training runs, no config.json): {', '.join(f'`{p}`' for p in skipped)}", ""]
    for title, headers, cells in tables(rows, keys, sep=", "):
        lines += [f"## {title[0].upper()}{title[1:]}", "", _md_row(headers),
                  "|" + "|".join("---:" if _numeric(h) else "---" for h in headers) + "|"]
        lines += [_md_row([f"**{t}**" if bold else t for t, bold in row]) for row in cells] + [""]
    return "\n".join(lines + ["![mAP and loss per epoch](compare.png)", ""])


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def write_markdown(rows: list[Row], keys: list[str], skipped: list[Path], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(rows, keys, skipped), encoding="utf-8")
    return path


def csv_text(rows: list[Row], keys: list[str]) -> str:
    """compare.csv: one line per row; config values as in the table, numbers unrounded, std in ``<col>_std``
    (empty for a single run), run names, seeds and epochs of a row joined by ";"."""
    cols = numeric_columns([run for r in rows for run in r.runs])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "runs", "n", "seeds", "status", *keys, "epochs_done", "epochs_planned",
                     *(name for c in cols for name in (c, f"{c}_std"))])
    for i, r in enumerate(rows, 1):
        numbers = []
        for c in cols:
            s = r.stats.get(c)
            numbers += ["" if s is None else s.mean, "" if s is None or s.std is None else s.std]
        writer.writerow([i, ";".join(run.name for run in r.runs), len(r.runs), ";".join(map(str, r.seeds)), r.status,
                         *(value_text(r.config[k]) for k in keys),
                         ";".join(str(run.epochs_done) for run in r.runs),
                         ";".join(str(run.epochs_planned) for run in r.runs), *numbers])
    return buf.getvalue()


def write_csv(rows: list[Row], keys: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(rows, keys), encoding="utf-8")
    return path


def curves(rows: list[Row], keys: list[str]) -> list[dict]:
    """The plot's lines: every run's mAP per evaluated epoch (val/history.json) and mean total loss per
    trained epoch (epochs.jsonl), labelled by its differing fields (``run_label``)."""
    out = []
    for g, row in enumerate(rows):
        for m, run in enumerate(row.runs):
            maps = [(h["epoch"], h["mAP"]) for h in run.history if isinstance(h.get("mAP"), (int, float))
                    and h["mAP"] >= 0]
            losses = [(e["epoch"], e["losses"].get("total", sum(e["losses"].values()))) for e in run.epochs
                      if isinstance(e.get("losses"), dict) and e["losses"]]
            out.append({"label": run_label(row, run, keys), "group": g, "member": m, "map": maps, "loss": losses})
    return out


def write_plot(rows: list[Row], keys: list[str], path: Path) -> Path:
    return plot_run_curves(curves(rows, keys), path)
