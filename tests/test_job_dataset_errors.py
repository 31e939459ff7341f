"""Jobs that read a dataset report a bad row as one error line naming its file, row and field,
before any model is loaded or trained (no Ray needed: the dataset is checked first)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from copl_ray.data import append_annotations
from tests.job_loader import load_job


@pytest.mark.parametrize("job, keys", [
    ("evaluate", ["reward_dir={o}/missing-reward", "gnn_dir={o}/missing-gnn"]),
    ("train_reward", ["gnn_dir={o}/missing-gnn"]),
])
def test_bad_test_row_names_file_row_and_field(tiny_dataset, tmp_path, job, keys):
    path = append_annotations(tiny_dataset, "test", pa.table({
        "user_id": ["bob"], "prompt_id": ["p1"], "chosen_id": ["r1a"], "rejected_id": ["nope"]}))
    argv = [f"dataset={tiny_dataset}", f"output_dir={tmp_path / 'out'}", *(k.format(o=tmp_path) for k in keys)]
    with pytest.raises(SystemExit) as err:
        load_job(job).main(argv)
    msg = str(err.value)
    assert msg.startswith("error: ") and str(path) in msg
    assert "row 0: field 'rejected_id' names unknown response 'nope'" in msg
