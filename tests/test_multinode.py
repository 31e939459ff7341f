"""Multi-node Ray, for real: a two-node cluster on loopback, `train_gnn` submitted with `ray job
submit --working-dir .`, Train workers on both nodes; then the second node is killed mid-training,
a replacement node joins (what a cluster autoscaler does), and the job finishes from its checkpoint.

The cluster is its own (``ray start``, own ports, own temp dir, own HOME), apart from the tests'
shared local instance; every node runs in its own process group so that it can be killed whole.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Head + worker nodes started with ``ray start --block``, each in its own process group."""

    def __init__(self, home: Path):
        self.env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    # A loaded 2-core machine starts a node's agents slowly: wait longer than the
                    # defaults before a raylet gives up on them (it aborts otherwise).
                    "RAY_agent_register_timeout_ms": "180000", "RAY_raylet_start_wait_time_s": "180"}
        self.env.pop("RAY_ADDRESS", None)
        self.gcs, self.dashboard = _free_port(), _free_port()
        # A short temp dir: Ray's Unix socket paths must stay under ~107 characters.
        self.temp = Path(f"/tmp/rmn{os.getpid()}")
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen([RAY, "start", "--block", *args], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start_head(self) -> None:
        self.start("head", "--head", f"--port={self.gcs}", "--num-cpus=1", "--resources={\"head\": 1}",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
                   f"--temp-dir={self.temp}")

    def add_node(self, name: str) -> None:
        self.start(name, f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1", f"--resources={{\"{name}\": 1}}")

    def kill(self, name: str) -> None:
        """SIGKILL the node's whole process group: raylet, object store and its workers at once."""
        proc = self.nodes.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def alive_nodes(self, with_resource: str | None = None) -> int:
        """ALIVE nodes (holding ``with_resource`` if given), by the dashboard's state API: an HTTP
        call from this process, no CLI per poll; 0 while the dashboard does not answer."""
        from ray.util.state import list_nodes

        try:
            # raise_on_missing_output=False: the state API counts dead nodes too and would raise
            # "data truncation" once the filter drops them.
            nodes = list_nodes(address=self.url, filters=[("state", "=", "ALIVE")], detail=True, timeout=30,
                               raise_on_missing_output=False)
        except Exception:
            return 0
        return sum(1 for n in nodes if with_resource is None or with_resource in (n.resources_total or {}))

    def join(self, name: str, attempts: int = 3, timeout: float = 240) -> None:
        """Add worker node ``name`` and wait until it is ALIVE; a start that fails (a raylet giving
        up on a loaded machine: "timed out during startup") is retried."""
        for _ in range(attempts):
            self.add_node(name)
            end = time.monotonic() + timeout
            while time.monotonic() < end and self.nodes[name].poll() is None:
                if self.alive_nodes(with_resource=name):
                    return
                time.sleep(1)
            self.kill(name)
        raise AssertionError(f"node {name} did not join in {attempts} attempts")

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            self.kill(name)
        shutil.rmtree(self.temp, ignore_errors=True)


def _wait(predicate, timeout: float, what: str, step: float = 1.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture()
def cluster(tmp_path):
    c = Cluster(tmp_path / "home")
    c.start_head()
    try:
        # Generous waits: on a loaded 2-core machine a node takes minutes to come up.
        _wait(lambda: c.alive_nodes() >= 1, 300, "the head node")
        c.join("node2")
        yield c
    finally:
        c.stop()
        for log in sorted(c.logs.glob("*.log")):  # shown by pytest only when the test fails
            print(f"== {log.name}\n{log.read_text()[-1500:]}")


def test_train_gnn_job_spans_two_nodes_and_survives_losing_one(cluster, tmp_path):
    from copl_ray.data.latent_suite import LatentCase, generate_latent_dataset

    data, out = tmp_path / "data", tmp_path / "gnn"
    generate_latent_dataset(LatentCase(n_users=300, n_unseen_users=0, n_pairs=300, seed=0), data)
    # 1 CPU per node and 2 one-CPU workers: the group must span both nodes. No validation split
    # (no early stopping) and many epochs, so the kill lands mid-training.
    from ray.job_submission import JobSubmissionClient

    # The head's job agent may not take submissions yet right after the node is up ("No available
    # agent"): retry; a fixed submission id makes a retry of an accepted submit harmless.
    job_id = f"raysubmit_multinode{os.getpid()}"
    for _ in range(12):
        submit = cluster.ray(
            "job", "submit", f"--address={cluster.url}", "--working-dir", str(ROOT), f"--submission-id={job_id}",
            "--no-wait", "--", sys.executable, "jobs/train_gnn.py", f"dataset={data}", f"output_dir={out}",
            "num_workers=2", "epochs=40", "grid=false", "val_fraction=0", "max_failures=2")
        if submit.returncode == 0 or "already exists" in submit.stderr + submit.stdout:
            break
        time.sleep(10)
    assert submit.returncode == 0 or "already exists" in submit.stderr + submit.stdout, submit.stderr[-3000:]

    client = JobSubmissionClient(cluster.url)

    def status() -> str:
        try:
            return str(client.get_job_status(job_id))
        except RuntimeError:  # 404 for a moment after an accepted submit: the record is not visible yet
            return "PENDING"

    checkpoints = lambda: list(out.glob("ray/*/checkpoint_*"))  # noqa: E731
    _wait(lambda: checkpoints() or "FAILED" in status(), 600, "the first checkpoint", step=0.5)
    assert checkpoints(), status()
    cluster.kill("node2")
    cluster.join("node3")  # the replacement node, as an autoscaler would start it
    _wait(lambda: any(s in status() for s in ("SUCCEEDED", "FAILED", "STOPPED")), 900, "the job to end", step=2)
    assert "SUCCEEDED" in status(), client.get_job_logs(job_id)[-4000:]

    metrics = json.loads((out / "metrics.json").read_text())
    first, last = metrics["worker_nodes"][0], metrics["worker_nodes"][-1]
    assert len(set(first)) == 2, metrics["worker_nodes"]  # the first group spanned both nodes
    assert len(metrics["worker_nodes"]) >= 2 and set(last) != set(first)  # restarted on the new node
    assert metrics["resumed_from_epoch"] is not None and metrics["resumed_from_epoch"] >= 1
    assert metrics["epochs_run"] == 40 and 0 <= metrics["gnn_test_accuracy"] <= 1
