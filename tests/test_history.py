"""The run history (litegate/history.py): SQLite and a real PostgreSQL server, ingested from real reports.

The real reports come from one module fixture that runs the embedded default twice with ``[history] enabled``
(the end-to-end test); the other tests ingest copies of its report with other start times and figures.
PostgreSQL: a throwaway cluster in a temporary folder on a Unix socket (``make postgres`` installs the server).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import DEMO, ROOT

from litegate import history, machine
from litegate.config import load as load_config
from litegate.errors import ConfigError, HistoryError
from litegate.html import to_html
from litegate.report import load as load_report
from litegate.report import to_json, to_markdown

CI_VARS = ("GITHUB_SHA", "GITHUB_REF_NAME", "GITHUB_REF_TYPE", "GITHUB_HEAD_REF", "CI_COMMIT_SHA",
           "CI_COMMIT_REF_NAME", "CI_COMMIT_TAG")


def _env(**git: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CI_VARS}
    env.update(git)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def litegate(*args: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, outside any git checkout unless ``cwd`` is one, without CI variables."""
    return subprocess.run([sys.executable, "-m", "litegate", *args], cwd=cwd, capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


# --- PostgreSQL ---------------------------------------------------------------------------------------------------

def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on a Unix socket; initdb refuses root, so as root it runs as ``postgres``
    (or ``nobody``) in a folder that user owns. Yields the folder of the socket."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: run `make postgres`")
    root = Path(tempfile.mkdtemp(prefix="litegate-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or shutil.which("runuser") is None:
            shutil.rmtree(root)
            pytest.skip("running as root, and no unprivileged user (postgres, nobody) or runuser to run initdb as")
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    data = root / "data"
    init = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr[-2000:]}")
    opts = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=60"
    start = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                            "-w", "-t", "60", "start"], capture_output=True, text=True)
    if start.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {start.stderr[-1000:]} {log[-1000:]}")
    try:
        yield root
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _new_pg_database(socket_dir: Path) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"postgresql://postgres@/postgres?host={socket_dir}", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={socket_dir}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty history database of each engine."""
    if request.param == "sqlite":
        return str(tmp_path / "db" / "history.sqlite")
    return _new_pg_database(request.getfixturevalue("postgres_server"))


def _count(url: str, sql: str, params: tuple = ()) -> int:
    with history.connect(history.locate(url, default_dir=Path("."))) as db:
        return int(next(iter(db.rows(sql, params)[0].values())))


# --- real reports -------------------------------------------------------------------------------------------------

def _demo_config(folder: Path, *, extra: str = "", cache: Path | None = None) -> Path:
    """examples/demo/release.toml with absolute paths, its output under ``folder`` (its converted-model cache
    ``cache`` when given), a short timing protocol, and ``[history] enabled``."""
    text = (DEMO / "release.toml").read_text()
    for key in ("path", "eval", "calibration"):
        text = re.sub(rf'^{key} = "([^"]+)"', lambda m, k=key: f'{k} = "{(DEMO / m.group(1)).resolve()}"', text,
                      flags=re.M)
    text = text.replace('dir = "../../reports/demo"', f'dir = "{folder / "reports" / "demo"}"'
                        + (f'\ncache_dir = "{cache}"' if cache else ""))
    text = re.sub(r"warmup_runs = \d+\nmin_runs = \d+\nmin_seconds = [\d.]+",
                  "warmup_runs = 5\nmin_runs = 30\nmin_seconds = 0.2\nprofile_runs = 0\npeak_probe = false", text)
    text = text.replace('require = "all"', 'require = "all"\npaired_rounds = 3')
    assert str(folder) in text and "profile_runs = 0" in text and "paired_rounds" in text
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "release.toml"
    path.write_text(text + "\n[history]\nenabled = true\nlast = 5\n" + extra)
    return path


@pytest.fixture(scope="module")
def demo_history(tmp_path_factory, demo_runs):
    """The embedded default run twice with ``[history] enabled`` on its embedded default database: first on ref
    main, then on a feature branch into another output folder with ``--baseline history:main``. Both runs share a
    copy of test_e2e's converted-model cache (conversion is not what these tests are about)."""
    folder = tmp_path_factory.mktemp("hist")
    shutil.copytree(demo_runs[0] / ".cache", folder / "cache")
    cfg = _demo_config(folder, cache=folder / "cache")
    first = litegate("run", str(cfg), cwd=folder, env=_env(GITHUB_REF_NAME="main", GITHUB_SHA="1" * 40))
    rep1 = folder / "reports" / "demo" / "report.json"
    snapshot = folder / "run1.json"
    if rep1.exists():
        shutil.copy(rep1, snapshot)
    second = litegate("run", str(cfg), "--output", str(folder / "reports" / "feature"), "--baseline", "history:main",
                      cwd=folder, env=_env(GITHUB_REF_NAME="feature-x", GITHUB_SHA="2" * 40))
    return {"folder": folder, "config": cfg, "first": first, "second": second, "report1": snapshot,
            "report2": folder / "reports" / "feature" / "report.json", "db": folder / "reports" / "history.sqlite"}


