"""The benchmark harness (`python -m bench`): the machine record, result rows as JSON lines, the
table printed from them, trees run through the one helper, and the gpu suite's light import."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import BAD, GOOD, NOUNS, make_image_folder

import bench.__main__ as cli
from bench import harness, results
from bench.suites import gpu as gpu_suite

ROOT = Path(__file__).resolve().parents[1]


def test_machine_record_names_the_cpu_its_flags_cores_and_gpu():
    record = results.machine()
    assert set(record) == {"cpu", "flags", "cores", "gpu"}
    assert record["cpu"] and record["cores"] >= 1 and record["gpu"]
    assert set(record["flags"]) <= set(results.CPU_FLAGS)


def test_busy_when_the_load_before_passes_half_the_cores_or_others_run():
    quiet = {"load_per_core": 0.1, "others_running": 0}
    assert results.busy(quiet, quiet)["busy"] is False
    assert results.busy({"load_per_core": 0.9, "others_running": 0}, quiet)["busy"] is True
    assert results.busy({"load_per_core": 0.1, "others_running": 2}, quiet)["busy"] is True
    # later in a suite the load counts its own earlier cases: only the load before the suite counts
    own = {"load_per_core": 0.95, "others_running": 0}
    assert results.busy(own, own, before=quiet)["busy"] is False
    assert results.busy(quiet, quiet, before={"load_per_core": 0.8, "others_running": 0})["busy"] is True
    assert set(results.load()) == {"load_per_core", "others_running"}


def test_a_row_round_trips_through_its_json_lines_file(tmp_path):
    tree = harness.Tree("after", None, "abc123")
    seen = {"machine": results.machine(), "busy": {"busy": False}}
    row = results.stamp({"test_accuracy": 0.9, "wall_s": 12.5}, "accuracy", "demo", tree, seen)
    assert set(results.META) <= set(row)
    results.append("accuracy", [row], tmp_path)
    results.append("accuracy", [row], tmp_path)
    assert results.read("accuracy", tmp_path) == [row, row]
    assert results.read("speed", tmp_path) == []


def _row(case: str, tree: str, accuracy: float, date: str) -> dict:
    return {"suite": "accuracy", "case": case, "tree": tree, "commit": f"c-{tree}", "date": date,
            "machine": {}, "busy": {"busy": False}, "test_accuracy": accuracy}  # fmt: skip


def test_table_prints_the_latest_run_of_each_case_on_each_tree(tmp_path, capsys):
    rows = [_row("demo", "before", 0.5, "2026-01-01"), _row("demo", "before", 0.75, "2026-01-02"),
            _row("demo", "after", 0.8, "2026-01-02"), _row("trec6", "after", 0.9, "2026-01-03")]  # fmt: skip
    results.append("accuracy", rows, tmp_path)
    assert cli.main(["accuracy", "--table", "--results", str(tmp_path)]) == 0
    demo, trec6 = capsys.readouterr().out.strip().split("\n\n")
    lines = demo.splitlines()
    assert lines[0].startswith("| case | tree | commit | test_accuracy |")
    body = lines[2:]
    assert len(body) == 2 and trec6.count("| trec6 | after |") == 1
    assert any("| demo | before | c-before | 0.7500 |" in line for line in body)
    assert not any("0.5000" in line for line in body)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("HEAD~1", ("HEAD~1", "HEAD~1", ())),
        ("before=/tmp/old", ("before", "/tmp/old", ())),
        ("wise=/tmp/new:--interpolate auto", ("wise", "/tmp/new", ("--interpolate", "auto"))),
        ("installed", ("installed", "installed", ())),
    ],
)
def test_tree_specs_name_a_place_and_its_flags(spec, expected):
    assert harness.parse_tree_spec(spec) == expected


def test_a_tree_given_as_a_path_runs_graft_from_its_src_with_a_cold_cache(tmp_path):
    with harness.open_tree(f"here={ROOT}") as tree:
        assert tree.src == ROOT / "src" and tree.commit != "unknown"
        run = harness.run_graft(tree, ["--help"])
    assert run.returncode == 0 and "train" in run.stdout
    assert run.wall_s > 0 and run.peak_rss_mb > 10


def test_a_tree_adds_its_flags_to_graft_train_only():
    tree = harness.Tree("seeded", ROOT / "src", "abc", ("--seed", "3"))
    train = harness.run_graft(tree, ["train", "--help"])
    assert train.returncode == 0 and train.argv[-3:] == ["--help", "--seed", "3"]
    assert harness.run_graft(tree, ["--help"]).argv[-1] == "--help"


def test_the_installed_tree_names_its_version():
    with harness.open_tree("installed") as tree:
        assert tree.src is None and tree.commit.startswith("installed ")


def test_the_serve_suite_reads_the_servers_own_503_latency_from_its_access_log():
    from bench.suites.serve import served_latency

    lines = [
        "2026-12-07 08:12:07,825 a1 POST /predict 503 5.5ms",
        "2026-12-07 08:12:07,900 b2 POST /predict 200 80.1ms",
        "2026-12-07 08:12:08,100 c3 GET /ready 503 1.0ms",
        "2026-12-07 08:12:08,200 d4 POST /predict 503 50.0ms",
    ]
    assert served_latency(lines) == {"server_p99_503_ms": 50.0, "server_max_503_ms": 50.0}
    assert served_latency(lines[1:3]) == {"server_p99_503_ms": None, "server_max_503_ms": None}


def test_rows_the_harness_wrote_do_not_make_a_tree_dirty(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "speed.jsonl").write_text("")
    (tmp_path / "code.py").write_text("")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    (tmp_path / "bench" / "results" / "speed.jsonl").write_text("{}\n")
    assert not harness.commit_of(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 1\n")
    assert harness.commit_of(tmp_path).endswith("+dirty")


def test_a_tree_given_as_a_revision_is_checked_out_and_removed_after():
    with harness.open_tree("old=HEAD") as tree:
        checkout = tree.src.parent
        assert (tree.src / "graft" / "cli.py").is_file()
        assert tree.commit == harness.commit_of(ROOT).removesuffix("+dirty")
    assert not checkout.exists()
    assert str(checkout) not in subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                                               text=True).stdout  # fmt: skip


def test_a_tree_that_is_no_graft_checkout_is_refused_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no graft package"), harness.open_tree(str(tmp_path)):
        pass


def test_the_harness_stamps_and_appends_each_case_row(tmp_path, monkeypatch, capsys):
    def one(ctx):
        run = ctx.graft("--version")
        return [run.measures(rc=run.returncode, src=str(ctx.tree.src))]

    def broken(ctx):
        raise ValueError("no data here")

    suite = SimpleNamespace(CASES={"one": one, "broken": broken}, __name__="bench.suites.fake")
    monkeypatch.setattr(cli, "load_suite", lambda name: suite)
    monkeypatch.setattr(cli, "WORK", tmp_path / "work")
    assert cli.main(["serve", "--results", str(tmp_path), "--tree", f"now={ROOT}"]) == 0
    rows = results.read("serve", tmp_path)
    assert [r["case"] for r in rows] == ["one", "broken"]
    assert rows[0]["tree"] == "now" and rows[0]["rc"] == 0 and rows[0]["src"] == str(ROOT / "src")
    assert set(rows[0]["machine"]) == {"cpu", "flags", "cores", "gpu"} and "busy" in rows[0]["busy"]
    assert rows[1]["error"] == "ValueError: no data here"


def test_emit_appends_rows_to_the_file_the_harness_names(tmp_path, monkeypatch):
    target = tmp_path / "rows.jsonl"
    monkeypatch.setenv(harness.ROWS_ENV, str(target))
    harness.emit({"row": "a", "rate": 1.0}, {"row": "b"})
    assert [json.loads(line)["row"] for line in target.read_text().splitlines()] == ["a", "b"]


def test_every_suite_lists_its_cases_without_importing_torch_or_graft():
    code = (
        "import sys, bench.__main__ as m\n"
        "for name in m.SUITES:\n"
        "    cases = m.load_suite(name).CASES\n"
        "    assert cases and all(callable(c) for c in cases.values()), name\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'graft')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_gpu_suite_imports_without_torch_graft_or_the_other_suites():
    code = (
        "import sys, bench.suites.gpu as g; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'graft') "
        "or (m.startswith('bench.') and m not in ('bench.suites.gpu', 'bench.suites', 'bench.harness', "
        "'bench.data', 'bench.results'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    helped = subprocess.run([sys.executable, "-m", "bench", "gpu", "--help"], cwd=ROOT, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert "--small" in helped.stdout and "--devices" in helped.stdout


def test_the_accuracy_suite_runs_the_fixed_commands(tmp_path, monkeypatch):
    """The commands (and so the numbers) stay those the suite has always compared."""
    from bench.suites import accuracy

    calls: list[list[str]] = []

    def graft(*args: str, **_: object) -> harness.Run:
        calls.append(list(args))
        summary = {"transfer": {"accuracy": 0.85}, "scratch": {"accuracy": 0.2}, "test_accuracy": 0.9}
        return harness.Run(list(args), 0, 1.0, 100.0, stdout=json.dumps(summary))

    monkeypatch.setattr(accuracy, "_cifar", lambda n, t: (Path(f"/c/train-{n}"), Path(f"/c/test-{t}")))
    ctx = SimpleNamespace(work=tmp_path, graft=graft)
    rows = {name: accuracy.CASES[name](ctx) for name in accuracy.DEFAULT_CASES}
    out = ["--out", str(tmp_path / "run"), "--json"]
    trec = accuracy.TEXT / "trec6"
    size = ["--image-size", "96"]
    finetune = ["train", "/c/train-100", "--test", "/c/test-50", "--strategy", "finetune", *size]
    assert calls == [
        ["demo", *out],
        ["train", str(trec / "train.csv"), "--test", str(trec / "test.csv"), *out],
        [*finetune, "--epochs", "1", *out],
        [*finetune, "--epochs", "5", *out],
        ["train", "/c/train-500", "--test", "/c/test-100", "--strategy", "linear", *size, *out],
    ]
    assert rows["demo"][0]["transfer"] == 0.85 and rows["trec6"][0]["test_error"] == pytest.approx(0.1)
    assert rows["linear_96"][0] == {"wall_s": 1.0, "peak_rss_mb": 100.0, "test_accuracy": 0.9}


def test_the_numbers_pages_accuracy_cases_run_its_figures_commands(tmp_path, monkeypatch):
    """The long accuracy cases run the commands the numbers page's figures were measured with."""
    from bench.suites import accuracy

    calls: list[list[str]] = []

    def graft(*args: str, **_: object) -> harness.Run:
        calls.append(list(args))
        curve = [{"method": "linear", "labels_per_class": n, "test_accuracy": 0.5} for n in (10, 50, 250)]
        summary = {"accuracy": 0.8, "test_accuracy": 0.9, "results": curve}
        return harness.Run(list(args), 0, 1.0, 100.0, stdout=json.dumps(summary))

    monkeypatch.setattr(accuracy, "require_data", lambda *folders: None)
    monkeypatch.setattr(accuracy, "subset_folder", lambda source, n, name: Path(f"/c/{name}"))
    ctx = SimpleNamespace(work=tmp_path, graft=graft)
    figures = set(accuracy.CASES) - set(accuracy.DEFAULT_CASES) - {"batch_lr_rule"}
    rows = {name: accuracy.CASES[name](ctx) for name in figures}
    out = ["--out", str(tmp_path / "run"), "--json"]
    cifar, trec, sst2 = accuracy.DATA, accuracy.TEXT / "trec6", str(accuracy.TEXT / "sst2")
    trec6 = ["train", str(trec / "train.csv"), "--test", str(trec / "test.csv"), "--seed"]
    assert sorted(calls) == sorted([
        ["train", str(cifar / "train"), "--test", str(cifar / "test"), "--strategy", "finetune",
         "--time-budget", "1800", "--image-size", "96", *out],
        ["compare", str(cifar / "train"), "--test", "/c/cifar10-test-100", "--labels-per-class", "10,50,250",
         "--image-size", "64", "--methods", "linear", *out],
        ["train", sst2, "--strategy", "linear", "--seed", "0", "--feature-layers", "auto", *out],
        ["train", sst2, "--strategy", "linear", "--seed", "0", "--feature-layers", "1", *out],
        *([*trec6, seed, *out] for seed in ("0", "1", "2")),
    ])  # fmt: skip
    assert [r["labels_per_class"] for r in rows["compare_cifar10"]] == [10, 50, 250]
    assert [r["test_error"] for r in rows["trec6_seeds"]] == [pytest.approx(0.1)] * 3
    last_layer = rows["sst2_linear"][1]
    assert last_layer["row"] == "--feature-layers 1" and last_layer["dev_accuracy"] == 0.8


