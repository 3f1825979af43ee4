"""``litegate history``: a database of every gated run, an index over their report.json files.

report.json stays the single source of truth: a run is ingested from its report, keyed by the sha256 of the
report's canonical JSON (sorted keys, no whitespace), so adding the same report twice stores it once, whatever its
indentation. Each run keeps its git sha / ref / tag (CI variables first, else ``git`` in the working directory), a
fingerprint of the machine's stable parts (:data:`litegate.baseline.FINGERPRINT`), per-cell latency figures (with
the raw samples), per-variant size, task metric and delegated fraction per target, the gate's verdicts, and the
report itself (so a baseline can be re-materialised when the file is gone).

Engines: SQLite (stdlib ``sqlite3``, WAL, busy timeout) by default, PostgreSQL for teams (``postgresql://…``, the
``postgres`` extra). Both run the same DDL and DML (``?`` placeholders become ``%s`` for psycopg); the one thing
spelled per engine is the writer lock of a migration (``BEGIN IMMEDIATE`` / an advisory transaction lock).
Migrations are versioned: :data:`MIGRATIONS` in order, the applied ones in ``schema_version``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from litegate import machine
from litegate import report as rpt
from litegate.artifacts import atomic_write_text, stable_hash
from litegate.baseline import FINGERPRINT
from litegate.config import ReleaseConfig
from litegate.errors import ConfigError, HistoryError
from litegate.types import Report, Status

DEFAULT_NAME = "history.sqlite"
BUSY_TIMEOUT_S = 60.0
_PG_LOCK = 0x6C69746567617465  # "litegate": the advisory lock key a PostgreSQL migration holds

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE runs (
            report_sha256 VARCHAR(64) PRIMARY KEY,
            config_name TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ingested_at TEXT NOT NULL,
            passed INTEGER NOT NULL,
            git_sha TEXT,
            git_ref TEXT,
            git_tag TEXT,
            machine_fingerprint TEXT NOT NULL,
            machine_json TEXT NOT NULL,
            litegate_version TEXT,
            wall_s DOUBLE PRECISION,
            recommended TEXT,
            report_path TEXT,
            report_json TEXT NOT NULL)""",
        "CREATE INDEX runs_by_name ON runs (config_name, started_at)",
        "CREATE INDEX runs_by_ref ON runs (git_ref, machine_fingerprint, passed, started_at)",
        """CREATE TABLE variants (
            report_sha256 VARCHAR(64) NOT NULL REFERENCES runs (report_sha256),
            variant TEXT NOT NULL,
            recipe TEXT NOT NULL,
            status TEXT NOT NULL,
            passed INTEGER NOT NULL,
            size_bytes BIGINT,
            gzip_bytes BIGINT,
            metric TEXT,
            accuracy DOUBLE PRECISION,
            accuracy_delta DOUBLE PRECISION,
            PRIMARY KEY (report_sha256, variant))""",
        """CREATE TABLE cells (
            report_sha256 VARCHAR(64) NOT NULL REFERENCES runs (report_sha256),
            variant TEXT NOT NULL,
            backend TEXT NOT NULL,
            threads INTEGER NOT NULL,
            status TEXT NOT NULL,
            p50_ms DOUBLE PRECISION,
            p90_ms DOUBLE PRECISION,
            p99_ms DOUBLE PRECISION,
            mean_ms DOUBLE PRECISION,
            std_ms DOUBLE PRECISION,
            min_ms DOUBLE PRECISION,
            max_ms DOUBLE PRECISION,
            n INTEGER,
            init_ms DOUBLE PRECISION,
            first_ms DOUBLE PRECISION,
            peak_rss_mb DOUBLE PRECISION,
            instructions BIGINT,
            samples_json TEXT,
            PRIMARY KEY (report_sha256, variant, backend, threads))""",
        """CREATE TABLE delegation (
            report_sha256 VARCHAR(64) NOT NULL REFERENCES runs (report_sha256),
            variant TEXT NOT NULL,
            target TEXT NOT NULL,
            status TEXT NOT NULL,
            delegated_fraction DOUBLE PRECISION,
            delegated_mac_fraction DOUBLE PRECISION,
            PRIMARY KEY (report_sha256, variant, target))""",
        """CREATE TABLE verdicts (
            report_sha256 VARCHAR(64) NOT NULL REFERENCES runs (report_sha256),
            seq INTEGER NOT NULL,
            check_name TEXT NOT NULL,
            variant TEXT NOT NULL,
            passed INTEGER NOT NULL,
            value DOUBLE PRECISION,
            limit_value DOUBLE PRECISION,
            backend TEXT,
            threads INTEGER,
            message TEXT NOT NULL,
            PRIMARY KEY (report_sha256, seq))""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

CELL_METRICS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "init_ms", "first_ms",
                "peak_rss_mb", "instructions")
VARIANT_METRICS = ("size_bytes", "gzip_bytes", "accuracy", "accuracy_delta")
DELEGATION_METRICS = ("delegated_fraction", "delegated_mac_fraction")
METRICS = CELL_METRICS + VARIANT_METRICS + DELEGATION_METRICS
FORMATS = ("md", "csv", "json")


# --- where the database is --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Location:
    """A history database: a SQLite file or a PostgreSQL URL."""

    url: str
    path: Path | None = None  # the SQLite file; None for PostgreSQL

    @property
    def postgres(self) -> bool:
        return self.path is None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else _redact(self.url)


def _redact(url: str) -> str:
    """A PostgreSQL URL without its password (for messages)."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, rest = tail.rpartition("@")
        return f"{head}://{cred.split(':', 1)[0]}:***@{rest}" if ":" in cred else url
    return url


