"""Tiny artifacts and a live app for the Serve tests (loopback only).

The dataset is test_train_reward's two-group set (the groups disagree on every pair); the GNN
output is a stand-in written with the contract writers (group direction + noise, the real graph of
the train split), as the adaptation tests do; the reward model is trained by the real
``jobs/train_reward.py`` (tiny random Llama, 1 worker, a few steps).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from copl_ray.adapt.artifacts import GNNArtifacts
from copl_ray.data.dataset import read_annotations, read_table
from copl_ray.graph.id_map import IdMap
from copl_ray.graph.signed_graph import SignedGraph
from tests.adapt_helpers import write_gnn_dir
from tests.test_train_reward import make_two_group_dataset

DIM = 8


def write_stand_in_gnn(dataset: Path, out: Path, seed: int = 0) -> Path:
    users = read_table(dataset, "users")
    seen_mask = pc.equal(users.column("split"), "seen")
    seen = users.column("user_id").filter(seen_mask).combine_chunks()
    groups = users.column("group").filter(seen_mask).to_pylist()
    umap, rmap = IdMap(seen), IdMap(read_table(dataset, "responses").column("response_id").combine_chunks())
    tr = read_annotations(dataset, "train")
    g = SignedGraph.from_triples(umap.lookup(tr.column("user_id")), rmap.lookup(tr.column("chosen_id")),
                                 rmap.lookup(tr.column("rejected_id")), len(umap), len(rmap))
    rng = np.random.default_rng(seed)
    centre = {"short": rng.normal(size=DIM), "long": rng.normal(size=DIM)}
    e_user = np.stack([centre[x] + 0.1 * rng.normal(size=DIM) for x in groups]).astype(np.float32)
    e_resp = rng.normal(size=(len(rmap), DIM)).astype(np.float32)
    art = GNNArtifacts(umap.ids, rmap.ids, torch.from_numpy(e_user), torch.from_numpy(e_resp), g)
    out.mkdir(parents=True, exist_ok=True)
    write_gnn_dir(art, out)
    (out / "config.yaml").write_text(f"dataset: {dataset}\noutput_dir: {out}\n")
    return out


def build_artifacts(root: Path) -> dict:
    """dataset, gnn_dir, reward_dir under ``root`` (needs a Ray session for train_reward)."""
    from copl_ray.runtime import load_job

    data = make_two_group_dataset(root / "data", n_users=40, n_prompts=12)
    gnn = write_stand_in_gnn(data, root / "gnn")
    reward = root / "reward"
    load_job("train_reward").main([
        f"dataset={data}", f"gnn_dir={gnn}", f"output_dir={reward}", "method=copl", "model.backbone=tiny-llama",
        "model.num_experts=2", "lr=0.003", "max_length=48", "min_steps=0", "batch_size=8", "max_steps=6",
        "num_workers=1", "val_pairs=0"])
    return {"dataset": data, "gnn_dir": gnn, "reward_dir": reward}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(artifacts: dict, store_path: Path, port: int, **extra) -> dict:
    """App args sized for a 2-CPU test Ray: every replica at 0 CPUs (they would not all fit)."""
    args = {"gnn_dir": str(artifacts["gnn_dir"]), "reward_dir": str(artifacts["reward_dir"]),
            "dataset": str(artifacts["dataset"]), "store_path": str(store_path), "port": port,
            "scorer": {"num_cpus": 0, "torch_threads": 1, "batch_wait_timeout_s": 0.02},
            "onboarding": {"num_cpus": 0, "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                           "upscale_delay_s": 0.5, "max_ongoing_requests": 2, "survey_candidates": 200}}
    for key, value in extra.items():
        if isinstance(value, dict):
            args.setdefault(key, {}).update(value)
        else:
            args[key] = value
    return args


def wait_healthy(url: str, timeout: float = 120.0) -> dict:
    import requests

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/v1/health", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url}/v1/health not ok after {timeout}s (last: {last})")


def replica_pids(app_name: str, deployment: str | None = None) -> list[int]:
    """PIDs of the app's live replica actors (one deployment, or all), from the GCS actor table
    (the state API would need the dashboard, which the test Ray runs without)."""
    from ray._private.state import state

    prefix = f"ServeReplica:{app_name}:" + (deployment or "")
    return [a["Pid"] for a in state.actor_table(None, actor_state_name="ALIVE").values()
            if a["ActorClassName"].startswith(prefix) and a["Pid"]]


def sigkill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
