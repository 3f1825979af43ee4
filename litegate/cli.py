"""The ``litegate`` command line. Parsing and printing only: every command calls one library function.

Exit codes: 0 pass, 1 gate failed, 2 usage/config error, 3 model load, 4 data, 5 conversion,
6 quantization, 7 delegate, 8 benchmark, 9 isolated child failed, 10 internal, 11 output busy,
12 an output could not be written, 13 run history database, 130 interrupted.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import click

from litegate import history, timing
from litegate import report as rpt
from litegate.artifacts import atomic_write_text
from litegate.baseline import CompareConfig
from litegate.baseline import compare as do_compare
from litegate.compat.ruleset import DELEGATES
from litegate.config import load as load_config
from litegate.converter.detect import resolve
from litegate.errors import BenchmarkError, LitegateError
from litegate.quantize import recipes
from litegate.types import DEFAULT_SEQ_LEN, Head, ModelSource, SourceKind, Status, Task
from litegate.version import __version__

_T0 = time.monotonic()
_LAST_STEP: list[str] = []
HEARTBEAT_S = 30.0  # in CI logs, a line at least this often while a stage works silently


class _Progress:
    """Progress lines: on a terminal the current step's line is updated in place, its elapsed time ticking; in CI
    logs one line each, and a heartbeat line naming the stage still at work when nothing was said for
    :data:`HEARTBEAT_S` seconds (a conversion or an emulator can be silent for minutes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = ""
        self.since = time.monotonic()
        self.stop = threading.Event()
        self.tty = sys.stderr.isatty()

    def __call__(self, msg: str) -> None:
        with self.lock:
            self.last, self.since = msg, time.monotonic()
            self._write(msg)

    def _write(self, msg: str, *, beat: bool = False) -> None:
        line = f"[{time.monotonic() - _T0:6.1f}s] {msg}"
        if not self.tty:
            click.echo(line, err=True)
            return
        step = msg.split(":", 1)[0]
        same = bool(_LAST_STEP) and _LAST_STEP[0] == step
        prefix = "\r\033[K" if same or beat else ("\n" if _LAST_STEP else "")
        sys.stderr.write(prefix + click.style(line, fg="cyan" if step != "report" else "green"))
        sys.stderr.flush()
        _LAST_STEP[:] = [step]
        if step == "report":
            sys.stderr.write("\n")

    def _beat(self) -> None:
        every = 1.0 if self.tty else HEARTBEAT_S
        while not self.stop.wait(min(every, 5.0)):
            with self.lock:
                quiet = time.monotonic() - self.since
                if self.last and quiet >= every:
                    self._write(f"{self.last} (still working: {quiet:.0f} s)", beat=True)
                    if not self.tty:
                        self.since = time.monotonic()

    def __enter__(self) -> _Progress:
        threading.Thread(target=self._beat, name="litegate-heartbeat", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


# Shared options, defined once and stacked on commands.
verbose_option = click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors.")


def timeout_option(default: float) -> Any:
    return click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=default, show_default=True,
                        help="Seconds before the conversion's child process is killed (exit 9, a timeout).")

source_options = [
    click.option("--seq-len", type=click.IntRange(1, 4096), default=None,
                 help=f"Static sequence length of the exported model (a generator's prefill length). Default: a "
                      f"keras-hub model's preprocessor's, else {DEFAULT_SEQ_LEN}."),
    click.option("--from", "kind", type=click.Choice([k.value for k in SourceKind if k is not SourceKind.TFLITE]),
                 default=SourceKind.HF.value, show_default=True,
                 help="Kind of the input model (hf: a Hugging Face checkpoint whose config.json names the builder)."),
    click.option("--max-len", type=click.IntRange(1), default=None,
                 help="KV-cache length of a decoder export (default: the model's maximum positions)."),
    click.option("--signature", default="serving_default", show_default=True, help="SavedModel signature to convert."),
    click.option("--tokenizer", "tokenizer_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="tokenizer.json / vocab.txt for sources that do not carry one (saved_model, keras)."),
    click.option("--dynamic-shapes", is_flag=True,
                 help="Keep the sequence dimension dynamic (GPU, Hexagon and Core ML delegates need static shapes)."),
    click.option("--unsafe-allow-lambda", is_flag=True,
                 help="Load Keras models with Lambda layers (runs code from the file: only for files you trust)."),
    click.option("--unsafe-allow-ops", is_flag=True,
                 help="Load SavedModels whose graphs read or write files, run Python or use the network (refused "
                      "by default; the model still loads in the sandbox). Only for files you trust."),
    click.option("--gpu-friendly/--no-gpu-friendly", default=False, show_default=True,
                 help="Hugging Face checkpoints: spell embedding lookups as 1-D gathers and slices without shrink "
                      "masks so LiteRT's GPU delegate takes every op (same outputs)."),
    click.option("--task", type=click.Choice([t.value for t in Task]), default=None,
                 help="What the model does (default: what a checkpoint's config.json says, else text-classification)."),
    click.option("--head", type=click.Choice([h.value for h in Head]), default=None,
                 help="Encoder output head (default: what a checkpoint's config.json says; else classification for "
                      "text-classification, mean for embeddings)."),
]


def _stack(options: list[Any]) -> Any:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="litegate")
def cli() -> None:
    """litegate: take a TensorFlow BERT or text model to a phone, with measured numbers.

    \b
    Example:
      litegate run examples/demo/release.toml
      litegate doctor
    """


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Override output.dir.")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), help="Override data.eval (a sentence<TAB>label file).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="A report.json to compare against (e.g. from main): regressions fail the gate. history:REF: the "
                   "latest passing run of git ref REF on this machine, from the run history.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Convert and evaluate this many variants at once, each in its own child process "
                   "(latency cells always run one at a time).")
