"""infra/ validated offline: nothing here reaches a Kubernetes API server, a cloud or a registry.

* KubeRay manifests (``infra/kuberay/``) against the RayJob/RayService CRD schemas of KubeRay v1.7.0
  (vendored under ``tests/schemas/``), with unknown keys rejected; their cluster shape (GPU group,
  autoscaling, token auth, shared volume, Ray version = pyproject's pin); the RayJob entrypoint's
  keys against the jobs' own config models.
* The RayService's ``serveConfigV2``: equal (as parsed YAML) to the file under ``configs/serve/``
  its annotation names, valid for Ray's ``ServeDeploySchema`` with no key Ray would ignore, each
  deployment's ``autoscaling_config`` for ``AutoscalingConfig``, and the app's ``args`` for the
  application's own args model (``serve/app.py``).
* The cluster launcher YAML against Ray's own schema (``ray/autoscaler/ray-schema.json``) and
  Ray's ``prepare_config``/``validate_config`` (what ``ray up`` runs before it starts anything).
* The Dockerfile and the launcher's setup commands install pyproject.toml's pins the way
  ``make install`` does: ``torch==<pin>`` first and alone, then the project.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import shlex
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ValidationError

from copl_ray.config import ConfigError, JobConfig, load_config
from copl_ray.runtime import load_job

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
CRD_DIR = Path(__file__).resolve().parent / "schemas" / "kuberay-v1.7.0"
CRD_FILES = {"RayJob": "rayjob.ray.io_v1.openapiv3.json", "RayService": "rayservice.ray.io_v1.openapiv3.json"}
MANIFESTS = {"RayJob": KUBERAY / "rayjob-pipeline.yaml", "RayService": KUBERAY / "rayservice-serve.yaml"}
PVC = KUBERAY / "pvc-copl-data.yaml"
SERVE_CONFIG_ANNOTATION = "copl-ray.io/serve-config"  # RayService metadata: which configs/serve file it embeds
SHARED_MOUNT = "/data"


# ----------------------------------------------------------------------------- helpers


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_pins() -> dict[str, str]:
    """{canonical name: version} of every ``name==version`` dependency of pyproject.toml."""
    pins = {}
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        (spec,) = req.specifier  # the project pins every dependency exactly
        assert spec.operator == "==", f"pyproject.toml: {line} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def strict_schema(schema):
    """A CRD openAPIV3Schema that rejects unknown keys, as the API server (which prunes them) does not:
    ``additionalProperties: false`` on every object schema that declares ``properties``, has no
    ``additionalProperties`` of its own and is not ``x-kubernetes-preserve-unknown-fields``."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


_VALIDATORS: dict = {}


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    if kind not in _VALIDATORS:
        schema = json.loads((CRD_DIR / CRD_FILES[kind]).read_text())
        _VALIDATORS[kind] = jsonschema.Draft7Validator(strict_schema(schema))
    return _VALIDATORS[kind]


def schema_errors(kind: str, manifest: dict) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in crd_validator(kind).iter_errors(manifest))


def manifest(kind: str) -> dict:
    return _yaml(MANIFESTS[kind])


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def pod_specs(doc: dict) -> dict[str, dict]:
    """{group name ("head" for the head): pod spec} of a RayJob's / RayService's cluster."""
    spec = cluster_spec(doc)
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])})
    return pods


_SPLIT = re.compile(r"&&|\|\||;|\||\n")
_OPTS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                    "-r", "--requirement", "--target", "-t", "--prefix", "--root", "--python-version"}


def pip_installs(command: str) -> list[list[str]]:
    """The targets of each ``pip install`` in a shell command line, in order: requirement strings,
    and ``-e PATH`` as the two items ``["-e", PATH]``; other options (and their values) dropped."""
    installs = []
    for part in _SPLIT.split(command):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        for i, word in enumerate(words[:-1]):
            if re.fullmatch(r"(.*/)?pip3?", word) and words[i + 1] == "install":  # also `python -m pip install`
                targets, skip = [], False
                for tok in words[i + 2:]:
                    if skip:
                        skip = False
                    elif tok in ("-e", "--editable"):
                        targets.append("-e")
                    elif tok in _OPTS_WITH_VALUE:
                        skip = True
                    elif not tok.startswith("-"):
                        targets.append(tok)
                installs.append(targets)
                break
    return installs


