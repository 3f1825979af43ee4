"""Sharded runs: ``litegate plan``, ``run --cells`` and ``merge``, through the real CLI on the embedded default.

The demo's conversions come from the session's ``demo_runs`` cache (shared through ``output.cache_dir``), so the
single run and the partial runs here only evaluate and time.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO, ROOT, run_cli

from litegate import shard
from litegate.config import load as load_config
from litegate.errors import ConfigError

pytestmark = pytest.mark.slow

SHARDS = ("0,3,6,9", "1,4,7,10", "2,5,8,11")  # every shard mixes conversion items and cells of other variants


def _demo_config(folder: Path, cache: Path, *, int8_recipe: str = "int8") -> Path:
    """examples/demo/release.toml copied into ``folder``: its inputs by absolute path, its output in ``folder``,
    its converted-model cache ``cache``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (DEMO / "release.toml").read_text()
    for rel in ("model", "eval.tsv", "calibration.txt"):
        text = text.replace(f'= "{rel}"', f'= "{DEMO / rel}"', 1)
    text = text.replace('dir = "../../reports/demo"', f'dir = "{folder / "out"}"\ncache_dir = "{cache}"')
    text = text.replace('name = "int8"\nrecipe = "int8"', f'name = "int8"\nrecipe = "{int8_recipe}"')
    path = folder / "release.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def sharded(demo_runs, tmp_path_factory) -> dict[str, Any]:
    """One single run and the same release sharded: plan, three ``run --cells`` processes, merge."""
    cache = demo_runs[0] / ".cache"
    root = tmp_path_factory.mktemp("shard")
    cfg = _demo_config(root, cache)
    single = run_cli("run", str(cfg), "-q")
    plan = run_cli("plan", str(cfg), "-o", str(root / "plan.json"))
    parts = [run_cli("run", str(cfg), "--cells", f"{root / 'plan.json'}#{ids}", "--output", str(root / f"part-{n}"),
                     "-q") for n, ids in enumerate(SHARDS)]
    reports = [str(root / f"part-{n}" / "report.json") for n in range(len(SHARDS))]
    merged = run_cli("merge", *reports, "-o", str(root / "merged"), "--config", str(cfg), "-q")
    return {"root": root, "cfg": cfg, "single": single, "plan": plan, "parts": parts, "reports": reports,
            "merged": merged}