@click.option("--cells", metavar="PLAN.json#IDS",
              help="Run only these items of a plan from litegate plan (e.g. plan.json#3,7 or plan.json#0-3): a partial "
                   "report.json for litegate merge, no gate; exits 0 when its items ran.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@verbose_option
def run(config: Path, output: Path | None, data: Path | None, baseline: Path | None, jobs: int, cells: str | None,
        quiet: bool, verbose: bool) -> None:
    """Run the release pipeline of CONFIG: convert, quantize, measure, report, gate.

    Exits 0 when the gate passes, 1 when it fails.

    \b
    Example:
      litegate run examples/demo/release.toml --output reports/demo
      litegate run examples/demo/release.toml --data ../shared/data/sst2/dev.tsv
      litegate run examples/minilm-sst2/release.toml --jobs 2
      litegate run release.toml --cells plan.json#3,7 --output partial-1
    """
    from litegate.pipeline import run_release  # imports LiteRT: not at CLI start

    cfg = load_config(config).with_overrides(output=output, data=data)
    if cells is not None:
        if baseline is not None:
            raise click.BadParameter("a partial run is not compared: give --baseline to litegate merge",
                                     param_hint="--baseline")
        _run_cells(cfg, cells, quiet, jobs)
        return
    if baseline is not None and str(baseline).startswith("history:"):
        baseline = history.baseline_report(cfg, str(baseline).removeprefix("history:"))
    cfg = cfg.with_overrides(baseline=baseline)
    with _Progress() as progress:
        rep = run_release(cfg, progress=None if quiet else progress, jobs=jobs)
    md = (cfg.output_dir / "report.md").read_text().splitlines()
    if not sys.stdout.isatty():  # a CI log: the results table itself, not only where to find it
        table = list(itertools.takewhile(str.strip, itertools.dropwhile(lambda x: not x.startswith("|"), md)))
        click.echo("\n".join(table) + "\n")
    click.echo(md[0].lstrip("# ").replace("**", ""))
    click.echo(f"report: {cfg.output_dir / 'report.md'} (also report.html, report.json, junit.xml)")
    if not rep.passed:
        sys.exit(1)


def _run_cells(cfg: Any, cells: str, quiet: bool, jobs: int) -> None:
    """``run --cells``: the partial run, and one line saying what it did."""
    from litegate.pipeline import run_cells  # imports LiteRT: not at CLI start
    from litegate.shard import parse_cells

    plan_path, ids = parse_cells(cells)
    with _Progress() as progress:
        rep = run_cells(cfg, plan_path, ids, progress=None if quiet else progress, jobs=jobs)
    part = rep.run["partial"]
    how = ", ".join(f"{k} {v}" for k, v in part["conversions"].items())
    click.echo(f"partial: items {','.join(map(str, part['items']))} of plan {part['plan']['hash'][:12]} "
               f"(models: {how or 'none'})")
    click.echo(f"report: {cfg.output_dir / 'report.json'} (partial: litegate merge it with the others)")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the plan here (default: print it, unless --github-matrix).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), help="Override data.eval, as run does.")
