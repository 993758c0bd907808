"""Rows of results: JSON lines in bench/results/<suite>.jsonl, each stamped with the commit, the date,
the machine and whether it was busy; and the markdown table a suite prints from them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
META = ("suite", "case", "tree", "commit", "date", "machine", "busy")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _gpu() -> str:
    if not shutil.which("nvidia-smi"):
        return "none"
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True)  # fmt: skip
    names = [n.strip() for n in done.stdout.splitlines() if n.strip()]
    return ", ".join(names) if done.returncode == 0 and names else "none"


def machine() -> dict[str, Any]:
    """The CPU model, the flags that decide graft's arithmetic, the cores and the GPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name", os.uname().machine),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count() or 1,
        "gpu": _gpu(),
    }


def _running_others(ours: set[int]) -> int:
    """Processes in the run queue that are not this one or its children (Linux /proc)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, state, parent = int(stat.parent.name), fields[0], int(fields[1])
        count += state == "R" and pid not in ours and parent not in ours
    return count


def load() -> dict[str, Any]:
    """The 1-minute load average over the cores and the other processes running now."""
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return {"load_per_core": round(per_core, 2), "others_running": _running_others({os.getpid()})}


def busy(start: dict[str, Any], end: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Busy when others were running at the start or the end, or when the load passed half the cores
    before the suite's own work began (`before`; without it, at `start`). Later in a suite the load
    average still counts the suite's own earlier cases, so it says nothing about other work then."""
    first = before or start
    flag = first["load_per_core"] > 0.5 or any(s["others_running"] > 0 for s in (start, end))
    return {"busy": flag, "before": first, "start": start, "end": end}


def stamp(row: dict[str, Any], suite: str, case: str, tree: Any, seen: dict[str, Any]) -> dict[str, Any]:
    """A measured row with what identifies it: suite, case, tree, commit, date, machine, busy."""
    head = {"suite": suite, "case": case, "tree": tree.name, "commit": tree.commit}
    head["date"] = seen.get("date") or now()
    return {**head, "machine": seen["machine"], "busy": seen["busy"], **row}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append(suite: str, rows: list[dict[str, Any]], folder: Path = RESULTS) -> Path:
    path = folder / f"{suite}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
    return path


def read(suite: str, folder: Path = RESULTS) -> list[dict[str, Any]]:
    path = folder / f"{suite}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the latest run of each case on each tree (a run's rows share its date)."""
    last: dict[tuple[str, str], str] = {}
    for row in rows:
        key = (row.get("case", ""), row.get("tree", ""))
        last[key] = max(last.get(key, ""), row.get("date", ""))
    return [r for r in rows if r.get("date", "") == last[(r.get("case", ""), r.get("tree", ""))]]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)[:60]
    return str(value).replace("|", "/")


def table(rows: list[dict[str, Any]]) -> str:
    """The latest rows as markdown, a table per case (cases measure different things)."""
    rows = latest(rows)
    if not rows:
        return "(no rows yet)"
    cases = list(dict.fromkeys(row.get("case", "") for row in rows))
    return "\n\n".join(_case_table([r for r in rows if r.get("case", "") == case]) for case in cases)


def _case_table(rows: list[dict[str, Any]]) -> str:
    """Case, tree, commit, the measured columns, busy, date."""
    measured: list[str] = []
    for row in rows:
        measured += [k for k in row if k not in META and k not in measured]
    header = ["case", "tree", "commit", *measured, "busy", "date"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row.get("case"), row.get("tree"), row.get("commit")]
        cells += [row.get(k, "") for k in measured]
        cells += [(row.get("busy") or {}).get("busy"), row.get("date", "")[:10]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
