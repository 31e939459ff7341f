"""Dataset layer: the CONTRACT section 1 directory of Parquet files, synthetic generators, importers."""

from copl_ray.data.dataset import (
    ANNOTATION_SPLITS,
    DatasetError,
    annotation_files,
    append_annotations,
    read_annotations,
    read_table,
    validate_dataset,
    write_dataset,
    write_table,
)

__all__ = [
    "ANNOTATION_SPLITS",
    "DatasetError",
    "annotation_files",
    "append_annotations",
    "read_annotations",
    "read_table",
    "validate_dataset",
    "write_dataset",
    "write_table",
]