@click.option("--github-matrix", is_flag=True,
              help="Print a strategy.matrix for GitHub Actions (one line of JSON, for fromJSON).")
@click.option("--group", type=click.Choice(["variant", "item"]), default="variant", show_default=True,
              help="Matrix jobs: one per variant (its conversion and its cells) or one per item.")
@click.option("--kind", type=click.Choice(["convert", "measure"]), default=None,
              help="Matrix of only conversion items or only measurement cells (default: both).")
@verbose_option
def plan(config: Path, output: Path | None, data: Path | None, github_matrix: bool, group: str, kind: str | None,
         verbose: bool) -> None:
    """List the work of CONFIG's release as items with content hashes, for a sharded run.

    One conversion item per variant (keyed like the converted-model cache; it also inspects and evaluates the
    variant), then one measurement cell per variant x backend x threads. Run items with run --cells, then merge.

    \b
    Example:
      litegate plan release.toml -o plan.json
      litegate plan release.toml --github-matrix          # for strategy.matrix: ${{ fromJSON(...) }}
      litegate run release.toml --cells plan.json#0,4,5 --output partial-0
      litegate merge partial-*/report.json -o report/
    """
    from litegate.pipeline import plan_release  # imports LiteRT: not at CLI start
    from litegate.shard import github_matrix as matrix_of
    from litegate.shard import write_plan

    if not github_matrix and (group != "variant" or kind is not None):
        raise click.BadParameter("--group and --kind shape the --github-matrix output: give --github-matrix",
                                 param_hint="--group/--kind")
    cfg = load_config(config).with_overrides(data=data)
    the_plan = plan_release(cfg)
    if output is not None:
        write_plan(the_plan, output)
    if github_matrix:
        click.echo(json.dumps(matrix_of(the_plan, group=group, kind=kind), separators=(",", ":")))
    elif output is None:
        click.echo(the_plan.to_json(), nl=False)
    else:
        n = len(the_plan.of_kind("convert"))
        click.echo(f"wrote {output}: {len(the_plan.items)} items ({n} conversions, {len(the_plan.items) - n} cells), "
                   f"plan {the_plan.hash[:12]}")


@cli.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the merged report (and the published models, when beside the partials).")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="The release config (default: the one the partial reports name).")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path),
              help="A report.json (or history:REF) to compare against, as run does (unpaired: no cell is re-timed).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@verbose_option
def merge(reports: tuple[Path, ...], output: Path, config: Path | None, baseline: Path | None, quiet: bool,
          verbose: bool) -> None:
    """Merge the partial reports of run --cells into one report, gated as a single run: exit 0 pass, 1 fail.

    Refuses (exit 2) partials of different plans and duplicate or missing cells.

    \b
    Example:
      litegate merge partial-*/report.json -o report/ --config release.toml
    """
    from litegate.pipeline import merge_release  # imports LiteRT: not at CLI start
    from litegate.shard import load_partials

    if config is None:
        named = {str(q.report.run.get("config")) for q in load_partials(list(reports))}
        if len(named) != 1 or not Path(next(iter(named))).is_file():
            raise click.BadParameter(f"the partial reports name the config {', '.join(sorted(named))}, not a file "
                                     "here: give --config", param_hint="--config")
        config = Path(next(iter(named)))
    cfg = load_config(config).with_overrides(output=output)
    if baseline is not None and str(baseline).startswith("history:"):
        baseline = history.baseline_report(cfg, str(baseline).removeprefix("history:"))
    cfg = cfg.with_overrides(baseline=baseline)
    with _Progress() as progress:
        rep = merge_release(cfg, list(reports), progress=None if quiet else progress)
    md = (cfg.output_dir / "report.md").read_text().splitlines()
    click.echo(md[0].lstrip("# ").replace("**", ""))
    click.echo(f"report: {cfg.output_dir / 'report.md'} (also report.html, report.json, junit.xml)")
    if not rep.passed:
        sys.exit(1)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .tflite.")