def check_pinned_set(installs: list[list[str]], project: str, where: str) -> None:
    """``installs``: torch alone at pyproject's pin, first; then the project (``project``, editable);
    no package of pyproject.toml at another version; no package outside pyproject.toml."""
    pins = pyproject_pins()
    assert installs, f"{where}: no pip install"
    assert installs[0] == [f"torch=={pins['torch']}"], (
        f"{where}: the first pip install must be torch=={pins['torch']} alone (pyproject.toml's pin, "
        f"as `make install` does), got {installs[0]}")
    flat = [t for targets in installs for t in targets]
    assert ["-e", project] in [flat[i:i + 2] for i in range(len(flat) - 1)], (
        f"{where}: the project is not installed (expected pip install -e {project}); installs: {installs}")
    for target in flat:
        if target == "-e" or target == project:
            continue
        req = Requirement(target)
        name = canonicalize_name(req.name)
        assert name in pins, f"{where}: installs {target}, which pyproject.toml does not pin"
        assert str(req.specifier) == f"=={pins[name]}", (
            f"{where}: {target} differs from pyproject.toml's {req.name}=={pins[name]}")


# ----------------------------------------------------------------------------- KubeRay CRDs


def test_vendored_crd_schemas_are_kuberays():
    for kind, name in CRD_FILES.items():
        schema = json.loads((CRD_DIR / name).read_text())
        spec = schema["properties"]["spec"]["properties"]
        assert ("rayClusterSpec" if kind == "RayJob" else "rayClusterConfig") in spec, name
        assert "authOptions" in (spec.get("rayClusterSpec") or spec["rayClusterConfig"])["properties"], name
    assert "Apache" in (CRD_DIR / "README.md").read_text()


@pytest.mark.parametrize("kind", MANIFESTS)
def test_manifest_matches_crd_schema(kind):
    doc = manifest(kind)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    errors = schema_errors(kind, doc)
    assert not errors, f"{MANIFESTS[kind].name} fails the KubeRay v1.7.0 {kind} schema:\n" + "\n".join(errors)


@pytest.mark.parametrize("kind", MANIFESTS)
def test_unknown_keys_are_rejected(kind):
    """The strict loader catches typos at every depth (Kubernetes itself would drop them silently)."""
    doc = manifest(kind)
    typos = [
        lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True),
        lambda d: cluster_spec(d).__setitem__("enableInTreeAutoscaler", True),
        lambda d: cluster_spec(d)["workerGroupSpecs"][0].__setitem__("minReplica", 0),
        lambda d: cluster_spec(d)["authOptions"].__setitem__("mod", "token"),
        lambda d: pod_specs(d)["head"]["containers"][0].__setitem__("imagePullPolicyy", "Always"),
    ]
    for i, typo in enumerate(typos):
        broken = copy.deepcopy(doc)
        typo(broken)
        assert schema_errors(kind, broken), f"typo {i} was not rejected"
    broken = copy.deepcopy(doc)
    cluster_spec(broken)["authOptions"]["mode"] = "tokens"
    assert schema_errors(kind, broken), "an enum value outside the CRD's was accepted"