def _fields_that_must_match(rep: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``rep`` without what legitimately differs between two runs of one release, and nothing else.

    Dropped, and why:
    - run.started_at, run.wall_s, run.stages: when and how long this process ran (timings).
    - run.machine, run.machine_peak: which machine ran it and its measured sgemm peak (machine data).
    - run.op_profile: per-op timings of the slowest variant, picked by latency (a merged report says "not run").
    - run.sharded: only in a merged report: its plan, partials and their machines (provenance and machine data).
    - bench cells' init_ms, first_ms, latency, samples_ms, peak_rss_mb and protocol.rss_*: timings and memory of the
      timing process; protocol.efficiency: latency against the machine's peak.
    - value and message of the latency verdicts: they quote the measured latency.
    - run.gate.recommended and the CPU row of recommended_per_target: the fastest passing variant, picked by latency
      (two variants within noise of each other swap between runs); :func:`_fastest_passing` checks each report's pick
      against its own cells instead.
    Rewritten, not dropped: artifact.path relative to the report's own output folder.
    """
    assert rep["run"]["gate"]["recommended"] == _fastest_passing(rep)
    rep = copy.deepcopy(rep)
    run = rep["run"]
    for key in ("started_at", "wall_s", "stages", "machine", "machine_peak", "op_profile", "sharded"):
        run.pop(key, None)
    for v in rep["variants"]:
        if v.get("artifact"):
            v["artifact"]["path"] = str(Path(v["artifact"]["path"]).relative_to(out_dir))
        for b in v["bench"]:
            for key in ("init_ms", "first_ms", "latency", "samples_ms", "peak_rss_mb"):
                b.pop(key, None)
            for key in ("rss_before_mb", "rss_model_load_mb", "rss_increase_mb", "efficiency"):
                b["protocol"].pop(key, None)
    for x in rep["verdicts"]:
        if x["check"] in ("latency p50", "latency p90"):
            x.pop("value", None)
            x.pop("message", None)
    gate = run["gate"]
    gate.pop("recommended")
    gate["recommended_per_target"] = [r for r in gate["recommended_per_target"] if not r["target"].startswith("CPU")]
    return rep


def _fastest_passing(rep: dict[str, Any]) -> str:
    """The gate's rule on the report's own figures: the passing variant with the lowest p50 at the most threads
    (then the smallest)."""
    threads = max(b["threads"] for v in rep["variants"] for b in v["bench"])

    def key(v: dict[str, Any]) -> tuple[float, int]:
        cell = next(b for b in v["bench"] if b["threads"] == threads)
        return cell["latency"]["p50"], v["size"]["bytes"]

    return min((v for v in rep["variants"] if v["name"] in rep["run"]["gate"]["passing_variants"]), key=key)["name"]


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (_diff(a[k], b[k], f"{where}.{k}") if k in a and k in b else [f"{where}.{k}: only in one"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def test_merged_report_of_a_sharded_run_equals_the_single_run_report(sharded):
    root = sharded["root"]
    assert sharded["single"].returncode == 0, sharded["single"].stderr
    assert sharded["plan"].returncode == 0, sharded["plan"].stderr
    for p in sharded["parts"]:
        assert p.returncode == 0, p.stderr
    assert sharded["merged"].returncode == 0, sharded["merged"].stderr
    single = json.loads((root / "out" / "report.json").read_text())
    merged = json.loads((root / "merged" / "report.json").read_text())
    assert single["run"]["cache_hits"] == 4  # both from the session's cache: `cached` must match too
    assert _diff(_fields_that_must_match(single, root / "out"), _fields_that_must_match(merged, root / "merged")) == []
    # what the merged report says instead of what it could not do
    assert merged["run"]["op_profile"] == {"not_run": shard.SHARDED_NOT_RUN}
    assert merged["run"]["sharded"]["comparable"] is True and len(merged["run"]["sharded"]["partials"]) == 3
    assert merged["run"]["machine_peak"]["gflops"]  # the partials' own probe
    assert all(b["protocol"]["efficiency"]["gflops"] > 0 for v in merged["variants"] for b in v["bench"])
    # the merged folder is a release like a single run's: the models, checked by hash, and the sidecars
    for v in merged["variants"]:
        assert (root / "merged" / f"{v['name']}.tflite").read_bytes() == (root / "out" / f"{v['name']}.tflite").read_bytes()
    assert {"tokenizer.json", "model.json", "report.md", "report.html", "junit.xml"} <= {
        p.name for p in (root / "merged").iterdir()}
    md = (root / "merged" / "report.md").read_text()
    assert md.startswith("## ✅ litegate: PASS") and "Sharded run: 12 items of plan" in md
    assert "litegate: PASS" in sharded["merged"].stdout


def test_reports_validate_against_the_schema(sharded):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "litegate" / "report.schema.json").read_text())
    for path in [*sharded["reports"], sharded["root"] / "merged" / "report.json"]:
        jsonschema.validate(json.loads(Path(path).read_text()), schema)
    partial = json.loads(Path(sharded["reports"][0]).read_text())
    with pytest.raises(jsonschema.ValidationError):  # a partial has no gate verdict
        jsonschema.validate({**partial, "run": {**partial["run"], "gate": {}}}, schema)


def test_partial_report_names_its_plan_items_and_where_each_model_came_from(sharded):
    plan = json.loads((sharded["root"] / "plan.json").read_text())
    part = json.loads(Path(sharded["reports"][1]).read_text())
    info = part["run"]["partial"]
    assert info["plan"]["hash"] == plan["hash"] and info["items"] == [1, 4, 7, 10]
    # item 1 converts dynamic-int8 (scored against fp32); 4 = fp32 x1, 7 = dynamic-int8 x2, 10 = int8 x1
    assert info["conversions"] == {"fp32": "cache", "dynamic-int8": "cache", "int8": "cache"}
    assert part["verdicts"] == [] and "gate" not in part["run"]
    by_name = {v["name"]: v for v in part["variants"]}
    assert list(by_name) == ["fp32", "dynamic-int8", "int8"]
    assert by_name["dynamic-int8"]["accuracy"] and not by_name["fp32"]["accuracy"]  # only its conversion item scores
    assert [(b["backend"], b["threads"]) for b in by_name["fp32"]["bench"]] == [("xnnpack", 1)]
    assert [(b["backend"], b["threads"]) for b in by_name["int8"]["bench"]] == [("xnnpack", 1)]
    assert not (sharded["root"] / "part-1" / "report.md").exists()  # no verdict to render
    assert "partial: items 1,4,7,10" in sharded["parts"][1].stdout
    md = run_cli("report", sharded["reports"][1])  # rendered on request: partial, never a FAIL
    assert md.returncode == 0 and md.stdout.startswith("## ⏸️ litegate: PARTIAL — items 1,4,7,10 of plan")


def test_plan_is_byte_identical_for_the_same_config_and_keyed_by_the_convert_cache(sharded, demo_runs):
    again = sharded["root"] / "plan-again.json"
    r = run_cli("plan", str(sharded["cfg"]), "-o", str(again))
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == (sharded["root"] / "plan.json").read_bytes()
    plan = json.loads(again.read_text())
    kinds = [(i["kind"], i["variant"], i.get("backend"), i.get("threads")) for i in plan["items"]]
    assert kinds[:4] == [("convert", n, None, None) for n in ("fp32", "dynamic-int8", "fp16", "int8")]
    assert kinds[4:] == [("measure", n, "xnnpack", t) for n in ("fp32", "dynamic-int8", "fp16", "int8") for t in (1, 2)]
    cache = demo_runs[0] / ".cache"
    for item in plan["items"][:4]:  # the conversion items' keys are the cache's keys of the demo's models
        assert (cache / item["key"][:2] / item["key"] / "artifact.json").is_file(), item["variant"]
    assert len({i["hash"] for i in plan["items"]}) == 12


def test_plan_hashes_change_with_a_recipe_and_only_for_its_items(sharded, tmp_path, demo_runs):
    from litegate.pipeline import plan_release

    before = shard.load_plan(sharded["root"] / "plan.json")
    changed = plan_release(load_config(_demo_config(tmp_path, demo_runs[0] / ".cache", int8_recipe="int16x8")))
    assert changed.hash != before.hash
    moved = {i.id for i, j in zip(before.items, changed.items, strict=True) if i.hash != j.hash}
    assert moved == {3, 10, 11}  # int8's conversion and its two cells
    assert [i.key for i in changed.items[:3]] == [i.key for i in before.items[:3]]


def test_github_matrix_is_one_line_for_fromjson_covering_every_item_once(sharded):
    r = run_cli("plan", str(sharded["cfg"]), "--github-matrix")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1
    matrix = json.loads(r.stdout)
    assert list(matrix) == ["include"] and [e["name"] for e in matrix["include"]] == [
        "fp32", "dynamic-int8", "fp16", "int8"]
    assert matrix["include"][0]["cells"] == "0,4,5"
    ids = sorted(int(c) for e in matrix["include"] for c in e["cells"].split(","))
    assert ids == list(range(12))
    wrong = run_cli("plan", str(sharded["cfg"]), "--kind", "measure")
    assert wrong.returncode == 2 and "--github-matrix" in wrong.stderr
    plan = shard.load_plan(sharded["root"] / "plan.json")
    cells = shard.github_matrix(plan, group="item", kind="measure")["include"]
    assert len(cells) == 8 and cells[0] == {"name": "4-measure-fp32-xnnpack-1", "cells": "4", "variants": "fp32",
                                            "cache_key": cells[0]["cache_key"]}


def test_cells_spec_selects_items_and_refuses_unknown_ids():
    assert shard.parse_cells("plan.json#3,7,9-11") == (Path("plan.json"), [3, 7, 9, 10, 11])
    assert shard.parse_cells("plan.json") == (Path("plan.json"), None)
    for bad in ("plan.json#x", "plan.json#5-2", "#3"):
        with pytest.raises(ConfigError):
            shard.parse_cells(bad)


def test_run_cells_converts_a_model_missing_from_the_cache_and_says_so(sharded, tmp_path):
    cfg = _demo_config(tmp_path, tmp_path / "empty-cache")  # same plan: the cache's place is no input of it
    r = run_cli("run", str(cfg), "--cells", f"{sharded['root'] / 'plan.json'}#4", "--output", str(tmp_path / "p"), "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    assert rep["run"]["partial"]["conversions"] == {"fp32": "converted"} and rep["run"]["cache_hits"] == 0
    key = shard.load_plan(sharded["root"] / "plan.json").items[4].key
    assert (tmp_path / "empty-cache" / key[:2] / key / "artifact.json").is_file()  # cached under the plan's key
    (cell,) = rep["variants"][0]["bench"]
    assert (cell["backend"], cell["threads"], cell["status"]) == ("xnnpack", 1, "ok")


def test_run_cells_refuses_an_unknown_item_with_exit_2(sharded):
    r = run_cli("run", str(sharded["cfg"]), "--cells", f"{sharded['root'] / 'plan.json'}#12",
                "--output", str(sharded["root"] / "part-bad"), "-q")
    assert r.returncode == 2 and "no item 12 in the plan" in r.stderr


def test_merge_refuses_missing_cells_naming_them_with_exit_2(sharded):
    r = run_cli("merge", *sharded["reports"][:2], "-o", str(sharded["root"] / "m-missing"), "--config",
                str(sharded["cfg"]))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("litegate: error: merge: missing cells: 2 (convert fp16), 5 (")
    assert ", 8 (" in line and ", 11 (" in line
    assert not (sharded["root"] / "m-missing" / "report.json").exists()


def test_merge_refuses_duplicate_cells_naming_them_with_exit_2(sharded):
    r = run_cli("merge", *sharded["reports"], sharded["reports"][0], "-o", str(sharded["root"] / "m-dup"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("litegate: error: merge: duplicate cells: 0 (") and "\n" not in r.stderr.strip()


def test_merge_refuses_partials_of_different_plans(sharded):
    data = json.loads(Path(sharded["reports"][2]).read_text())
    other = shard.Plan.from_dict(data["run"]["partial"]["plan"])
    other = shard.Plan(name="another", items=other.items)
    data["run"]["partial"]["plan"] = other.to_dict()
    doctored = sharded["root"] / "other-plan" / "report.json"
    doctored.parent.mkdir()
    doctored.write_text(json.dumps(data))
    r = run_cli("merge", *sharded["reports"][:2], str(doctored), "-o", str(sharded["root"] / "m-other"))
    assert r.returncode == 2 and "come from different plans" in r.stderr


def test_merge_marks_cells_of_another_machine_not_comparable(sharded):
    data = json.loads(Path(sharded["reports"][2]).read_text())
    data["run"]["machine"] = {**data["run"]["machine"], "cpu": "Another CPU", "cores_available": 64}
    data["run"]["partial"]["fingerprint"] = shard.fingerprint(data["run"]["machine"])
    folder = sharded["root"] / "part-2-elsewhere"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(data))
    out = sharded["root"] / "m-machines"
    r = run_cli("merge", *sharded["reports"][:2], str(folder / "report.json"), "-o", str(out), "--config",
                str(sharded["cfg"]), "-q")
    assert r.returncode == 0, r.stderr
    merged = json.loads((out / "report.json").read_text())
    sh = merged["run"]["sharded"]
    assert sh["comparable"] is False and len(sh["machines"]) == 2
    assert sorted(c for m in sh["machines"] for c in m["cells"]) == list(range(4, 12))
    assert "not_run" in merged["run"]["machine_peak"]
    assert "not comparable" in (out / "report.md").read_text()
    # part 2's models are not beside its doctored report: said, not hidden
    assert any("fp16: its model is not beside" in n for n in sh["notes"])


# --- the CI templates: parsed, and their plan and shard-selection steps run with the real litegate -----------------

def _yaml(rel: str) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / rel).read_text())


def _bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, text=True, capture_output=True,
                          env={**os.environ, "PATH": path, **env}, timeout=300)


def test_github_sharded_template_wires_plan_matrices_cells_and_merge(tmp_path):
    wf = _yaml("examples/ci/github-actions-sharded.yml")
    jobs = wf["jobs"]
    assert list(jobs) == ["plan", "convert", "measure", "gate"]
    assert jobs["convert"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.convert) }}"
    assert jobs["measure"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.measure) }}"
    assert jobs["measure"]["needs"] == ["plan", "convert"] and jobs["gate"]["needs"] == ["plan", "convert", "measure"]
    assert jobs["gate"]["if"].startswith("always()")
    for name in ("convert", "measure"):
        runs = [s["run"] for s in jobs[name]["steps"] if "run" in s]
        assert any('--cells "plan.json#${{ matrix.cells }}"' in r for r in runs)
    cache_up = next(s for s in jobs["convert"]["steps"] if "litegate-cache-" in s.get("with", {}).get("name", ""))
    assert cache_up["with"]["include-hidden-files"] is True  # the cache folder is .cache
    cache_down = next(s for s in jobs["measure"]["steps"] if s.get("with", {}).get("pattern") == "litegate-cache-*")
    assert cache_down["with"]["path"] == "partial/.cache" and cache_down["with"]["merge-multiple"] is True
    merge = next(s["run"] for s in jobs["gate"]["steps"] if "litegate merge" in s.get("run", ""))
    assert merge.startswith("litegate merge partials/*/report.json")
    # the plan step, run as the runner runs it: its outputs are matrices for fromJSON
    plan_step = next(s for s in jobs["plan"]["steps"] if s.get("id") == "plan")
    out = tmp_path / "github_output"
    r = _bash(plan_step["run"], tmp_path, CONFIG=str(DEMO / "release.toml"), GITHUB_OUTPUT=str(out))
    assert r.returncode == 0, r.stderr
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    convert, measure = json.loads(outputs["convert"]), json.loads(outputs["measure"])
    assert [e["cells"] for e in convert["include"]] == ["0", "1", "2", "3"]
    assert [e["cells"] for e in measure["include"]] == [str(i) for i in range(4, 12)]
    assert json.loads((tmp_path / "plan.json").read_text())["schema"] == shard.PLAN_SCHEMA


def test_gitlab_sharded_template_nodes_cover_every_item_once(tmp_path):
    doc = _yaml("examples/ci/gitlab-ci-sharded.yml")
    cells_job, gate_job = doc["litegate-cells"], doc["litegate-gate"]
    assert cells_job["needs"] == ["litegate-plan"] and gate_job["when"] == "always"
    assert any("litegate merge partial-*/report.json" in line and "|| code=$?" in line for line in gate_job["script"])
    assert gate_job["script"][-1].endswith("exit $code")
    plan_script = "\n".join(line for line in doc["litegate-plan"]["script"] if not line.startswith("pip "))
    r = _bash(plan_script, tmp_path, CONFIG=str(DEMO / "release.toml"))
    assert r.returncode == 0, r.stderr
    select = next(line for line in cells_job["script"] if line.startswith("CELLS="))
    nodes = cells_job["parallel"]
    seen: list[int] = []
    for node in range(1, nodes + 1):
        r = _bash(f'{select}\necho "$CELLS"', tmp_path, CI_NODE_INDEX=str(node), CI_NODE_TOTAL=str(nodes))
        assert r.returncode == 0, r.stderr
        seen += [int(c) for c in r.stdout.strip().split(",") if c]
    assert sorted(seen) == list(range(12))


def test_no_registry_or_mirror_host_in_the_sharded_templates():
    for rel in ("examples/ci/github-actions-sharded.yml", "examples/ci/gitlab-ci-sharded.yml"):
        text = (ROOT / rel).read_text()
        assert not re.search(r"https?://", text), rel
        assert not re.search(r"\b[\w-]+\.(org|com|io|net)\b", text), rel


def test_merge_exits_with_the_gates_code_under_the_config_it_is_given(sharded, tmp_path, demo_runs):
    cfg = _demo_config(tmp_path, demo_runs[0] / ".cache")  # budgets are no input of the plan: same plan
    cfg.write_text(cfg.read_text().replace("max_latency_p50_ms = 25.0", "max_latency_p50_ms = 0.001"))
    r = run_cli("merge", *sharded["reports"], "-o", str(tmp_path / "merged"), "--config", str(cfg), "-q")
    assert r.returncode == 1, r.stderr
    assert "litegate: FAIL" in r.stdout
    assert json.loads((tmp_path / "merged" / "report.json").read_text())["passed"] is False
