"""The segment job on a Ray cluster: the same outputs as the local job, over many machines.

    >>> from segen_edge.ray import connect, segment_dataset
    >>> connect("auto")                                       # or "ray://HOST:10001"
    >>> ds = segment_dataset("unet-pets", ["/mnt/shared/photos"], "/mnt/shared/masks", actors=8)
    >>> ds.write_parquet("/mnt/shared/masks-results")         # one row per input image

How a run goes:

- The driver lists the inputs (local paths, folders and globs as the local job does; URIs
  of any pyarrow file system, `s3://`, `gs://`, `file://`, through that file system, see
  list_uri) and plans every output with the local job's plan (plan.py): the
  same names, the mirrored tree, the same refusals before any work, the same skip and
  `--overwrite` rules from the folder's manifest (manifest.py). Skipped and failed inputs
  are settled there; the rest go into Ray's object store as small Arrow blocks.
- `map_batches` sends batches of rows to a pool of actors. Each actor opens the model once
  (from its bytes, put in the object store once, or from the bundled file that travels
  with the package) with intra-op threads equal to its CPUs, then for each batch decodes
  its images (in the actor; a URI's bytes read through its file system), runs them
  through `Segmenter.segment_arrays` (which resizes each image to the model's size, or
  tiles it, so images of different sizes share a batch), writes the outputs atomically
  and appends claim/done lines to the folder's manifest (one O_APPEND write per line, so
  actors on many machines share it on a shared folder). A bad image is a failed row,
  never a failed job.
- Rows come back as they finish (not in input order): input, status, outputs, size, class
  fractions, error. `iter_segment_ray` turns them into `jobs.ImageResult`s and writes the
  run's summary (JSONL, or Parquet when the name ends in .parquet).

Images exist only inside the actors, one batch at a time; only small rows travel back.
The driver holds the plan (a few hundred bytes an input, as the local job does) and block
references, never images.

The package's modules: listing.py (paths, URIs and the planned rows), actors.py (the model
shipment and SegmentActor), summary.py (the run's summary) and driver.py (the public calls).
"""

from __future__ import annotations

from .actors import ModelShipment, SegmentActor, open_segmenter, segment_rows
from .driver import RayRun, connect, iter_segment_ray, prepare, segment_dataset, to_image_result
from .listing import (
    BLOCK_ROWS,
    UriSource,
    is_uri,
    list_uri,
    local_path,
    open_filesystem,
    plan_inputs,
    result_schema,
)
from .summary import SUMMARY_NAME, SummaryWriter, read_summary

__all__ = [
    "BLOCK_ROWS",
    "SUMMARY_NAME",
    "ModelShipment",
    "RayRun",
    "SegmentActor",
    "SummaryWriter",
    "UriSource",
    "connect",
    "is_uri",
    "iter_segment_ray",
    "list_uri",
    "local_path",
    "open_filesystem",
    "open_segmenter",
    "plan_inputs",
    "prepare",
    "read_summary",
    "result_schema",
    "segment_dataset",
    "segment_rows",
    "to_image_result",
]
