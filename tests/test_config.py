from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DEMO, write_config

from litegate.config import load
from litegate.errors import ConfigError


def test_load_demo_config_resolves_paths_relative_to_file():
    cfg = load(DEMO / "release.toml")
    assert [v.name for v in cfg.variants] == ["fp32", "dynamic-int8", "fp16", "int8"]
    assert Path(cfg.model.source.path) == (DEMO / "model").resolve()
    assert cfg.data.eval == (DEMO / "eval.tsv").resolve()
    assert cfg.bench.threads == (1, 2)
    assert cfg.budget_for("int8").max_accuracy_drop == 2.0
    assert cfg.variants[3].recipe.needs_calibration


def test_load_rejects_unknown_key_naming_it(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint, extra="[modle]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'modle'"):
        load(path)


def test_load_rejects_typo_inside_table(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint)
    path.write_text(path.read_text().replace("seq_len = 32", "seq_lenn = 32"))
    with pytest.raises(ConfigError, match=r"unknown key 'model.seq_lenn'"):
        load(path)


def test_load_rejects_wrong_type(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint)
    path.write_text(path.read_text().replace("seq_len = 32", 'seq_len = "32"'))
    with pytest.raises(ConfigError, match=r"'model.seq_len' must be an integer"):
        load(path)


def test_load_rejects_missing_model_path(tmp_path):
    path = write_config(tmp_path, model=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"'model.path'.*does not exist"):
        load(path)


def test_load_rejects_unknown_recipe_and_budget_for_unknown_variant(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint, variants=("fp32", "int4"))
    with pytest.raises(ConfigError, match=r"unknown recipe 'int4'"):
        load(path)
    path = write_config(tmp_path, model=tiny_checkpoint, budgets="[budgets.int8]\nmax_size_mb = 1\n")
    with pytest.raises(ConfigError, match=r"'budgets.int8' names no variant"):
        load(path)


def test_load_rejects_missing_reference_variant(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint, variants=("fp16",))
    with pytest.raises(ConfigError, match=r"'gate.reference' = 'fp32' is not a variant"):
        load(path)


def test_per_variant_budget_overrides_default(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint, variants=("fp32", "int8"),
                        budgets="[budgets]\nmax_accuracy_drop = 1\nmax_size_mb = 5\n[budgets.int8]\nmax_accuracy_drop = 4\n")
    cfg = load(path)
    assert cfg.budget_for("fp32").max_accuracy_drop == 1.0
    assert cfg.budget_for("int8").max_accuracy_drop == 4.0
    assert cfg.budget_for("int8").max_size_mb == 5.0


def test_overrides_replace_output_and_eval(tmp_path, tiny_checkpoint):
    cfg = load(write_config(tmp_path, model=tiny_checkpoint))
    other = tmp_path / "other.tsv"
    other.write_text("a fine film\t1\n")
    new = cfg.with_overrides(output=tmp_path / "o2", data=other)
    assert new.output_dir == (tmp_path / "o2").resolve() and new.data.eval == other.resolve()
    assert new.cache_dir == (tmp_path / "o2").resolve() / ".cache"
    with pytest.raises(ConfigError, match="--data"):
        cfg.with_overrides(data=tmp_path / "missing.tsv")


def test_load_rejects_empty_thread_list_with_a_config_error(tmp_path, tiny_checkpoint):
    path = write_config(tmp_path, model=tiny_checkpoint)
    path.write_text(path.read_text().replace("threads = [1]", "threads = []"))
    with pytest.raises(ConfigError, match=r"'bench.threads' must list at least one thread count"):
        load(path)


def test_cli_head_and_delegate_choices_come_from_the_enums_and_the_ruleset():
    from click.testing import CliRunner

    from litegate.cli import cli
    from litegate.compat.ruleset import DELEGATES
    from litegate.types import Head

    convert_help = CliRunner().invoke(cli, ["convert", "--help"]).output
    assert all(h.value in convert_help for h in Head)  # mean-classification included
    check_help = CliRunner().invoke(cli, ["check", "--help"]).output
    assert ",".join(DELEGATES) in check_help