@pytest.mark.parametrize("kind", MANIFESTS)
def test_cluster_shape(kind):
    """Token auth, in-tree autoscaling, a GPU worker group, Ray = pyproject's pin, shared /data."""
    doc = manifest(kind)
    spec = cluster_spec(doc)
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == pyproject_pins()["ray"], "rayVersion must equal pyproject.toml's ray pin"
    groups = spec["workerGroupSpecs"]
    for g in groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
        assert g["maxReplicas"] > g["minReplicas"], f"{g['groupName']}: nothing to autoscale"
    gpu = [g for g in groups
           if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"])]
    assert gpu, f"{kind}: no worker group with nvidia.com/gpu limits"
    for g in gpu:
        (container,) = g["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert "cuda" in container["image"], f"{g['groupName']}: a GPU group needs the CUDA image variant"
    claim = _yaml(PVC)
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    for name, pod in pod_specs(doc).items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert SHARED_MOUNT in mounts, f"{kind} {name}: no volume mounted at {SHARED_MOUNT}"
        assert volumes[mounts[SHARED_MOUNT]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


# ----------------------------------------------------------------------------- the RayJob's entrypoint


def job_model(job: str) -> type[JobConfig]:
    """The config model of ``jobs/<job>.py`` (the convention of tests/test_configs_yaml.py)."""
    module = load_job(job)
    models = {obj for obj in vars(module).values()
              if isinstance(obj, type) and issubclass(obj, JobConfig) and obj is not JobConfig
              and "output_dir" in obj.model_fields}
    assert len(models) == 1, f"jobs/{job}.py: expected one job config model, found {models}"
    return models.pop()


def validate_job_argv(job: str, argv: list[str]) -> JobConfig:
    """``[--config F] key=value ...`` through the job's own loader (paths relative to the repo root)."""
    config = None
    if "--config" in argv:
        i = argv.index("--config")
        config, argv = ROOT / argv[i + 1], argv[:i] + argv[i + 2:]
    try:
        return load_config(job_model(job), config, argv)
    except ConfigError as exc:
        pytest.fail(f"jobs/{job}.py rejects the RayJob's arguments: {exc}")


def _stage_argv(keys: dict, **paths: str) -> list[str]:
    """A pipeline stage's mapping as the stage job's command line (``config`` is its --config)."""
    keys = dict(keys)
    clash = sorted(set(keys) & set(paths))
    assert not clash, f"the pipeline sets {clash} itself: the RayJob must not"
    argv = ["--config", str(keys.pop("config"))] if "config" in keys else []

    def flat(prefix, value):
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in flat(f"{prefix}.{k}", v)]
        return [f"{prefix}={value if isinstance(value, str) else json.dumps(value)}"]

    return argv + [item for k, v in {**keys, **paths}.items() for item in flat(k, v)]


def test_rayjob_entrypoint_runs_the_jobs_with_valid_keys():
    """Every command of the entrypoint is ``python jobs/<job>.py`` with keys its config accepts;
    outputs go to the shared volume; for jobs/pipeline.py each stage's keys suit that stage's job."""
    doc = manifest("RayJob")
    commands = [shlex.split(c) for c in doc["spec"]["entrypoint"].split("&&")]
    assert commands
    for words in commands:
        assert words[0] == "python" and re.fullmatch(r"jobs/\w+\.py", words[1]), f"not a job command: {words}"
        job = Path(words[1]).stem
        assert (ROOT / words[1]).is_file(), f"the entrypoint runs {words[1]}, which does not exist"
        cfg = validate_job_argv(job, words[2:])
        assert cfg.output_dir.startswith(SHARED_MOUNT + "/"), f"{job}: output_dir must be on the shared volume"
        if job != "pipeline":
            continue
        stages = {"train_gnn": dict(dataset="D", output_dir="O"),
                  "adapt_users": dict(dataset="D", gnn_dir="G", output_dir="O"),
                  "evaluate": dict(dataset="D", gnn_dir="G", reward_dir="R", adapt_dir="A", output_dir="O")}
        if cfg.dataset is None:
            stages["make_synthetic"] = dict(output_dir="O")
        for stage, paths in stages.items():
            validate_job_argv(stage, _stage_argv(getattr(cfg, "synthetic" if stage == "make_synthetic" else stage),
                                                 **paths))
        for method in cfg.methods:
            validate_job_argv("train_reward", _stage_argv(cfg.train_reward, dataset="D", gnn_dir="G",
                                                          output_dir="O", method=method))
        assert cfg.train_gnn.get("num_workers", 1) > 1 and cfg.train_reward.get("use_gpu") is True, (
            "the cluster run should spread the GNN over workers and train the reward model on GPUs")


def test_rayjob_runtime_env_is_the_image_tree():
    """working_dir is where the Dockerfile puts the repository (jobs/ and configs/ resolve there)."""
    env = yaml.safe_load(manifest("RayJob")["spec"]["runtimeEnvYAML"])
    assert env["working_dir"] == dockerfile()["workdir"]


# ----------------------------------------------------------------------------- the RayService's Serve config


def embedded_serve_config() -> tuple[dict, Path]:
    doc = manifest("RayService")
    name = doc["metadata"].get("annotations", {}).get(SERVE_CONFIG_ANNOTATION)
    assert name, f"RayService metadata.annotations[{SERVE_CONFIG_ANNOTATION!r}] must name its configs/serve file"
    return yaml.safe_load(doc["spec"]["serveConfigV2"]), ROOT / name


def test_serve_config_v2_is_the_configs_serve_file():
    embedded, path = embedded_serve_config()
    files = sorted((ROOT / "configs" / "serve").glob("*.yaml"))
    if not files:
        pytest.skip("configs/serve/ holds no YAML yet: nothing to compare serveConfigV2 with")
    assert path in files, f"the RayService names {path.relative_to(ROOT)}; configs/serve/ holds " \
                          f"{[str(f.relative_to(ROOT)) for f in files]}"
    assert embedded == _yaml(path), (
        f"serveConfigV2 differs from {path.relative_to(ROOT)}: copy the file into the manifest again")


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def unknown_serve_keys(model: type[BaseModel], data, path: str = "") -> list[str]:
    """Keys of ``data`` that ``model`` (recursively) does not declare: Ray's Serve schemas accept
    and ignore them, so a typo there would be silently dropped."""
    if not isinstance(data, dict):
        return []
    fields = {**{f.alias: f for f in model.model_fields.values() if f.alias}, **model.model_fields}
    out = []
    for key, value in data.items():
        if key not in fields:
            out.append(f"{path}{key}")
            continue
        for sub in _models_in(fields[key].annotation):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
                out += unknown_serve_keys(sub, item, where)
    return out


def app_args_model():
    """The pydantic model that serve/app.py's builder takes (Ray's typed app_builder pattern)."""
    if not (ROOT / "serve" / "app.py").is_file():
        pytest.skip("serve/app.py does not exist yet: the app's args model cannot be checked")
    from serve import app

    hints = typing.get_type_hints(app.build_app)
    first = next(iter(inspect.signature(app.build_app).parameters))
    model = hints[first]
    assert isinstance(model, type) and issubclass(model, BaseModel), f"build_app({first}: {model})"
    return model


def test_serve_config_v2_is_valid_for_ray_serve():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    config, _ = embedded_serve_config()
    ServeDeploySchema.model_validate(config)
    unknown = unknown_serve_keys(ServeDeploySchema, config)
    assert not unknown, f"keys Ray Serve would ignore: {unknown}"
    autoscaled = 0
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            if dep.get("autoscaling_config") is not None:
                AutoscalingConfig.model_validate(dep["autoscaling_config"])
                autoscaled += 1
    assert autoscaled, "no deployment of serveConfigV2 has an autoscaling_config"
    assert unknown_serve_keys(ServeDeploySchema, {"applications": [{"import_path": "a:b", "deployments": [
        {"name": "X", "autoscaling_config": {"max_replica": 2}}]}]}), "the key check cannot fail"


def test_serve_config_v2_args_fit_the_app():
    """The app's own args model accepts ``args`` (keys, types, cross-field rules). The artifact
    directories exist only on the cluster's volume: their "is not a directory" is the one error allowed."""
    model = app_args_model()
    config, _ = embedded_serve_config()
    for app in config["applications"]:
        assert app["import_path"] == "serve.app:build_app"
        try:
            model.model_validate(app.get("args", {}))
        except ValidationError as exc:
            errors = [e for e in exc.errors() if not ("is not a directory" in e["msg"] and e["loc"] == ())]
            assert not errors, f"{model.__name__} rejects the args of application {app.get('name')}: {errors}"
        with pytest.raises(ValidationError):
            model.model_validate({**app.get("args", {}), "no_such_key": 1})


PATH_ARGS = ("gnn_dir", "reward_dir", "adapt_dir", "store_path", "dataset")


def _on_volume(pod: dict, container: dict, path: str) -> str | None:
    """Where ``path`` (relative to the container's working directory) lies on a PVC, as
    ``claim/subPath/rest``; None when it is on the container's own disk."""
    full = Path(container.get("workingDir", "/"), path)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    best = None
    for m in container.get("volumeMounts", []):
        if m["name"] in claims and full.is_relative_to(m["mountPath"]):
            if best is None or len(m["mountPath"]) > len(best["mountPath"]):
                best = m
    if best is None:
        return None
    rest = full.relative_to(best["mountPath"])
    return str(Path(claims[best["name"]], best.get("subPath", ""), rest))


def _serve_paths() -> dict[str, set[str]]:
    """{arg: the places on the shared volume it names, one per RayService container}."""
    config, _ = embedded_serve_config()
    doc = manifest("RayService")
    out: dict[str, set[str]] = {}
    for app in config["applications"]:
        for key in PATH_ARGS:
            if app.get("args", {}).get(key):
                for name, pod in pod_specs(doc).items():
                    for c in pod["containers"]:
                        where = _on_volume(pod, c, app["args"][key])
                        assert where, f"{name}: args.{key}={app['args'][key]} is not on the shared volume"
                        out.setdefault(key, set()).add(where)
    return out


def test_rayservice_reads_the_rayjobs_outputs_on_the_shared_volume():
    """Every path arg, resolved in every RayService container (working directory = the image's
    tree), is the same place on the shared volume, inside the RayJob's output_dir."""
    doc = manifest("RayService")
    for pod in pod_specs(doc).values():
        for c in pod["containers"]:
            assert c.get("workingDir") == dockerfile()["workdir"], "relative args resolve against workingDir"
    job_out = validate_job_argv("pipeline", shlex.split(manifest("RayJob")["spec"]["entrypoint"])[2:]).output_dir
    claim = _yaml(PVC)["metadata"]["name"]
    run_dir = str(Path(claim, Path(job_out).relative_to(SHARED_MOUNT)))
    paths = _serve_paths()
    assert paths, "the Serve config names no artifact path"
    for key, places in paths.items():
        assert len(places) == 1, f"args.{key} names different files in different pods: {places}"
        (place,) = places
        assert Path(place).is_relative_to(run_dir), f"args.{key} -> {place}, outside the RayJob's {run_dir}"


def test_rayservice_artifacts_are_the_pipelines():
    job_out = validate_job_argv("pipeline", shlex.split(manifest("RayJob")["spec"]["entrypoint"])[2:])
    run_dir = Path(_yaml(PVC)["metadata"]["name"], Path(job_out.output_dir).relative_to(SHARED_MOUNT))
    expected = {"gnn_dir": {str(run_dir / "gnn")}, "adapt_dir": {str(run_dir / "adapt")},
                "reward_dir": {str(run_dir / f"reward_{m}") for m in job_out.methods}}
    for key, places in _serve_paths().items():
        if key in expected:
            assert places <= expected[key], f"args.{key} -> {places}; the pipeline writes {expected[key]}"


def test_rayservice_proxy_is_reachable():
    config, _ = embedded_serve_config()
    assert config.get("http_options", {}).get("host", "0.0.0.0") == "0.0.0.0"


# ----------------------------------------------------------------------------- cluster launcher


def launcher() -> dict:
    return _yaml(INFRA / "cluster-launcher.yaml")


def test_cluster_launcher_matches_rays_schema():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = launcher()
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs first (no network)
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_cluster_launcher_nodes_and_pins():
    config = launcher()
    ray_pin = pyproject_pins()["ray"]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "no GPU node type"
    assert any(t["resources"].get("CPU", 0) >= 1 and not t["resources"].get("GPU")
               for name, t in types.items() if name != config["head_node_type"]), "no CPU worker type"
    images = [config["docker"]["image"]] + [t.get("docker", {}).get("worker_image") for t in types.values()]
    for image in filter(None, images):
        assert image.startswith(f"rayproject/ray:{ray_pin}-py312"), f"{image}: not Ray {ray_pin} on Python 3.12"
    remote = next(r for r, local in config["file_mounts"].items() if local == ".")
    check_pinned_set(pip_installs("\n".join(config["setup_commands"])), remote, "setup_commands")
    for name, t in types.items():
        if "worker_setup_commands" in t:
            check_pinned_set(pip_installs("\n".join(t["worker_setup_commands"])), remote,
                             f"{name}.worker_setup_commands")
    for cmd in config["head_setup_commands"]:
        for targets in pip_installs(cmd):
            for target in targets:
                assert canonicalize_name(Requirement(target).name) == "boto3", (
                    f"head_setup_commands installs {target}: the pinned set belongs in setup_commands")
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, f"ray start without token auth: {cmd}"


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile() -> dict:
    """The Dockerfile's instructions with ARG defaults substituted: {"from", "workdir", "copies",
    "installs" (pip install targets in order, with the WORKDIR each ran in)}."""
    text = (INFRA / "Dockerfile").read_text()
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    out = {"from": None, "workdir": "/", "copies": [], "installs": []}
    subst = lambda s: re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), s)  # noqa: E731
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value.strip('"')
        elif instr == "FROM":
            out["from"] = subst(rest)
        elif instr == "WORKDIR":
            out["workdir"] = subst(rest)
        elif instr == "COPY":
            words = [w for w in shlex.split(subst(rest)) if not w.startswith("--")]
            out["copies"].append((words[:-1], words[-1]))
        elif instr == "RUN":
            out["installs"] += [(t, out["workdir"]) for t in pip_installs(subst(rest))]
    return out


