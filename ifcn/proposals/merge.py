"""The candidates.h5 shards of one inference job into one file.

Shards are contiguous chunks of the sorted image ids, so they merge by concatenation in image-id
order; they must come from the same inference run (every attribute but ``shard`` equal) and hold
disjoint images. A partial merge (``shard`` "1,3/5") is merged with the missing shards as the
shards it holds, into the file a merge of all of them gives.

The command `ifcn merge` is `ifcn.commands.merge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ifcn.errors import IfcnError
from ifcn.progress import progress_bar
from ifcn.proposals.candidates import SHARED_ATTRS, Candidates, CandidateWriter
from ifcn.proposals.sharding import parse_shards


def merge_candidates(
    inputs: Sequence[str | Path], out: str | Path, allow_partial: bool = False
) -> int:
    """Concatenate the shards of one inference job into one file; returns the number of images.

    The shards must share every attribute but `shard`, hold disjoint images and (unless
    `allow_partial`) be all n shards of the job.
    """
    if not inputs:
        raise IfcnError("no input files to merge")
    readers: list[Candidates] = []
    try:
        for path in inputs:
            readers.append(Candidates(path))
        first = readers[0]
        reference = {key: first.attrs.get(key) for key in SHARED_ATTRS}
        parsed: list[tuple[list[int], int, Candidates]] = []
        for reader in readers:
            attrs = reader.attrs
            for key in SHARED_ATTRS:
                if attrs.get(key) != reference[key]:
                    raise IfcnError(
                        f"attribute {key!r} differs from that of {first.path} "
                        "(shards of different inference runs)",
                        reader.path,
                    )
            try:
                parsed.append((*parse_shards(str(attrs.get("shard"))), reader))
            except ValueError as exc:
                raise IfcnError(str(exc), reader.path) from None
        counts = sorted({count for _, count, _ in parsed})
        if len(counts) > 1:
            raise IfcnError(f"inputs are shards of different splits: n = {counts}", Path(out))
        count = counts[0]
        shards: dict[int, Path] = {}
        for indices, _, reader in parsed:
            for index in indices:
                if index in shards:
                    raise IfcnError(
                        f"shard {index}/{count} is also given as {shards[index]}", reader.path
                    )
                shards[index] = reader.path
        missing = sorted(set(range(count)) - set(shards))
        if missing and not allow_partial:
            raise IfcnError(f"shards {missing} of {count} are missing", Path(out))
        seen: dict[int, Path] = {}
        rows: list[tuple[int, int, int]] = []  # (image id, input, row in it)
        for k, reader in enumerate(readers):
            for n, image_id in enumerate(reader.image_ids.tolist()):
                if image_id in seen:
                    raise IfcnError(
                        f"image {image_id} is also in {seen[image_id]} (overlapping shards)",
                        reader.path,
                    )
                seen[image_id] = reader.path
                rows.append((image_id, k, n))
        rows.sort()  # image-id order, as one inference over all the images writes them
        # the attributes of the input holding the first shard, whatever the order given
        source = min(parsed, key=lambda p: p[0][0])[2]
        attrs = {key: value for key, value in source.attrs.items()
                 if key not in ("format", "format_version", "objectness", "storage")}  # fmt: skip
        attrs["shard"] = "0/1" if not missing else ",".join(map(str, sorted(shards))) + f"/{count}"
        with CandidateWriter(out, attrs) as writer:
            for _, k, n in progress_bar(rows, desc="merge", unit="image", dynamic_ncols=True):
                writer.add(readers[k].read(n))  # read and written, so checked twice
        return len(seen)
    finally:
        for reader in readers:
            reader.close()