@pytest.fixture(scope="module")
def real_report(demo_history) -> Path:
    assert demo_history["first"].returncode == 0, demo_history["first"].stderr[-3000:]
    return demo_history["report1"]


def derive(src: Path, dst: Path, *, started_at: str, p50_scale: float = 1.0, size_delta: int = 0,
           acc_delta: float = 0.0, passed: bool | None = None, cpu: str | None = None) -> Path:
    """A copy of a real report as another run: its start time, latencies scaled, sizes and accuracy shifted."""
    d = json.loads(src.read_text())
    d["run"]["started_at"] = started_at
    if cpu is not None:
        d["run"]["machine"]["cpu"] = cpu
    for v in d["variants"]:
        if v.get("size"):
            v["size"]["bytes"] += size_delta
        for a in v.get("accuracy", []):
            if a.get("value") is not None:
                a["value"] += acc_delta
        for b in v.get("bench", []):
            if b.get("latency"):
                for k in ("p50", "p90", "p99", "mean", "std", "min", "max"):
                    b["latency"][k] *= p50_scale
                b["samples_ms"] = [x * p50_scale for x in b.get("samples_ms", [])]
    if passed is not None:
        d["passed"] = passed
        d["run"]["gate"]["passed"] = passed
    dst.write_text(json.dumps(d, indent=2))
    return dst


def _cells(path: Path) -> int:
    return sum(len(v["bench"]) for v in json.loads(path.read_text())["variants"])


# --- tests --------------------------------------------------------------------------------------------------------

def test_migrations_create_the_schema_from_an_empty_database_once(db_url):
    loc = history.locate(db_url, default_dir=Path("."))
    with history.connect(loc) as db:
        assert history.schema_version(db) == history.SCHEMA_VERSION
        for table in ("runs", "variants", "cells", "delegation", "verdicts"):
            assert db.rows(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] == 0
    with history.connect(loc) as db:  # a second open applies nothing again
        assert db.rows("SELECT COUNT(*) AS n FROM schema_version")[0]["n"] == len(history.MIGRATIONS)
        with db.transaction():
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (999, "later"))
    with pytest.raises(HistoryError, match="schema version 999 is newer"):
        with history.connect(loc):
            pass


def test_not_a_database_is_one_line_exit_13(tmp_path):
    bad = tmp_path / "history.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    r = litegate("history", "show", "--variant", "int8", "--url", str(bad), cwd=tmp_path)
    assert r.returncode == HistoryError.exit_code, r.stderr
    assert r.stderr.count("\n") == 1 and "litegate: error: history" in r.stderr


def test_bad_inputs_are_one_line_with_their_exit_codes(tmp_path):
    not_report = tmp_path / "notes.json"
    not_report.write_text('{"hello": 1}')
    r = litegate("history", "add", str(not_report), "--url", str(tmp_path / "h.sqlite"), cwd=tmp_path)
    assert r.returncode == ConfigError.exit_code and r.stderr.count("\n") == 1 and "not a litegate report" in r.stderr
    assert not (tmp_path / "h.sqlite").exists()  # nothing written for a refused report
    missing = litegate("history", "show", "--variant", "int8", "--url", str(tmp_path / "none.sqlite"), cwd=tmp_path)
    assert missing.returncode == HistoryError.exit_code and "no database there" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates an empty database
    other = litegate("history", "show", "--variant", "int8", "--url", "mysql://db/x", cwd=tmp_path)
    assert other.returncode == ConfigError.exit_code and "give postgresql://" in other.stderr
    pytest.importorskip("psycopg")
    down = litegate("history", "show", "--variant", "int8", "--url",
                    f"postgresql://postgres@/x?host={tmp_path / 'no-server'}&connect_timeout=2", cwd=tmp_path)
    assert down.returncode == HistoryError.exit_code and down.stderr.count("\n") == 1, down.stderr
    assert down.stderr.startswith("litegate: error: history postgresql://")