def locate(url: str | None, *, default_dir: Path, base: Path | None = None) -> Location:
    """The database at ``url``: ``postgresql://…`` / ``postgres://…``, ``sqlite:///PATH`` or a file path (relative
    to ``base``, else the working directory); no url: ``default_dir/history.sqlite``."""
    if not url:
        return Location(url="", path=(default_dir / DEFAULT_NAME).resolve())
    if url.startswith(("postgresql://", "postgres://")):
        return Location(url=url)
    if "://" in url and not url.startswith("sqlite://"):
        raise ConfigError(f"history url {_redact(url)!r}: give postgresql://… or a SQLite file path")
    raw = url.removeprefix("sqlite://").removeprefix("sqlite:")
    p = Path(raw) if Path(raw).is_absolute() or base is None else base / raw
    return Location(url=url, path=p.resolve())


def for_release(cfg: ReleaseConfig) -> Location:
    """A release's database: ``[history] url``, else ``history.sqlite`` beside its output folder (the demo's
    ``reports/demo`` keeps its history in ``reports/history.sqlite``)."""
    return locate(cfg.history.url or None, default_dir=cfg.output_dir.parent, base=cfg.path.parent)


# --- connections ------------------------------------------------------------------------------------------------

class _Db:
    """One connection, the same SQL on both engines (``?`` placeholders)."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.pg = loc.postgres
        if self.pg:
            try:
                import psycopg  # the postgres extra: imported only for a PostgreSQL database
            except ImportError:
                raise HistoryError(f"history {loc}: PostgreSQL needs psycopg: pip install 'litegate[postgres]'") from None
            self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
            self.integrity: type[BaseException] = psycopg.IntegrityError
            self.conn: Any = psycopg.connect(loc.url, connect_timeout=30)
        else:
            assert loc.path is not None
            self.errors, self.integrity = (sqlite3.Error,), sqlite3.IntegrityError
            if not loc.path.parent.is_dir():
                loc.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(loc.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.cursor().executemany(self._sql(sql), [tuple(r) for r in rows])

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator[None]:
        """A transaction, committed on success and rolled back on any error. ``exclusive``: one writer at a time
        from the start (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock)."""
        if not self.pg:
            self.conn.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
        elif exclusive:
            self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK,))
        try:
            yield
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


@contextmanager
def connect(loc: Location, *, create: bool = True) -> Iterator[_Db]:
    """A migrated connection to ``loc``; every engine error becomes a :class:`HistoryError` naming the database.
    ``create=False``: a SQLite file that is not there is an error, not a new empty database (for reading).

    Raises:
        HistoryError: the database cannot be opened, is not a litegate history, or is newer than this litegate.
    """
    db: _Db | None = None
    if not create and loc.path is not None and not loc.path.is_file():
        raise HistoryError(f"history {loc}: no database there (litegate history add, or a run with [history] "
                           "enabled, creates it)")
    try:
        db = _Db(loc)
        migrate(db)
        yield db
    except HistoryError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise HistoryError(f"history {loc}: {exc}") from None
    except Exception as exc:
        if (db is not None and isinstance(exc, db.errors)) or type(exc).__module__.startswith("psycopg"):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HistoryError(f"history {loc}: {first}") from None
        raise
    finally:
        if db is not None:
            db.close()


def schema_version(db: _Db) -> int:
    """The highest migration applied (0: an empty database)."""
    row = db.rows("SELECT MAX(version) AS v FROM schema_version")
    return int(row[0]["v"] or 0)


def migrate(db: _Db) -> int:
    """Apply the migrations the database lacks, in order, in one locked transaction; the version after."""
    with db.transaction(exclusive=True):
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise HistoryError(f"history {db.loc}: schema version {current} is newer than this litegate's "
                               f"{SCHEMA_VERSION}: upgrade litegate")
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, _now()))
    return SCHEMA_VERSION


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- what a run is ----------------------------------------------------------------------------------------------

def content_hash(data: Mapping[str, Any]) -> str:
    """sha256 of a report's canonical JSON: the same report hashes the same however it was indented."""
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def fingerprint(mach: Mapping[str, Any]) -> str:
    """A hash of what must match for two runs' latencies to compare (arch, CPU model, cores, ISA: :data:`FINGERPRINT`),
    12 hex digits: the same value :mod:`litegate.shard` marks sharded cells with."""
    return stable_hash({k: mach.get(k) for k in FINGERPRINT})[:12]


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = r.stdout.strip()
    return out if r.returncode == 0 and out else None