def test_the_batch_lr_rule_case_runs_three_arms_over_three_seeds_with_mean_and_error(tmp_path, monkeypatch):
    from bench.suites import accuracy

    calls: list[list[str]] = []
    scores = iter([0.50, 0.52, 0.54, 0.40, 0.42, 0.44, 0.60, 0.60, 0.60])

    def graft(*args: str, **_: object) -> harness.Run:
        calls.append(list(args))
        return harness.Run(list(args), 0, 1.0, 100.0, stdout=json.dumps({"test_accuracy": next(scores)}))

    monkeypatch.setattr(accuracy, "require_data", lambda *folders: None)
    monkeypatch.setattr(accuracy, "subset_folder", lambda source, n, name: Path(f"/c/{name}"))
    rows = accuracy.batch_lr_rule(SimpleNamespace(work=tmp_path, graft=graft))
    ran = [tuple(c[c.index(flag) + 1] for flag in ("--batch-size", "--lr", "--seed")) for c in calls]
    assert ran == [
        (batch, lr, seed) for batch, lr in (("64", "0.001"), ("256", "0.002"), ("256", "0.004"))
        for seed in ("0", "1", "2")
    ]  # fmt: skip
    means = [row for row in rows if "standard_error" in row]
    assert [round(row["test_accuracy"], 4) for row in means] == [0.52, 0.42, 0.60]
    assert means[0]["standard_error"] == pytest.approx(0.02 / 3**0.5) and means[2]["standard_error"] == 0