def test_history_config_keys_are_checked(tmp_path):
    cfg = load_config(_demo_config(tmp_path, extra='url = "db/h.sqlite"\n'))
    assert cfg.history.enabled and cfg.history.last == 5
    assert cfg.history.url == str((tmp_path / "db" / "h.sqlite").resolve())
    assert history.for_release(cfg).path == (tmp_path / "db" / "h.sqlite").resolve()
    plain = load_config(DEMO / "release.toml")
    assert not plain.history.enabled
    assert history.for_release(plain).path == (ROOT / "reports" / "history.sqlite").resolve()
    with pytest.raises(ConfigError, match="unknown key 'history.color'"):
        load_config(_demo_config(tmp_path / "a", extra="color = 1\n"))
    zero = _demo_config(tmp_path / "b")
    zero.write_text(zero.read_text().replace("last = 5\n", "last = 0\n"))
    with pytest.raises(ConfigError, match="'history.last' must be >= 1"):
        load_config(zero)


@pytest.mark.slow
def test_add_same_report_twice_stores_it_once(real_report, db_url, tmp_path):
    first = litegate("history", "add", str(real_report), "--url", db_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("added: ")
    again = litegate("history", "add", str(real_report), "--url", db_url, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("already in history: ")
    partial = json.loads(real_report.read_text())
    partial["run"]["partial"] = {"items": [0]}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    refused = litegate("history", "add", str(tmp_path / "partial.json"), "--url", db_url, cwd=tmp_path)
    assert refused.returncode == ConfigError.exit_code and "partial report" in refused.stderr
    reindented = tmp_path / "same.json"
    reindented.write_text(json.dumps(json.loads(real_report.read_text())))  # same content, other bytes
    assert litegate("history", "add", str(reindented), "--url", db_url, cwd=tmp_path).stdout.startswith("already")
    rep = json.loads(real_report.read_text())
    sha = history.content_hash(rep)
    assert _count(db_url, "SELECT COUNT(*) FROM runs") == 1
    assert _count(db_url, "SELECT COUNT(*) FROM cells WHERE report_sha256 = ?", (sha,)) == _cells(real_report)
    assert _count(db_url, "SELECT COUNT(*) FROM variants") == len(rep["variants"])
    assert _count(db_url, "SELECT COUNT(*) FROM verdicts") == len(rep["verdicts"])
    assert _count(db_url, "SELECT COUNT(*) FROM delegation") == sum(len(v["compat"]) for v in rep["variants"])
    with history.connect(history.locate(db_url, default_dir=tmp_path)) as db:
        run = db.rows("SELECT * FROM runs")[0]
        cell = db.rows("SELECT * FROM cells WHERE variant = ? ORDER BY threads", ("int8",))[0]
    assert run["git_sha"] is None and run["git_ref"] is None  # no git here, no CI variables
    assert run["machine_fingerprint"] == history.fingerprint(rep["run"]["machine"])
    assert json.loads(run["report_json"]) == rep
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    b = min(int8["bench"], key=lambda x: x["threads"])
    assert cell["p50_ms"] == pytest.approx(b["latency"]["p50"]) and json.loads(cell["samples_json"]) == b["samples_ms"]


@pytest.mark.slow
def test_show_prints_the_last_runs_as_md_csv_and_json(real_report, tmp_path):
    db = str(tmp_path / "h.sqlite")
    scales = [1.0, 1.1, 0.9, 1.2]
    for i, s in enumerate(scales):
        p = derive(real_report, tmp_path / f"r{i}.json", started_at=f"2026-01-0{i + 1}T00:00:00+00:00", p50_scale=s)
        assert litegate("history", "add", str(p), "--url", db, cwd=tmp_path).returncode == 0
    rep = json.loads(real_report.read_text())
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    base = {b["threads"]: b["latency"]["p50"] for b in int8["bench"]}
    r = litegate("history", "show", "--variant", "int8", "--metric", "p50_ms", "--last", "3", "--format", "json",
                 "--url", db, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["started_at"][:10] for x in rows] == sorted(f"2026-01-0{i}" for i in (2, 3, 4) for _ in base)
    for x in rows:
        i = int(x["started_at"][9]) - 1
        assert x["value"] == pytest.approx(base[x["threads"]] * scales[i])
    c = litegate("history", "show", "--variant", "int8", "--last", "3", "--format", "csv", "--url", db, cwd=tmp_path)
    parsed = list(csv.DictReader(io.StringIO(c.stdout)))
    assert [(p["started_at"], int(p["threads"]), float(p["value"])) for p in parsed] == [
        (x["started_at"], x["threads"], x["value"]) for x in rows]
    md = litegate("history", "show", "--variant", "int8", "--metric", "accuracy", "--url", db, cwd=tmp_path).stdout
    lines = md.strip().splitlines()
    assert lines[0].startswith("| started_at") and lines[1].startswith("|---") and len(lines) == 2 + len(scales)
    acc = next(a for a in int8["accuracy"])["value"]
    assert all(f"| {acc:.6g} |" in line for line in lines[2:])
    bad = litegate("history", "show", "--variant", "int8", "--metric", "nope", "--url", db, cwd=tmp_path)
    assert bad.returncode == 2


def _add_many(reports: list[list[Path]], url: str, cwd: Path) -> tuple[list[subprocess.CompletedProcess], float]:
    """One ``litegate history add`` process per list, all started at once; their results and the wall time."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "litegate", "history", "add", *map(str, rs), "--url", url],
                              cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rs in reports]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done, time.monotonic() - t0


@pytest.mark.slow
def test_eight_concurrent_add_processes_lose_no_row(real_report, db_url, tmp_path):
    shared = derive(real_report, tmp_path / "shared.json", started_at="2026-02-01T00:00:00+00:00")
    own = [derive(real_report, tmp_path / f"leg{i}.json", started_at=f"2026-02-01T00:0{i}:01+00:00",
                  p50_scale=1 + i / 100) for i in range(8)]
    results, wall = _add_many([[o, shared] for o in own], db_url, tmp_path)
    for r in results:
        assert r.returncode == 0, r.stderr
    added_shared = sum(r.stdout.count("added: ") for r in results) - len(own)
    assert added_shared == 1  # the shared report: stored by exactly one leg, "already in history" for the others
    assert _count(db_url, "SELECT COUNT(*) FROM runs") == len(own) + 1
    assert _count(db_url, "SELECT COUNT(*) FROM cells") == (len(own) + 1) * _cells(real_report)
    for p in [*own, shared]:
        sha = history.content_hash(json.loads(p.read_text()))
        assert _count(db_url, "SELECT COUNT(*) FROM cells WHERE report_sha256 = ?", (sha,)) == _cells(real_report)
    if not db_url.startswith("postgresql"):
        with sqlite3.connect(db_url) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    engine = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    print(f"\n8 concurrent `litegate history add` processes, 9 reports ({engine}): {wall:.2f} s wall")


@pytest.mark.slow
def test_baseline_history_main_is_the_latest_passing_run_of_main_on_this_machine(real_report, tmp_path):
    cfg = load_config(_demo_config(tmp_path / "cfg"))
    db = str(history.for_release(cfg).path)
    loc = history.for_release(cfg)
    runs = {
        "old-main": (dict(started_at="2026-03-01T00:00:00+00:00"), "main"),
        "main": (dict(started_at="2026-03-02T00:00:00+00:00", size_delta=7), "main"),
        "failed-main": (dict(started_at="2026-03-03T00:00:00+00:00", passed=False), "main"),
        "feature": (dict(started_at="2026-03-04T00:00:00+00:00"), "feature"),
        "other-machine": (dict(started_at="2026-03-05T00:00:00+00:00", cpu="Another CPU @ 1 GHz"), "main"),
    }
    paths = {}
    for name, (kw, ref) in runs.items():
        paths[name] = derive(real_report, tmp_path / f"{name}.json", **kw)
        if name == "feature":  # set on the command line (backfilling), not by CI variables
            r = litegate("history", "add", str(paths[name]), "--url", db, "--ref", ref, "--sha", "f" * 40, cwd=tmp_path)
        else:
            r = litegate("history", "add", str(paths[name]), "--url", db, cwd=tmp_path,
                         env=_env(GITHUB_REF_NAME=ref, GITHUB_SHA=f"{len(name):040d}"))
        assert r.returncode == 0, r.stderr
    mine = json.loads(real_report.read_text())["run"]["machine"]
    assert history.fingerprint(machine.describe()) == history.fingerprint(mine)  # the report was made here
    picked = history.baseline_report(cfg, "main")
    assert picked == paths["main"]  # its own file, still there and unchanged
    paths["main"].unlink()  # gone: re-materialised from the database
    again = history.baseline_report(cfg, "main")
    assert again.parent.parent == cfg.cache_dir / "history-baseline"
    assert history.content_hash(json.loads(again.read_text())) == history.content_hash(
        json.loads(derive(real_report, tmp_path / "x.json", **runs["main"][0]).read_text()))
    assert load_report(again).variants[0].size is not None
    with pytest.raises(HistoryError, match="no passing run"):
        history.baseline_report(cfg, "release-9")
    assert history.baseline_report(cfg, "feature") == paths["feature"]
    assert _count(db, "SELECT COUNT(*) FROM runs WHERE git_sha = ?", ("f" * 40,)) == 1
    assert loc.path is not None and loc.path.exists()


@pytest.mark.slow
def test_trend_svg_and_delta_column_after_three_ingested_runs(real_report, tmp_path):
    db = history.locate(str(tmp_path / "h.sqlite"), default_dir=tmp_path)
    figures = [(1.0, 0, 0.0), (1.05, 1000, -0.5), (1.10, 2000, 0.25)]
    for i, (scale, size, acc) in enumerate(figures):
        p = derive(real_report, tmp_path / f"r{i}.json", started_at=f"2026-04-0{i + 1}T00:00:00+00:00",
                   p50_scale=scale, size_delta=size, acc_delta=acc)
        history.add(db, p, git={"sha": f"{i}" * 40, "ref": "main", "tag": None})
    now = derive(real_report, tmp_path / "now.json", started_at="2026-04-09T00:00:00+00:00", p50_scale=1.21,
                 size_delta=2000 + 500, acc_delta=0.25 + 1.0)
    rep = load_report(now)
    t = history.trend(db, rep.run["name"], last=10, mach=rep.run["machine"])
    assert [r["started_at"][:10] for r in t["runs"]] == ["2026-04-01", "2026-04-02", "2026-04-03"]
    assert all(r["same_machine"] and r["git_ref"] == "main" for r in t["runs"])
    rep = dataclasses.replace(rep, run={**rep.run, "trend": t})
    md = to_markdown(rep)
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert f"Δ vs last release (main {'2' * 8} 2026-04-03" in header
    int8_row = next(line for line in md.splitlines() if line.startswith("| **int8**"))
    int8 = next(v for v in json.loads(real_report.read_text())["variants"] if v["name"] == "int8")
    old_size = int8["size"]["bytes"] + 2000
    assert f"size {((old_size + 500) / old_size - 1) * 100:+.1f}%" in int8_row
    assert "p50 +10.0%" in int8_row and "acc +1.00" in int8_row
    page = to_html(rep, "## x")
    svg = page[page.index('<svg id="chart-trend"'):]
    svg = svg[:svg.index("</svg>")]
    charted = rep.run["gate"].get("ship") or rep.run["gate"]["passing_variants"]
    assert svg.count('class="trend-line"') == 4 * len(charted)  # size, p50, metric, delegated: one line each
    assert svg.count('class="trend-point"') == 4 * len(charted) * 4  # three runs from history and this one
    # the JSON round trip: report.json keeps the trend, the renderings read it back
    (tmp_path / "rt.json").write_text(to_json(rep))
    assert load_report(tmp_path / "rt.json").run["trend"]["runs"] == t["runs"]


@pytest.mark.slow
def test_run_twice_with_history_enabled_ingests_both_and_compares_with_main(demo_history):
    first, second = demo_history["first"], demo_history["second"]
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode in (0, 1), second.stderr[-3000:]
    assert "history: " in first.stderr and "added to" in first.stderr
    db = str(demo_history["db"])
    assert demo_history["db"].is_file()  # the embedded default: history.sqlite beside the output folder
    rep1 = json.loads(demo_history["report1"].read_text())
    rep2 = json.loads(demo_history["report2"].read_text())
    assert rep1["run"]["trend"]["runs"] == []  # an empty history before the first run
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(rep2, json.loads((ROOT / "litegate" / "report.schema.json").read_text()))
    trend = rep2["run"]["trend"]
    assert [r["report_sha256"] for r in trend["runs"]] == [history.content_hash(rep1)]
    assert trend["runs"][0]["git_ref"] == "main" and trend["runs"][0]["git_sha"] == "1" * 40
    # --baseline history:main found run 1's report where it was written
    assert rep2["run"]["baseline"]["path"] == str(demo_history["folder"] / "reports" / "demo" / "report.json")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT git_ref, git_sha, passed FROM runs ORDER BY started_at").fetchall()
    assert rows == [("main", "1" * 40, 1), ("feature-x", "2" * 40, int(rep2["passed"]))]
    md = (demo_history["report2"].parent / "report.md").read_text()
    assert "Δ vs last release (main 11111111" in md
    page = (demo_history["report2"].parent / "report.html").read_text()
    assert '<svg id="chart-trend"' in page and "Trend over the last releases" in page
    show = litegate("history", "show", "--variant", "int8", "--metric", "size_bytes", "--format", "json",
                    cwd=demo_history["folder"])
    assert show.returncode == 0, show.stderr
    sizes = [r["value"] for r in json.loads(show.stdout)]
    assert sizes == [next(v["size"]["bytes"] for v in r["variants"] if v["name"] == "int8") for r in (rep1, rep2)]