def git_info(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The commit a run belongs to: CI variables (GitHub Actions, GitLab CI) first, else ``git`` in ``cwd``; None
    for what neither says (a detached checkout has no ref)."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    gh_tag = env.get("GITHUB_REF_NAME") if env.get("GITHUB_REF_TYPE") == "tag" else None
    sha = env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA") or _git(["rev-parse", "HEAD"], cwd)
    ref = env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or env.get("CI_COMMIT_REF_NAME")
    if not ref:
        ref = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd)
        ref = None if ref == "HEAD" else ref
    tag = gh_tag or env.get("CI_COMMIT_TAG") or _git(["describe", "--tags", "--exact-match"], cwd)
    return {"sha": sha or None, "ref": ref or None, "tag": tag or None}


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _variant_passed(rep: Report, name: str) -> bool:
    gate = rep.run.get("gate") or {}
    if "passing_variants" in gate:
        return name in (gate.get("passing_variants") or [])
    return all(x.passed for x in rep.verdicts if x.variant == name)


def _rows(rep: Report, sha: str) -> dict[str, list[tuple[Any, ...]]]:
    """The child rows of one report: variants, cells, delegation, verdicts."""
    out: dict[str, list[tuple[Any, ...]]] = {"variants": [], "cells": [], "delegation": [], "verdicts": []}
    for v in rep.variants:
        acc = v.primary_accuracy()
        ok = acc is not None and acc.status is Status.OK
        out["variants"].append((sha, v.name, v.recipe.name, v.status.value, int(_variant_passed(rep, v.name)),
                                v.size.bytes if v.size else None, v.size.gzip_bytes if v.size else None,
                                acc.metric if acc else None, _f(acc.value) if ok and acc else None,
                                _f(acc.delta) if ok and acc else None))
        for b in v.bench:
            lat = b.latency
            stats = [None] * 8 if lat is None else [lat.p50, lat.p90, lat.p99, lat.mean, lat.std, lat.min, lat.max, lat.n]
            out["cells"].append((sha, v.name, b.backend, b.threads, b.status.value, *stats, _f(b.init_ms),
                                 _f(b.first_ms), _f(b.peak_rss_mb), b.instructions,
                                 json.dumps(list(b.samples_ms)) if b.samples_ms else None))
        for c in v.compat:
            ok_c = c.status is Status.OK
            out["delegation"].append((sha, v.name, c.delegate, c.status.value,
                                      c.delegated_fraction if ok_c else None,
                                      c.delegated_mac_fraction if ok_c else None))
    for i, x in enumerate(rep.verdicts):
        out["verdicts"].append((sha, i, x.check, x.variant, int(x.passed), _f(x.value), _f(x.limit), x.backend,
                                x.threads, x.message))
    return out


