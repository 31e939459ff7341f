"""Job configuration: pydantic models loaded from YAML plus dotted ``key=value`` overrides.

Every job has one pydantic model (``extra="forbid"`` so a typo fails loudly). The YAML file and the
command-line overrides are merged into one nested dict *before* validation, so cross-field
validators see the final values. Each job writes the resolved config next to its outputs
(``config.yaml``) and its figures to ``metrics.json`` (CONTRACT section 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "JobConfig",
    "ConfigError",
    "parse_overrides",
    "load_config",
    "parse_job_args",
    "write_resolved_config",
    "write_metrics",
]

C = TypeVar("C", bound="JobConfig")


class ConfigError(ValueError):
    """A config file or override that cannot be turned into a valid job config."""


class JobConfig(BaseModel):
    """Base of every job config: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules: 3 -> int, true -> bool, [1, 2] -> list, else the string; plus
    # 1e-4 -> float, which YAML 1.1 would leave a string.
    if _FLOAT.match(text):
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    if ":" in text and re.fullmatch(r"[\d:._]+", text):
        return text  # YAML 1.1 would read 1:9 as the base-60 number 69
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if not key or any(part == "" for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        _set_dotted(tree, key, _parse_scalar(value))
    return tree


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    model: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> C:
    """Build a validated ``model`` from an optional YAML file and dotted overrides.

    Raises:
        ConfigError: naming the file and every offending field.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        data = loaded
    data = _deep_merge(data, parse_overrides(overrides))
    try:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            # A string field given `dataset=2024` (or 1e3, yes, null) wants the text as written,
            # not the number YAML's scalar rules made of it: retry with the raw override text.
            raw = dict(item.split("=", 1) for item in overrides)
            retry = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "string_type"]
            retry = [key for key in retry if key in raw]
            if not retry:
                raise
            for key in retry:
                _set_dotted(data, key, raw[key])
            return model.model_validate(data)
    except ValidationError as exc:
        source = f"config {path}" if path is not None else "config"
        lines = [f"{source} is invalid for {model.__name__}:"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {field}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def parse_job_args(model: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """Command line of every job: ``[--config FILE] [dotted.key=value ...]``."""
    parser = argparse.ArgumentParser(description=description or model.__doc__)
    parser.add_argument("--config", default=None, help="YAML config file (optional)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        return load_config(model, args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


def write_resolved_config(config: JobConfig, output_dir: str | os.PathLike) -> Path:
    """Write ``config.yaml`` (the exact values the job ran with) into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null says "not measured"
    return value


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (a temporary name in the same folder, then a
    rename: a reader never sees a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def write_metrics(metrics: dict, output_dir: str | os.PathLike) -> Path:
    """Write ``output_dir/metrics.json`` atomically."""
    return write_json(_json_ready(metrics), Path(output_dir) / "metrics.json")