def test_a_bare_run_runs_the_default_cases_and_a_named_one_runs_too(tmp_path, monkeypatch, capsys):
    ran: list[str] = []
    cases = {name: (lambda ctx, name=name: ran.append(name) or [{"ok": 1}]) for name in ("quick", "long")}
    suite = SimpleNamespace(CASES=cases, DEFAULT_CASES=("quick",), __name__="bench.suites.fake")
    monkeypatch.setattr(cli, "load_suite", lambda name: suite)
    monkeypatch.setattr(cli, "WORK", tmp_path / "work")
    assert cli.main(["serve", "--results", str(tmp_path), "--tree", f"now={ROOT}"]) == 0
    assert cli.main(["serve", "--only", "long", "--results", str(tmp_path), "--tree", f"now={ROOT}"]) == 0
    assert ran == ["quick", "long"]
    capsys.readouterr()
    assert cli.main(["serve", "--list"]) == 0
    assert "long (only when named):" in capsys.readouterr().out


def test_bench_keeps_its_scripts_in_suites_and_baselines():
    """At most 12 files beside the suites, baselines and results: a new measurement is a case in a
    suite, not one more script at the top."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    tracked = subprocess.run(
        ["git", "ls-files", "bench"], cwd=bench.parent, capture_output=True, text=True, check=True
    ).stdout.split()
    top = [name for name in tracked if name.count("/") == 1]
    assert tracked and len(top) <= 12, top
    scripts = [bench.parent / name for name in tracked if name.endswith(".py")]
    assert not [path for path in scripts if "sys.path" in path.read_text()]  # one package, no path tricks


def test_the_serve_suites_load_generator_counts_statuses_health_and_memory():
    """The serve suite's client side against a tiny server answering every third request 503:
    the 200s and 503s counted apart, the 503s' latency, /health polled during the load, RSS sampled."""
    pytest.importorskip("httpx")
    uvicorn = pytest.importorskip("uvicorn")
    import os
    import socket
    import threading
    import time

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bench.suites.serve.load import Body, measure

    seen = []

    async def predict(request):
        seen.append(await request.body())
        time.sleep(0.01)  # a slow model: the health poller runs meanwhile
        return JSONResponse({}, status_code=503 if len(seen) % 3 == 0 else 200)

    async def health(request):
        return JSONResponse({"status": "alive"})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        bodies = [Body(b"one", {}), Body(b"two", {})]
        row = measure(f"http://127.0.0.1:{port}", os.getpid(), bodies, clients=3, total=30, timeout_s=5)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert (row["requests"], row["ok"], row["errors"]) == (30, 20, {"503": 10})
    assert row["client_timeouts"] == 0 and row["max_503_ms"] >= row["p99_503_ms"] > 0
    assert row["requests_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert row["health_polls"] >= 1 and row["health_failed"] == 0
    assert row["rss_end_mb"] > 10 and row["rss_growth_from_request"] == 15
    assert sorted(set(seen)) == [b"one", b"two"]


def _text_table(path: Path, per_label: int) -> None:
    """A `text,label` table whose one sentiment word gives the label (as TREC-6's columns)."""
    lines = ["text,label"]
    for i in range(per_label):
        lines += [f"the {NOUNS[i % len(NOUNS)]} was {GOOD[i % len(GOOD)]},pos"]
        lines += [f"the {NOUNS[i % len(NOUNS)]} was {BAD[i % len(BAD)]},neg"]
    path.write_text("\n".join(lines) + "\n")


def test_the_gpu_suite_small_measures_every_row_on_a_cpu_from_generated_data(tmp_path):
    """`python -m bench gpu --small` (make test runs it) on a generated image folder and text table,
    on the CPU: every row is recorded, none failed, every rate finite and positive, every accuracy
    present."""
    images, text = tmp_path / "images", tmp_path / "text"
    for split, per_class in (("train", 8), ("test", 4)):
        make_image_folder(images / split, per_class=per_class, seed=per_class)
    text.mkdir()
    _text_table(text / "train.csv", 12)
    _text_table(text / "test.csv", 4)
    argv = [sys.executable, "-m", "bench", "gpu", "--small", "--tree", f"here={ROOT}", "--device", "cpu"]
    argv += ["--results", str(tmp_path), "--data", str(images), "--trec", str(text), "--per-class", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread a process, as the other tests run torch
    done = subprocess.run([*argv, "--image-size", "32", "--batch-size", "8"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = results.read("gpu", tmp_path)
    assert len(results.latest(recorded)) == len(recorded)  # a case's rows share its date: one table
    rows = {row["row"]: row for row in recorded}
    assert not [row for row in rows.values() if "error" in row], done.stdout[-3000:]
    assert set(rows) >= {
        "network alone: forward", "network alone: train step", "lever: train step, batch 8",
        "graft extraction (the probe)", "graft fine-tuning", "hand-written loop (anchor)",
        "TREC-6: graft defaults", "TREC-6: transformers.Trainer",
    }  # fmt: skip
    rates = [row["rate"] for row in rows.values() if "rate" in row]
    assert len(rates) == 8 and all(math.isfinite(rate) and rate > 0 for rate in rates), rates
    accurate = ("graft fine-tuning", "hand-written loop (anchor)", "TREC-6: graft defaults",
                "TREC-6: transformers.Trainer")  # fmt: skip
    assert all(0 <= rows[name]["accuracy"] <= 1 for name in accurate)
    assert all(row["commit"] != "unknown" and row["case"] in gpu_suite.PARTS for row in rows.values())