_INSERT = {
    "variants": "INSERT INTO variants (report_sha256, variant, recipe, status, passed, size_bytes, gzip_bytes, metric, "
                "accuracy, accuracy_delta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "cells": "INSERT INTO cells (report_sha256, variant, backend, threads, status, p50_ms, p90_ms, p99_ms, mean_ms, "
             "std_ms, min_ms, max_ms, n, init_ms, first_ms, peak_rss_mb, instructions, samples_json) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "delegation": "INSERT INTO delegation (report_sha256, variant, target, status, delegated_fraction, "
                  "delegated_mac_fraction) VALUES (?, ?, ?, ?, ?, ?)",
    "verdicts": "INSERT INTO verdicts (report_sha256, seq, check_name, variant, passed, value, limit_value, backend, "
                "threads, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
}


@dataclasses.dataclass(frozen=True)
class Added:
    """What :func:`add` did: the report's key, and whether it was new."""

    report_sha256: str
    added: bool
    name: str
    started_at: str
    git: Mapping[str, str | None]
    machine_fingerprint: str


def add(loc: Location, report_path: Path, *, git: Mapping[str, str | None] | None = None) -> Added:
    """Ingest one report.json into the history (idempotent: a report already there is left as it is).

    Raises:
        ConfigError: the file is not a litegate report.
        HistoryError: the database cannot be written.
    """
    rep = rpt.load(report_path)  # validates it as a report (ConfigError)
    if rep.run.get("partial") is not None:
        raise ConfigError(f"{report_path}: a partial report (run --cells) is not a gated run: add the report of "
                          "litegate merge")
    text = report_path.read_text(encoding="utf-8")
    sha = content_hash(json.loads(text))
    git = git_info() if git is None else git
    mach = dict(rep.run.get("machine") or {})
    fp = fingerprint(mach)
    name, started = str(rep.run.get("name", "")), str(rep.run.get("started_at", ""))
    gate = rep.run.get("gate") or {}
    run_row = (sha, name, started, _now(), int(rep.passed), git.get("sha"), git.get("ref"), git.get("tag"), fp,
               json.dumps(mach, sort_keys=True), rep.run.get("litegate"), _f(rep.run.get("wall_s")),
               gate.get("recommended"), str(report_path.resolve()), text)
    children = _rows(rep, sha)
    with connect(loc) as db, db.transaction():
        cur = db.execute(
            "INSERT INTO runs (report_sha256, config_name, started_at, ingested_at, passed, git_sha, git_ref, git_tag, "
            "machine_fingerprint, machine_json, litegate_version, wall_s, recommended, report_path, report_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (report_sha256) DO NOTHING", run_row)
        added = cur.rowcount == 1
        if added:
            for table, rows in children.items():
                db.executemany(_INSERT[table], rows)
    return Added(sha, added, name, started, dict(git), fp)


# --- reading it back --------------------------------------------------------------------------------------------

def show(loc: Location, *, variant: str, metric: str, last: int = 20, name: str | None = None,
         backend: str | None = None, threads: int | None = None) -> list[dict[str, Any]]:
    """``metric`` of ``variant`` over the last ``last`` runs that have it (oldest first); one row per run and cell
    (latency metrics), per run (size, accuracy) or per run and target (delegated fractions).

    Raises:
        ConfigError: an unknown metric.
        HistoryError: the database cannot be read.
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    if metric in CELL_METRICS:
        table, extra = "cells", ["backend", "threads"]
    elif metric in DELEGATION_METRICS:
        table, extra = "delegation", ["target"]
    else:
        table, extra = "variants", []
    where: list[str] = ["x.variant = ?"]
    params: list[Any] = [variant]
    if name:
        where.append("r.config_name = ?")
        params.append(name)
    if backend and table == "cells":
        where.append("x.backend = ?")
        params.append(backend)
    if threads and table == "cells":
        where.append("x.threads = ?")
        params.append(threads)
    cond = " AND ".join(where)
    cols = ", ".join(f"x.{c}" for c in extra)
    sql = (f"SELECT r.started_at, r.config_name, r.git_ref, r.git_sha, r.passed, r.report_sha256, x.variant"
           f"{', ' + cols if cols else ''}, x.{metric} AS value "
           f"FROM runs r JOIN {table} x ON x.report_sha256 = r.report_sha256 "
           f"WHERE {cond} AND r.report_sha256 IN (SELECT r2.report_sha256 FROM runs r2 JOIN {table} x2 "
           f"ON x2.report_sha256 = r2.report_sha256 WHERE {cond.replace('x.', 'x2.').replace('r.', 'r2.')} "
           f"GROUP BY r2.report_sha256, r2.started_at ORDER BY r2.started_at DESC LIMIT ?) "
           f"ORDER BY r.started_at, r.report_sha256{', ' + cols if cols else ''}")
    with connect(loc, create=False) as db:
        rows = db.rows(sql, [*params, *params, last])
    for r in rows:
        r["passed"] = bool(r["passed"])
        r["metric"] = metric
    return rows


def render(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """``show``'s rows as a Markdown table, CSV or JSON."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    cols = [c for c in ("started_at", "config_name", "git_ref", "git_sha", "passed", "variant", "backend", "threads",
                        "target", "metric", "value") if rows and c in rows[0]] or ["started_at", "value"]

    def cell(r: Mapping[str, Any], c: str) -> str:
        x = r.get(c)
        if c == "git_sha" and x:
            return str(x)[:12]
        if x is None:
            return "" if fmt == "csv" else "—"
        if isinstance(x, float):
            return repr(x) if fmt == "csv" else f"{x:.6g}"  # CSV keeps every digit; the table is for reading
        return str(x).lower() if isinstance(x, bool) else str(x)

    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[cell(r, c) for c in cols] for r in rows])
        return buf.getvalue()
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def primary_cell(rep_cells: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
    """The cell a trend follows: XNNPACK first, then the most threads (as report.html's trade-off chart)."""
    return max(rep_cells, key=lambda c: (c[0] == "xnnpack", c[1])) if rep_cells else None


def trend(loc: Location, name: str, *, last: int, mach: Mapping[str, Any]) -> dict[str, Any]:
    """The last ``last`` runs of config ``name`` in the history, oldest first, compactly: per variant its size,
    task metric, gate outcome, p50 per cell and delegated fraction per target (what report.json's ``run.trend``
    holds, so renderings read report.json alone)."""
    fp = fingerprint(mach)
    with connect(loc) as db:
        runs = db.rows("SELECT report_sha256, started_at, git_sha, git_ref, git_tag, passed, machine_fingerprint "
                       "FROM runs WHERE config_name = ? ORDER BY started_at DESC, report_sha256 DESC LIMIT ?",
                       (name, last))
        keys = [r["report_sha256"] for r in runs]
        marks = ", ".join("?" for _ in keys)
        variants = db.rows(f"SELECT * FROM variants WHERE report_sha256 IN ({marks})", keys) if keys else []
        cells = db.rows(f"SELECT report_sha256, variant, backend, threads, p50_ms FROM cells "
                        f"WHERE report_sha256 IN ({marks}) AND p50_ms IS NOT NULL", keys) if keys else []
        deleg = db.rows(f"SELECT report_sha256, variant, target, delegated_fraction FROM delegation "
                        f"WHERE report_sha256 IN ({marks}) AND delegated_fraction IS NOT NULL", keys) if keys else []
    per: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in keys}
    for v in variants:
        per[v["report_sha256"]][v["variant"]] = {
            "size_bytes": v["size_bytes"], "metric": v["metric"], "accuracy": _round(v["accuracy"]),
            "passed": bool(v["passed"]), "status": v["status"], "p50_ms": {}, "delegated": {}}
    for c in cells:
        pv = per[c["report_sha256"]].get(c["variant"])
        if pv is not None:
            pv["p50_ms"][f"{c['backend']}x{c['threads']}"] = _round(c["p50_ms"])
    for d in deleg:
        pv = per[d["report_sha256"]].get(d["variant"])
        if pv is not None:
            pv["delegated"][d["target"]] = _round(d["delegated_fraction"])
    points = [{"report_sha256": r["report_sha256"], "started_at": r["started_at"], "git_sha": r["git_sha"],
               "git_ref": r["git_ref"], "git_tag": r["git_tag"], "passed": bool(r["passed"]),
               "same_machine": r["machine_fingerprint"] == fp, "variants": per[r["report_sha256"]]}
              for r in reversed(runs)]
    return {"source": str(loc), "last": last, "machine_fingerprint": fp, "runs": points}


