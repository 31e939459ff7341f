"""A tiny, hand-made contract dataset used by unit tests across the package."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from copl_ray.data import write_dataset


def tiny_tables() -> dict:
    prompts = pa.table({"prompt_id": ["p0", "p1", "p2"], "text": ["q0", "q1", "q2"]})
    responses = pa.table(
        {
            "response_id": ["r0a", "r0b", "r1a", "r1b", "r2a", "r2b"],
            "prompt_id": ["p0", "p0", "p1", "p1", "p2", "p2"],
            "text": ["short", "a much longer answer", "ok", "a longer one", "no", "yes indeed"],
        }
    )
    users = pa.table(
        {
            "user_id": ["alice", "bob", "carol", "dave", "erin", "frank"],
            "split": ["seen", "seen", "seen", "seen", "unseen", "unseen"],
            "group": ["short", "short", "long", "long", "short", "long"],
        }
    )

    def ann(rows):
        return pa.table(
            {
                "user_id": [r[0] for r in rows],
                "prompt_id": [r[1] for r in rows],
                "chosen_id": [r[2] for r in rows],
                "rejected_id": [r[3] for r in rows],
                "kind": [r[4] for r in rows],
            }
        )

    c = "controversial"
    annotations = {
        "train": ann(
            [
                ("alice", "p0", "r0a", "r0b", c), ("alice", "p1", "r1a", "r1b", c),
                ("bob", "p0", "r0a", "r0b", c), ("bob", "p2", "r2a", "r2b", c),
                ("carol", "p0", "r0b", "r0a", c), ("carol", "p1", "r1b", "r1a", c),
                ("dave", "p1", "r1b", "r1a", c), ("dave", "p2", "r2b", "r2a", c),
            ]
        ),
        "test": ann([("alice", "p2", "r2a", "r2b", c), ("carol", "p2", "r2b", "r2a", c)]),
        "fewshot": ann([("erin", "p0", "r0a", "r0b", c), ("frank", "p0", "r0b", "r0a", c)]),
        "test_unseen": ann([("erin", "p1", "r1a", "r1b", c), ("frank", "p1", "r1b", "r1a", c)]),
    }
    return {"prompts": prompts, "responses": responses, "users": users, "annotations": annotations}


def write_tiny_dataset(root: Path) -> Path:
    t = tiny_tables()
    write_dataset(root, t["prompts"], t["responses"], t["users"], t["annotations"])
    return root
