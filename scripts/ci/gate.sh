#!/usr/bin/env bash
# The GitHub Action's gate step (action.yml runs it): fetch the default branch's report as the baseline,
# run `litegate run`, post or update ONE pull-request comment, and exit with litegate's own exit code
# (0 pass, 1 gate failed, 2 usage/config error, 3-13 other errors; README, "Exit codes").
#
# Environment:
#   CONFIG             the release config (required)
#   OUT                the output directory (default reports/release)
#   BASELINE_ARTIFACT  name of the artifact holding the default branch's report.json; empty: no download
#   COMMENT            "true" to comment on pull requests (default true)
#   GH_TOKEN           token for `gh` (needs actions: read for the baseline, pull-requests: write to comment)
#   GITHUB_*           set by the runner: GITHUB_REPOSITORY, GITHUB_EVENT_NAME, GITHUB_EVENT_PATH,
#                      GITHUB_OUTPUT, GITHUB_STEP_SUMMARY
#
# A baseline already at baseline/report.json (put there by an earlier step) is used as it is. Nothing
# that goes wrong around the gate (baseline, comment) is silent: it prints a ::notice:: or ::warning::
# line, and never changes the exit code, which is litegate's.
set -euo pipefail

: "${CONFIG:?set CONFIG to the release config to gate}"
OUT=${OUT:-reports/release}
BASELINE_ARTIFACT=${BASELINE_ARTIFACT-}
COMMENT=${COMMENT:-true}
REPO=${GITHUB_REPOSITORY:-}
EVENT=${GITHUB_EVENT_NAME:-}
MARKER='<!-- litegate-report -->'
BASELINE=baseline/report.json

notice() { echo "::notice title=litegate::$*"; }
warning() { echo "::warning title=litegate::$*"; }

# A field of the event payload by dotted path (pull_request.head.repo.full_name); empty when absent.
event_field() {
    python3 - "$1" <<'PY'
import json, os, sys
try:
    with open(os.environ["GITHUB_EVENT_PATH"]) as f:
        value = json.load(f)
except (KeyError, OSError, ValueError):
    sys.exit(0)
for key in sys.argv[1].split("."):
    value = value.get(key) if isinstance(value, dict) else None
print("" if value is None else value)
PY
}

is_pull_request() { [ "$EVENT" = pull_request ] || [ "$EVENT" = pull_request_target ]; }

# The newest unexpired BASELINE_ARTIFACT uploaded by a run on the default branch of this repository
# (not by a fork's run, whose branch may also be called main), downloaded into baseline/.
fetch_baseline() {
    local branch runs run_id
    if ! command -v gh >/dev/null 2>&1; then
        warning "gh (the GitHub CLI) is not installed: cannot fetch the baseline, not comparing with one"
        return 0
    fi
    branch=$(event_field repository.default_branch)
    if [ -z "$branch" ]; then
        notice "the event payload names no default branch: not comparing with a baseline"
        return 0
    fi
    if ! runs=$(gh api --paginate "repos/$REPO/actions/artifacts?name=$BASELINE_ARTIFACT&per_page=100" \
        --jq ".artifacts[] | select(.expired | not)
              | select(.workflow_run.head_branch == \"$branch\")
              | select(.workflow_run.head_repository_id == .workflow_run.repository_id)
              | \"\(.created_at)\t\(.workflow_run.id)\""); then
        warning "could not list the '$BASELINE_ARTIFACT' artifacts (does the workflow grant permissions: actions: read?): not comparing with a baseline"
        return 0
    fi
    run_id=$(printf '%s\n' "$runs" | sort | tail -n 1 | cut -f 2)
    if [ -z "$run_id" ]; then
        notice "no '$BASELINE_ARTIFACT' artifact from $branch yet (a run on $branch uploads it): not comparing with a baseline"
        return 0
    fi
    if ! gh run download "$run_id" --repo "$REPO" --name "$BASELINE_ARTIFACT" --dir baseline; then
        warning "could not download '$BASELINE_ARTIFACT' from run $run_id of $branch: not comparing with a baseline"
        return 0
    fi
    if [ ! -f "$BASELINE" ]; then
        warning "the '$BASELINE_ARTIFACT' artifact of run $run_id holds no report.json: not comparing with a baseline"
    fi
}

meaning() {
    case $1 in
        0) echo "the gate passed" ;;
        1) echo "the gate failed" ;;
        2) echo "usage or config error" ;;
        3) echo "the model could not be found or read" ;;
        4) echo "evaluation or calibration data is missing, empty or malformed" ;;
        5) echo "conversion failed" ;;
        6) echo "quantization failed" ;;
        7) echo "delegate error" ;;
        8) echo "benchmark error" ;;
        9) echo "an isolated child process crashed, hung or ran out of memory" ;;
        10) echo "internal error" ;;
        11) echo "another litegate run holds the output directory" ;;
        12) echo "an output could not be written" ;;
        13) echo "the run history database could not be used" ;;
        130) echo "interrupted" ;;
        *) echo "unexpected exit code" ;;
    esac
}

