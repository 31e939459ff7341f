"""configs/serve/*.yaml are what `serve deploy` accepts: Ray's own ServeDeploySchema, plus the parts
it does not check itself (it ignores unknown keys): each autoscaling_config against Ray's
AutoscalingConfig and the app args against our AppArgs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from copl_ray.serving.app import AppArgs

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "configs" / "serve").glob("*.yaml"))


def test_there_are_serve_configs():
    assert FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_serve_config_validates(path):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    # Loopback unless the file is the cluster's (the schema's own default is 0.0.0.0; KubeRay's serve
    # Service reaches the proxy on the pod's IP).
    assert schema.http_options.host == ("0.0.0.0" if path.name == "kuberay.yaml" else "127.0.0.1")
    for app in raw["applications"]:
        assert app["import_path"] == "serve.app:build_app"
        args = AppArgs.model_validate(app["args"])
        assert args.scorer.max_ongoing_requests >= args.scorer.max_batch_size
        check_autoscaling(args.onboarding.autoscaling_config())
        for dep in app.get("deployments", []):
            assert dep["name"] in ("Api", "Scorer", "Onboarding")
            if "autoscaling_config" in dep:
                check_autoscaling(dep["autoscaling_config"])


def test_app_args_name_the_bad_field():
    base = {"gnn_dir": "g", "reward_dir": "r", "store_path": "s"}
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        AppArgs.model_validate({**base, "scorer": {"max_batch_size": 64, "max_ongoing_requests": 8}})
    with pytest.raises(ValueError, match="gnn_dri"):
        AppArgs.model_validate({**base, "gnn_dri": "x"})
    with pytest.raises(ValueError, match="max_replicas"):
        AppArgs.model_validate({**base, "onboarding": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ValueError, match="gnn_dir: g is not a directory"):
        AppArgs.model_validate(base).check_paths()
    assert AppArgs.model_validate(base).host == "127.0.0.1"


def check_autoscaling(cfg: dict) -> None:
    """Ray's AutoscalingConfig, plus its key names: the model itself ignores unknown keys."""
    from ray.serve.config import AutoscalingConfig

    fields = getattr(AutoscalingConfig, "model_fields", None) or AutoscalingConfig.__fields__
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise ValueError(f"autoscaling_config: unknown keys {unknown}")
    AutoscalingConfig(**cfg)


def test_autoscaling_typos_are_caught():
    with pytest.raises(ValueError, match="target_ongoing_request"):
        check_autoscaling({"min_replicas": 1, "target_ongoing_request": 2})
    with pytest.raises(Exception, match="min_replicas"):
        check_autoscaling({"min_replicas": 3, "max_replicas": 2})