def _round(x: Any) -> float | None:
    return None if x is None else round(float(x), 6)


# --- a release run's hooks --------------------------------------------------------------------------------------

def prepare(cfg: ReleaseConfig) -> Location:
    """The release's database, opened and migrated before the run starts (a wrong URL fails in seconds, not
    after the pipeline)."""
    loc = for_release(cfg)
    with connect(loc):
        pass
    return loc


def ingest_run(cfg: ReleaseConfig, report_path: Path) -> Added:
    """A finished run's report, added to its release's history."""
    return add(for_release(cfg), report_path)


def baseline_report(cfg: ReleaseConfig, ref: str) -> Path:
    """``--baseline history:REF``: the latest passing run of ``cfg``'s config on git ref ``ref`` measured on this
    machine (same fingerprint), as a report.json path: the run's own file when it is still there unchanged (its
    .tflite files beside it let the gate re-time the baseline in pairs), else the stored report written to
    ``<cache>/history-baseline/<sha>/report.json``.

    Raises:
        HistoryError: no such run, or the database cannot be read.
    """
    if not ref:
        raise ConfigError("--baseline history:REF needs a git ref, e.g. history:main")
    loc = for_release(cfg)
    fp = fingerprint(machine.describe())
    with connect(loc, create=False) as db:
        rows = db.rows("SELECT report_sha256, report_path, report_json FROM runs WHERE git_ref = ? AND "
                       "machine_fingerprint = ? AND passed = 1 AND config_name = ? "
                       "ORDER BY started_at DESC, report_sha256 DESC LIMIT 1", (ref, fp, cfg.name))
    if not rows:
        raise HistoryError(f"--baseline history:{ref}: no passing run of {cfg.name!r} on ref {ref!r} measured on "
                           f"this machine (fingerprint {fp}) in {loc}")
    row = rows[0]
    recorded = Path(row["report_path"]) if row["report_path"] else None
    if recorded is not None and recorded.is_file():
        try:
            if content_hash(json.loads(recorded.read_text(encoding="utf-8"))) == row["report_sha256"]:
                return recorded
        except (OSError, ValueError):
            pass
    out = cfg.cache_dir / "history-baseline" / row["report_sha256"][:16] / "report.json"
    atomic_write_text(out, row["report_json"])
    return out
