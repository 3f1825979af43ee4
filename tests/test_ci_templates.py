"""The CI integration: the GitHub Action (action.yml, scripts/ci/gate.sh), the GitHub and GitLab
templates, and the CI image's Dockerfile.

The YAML files are parsed and checked for what the issue asked of them (permissions, no `make`, the gate
script wired in). The gate script and the GitLab job's script then really run, in a scratch directory,
with fakes first on PATH: `litegate` (records its argv, writes a report.md, exits with $FAKE_LITEGATE_EXIT),
`gh` (records its argv, answers the GitHub API from canned JSON through the real `jq`, as gh's --jq does),
`curl` and `pip`. Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # the dev extra (pyyaml)

ROOT = Path(__file__).resolve().parents[1]
GATE = ROOT / "scripts" / "ci" / "gate.sh"
MARKER = "<!-- litegate-report -->"
REPO = "acme/app"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed (the fake gh applies --jq with it)")


def load(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def run_commands(steps: list[dict]) -> list[str]:
    return [s["run"] for s in steps if "run" in s]


def runs_make(script: str) -> bool:
    return re.search(r"(^|[;&|(\s])make(\s|$)", script, re.M) is not None


# --- action.yml and the templates, as YAML ---------------------------------------------------------------

def test_action_is_composite_with_the_inputs_of_the_issue():
    action = load("action.yml")
    assert action["runs"]["using"] == "composite"
    inputs = action["inputs"]
    assert inputs["config"]["required"] is True
    assert inputs["output"]["default"] == "reports/release"
    assert inputs["baseline-artifact"]["default"] == "litegate-report"
    assert inputs["comment"]["default"] == "true"
    assert inputs["python-version"]["default"] == "3.11"
    assert inputs["litegate-spec"]["default"] == ""  # empty: the action's own checkout, below
    assert "exit-code" in action["outputs"]


def test_action_installs_itself_runs_the_gate_script_and_uploads_the_baseline():
    steps = load("action.yml")["runs"]["steps"]
    assert any(s.get("uses", "").startswith("actions/setup-python@") for s in steps)
    assert not any(runs_make(r) for r in run_commands(steps))

    install = next(s for s in steps if "pip install" in s.get("run", ""))
    assert "${LITEGATE_SPEC:-$GITHUB_ACTION_PATH}" in install["run"]

    gate = next(s for s in steps if s.get("id") == "gate")
    assert gate["run"].strip() == 'bash "${{ github.action_path }}/scripts/ci/gate.sh"'
    assert GATE.is_file()
    assert gate["env"]["GH_TOKEN"] == "${{ inputs.github-token }}"
    assert gate["env"]["CONFIG"] == "${{ inputs.config }}"
    assert gate["shell"] == "bash"

    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@v4"))
    assert upload["if"] == "always()"  # the reports of a failed gate are uploaded too
    assert "inputs.baseline-artifact" in upload["with"]["name"]  # so main's run is the next PR's baseline
    assert steps.index(upload) > steps.index(gate)


def test_github_template_uses_the_action_with_the_permissions_it_needs():
    wf = load("examples/ci/github-actions.yml")
    assert wf["permissions"] == {"contents": "read", "pull-requests": "write", "actions": "read"}
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    steps = wf["jobs"]["gate"]["steps"]
    assert not any(runs_make(r) for r in run_commands(steps))
    action = next(s for s in steps if s.get("uses") == "./")
    assert (ROOT / action["with"]["config"]).is_file()
    assert "uses: <owner>/litegate@v1" in (ROOT / "examples/ci/github-actions.yml").read_text()


def test_gitlab_template_calls_litegate_directly_and_keeps_its_exit_code():
    job = load("examples/ci/gitlab-ci.yml")["litegate"]
    script = job["script"]
    assert not any(runs_make(line) for line in script)
    assert any(line.startswith("pip install") for line in script)
    assert any("litegate run" in line and "|| code=$?" in line for line in script)
    assert script[-1].endswith("exit $code")
    assert [r["if"] for r in job["rules"]] == ['$CI_PIPELINE_SOURCE == "merge_request_event"',
                                               "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"]
    assert job["artifacts"]["when"] == "always"


def test_no_registry_or_mirror_host_is_written_in_the_ci_files():
    for rel in ("action.yml", "Dockerfile", "scripts/ci/gate.sh", "examples/ci/github-actions.yml",
                "examples/ci/gitlab-ci.yml"):
        text = (ROOT / rel).read_text()
        assert not re.search(r"https?://", text), rel
        assert not re.search(r"\b[\w-]+\.(org|com|io|net)\b", text), rel


# --- the Dockerfile --------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    assert not pending, "a continuation line runs off the end"
    return out


def test_dockerfile_installs_litegate_and_lavapipe_with_litegate_as_entrypoint():
    instr = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    assert instr[0][0] == "FROM" and re.fullmatch(r"python:3\.11-slim-bookworm", instr[0][1])
    assert instr[-1] == ("ENTRYPOINT", '["litegate"]')
    assert json.loads(instr[-1][1]) == ["litegate"]

    for kind, args in instr:
        if kind == "COPY":  # every source is in the repository
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src
    copies = " ".join(args for kind, args in instr if kind == "COPY")
    runs = [args for kind, args in instr if kind == "RUN"]
    assert "scripts/gpu_sim.sh" in copies and "scripts/apt_source.sh" in copies  # gpu_sim.sh sources it
    assert any("gpu_sim.sh" in r for r in runs)
    pip = next(r for r in runs if "pip install" in r)
    assert "litegate --version" in pip
    assert runs.index(pip) > next(i for i, r in enumerate(runs) if "gpu_sim.sh" in r)


# --- scripts/ci/gate.sh, run with fakes ------------------------------------------------------------------

FAKE_LITEGATE = r'''#!{python}
"""Fake litegate: records argv, writes OUT/report.md (not on a config error), exits $FAKE_LITEGATE_EXIT."""
import json, os, sys
from pathlib import Path
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(["litegate", *sys.argv[1:]]) + "\n")
code = int(os.environ.get("FAKE_LITEGATE_EXIT", "0"))
if code != 2:
    out = Path(sys.argv[sys.argv.index("--output") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("# litegate: " + ("PASS" if code == 0 else "FAIL") + "\n")
sys.exit(code)
'''

FAKE_GH = r'''#!{python}
"""Fake gh: records argv; answers `gh api` from canned JSON files (applying --jq with the real jq, raw
output, as gh does) and `gh run download` by writing DIR/report.json. FAKE_GH_FAIL=1 fails every api call."""
import json, os, subprocess, sys
from pathlib import Path
argv = sys.argv[1:]
call = ["gh", *argv]
if "-F" in argv:  # the comment body, read from the file gh would send
    field = argv[argv.index("-F") + 1]
    call.append(Path(field.split("=@", 1)[1]).read_text())
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(call) + "\n")
if argv[:2] == ["run", "download"]:
    out = Path(argv[argv.index("--dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text('{"from_run": "%s"}' % argv[2])
    sys.exit(0)
if os.environ.get("FAKE_GH_FAIL"):
    print("gh: Resource not accessible by integration (HTTP 403)", file=sys.stderr)
    sys.exit(1)
endpoint = next(a for a in argv[1:] if not a.startswith("-") and a.startswith("repos/"))
if "/actions/artifacts" in endpoint:
    response = os.environ.get("FAKE_ARTIFACTS", '{"total_count": 0, "artifacts": []}')
elif "--method" in argv:
    response = "{}"
else:
    response = os.environ.get("FAKE_COMMENTS", "[]")
if "--jq" in argv:
    jq = subprocess.run(["jq", "-r", argv[argv.index("--jq") + 1]], input=response, text=True,
                        capture_output=True, check=True)
    sys.stdout.write(jq.stdout)
else:
    sys.stdout.write(response)
'''

FAKE_CURL = r'''#!/usr/bin/env bash
# Fake curl: records argv, writes -o FILE, prints $FAKE_CURL_STATUS as -w '%{http_code}' would.
echo "curl $*" >> "$FAKE_CALLS.curl"
out=""
while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift ;; esac; shift; done
if [ "${FAKE_CURL_STATUS:-404}" = 200 ]; then echo '{"from": "main"}' > "$out"; else echo '{"message": "404 Not Found"}' > "$out"; fi
printf '%s' "${FAKE_CURL_STATUS:-404}"
'''


FAKE_PIP = r'''#!/usr/bin/env bash
echo "pip $*" >> "$FAKE_CALLS.pip"
'''


class Scratch:
    """A scratch repository with fakes first on PATH, an event payload and the runner's files."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "fakebin"
        self.work = root / "repo"
        self.bin.mkdir()
        self.work.mkdir()
        (self.work / "release.toml").write_text("# the fake litegate does not read it\n")
        for name, text in (("litegate", FAKE_LITEGATE), ("gh", FAKE_GH), ("curl", FAKE_CURL), ("pip", FAKE_PIP)):
            path = self.bin / name
            path.write_text(text.replace("{python}", sys.executable))
            path.chmod(0o755)
        (self.bin / "python3").symlink_to(sys.executable)
        self.calls_file = root / "calls.jsonl"
        self.output_file = root / "github_output"
        self.summary_file = root / "step_summary"
        self.event_file = root / "event.json"

    def event(self, *, head_repo: str = REPO, number: int = 7) -> None:
        self.event_file.write_text(json.dumps({
            "repository": {"full_name": REPO, "default_branch": "main"},
            "pull_request": {"number": number, "head": {"repo": {"full_name": head_repo}}},
        }))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "LITEGATE_"))}
        env.update(PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}", FAKE_CALLS=str(self.calls_file),
                   GITHUB_REPOSITORY=REPO, GITHUB_EVENT_NAME="pull_request", GITHUB_EVENT_PATH=str(self.event_file),
                   GITHUB_OUTPUT=str(self.output_file), GITHUB_STEP_SUMMARY=str(self.summary_file),
                   CONFIG="release.toml", OUT="reports/release", BASELINE_ARTIFACT="litegate-report", COMMENT="true")
        env.update(extra)
        return env

    def gate(self, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(GATE)], cwd=self.work, env=self.env(**extra), text=True,
                              capture_output=True, timeout=60)

    def calls(self, program: str | None = None) -> list[list[str]]:
        if not self.calls_file.exists():
            return []
        calls = [json.loads(line) for line in self.calls_file.read_text().splitlines()]
        return [c for c in calls if program is None or c[0] == program]

    def comment_calls(self) -> list[list[str]]:
        return [c for c in self.calls("gh") if any("/issues/" in a for a in c)]


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    s = Scratch(tmp_path)
    s.event()
    return s