# One comment per pull request, found by its marker and updated in place.
post_comment() {
    local body=$1 pr head ids id
    if [ "$COMMENT" != true ]; then
        echo "litegate: not commenting (comment is '$COMMENT')"
        return 0
    fi
    if ! is_pull_request; then
        return 0
    fi
    pr=$(event_field pull_request.number)
    head=$(event_field pull_request.head.repo.full_name)
    if [ "$head" != "$REPO" ]; then
        notice "pull request from the fork '${head:-unknown}': its token cannot comment, so the report is in the job summary and the uploaded artifact"
        return 0
    fi
    if ! command -v gh >/dev/null 2>&1; then
        warning "gh (the GitHub CLI) is not installed: not commenting on pull request #$pr"
        return 0
    fi
    if ! ids=$(gh api --paginate "repos/$REPO/issues/$pr/comments" \
        --jq ".[] | select(.body | startswith(\"$MARKER\")) | .id"); then
        warning "could not read the comments of pull request #$pr: not commenting"
        return 0
    fi
    id=$(printf '%s\n' "$ids" | head -n 1)
    if [ -n "$id" ]; then
        gh api --method PATCH "repos/$REPO/issues/comments/$id" -F "body=@$body" >/dev/null \
            || warning "could not update comment $id (does the workflow grant permissions: pull-requests: write?)"
    else
        gh api --method POST "repos/$REPO/issues/$pr/comments" -F "body=@$body" >/dev/null \
            || warning "could not comment on pull request #$pr (does the workflow grant permissions: pull-requests: write?)"
    fi
}

# --- the baseline
if [ -f "$BASELINE" ]; then
    echo "litegate: comparing with $BASELINE (already present)"
elif [ -z "$BASELINE_ARTIFACT" ]; then
    notice "no baseline artifact configured (baseline-artifact is empty): not comparing with a baseline"
elif ! is_pull_request; then
    echo "litegate: not a pull request ($EVENT): not comparing with a baseline"
else
    fetch_baseline
fi

# --- the gate: litegate's own exit code, kept
args=(run "$CONFIG" --output "$OUT")
if [ -f "$BASELINE" ]; then
    args+=(--baseline "$BASELINE")
fi
echo "litegate ${args[*]}"
set +e
litegate "${args[@]}"
code=$?
set -e
echo "exit-code=$code" >> "${GITHUB_OUTPUT:-/dev/null}"

# --- the report: the job summary and the pull-request comment
body=$(mktemp)
trap 'rm -f "$body"' EXIT
{
    echo "$MARKER"
    if [ -f "$OUT/report.md" ]; then
        cat "$OUT/report.md"
    else
        echo "**litegate exited with code $code ($(meaning "$code"))** before writing a report; the job log says why."
    fi
} > "$body"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$body" >> "$GITHUB_STEP_SUMMARY"
fi
post_comment "$body"

echo "litegate: exit code $code ($(meaning "$code"))"
exit "$code"
