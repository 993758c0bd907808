"""`report.html`: one self-contained page per run folder (plots embedded, no network), from
`report.json` and the run's plots. `graft report RUN_DIR` writes it again."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .bundle import atomic_write

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK JP",sans-serif;
 margin:2rem auto;max-width:1100px;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}.big{font-size:1.4rem;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:.8rem}.card{width:120px;font-size:.8rem}
.card img{width:96px;height:96px;object-fit:contain;background:#f5f5f5;display:block}
img.plot{max-width:100%}pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem}.muted{color:#666}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def embed_png(path: Path, alt: str) -> str:
    """A PNG file as an <img> with a data URI (the page needs no other file)."""
    if not path.is_file():
        return f'<p class="muted">({_e(path.name)} is missing)</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_class(metrics: dict[str, Any]) -> str:
    rows = [
        [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
        for name, m in metrics["per_class"].items()
    ]
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _confused(metrics: dict[str, Any]) -> str:
    pairs = metrics.get("most_confused") or []
    if not pairs:
        return "<p>No class is mistaken for another.</p>"
    return _table(
        ["true", "predicted as", "count"], [[p["true"], p["predicted"], p["count"]] for p in pairs], 2
    )


def _probability(row: dict[str, Any], fmt: str) -> str:
    return format(row["probability"], fmt) if "probability" in row else ""


def _top_losses(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>None recorded.</p>"
    if all("image" in row["example"] for row in rows):
        cards = "".join(
            f'<div class="card"><img alt="{_e(r["example"].get("name", ""))}" src="{r["example"]["image"]}">'
            f"true <b>{_e(r['true'])}</b><br>predicted <b>{_e(r['predicted'])}</b> {_probability(r, '.2f')}"
            f'<br><span class="muted">loss {r["loss"]:.2f}</span></div>'
            for r in rows
        )
        return f'<div class="grid">{cards}</div>'
    table_rows = [
        [
            r["example"].get("text", r["example"].get("name", "")),
            r["true"],
            r["predicted"],
            _probability(r, ".2f") or f"loss {r['loss']:.2f}",
        ]
        for r in rows
    ]
    return _table(["example", "true", "predicted", "probability"], table_rows)


def _per_label(metrics: dict[str, Any]) -> str:
    rows = [
        [name, _num(m["average_precision"]), f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}"]
        + [m["support"], f"{m['threshold']:.3f}"]
        for name, m in metrics["per_label"].items()
    ]
    return _table(["label", "AP", "precision", "recall", "F1", "support", "threshold"], rows)


def _per_target(metrics: dict[str, Any]) -> str:
    rows = [
        [name, _num(m["r2"]), _num(m["rmse"]), _num(m["mae"]), _num(m["spearman"])]
        for name, m in metrics["per_target"].items()
    ]
    return _table(["target", "R2", "RMSE", "MAE", "Spearman"], rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _headline(metrics: dict[str, Any], split: str, task: str) -> str:
    if task == "multi":
        return (
            f'<span class="big">{metrics["map"]:.3f}</span> {split} mAP (micro-F1 '
            f"{metrics['micro_f1']:.3f}, subset accuracy {metrics['subset_accuracy']:.2%}, n={metrics['n']})"
        )
    if task == "regression":
        return (
            f'<span class="big">{metrics["r2"]:.3f}</span> {split} R2 (RMSE {_num(metrics["rmse"])}, '
            f"MAE {_num(metrics['mae'])}, Spearman {_num(metrics['spearman'])}, n={metrics['n']})"
        )
    return (
        f'<span class="big">{metrics["accuracy"]:.2%}</span> {split} accuracy '
        f"(macro-F1 {metrics['macro_f1']:.3f}, n={metrics['n']})"
    )


def _task_sections(report: dict[str, Any], run_dir: Path, shown: dict[str, Any], split: str) -> str:
    task = (report.get("task") or {}).get("name", "single")
    if task == "multi":
        return f"<h2>Per label ({split})</h2>{_per_label(shown)}"
    if task == "regression":
        plot = embed_png(run_dir / "predicted.png", "predicted against true")
        table = _per_target(shown)
        return f"<h2>Predicted against true ({split})</h2>{plot}<h2>Per target ({split})</h2>{table}"
    return (
        f'<h2>Confusion matrix ({split})</h2>{embed_png(run_dir / "confusion.png", "confusion matrix")}'
        f"<h2>Per class ({split})</h2>{_per_class(shown)}"
        f"<h2>Most confused pairs ({split})</h2>{_confused(shown)}"
    )


def _score_cell(value: float | None, se: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ± {se or 0.0:.3f}"


def _backbone_pick(pick: dict[str, Any] | None) -> str:
    """`--backbone auto`'s table: each candidate's input size, speed and probe scores, the choice."""
    if not pick:
        return ""
    rows = [
        [
            r["backbone"],
            r["input_size"] or "-",
            f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-",
            _score_cell(r["linear"], r["linear_se"]),
            _score_cell(r["knn"], r["knn_se"]),
            r["status"] + (f": {r['why']}" if r["why"] else ""),
        ]
        for r in pick.get("candidates", [])
    ]
    header = ["backbone", "input", "inputs/s", "linear probe", "5-NN probe", "result"]
    table = _table(header, rows) if rows else ""
    return (
        f"<h2>Backbone pick (--backbone auto)</h2><p>Chosen: <b>{_e(pick['chosen'])}</b>, "
        f"{_e(pick['why'])}. Pin it: <code>{_e(pick['flag'])}</code></p>{table}"
    )


_NAMES = {"multi": "labels", "regression": "target(s)"}


def render(report: dict[str, Any], run_dir: Path) -> str:
    shown_name = "test" if report.get("test") else "validation"
    shown = report.get("test") or report["validation"]
    val, test = report["validation"], report.get("test")
    task = (report.get("task") or {}).get("name", "single")
    headline = _headline(val, "validation", task)
    if test:
        headline += "<br>" + _headline(test, "test", task)
    choice = report.get("strategy_choice", {})
    kept = report.get("kept") or {}
    tta = report.get("tta")
    tta_line = f"\n<p>Test-time flip averaging: {_e(tta['reason'])}</p>" if tta else ""
    phases = "".join(f"<li>{_e(line)}</li>" for line in report.get("phases", []))
    notes = "".join(
        f"<li>{_e(line)}</li>"
        for line in [*(report.get("plan") or {}).get("notes", []), *(report.get("advice") or [])]
    )
    skipped = report.get("skipped_files", [])
    skipped_html = (
        f"<p>{len(skipped)} input(s) skipped; the first:</p>"
        + _table(["input", "reason"], [[s["path"], s["reason"]] for s in skipped[:20]], 2)
        if skipped
        else "<p>None.</p>"
    )
    details = json.dumps({"config": report.get("config"), "plan": report.get("plan")}, indent=2, default=str)
    data = report.get("data", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>graft: {_e(data.get("name", "run"))}</title>
<style>{STYLE}</style></head><body>
<h1>graft run: {_e(data.get("name", ""))}</h1>
<p class="muted">{_e(report.get("modality", ""))} · {_e(report["backbone"]["name"])} · strategy
<b>{_e(report.get("strategy", ""))}</b> · {len(report["classes"])} {_NAMES.get(task, "classes")} ·
{data.get("train", "?")} training / {data.get("val", "?")} validation examples ·
{report.get("seconds", 0):.0f} s · {_e(report.get("device", ""))}</p>
<p>{headline}</p>
<h2>How it was trained</h2>
<p>Strategy: {_e(choice.get("reason", ""))}</p>
<p>Kept: {_e(kept.get("reason", ""))}</p>{tta_line}
<ul>{phases}{notes}</ul>
{_backbone_pick(report.get("backbone_pick"))}
<h2>Learning curves</h2>{embed_png(run_dir / "curves.png", "learning curves")}
{_task_sections(report, run_dir, shown, shown_name)}
<h2>Validation examples with the highest loss</h2>{_top_losses(report.get("top_losses", []))}
<h2>Skipped inputs</h2>{skipped_html}
<h2>Configuration</h2><details><summary>config as asked, plan as resolved</summary>
<pre>{_e(details)}</pre></details>
</body></html>
"""


def write_report_html(run_dir: str | Path) -> Path:
    """Write run_dir/report.html from run_dir/report.json and the run's plots."""
    from .errors import BundleError

    run_dir = Path(run_dir)
    source = run_dir / "report.json"
    if not source.is_file():
        raise BundleError(f"{run_dir} has no report.json: it is not a graft run folder")
    try:
        report = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{source} is not valid JSON ({err.msg}, line {err.lineno})") from None
    target = run_dir / "report.html"
    page = render(report, run_dir)
    atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return target