def artifact(run_id: int, branch: str, created: str, *, fork: bool = False, expired: bool = False) -> dict:
    return {"name": "litegate-report", "expired": expired, "created_at": created,
            "workflow_run": {"id": run_id, "head_branch": branch, "repository_id": 1,
                             "head_repository_id": 2 if fork else 1}}


@needs_bash
@needs_jq
@pytest.mark.parametrize("code", [1, 2])
def test_gate_exit_code_is_litegates_unchanged(scratch: Scratch, code: int):
    result = scratch.gate(FAKE_LITEGATE_EXIT=str(code))
    assert result.returncode == code, result.stdout + result.stderr
    assert f"exit-code={code}\n" in scratch.output_file.read_text()
    [litegate] = scratch.calls("litegate")
    assert litegate == ["litegate", "run", "release.toml", "--output", "reports/release"]
    [post] = [c for c in scratch.comment_calls() if "POST" in c]
    body = post[-1]
    assert body.startswith(MARKER + "\n")
    if code == 1:
        assert "# litegate: FAIL" in body  # the report itself
    else:  # a config error writes no report: the comment says what happened
        assert "litegate exited with code 2 (usage or config error)" in body
    assert scratch.summary_file.read_text() == body


@needs_bash
@needs_jq
def test_gate_passes_and_posts_one_comment_then_updates_it(scratch: Scratch):
    first = scratch.gate()
    assert first.returncode == 0, first.stdout + first.stderr
    [post] = [c for c in scratch.comment_calls() if "--method" in c]
    assert post[2:5] == ["--method", "POST", f"repos/{REPO}/issues/7/comments"]
    assert post[-1] == MARKER + "\n# litegate: PASS\n"

    scratch.calls_file.unlink()
    comments = json.dumps([{"id": 11, "body": "LGTM"}, {"id": 12, "body": MARKER + "\nold report"}])
    second = scratch.gate(FAKE_COMMENTS=comments)
    assert second.returncode == 0, second.stdout + second.stderr
    [patch] = [c for c in scratch.comment_calls() if "--method" in c]
    assert patch[2:5] == ["--method", "PATCH", f"repos/{REPO}/issues/comments/12"]