@timeout_option(900.0)
@_stack(source_options)
@verbose_option
def convert(path: Path, output: Path, timeout_s: float, verbose: bool, **source: Any) -> None:
    """Convert the model at PATH to a float32 .tflite (with tokenizer and metadata sidecars).

    \b
    Example:
      litegate convert examples/demo/model -o demo.tflite --seq-len 64
      litegate convert models/all-MiniLM-L6-v2 -o minilm.tflite   # config.json: BertModel -> embeddings
      litegate convert --from saved_model bert_savedmodel/ --tokenizer vocab.txt -o bert.tflite
    """
    _convert(path, output, source, "fp32", None, 0, timeout_s=timeout_s)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .tflite.")
@click.option("--recipe", required=True, help="Built-in recipe name (fp32, fp16, dynamic-int8, int8, int16x8) or a .json path.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), help="Calibration text (for int8/int16x8).")
@click.option("--samples", type=click.IntRange(1), default=200, show_default=True, help="Calibration samples.")
@click.option("--debug", is_flag=True,
              help="Run TensorFlow's QuantizationDebugger: per-layer error to OUT.layers.csv, most sensitive first.")
@timeout_option(900.0)
@_stack(source_options)
@verbose_option
def quantize(path: Path, output: Path, recipe: str, calibration: Path | None, samples: int, debug: bool,
             timeout_s: float, verbose: bool, **source: Any) -> None:
    """Convert and quantize the model at PATH with a recipe.

    \b
    Example:
      litegate quantize examples/demo/model --recipe int8 \\
          --calibration examples/demo/calibration.txt -o demo-int8.tflite --seq-len 64
    """
    if recipes.load(recipe).needs_calibration and calibration is None:
        raise click.BadParameter(f"recipe {recipe!r} is calibrated: give --calibration TEXT", param_hint="--calibration")
    _convert(path, output, source, recipe, calibration, samples, debug, timeout_s=timeout_s)


def _echo_notes_and_layers(info: dict[str, Any], output: Path) -> None:
    """The converter's notes and, after --debug, the most sensitive layers."""
    for note in info.get("notes", []):
        click.echo(f"note: {note}")
    rows = info.get("extra", {}).get("layer_stats", [])
    if rows:
        click.echo(f"most sensitive layers (RMSE/scale, in quantization steps; ~0.29 is ideal), of "
                   f"{info['extra'].get('layer_stats_total', len(rows))}; all in {output.with_suffix('.layers.csv')}:")
        for i, r in enumerate(rows[:10], start=1):
            click.echo(f"  {i:2d}. {r['rmse/scale']:8.2f}  {r['op_name']:16} {r['tensor_name']}")


def _convert(path: Path, output: Path, source: dict[str, Any], recipe: str,
             calibration: Path | None, samples: int, debug: bool = False, *, timeout_s: float) -> None:
    from litegate.api import convert_model  # imports LiteRT: not at CLI start

    src = _model_source(path, source)
    info = convert_model(src, output, recipe=recipe, calibration=calibration, samples=samples or 200,
                         debug=debug, timeout_s=timeout_s)
    click.echo(f"wrote {info['path']} ({info['recipe']}, {info['bytes'] / 1e6:.2f} MB, gzip {info['gzip_bytes'] / 1e6:.2f} MB)")
    _echo_notes_and_layers(info, output)


def _model_source(path: Path, source: dict[str, Any]) -> ModelSource:
    """The ModelSource described by the shared source options."""
    task = source["task"] or Task.TEXT_CLASSIFICATION
    options: dict[str, Any] = {"head": source["head"] or ("classification" if task == Task.TEXT_CLASSIFICATION else "mean")}
    if source["kind"] == SourceKind.SAVED_MODEL:
        options["signature"] = source["signature"]
    if source["tokenizer_path"]:
        options["tokenizer"] = str(source["tokenizer_path"])
    if source["dynamic_shapes"]:
        options["dynamic_shapes"] = True
    if source["unsafe_allow_lambda"]:
        options["allow_lambda"] = True
    if source.get("unsafe_allow_ops"):
        options["allow_unsafe_ops"] = True
    if source["max_len"]:
        options["max_len"] = source["max_len"]
    if source.get("gpu_friendly"):
        if source["kind"] not in (SourceKind.HF, *SourceKind.checkpoints()):
            raise click.UsageError(f"--gpu-friendly applies to Hugging Face checkpoints, not {source['kind']}")
        options["gpu_friendly"] = True
    kind = SourceKind(source["kind"])
    if kind in SourceKind.decoders():
        task = Task.TEXT_GENERATION
    return resolve(ModelSource(kind=kind, path=str(path), task=Task(task), options=options,
                               seq_len=source.get("seq_len") or DEFAULT_SEQ_LEN),
                   head_given=source["head"] is not None, task_given=source["task"] is not None,
                   seq_len_given=source.get("seq_len") is not None)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .tflite.")
@click.option("--recipe", required=True,
              help="Pruning recipe: built-in name (pruned-50, pruned-50-1x4, pruned-2of4) or a .json path.")
@click.option("--then", "then", default=None,
              help="Quantization recipe applied after pruning (fp16, dynamic-int8, int8, ...). Default: fp32.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path),
              help="Recovery text (one sentence per line): distillation to the float model; also calibrates --then int8.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="sentence<TAB>label file: recovery fine-tuning on the task labels (classifiers).")
@click.option("--samples", type=click.IntRange(1), default=200, show_default=True,
              help="Recovery (and calibration) samples.")
@timeout_option(1800.0)
@_stack(source_options)
@verbose_option
def prune(path: Path, output: Path, recipe: str, then: str | None, calibration: Path | None, labels: Path | None,
          samples: int, timeout_s: float, verbose: bool, **source: Any) -> None:
    """Prune the model at PATH (magnitude pruning + recovery fine-tuning), convert, optionally quantize.

    Dense (and LSTM/GRU) kernels are pruned; embeddings and layer norms are kept. Prints the
    sparsity of the pruned layers, of all weights and of the .tflite, and its raw and gzip size.

    \b
    Example:
      litegate prune examples/demo/model --recipe pruned-50 \\
          --calibration examples/demo/calibration.txt -o demo-pruned.tflite --seq-len 64
      litegate prune examples/demo/model --recipe pruned-50 --then dynamic-int8 \\
          --labels examples/demo/eval.tsv -o demo-pruned-int8.tflite --seq-len 64
    """
    from litegate.api import prune_model  # imports LiteRT: not at CLI start

    if calibration is None and labels is None:
        raise click.BadParameter("pruning needs recovery text: give --calibration TEXT or --labels TSV",
                                 param_hint="--calibration/--labels")
    info = prune_model(_model_source(path, source), output, recipe=recipe, then=then, calibration=calibration,
                       labels=labels, samples=samples, timeout_s=timeout_s)
    p, t = info["pruning"], info["tflite"]
    click.echo(f"wrote {info['path']} ({info['recipe']} then {info['then']}, {info['bytes'] / 1e6:.2f} MB, "
               f"gzip {info['gzip_bytes'] / 1e6:.2f} MB)")
    click.echo(f"sparsity: {p['pruned_sparsity']:.1%} of {len(p['layers'])} pruned layers' weights, "
               f"{p['all_weights_sparsity']:.1%} of all weights; .tflite weight tensors {t['sparsity']:.1%} zeros")
    first, last = p["loss_first"], p["loss_last"]
    click.echo(f"recovery: {p['mode']}, {p['steps']} steps, loss {first:.4g} -> {last:.4g}"
               if first is not None else f"recovery: {p['mode']}, no steps")
    _echo_notes_and_layers(info, output)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Real task text for the inputs (one sentence per line, or sentence<TAB>label).")
@click.option("--backend", "backends", default="xnnpack", show_default=True, help="Comma-separated backends.")
@click.option("--threads", default="1", show_default=True, help="Comma-separated thread counts.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="tokenizer.json (default: sidecar).")
@click.option("--min-runs", type=click.IntRange(1), default=timing.DEFAULT.min_runs, show_default=True)
@click.option("--min-seconds", type=click.FloatRange(0), default=timing.DEFAULT.min_seconds, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds before a cell's child process is killed and the cell recorded as a timeout.")
@click.option("--memory-mb", "mem_mb", type=click.IntRange(1), default=None,
              help="Cap on each cell's child process group's resident memory, in MB (a cell over it fails as out "
                   "of memory). Default: no cap.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@verbose_option
def bench(model: Path, text: Path, backends: str, threads: str, tokenizer: Path | None, min_runs: int,
          min_seconds: float, timeout_s: float, mem_mb: int | None, as_json: bool, verbose: bool) -> None:
    """Measure latency and memory of MODEL on each backend and thread count.

    \b
    Example:
      litegate bench reports/demo/int8.tflite --text examples/demo/eval.tsv --threads 1,2
    """
    from litegate.api import bench_model  # imports LiteRT: not at CLI start
    from litegate.backends.registry import backend_syntax_error  # imports LiteRT: not at CLI start

    names = [b.strip() for b in backends.split(",") if b.strip()]
    for b in names:
        problem = backend_syntax_error(b)
        if problem:
            raise click.BadParameter(problem, param_hint="--backend")
    try:
        counts = [int(t) for t in threads.split(",")]
        assert all(c >= 1 for c in counts)
    except (ValueError, AssertionError):
        raise click.BadParameter(f"{threads!r} is not a comma-separated list of positive integers",
                                 param_hint="--threads") from None
    results = bench_model(model, text=text, backends=names, threads=counts, tokenizer=tokenizer,
                          protocol={"min_runs": min_runs, "min_seconds": min_seconds}, timeout_s=timeout_s,
                          mem_mb=mem_mb)
    failed = [r for r in results if r.status in (Status.FAILED, Status.TIMEOUT)]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        if failed:
            sys.exit(BenchmarkError.exit_code)
        return
    width = max(10, *(len(r.backend) for r in results))

    def num(x: float | None, spec: str) -> str:
        return format(x, spec) if x is not None else format("—", spec.split(".")[0].rstrip("df") or ">9")

    click.echo(f"{'backend':{width}} {'threads':>7} {'init ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'n':>6} "
               f"{'RSS MB':>8}")
    for r in results:
        if r.instructions is not None:
            click.echo(f"{r.backend:{width}} {r.threads:>7} — (emulated: {r.instructions:,} instructions/inference; "
                       "no latency)")
        elif r.latency is None:
            click.echo(f"{r.backend:{width}} {r.threads:>7} {r.status.value}: {r.reason}")
        else:
            lat = r.latency
            note = "  (emulated)" if r.protocol.get("latency_emulated") else ""
            click.echo(f"{r.backend:{width}} {r.threads:>7} {num(r.init_ms, '>9.2f')} {lat.p50:9.3f} {lat.p90:9.3f} "
                       f"{lat.p99:9.3f} {lat.n:6d} {num(r.peak_rss_mb, '>8.1f')}{note}")
    if failed:
        sys.exit(BenchmarkError.exit_code)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--tokens", type=click.IntRange(1), default=200, show_default=True, help="How many tokens to generate.")
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help="tokenizer.json (default: sidecar).")
@verbose_option
def generate(model: Path, prompt: str, tokens: int, temperature: float, seed: int, tokenizer: Path | None,
             verbose: bool) -> None:
    """Generate text from a .tflite text generator alone (step, or prefill + decode signatures).

    \b
    Example:
      litegate generate char-gpt2.tflite --prompt "ROMEO:" --tokens 200
    """
    from litegate.generate import generate_text  # imports LiteRT: not at CLI start

    text = generate_text(model, prompt, tokens, tokenizer=tokenizer, temperature=temperature, seed=seed)
    click.echo(prompt + text)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("release.toml"),
              show_default=True, help="Where to write the starter config.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@verbose_option
def init(model: Path, output: Path, force: bool, verbose: bool) -> None:
    """Write a commented starter release.toml for MODEL (its kind and task read from its files).

    \b
    Example:
      litegate init models/all-MiniLM-L6-v2 -o release.toml
      litegate init my_model.keras
    """
    from litegate.starter import detect, write_starter  # imports the config loader's LiteRT parts

    found = detect(model)
    write_starter(model, output, force=force)
    click.echo(f"wrote {output}: {found['kind'].value}, {found['task'].value} ({found['why']}); "
               f"set [data] eval (and calibration for int8), then: litegate run {output}")


@cli.command()
@click.argument("report_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "html", "junit", "json"]), default="md",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@verbose_option
def report(report_json: Path, fmt: str, output: Path | None, verbose: bool) -> None:
    """Render a report.json as Markdown, HTML or JUnit XML (or re-emit validated JSON).

    \b
    Example:
      litegate report reports/demo/report.json > comment.md
      litegate report reports/demo/report.json --format html -o report.html
    """
    rep = rpt.load(report_json)
    text = {"md": rpt.to_markdown, "html": rpt.to_html_page, "junit": rpt.to_junit, "json": rpt.to_json}[fmt](rep)
    if output:
        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("base", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threshold", type=click.FloatRange(0), default=0.05, show_default=True,
              help="Relative latency increase the confidence interval must exceed to count as a regression.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True)
@verbose_option
def compare(base: Path, new: Path, threshold: float, confidence: float, verbose: bool) -> None:
    """Compare two report.json files with the gate's noise-aware rules; exit 1 on a regression.

    \b
    Example:
      litegate compare main/report.json reports/demo/report.json
    """
    verdicts, _ = do_compare(rpt.load(base), rpt.load(new), CompareConfig(threshold=threshold, confidence=confidence))
    for v in verdicts:
        click.echo(f"{'ok  ' if v.passed else 'FAIL'} {v.message}")
    failed = [v for v in verdicts if not v.passed]
    click.echo(f"{len(verdicts) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@verbose_option
def doctor(as_json: bool, verbose: bool) -> None:
    """List every runtime and backend, whether it can run here, and what would fix it.

    \b
    Example:
      litegate doctor
    """
    from litegate.doctor import check as doctor_check  # imports LiteRT: not at CLI start

    rows = doctor_check()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "ok  " if r["ok"] else "no  "
        fix = f"  -> {r['fix']}" if r["fix"] else ""
        click.echo(f"{mark}{r['name']:22} {r['detail']}{fix}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--delegate", "delegates", default=",".join(DELEGATES), show_default=True,
              help=f"Comma-separated targets to check: rule-based delegates ({', '.join(DELEGATES)}), a rule file "
                   "(.json), or qnn[:SOC] (Qualcomm's HTP compiler, e.g. qnn:SM8650; needs litegate[qualcomm]).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--fail-under", "fail_under", type=click.FloatRange(0, 100), default=None, metavar="PCT",
              help="Exit 1 when a target that gave a verdict delegates less than PCT % of the ops.")
@verbose_option
def check(model: Path, delegates: str, fmt: str, fail_under: float | None, verbose: bool) -> None:
    """Check which ops of MODEL (.tflite) each delegate or NPU compiler would take.

    Prints per target the delegated fraction by op count and by MACs, the partitions, and the ops
    that fall back to the CPU with the reason. Rule-based delegates read the flatbuffer alone;
    qnn:SOC compiles the model with Qualcomm's HTP compiler for that Snapdragon (nothing runs).

    \b
    Example:
      litegate check demo.tflite --delegate gpu,xnnpack
      litegate check demo-int8.tflite --delegate qnn:SM8650,qnn:SM8450
      litegate check demo.tflite --format json > compat.json
      litegate check demo-int8.tflite --delegate gpu,qnn:SM8650 --fail-under 100
    """
    from litegate.compat.check import (  # imports LiteRT's flatbuffer schema: not at CLI start
        check_model,
        render_table,
        target_error,
    )

    names = [d.strip() for d in delegates.split(",") if d.strip()]
    if not names:
        raise click.BadParameter("give at least one delegate", param_hint="--delegate")
    for d in names:
        problem = target_error(d)
        if problem:
            raise click.BadParameter(problem, param_hint="--delegate")
    reports = check_model(model, names)
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        click.echo(render_table(reports), nl=False)
    if fail_under is not None:
        below = [r for r in reports if r.status is Status.OK and 100 * r.delegated_fraction < fail_under]
        for r in reports:
            if r.status is not Status.OK:
                click.echo(f"litegate: {r.delegate}: not judged by --fail-under ({r.status.value}: {r.reason})",
                           err=True)
        for r in below:
            click.echo(f"litegate: {r.delegate} delegates {100 * r.delegated_fraction:.1f}% of the ops "
                       f"({r.delegated_ops}/{r.total_ops}), below --fail-under {fail_under:g}%", err=True)
        if below:
            sys.exit(1)

@cli.group("history")
def history_group() -> None:
    """The run history: a SQLite or PostgreSQL index over report.json files (``[history]`` in release.toml).

    Without --url the database is ``history.sqlite`` in the parent of the report's folder (add), or
    ``reports/history.sqlite`` under the working directory (show).

    \b
    Example:
      litegate history add reports/demo/report.json
      litegate history show --variant int8 --metric p50_ms --last 20
    """


url_option = click.option("--url", default=None, metavar="URL",
                          help="postgresql://USER@HOST/DB, or a SQLite file path (default: see litegate history --help).")


@history_group.command("add")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ref", default=None, help="Git ref of the run (default: CI variables, else git here).")
@click.option("--sha", default=None, help="Git commit of the run (default: CI variables, else git here).")
@click.option("--tag", default=None, help="Git tag of the run (default: CI variables, else git here).")
@url_option
@verbose_option
def history_add(reports: tuple[Path, ...], ref: str | None, sha: str | None, tag: str | None, url: str | None,
                verbose: bool) -> None:
    """Add report.json files to the run history (a report already there is stored once).

    Git sha / ref / tag come from CI variables (GITHUB_SHA, GITHUB_REF_NAME, CI_COMMIT_SHA, CI_COMMIT_REF_NAME) or
    from git in the working directory at the time of adding; --ref / --sha / --tag set them (backfilling old reports).

    \b
    Example:
      litegate history add reports/demo/report.json
      litegate history add reports/demo/report.json --url postgresql://ci@db.internal/litegate
    """
    given = {"ref": ref, "sha": sha, "tag": tag}
    git = {k: given[k] or v for k, v in history.git_info().items()}
    for path in reports:
        loc = history.locate(url, default_dir=path.resolve().parent.parent)
        done = history.add(loc, path, git=git)
        what = "added" if done.added else "already in history"
        click.echo(f"{what}: {done.report_sha256[:12]} {done.name} {done.started_at} "
                   f"ref {done.git.get('ref') or '—'} machine {done.machine_fingerprint} -> {loc}")


@history_group.command("show")
@click.option("--variant", required=True, help="Variant name, e.g. int8.")
@click.option("--metric", default="p50_ms", show_default=True, type=click.Choice(history.METRICS))
@click.option("--last", type=click.IntRange(1), default=20, show_default=True, help="How many runs (the newest).")
@click.option("--name", default=None, help="Only runs of this config name.")
@click.option("--backend", default=None, help="Only this backend (latency metrics).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Only this thread count (latency metrics).")
@click.option("--format", "fmt", type=click.Choice(history.FORMATS), default="md", show_default=True)
@url_option
@verbose_option
def history_show(variant: str, metric: str, last: int, name: str | None, backend: str | None, threads: int | None,
                 fmt: str, url: str | None, verbose: bool) -> None:
    """Print METRIC of VARIANT over the last runs in the history, oldest first.

    \b
    Example:
      litegate history show --variant int8 --metric p50_ms --last 20
      litegate history show --variant fp32 --metric size_bytes --format csv
    """
    loc = history.locate(url, default_dir=Path("reports"))
    rows = history.show(loc, variant=variant, metric=metric, last=last, name=name, backend=backend, threads=threads)
    click.echo(history.render(rows, fmt), nl=False)


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn litegate errors into one line and an exit code."""
    signal.signal(signal.SIGTERM, _sigterm)
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        cli.main(args=args, prog_name="litegate", standalone_mode=False)
    except LitegateError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"litegate: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("litegate: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("litegate: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - an internal error still gets one line and a code
        if verbose:
            traceback.print_exc()
        click.echo(f"litegate: internal error: {type(exc).__name__}: {exc} (rerun with -v for the traceback)", err=True)
        sys.exit(10)
    except BaseException as exc:  # noqa: BLE001 - a Rust panic (pyo3's PanicException) is no Exception: not exit 1
        if isinstance(exc, (SystemExit, GeneratorExit)):
            raise
        if verbose:
            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        click.echo(f"litegate: internal error: {type(exc).__name__}: {first} (rerun with -v for the traceback)", err=True)
        sys.exit(10)
    sys.exit(0)


if __name__ == "__main__":
    main()