def test_dockerfile_installs_the_pinned_set():
    d = dockerfile()
    installs = [targets for targets, _ in d["installs"]]
    check_pinned_set(installs, ".", "infra/Dockerfile")
    (project_dir,) = {cwd for targets, cwd in d["installs"] if targets == ["-e", "."]}
    assert ([["."], project_dir] in [[list(s), t] for s, t in d["copies"]]), (
        f"the project is installed in {project_dir}, but the repository is not copied there")


def test_dockerfile_python_fits_the_project():
    m = re.fullmatch(r"python:(\d+\.\d+)[-\w.]*", dockerfile()["from"])
    assert m, f"base image {dockerfile()['from']} is not an official python image"
    assert m[1] == "3.12"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{m[1]}.0")


def test_make_install_uses_the_same_torch_pin():
    """`make install` (the Makefile) and pyproject.toml agree, so the image and the venv match."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "Makefile: no $(STAMP) recipe (the install of the venv)"
    installs = pip_installs(recipe[1])
    assert installs[0] == [f"torch=={pyproject_pins()['torch']}"]
    assert ["-e", ".[test]"] in installs


def test_pip_install_parser():
    assert pip_installs('pip install --index-url U "torch==2.13.0" && pip install -e ~/x') == [
        ["torch==2.13.0"], ["-e", "~/x"]]
    assert pip_installs("python -m pip install a==1 b; pip check") == [["a==1", "b"]]


def test_entrypoint_check_catches_a_typo():
    """The entrypoint test goes through the jobs' own loaders, which reject an unknown key."""
    with pytest.raises(ConfigError, match="num_worker"):
        load_config(job_model("train_gnn"), None, _stage_argv({"num_worker": 4}, dataset="D", output_dir="O"))