@needs_bash
@needs_jq
def test_fork_pull_request_skips_the_comment_with_a_notice_and_passes(scratch: Scratch):
    scratch.event(head_repo="stranger/app")
    result = scratch.gate()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "::notice title=litegate::pull request from the fork 'stranger/app'" in result.stdout
    assert scratch.comment_calls() == []
    assert scratch.calls("litegate")  # the gate itself ran


@needs_bash
@needs_jq
def test_fork_pull_request_keeps_a_failed_gate(scratch: Scratch):
    scratch.event(head_repo="stranger/app")
    assert scratch.gate(FAKE_LITEGATE_EXIT="1").returncode == 1


@needs_bash
@needs_jq
def test_existing_baseline_is_passed_to_litegate(scratch: Scratch):
    (scratch.work / "baseline").mkdir()
    (scratch.work / "baseline" / "report.json").write_text("{}")
    result = scratch.gate()
    assert result.returncode == 0, result.stdout + result.stderr
    [litegate] = scratch.calls("litegate")
    assert litegate[-2:] == ["--baseline", "baseline/report.json"]
    assert not any("actions/artifacts" in " ".join(c) for c in scratch.calls("gh"))


@needs_bash
@needs_jq
def test_missing_baseline_says_so_in_a_notice(scratch: Scratch):
    result = scratch.gate()
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("::notice title=litegate::no 'litegate-report' artifact from main yet" in result.stdout)
    assert "--baseline" not in scratch.calls("litegate")[0]


