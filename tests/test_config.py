"""Job configs: YAML + dotted overrides, strict keys, resolved config and metrics files."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import Field, model_validator

from copl_ray.config import (
    ConfigError,
    JobConfig,
    load_config,
    parse_job_args,
    parse_overrides,
    write_metrics,
    write_resolved_config,
)


class Optim(JobConfig):
    lr: float = 1e-4
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])


class ToyConfig(JobConfig):
    dataset: str = "data"
    output_dir: str = "out"
    epochs: int = 3
    warmup: int = 0
    optim: Optim = Field(default_factory=Optim)

    @model_validator(mode="after")
    def _warmup_within_epochs(self):
        if self.warmup > self.epochs:
            raise ValueError(f"warmup ({self.warmup}) must not exceed epochs ({self.epochs})")
        return self


def test_overrides_parse_types_and_nesting():
    tree = parse_overrides(["a.b=1", "a.c=1e-4", "d=true", "e=[1, 2]", "f=hello", "g=", "h=1:9"])
    assert tree == {"a": {"b": 1, "c": 1e-4}, "d": True, "e": [1, 2], "f": "hello", "g": "", "h": "1:9"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["a..b=1"])


def test_yaml_then_overrides_then_validation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 10, "optim": {"lr": 0.5}}))
    cfg = load_config(ToyConfig, path, ["optim.lr=0.01", "warmup=10"])
    assert (cfg.epochs, cfg.warmup, cfg.optim.lr, cfg.optim.betas) == (10, 10, 0.01, [0.9, 0.999])
    # The cross-field rule sees the merged values, not the file's alone.
    with pytest.raises(ConfigError, match=r"warmup \(11\) must not exceed epochs \(10\)"):
        load_config(ToyConfig, path, ["warmup=11"])


def test_unknown_and_mistyped_keys_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(ToyConfig, None, ["optim.lrr=1"])
    assert "optim.lrr" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(ToyConfig, None, ["epochs=many"])
    assert "epochs" in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(ToyConfig, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ToyConfig, tmp_path / "missing.yaml")


def test_cli_exits_with_message(capsys):
    cfg = parse_job_args(ToyConfig, ["epochs=4"])
    assert cfg.epochs == 4
    with pytest.raises(SystemExit) as exc:
        parse_job_args(ToyConfig, ["nope=1"])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_resolved_config_round_trips_and_metrics_are_json(tmp_path):
    cfg = load_config(ToyConfig, None, ["epochs=7", "optim.lr=0.3"])
    path = write_resolved_config(cfg, tmp_path)
    assert load_config(ToyConfig, path) == cfg
    import numpy as np

    write_metrics({"acc": np.float32(0.5), "nested": {"nan": float("nan")}, "n": np.int64(3)}, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"acc": 0.5, "nested": {"nan": None}, "n": 3}


@pytest.mark.parametrize("text", ["2024", "1e3", "007", "yes", "no", "null", "~", "[a]", "true"])
def test_string_keys_take_the_text_as_written(text):
    """A directory may be named 2024, 1e3 or yes: a string field gets the override's text, not
    the number or boolean YAML would make of it."""
    cfg = load_config(ToyConfig, None, [f"dataset={text}", f"output_dir=runs/{text}"])
    assert cfg.dataset == text and cfg.output_dir == f"runs/{text}"
    with pytest.raises(ConfigError, match="epochs"):
        load_config(ToyConfig, None, ["dataset=2024", "epochs=many"])