@needs_bash
@needs_jq
def test_baseline_is_the_newest_main_artifact_of_this_repository(scratch: Scratch):
    artifacts = {"total_count": 5, "artifacts": [
        artifact(40, "main", "2025-01-01T00:00:00Z"),
        artifact(42, "main", "2025-01-02T00:00:00Z"),                 # the one
        artifact(43, "main", "2025-01-03T00:00:00Z", expired=True),
        artifact(44, "feature", "2025-01-04T00:00:00Z"),
        artifact(45, "main", "2025-01-05T00:00:00Z", fork=True),      # a fork's branch called main
    ]}
    result = scratch.gate(FAKE_ARTIFACTS=json.dumps(artifacts))
    assert result.returncode == 0, result.stdout + result.stderr
    [download] = [c for c in scratch.calls("gh") if c[1:3] == ["run", "download"]]
    assert download == ["gh", "run", "download", "42", "--repo", REPO, "--name", "litegate-report", "--dir", "baseline"]
    assert scratch.calls("litegate")[0][-2:] == ["--baseline", "baseline/report.json"]


@needs_bash
@needs_jq
def test_baseline_lookup_refused_warns_and_still_gates(scratch: Scratch):
    result = scratch.gate(FAKE_GH_FAIL="1", FAKE_LITEGATE_EXIT="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "::warning title=litegate::could not list the 'litegate-report' artifacts" in result.stdout
    assert "actions: read" in result.stdout
    assert "--baseline" not in scratch.calls("litegate")[0]


@needs_bash
@needs_jq
def test_no_comment_and_no_baseline_outside_pull_requests(scratch: Scratch):
    result = scratch.gate(GITHUB_EVENT_NAME="push")
    assert result.returncode == 0, result.stdout + result.stderr
    assert scratch.calls("gh") == []
    assert scratch.calls("litegate")


# --- the GitLab job's script, run with fakes ---------------------------------------------------------------

def gitlab(scratch: Scratch, **extra: str) -> subprocess.CompletedProcess[str]:
    """The job's script lines in one shell, as GitLab's runner runs them (bash, errexit and pipefail)."""
    job = load("examples/ci/gitlab-ci.yml")["litegate"]
    script = "set -eo pipefail\n" + "\n".join(job["script"]) + "\n"
    env = scratch.env(**job["variables"])
    env.update(CONFIG="release.toml", CI_API_V4_URL="https://gitlab.invalid/api/v4", CI_PROJECT_ID="5",
               CI_DEFAULT_BRANCH="main", CI_JOB_NAME="litegate", CI_JOB_TOKEN="job-token")
    env.update(extra)
    return subprocess.run(["bash", "-c", script], cwd=scratch.work, env=env, text=True, capture_output=True,
                          timeout=60)


@needs_bash
@pytest.mark.parametrize("code", [0, 1, 2, 5])
def test_gitlab_job_exits_with_litegates_code(scratch: Scratch, code: int):
    result = gitlab(scratch, FAKE_LITEGATE_EXIT=str(code), CI_MERGE_REQUEST_IID="3")
    assert result.returncode == code, result.stdout + result.stderr
    assert f"litegate exited {code}" in result.stdout


@needs_bash
def test_gitlab_job_compares_with_the_default_branch_report_when_there_is_one(scratch: Scratch):
    result = gitlab(scratch, CI_MERGE_REQUEST_IID="3", FAKE_CURL_STATUS="200")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "comparing with the report of main" in result.stdout
    assert scratch.calls("litegate")[0][-2:] == ["--baseline", "baseline/report.json"]
    curl = (scratch.root / "calls.jsonl.curl").read_text()
    assert "/jobs/artifacts/main/raw/reports/release/report.json?job=litegate" in curl


@needs_bash
def test_gitlab_job_says_when_there_is_no_baseline_or_token(scratch: Scratch):
    result = gitlab(scratch, CI_MERGE_REQUEST_IID="3", FAKE_CURL_STATUS="404")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "litegate: no baseline:" in result.stdout and "(HTTP 404)" in result.stdout
    assert "--baseline" not in scratch.calls("litegate")[0]
    assert not (scratch.work / "baseline" / "report.json").exists()  # the 404 body is not taken for a report
    assert "LITEGATE_API_TOKEN is not set" in result.stdout


@needs_bash
@needs_jq
def test_comment_input_false_posts_nothing(scratch: Scratch):
    result = scratch.gate(COMMENT="false", FAKE_LITEGATE_EXIT="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert scratch.comment_calls() == []
    assert "not commenting (comment is 'false')" in result.stdout
