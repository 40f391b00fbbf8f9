"""proposals.h5 to a COCO results JSON, for tools that read only that (DESIGN §7).

Each proposal becomes `{"image_id", "category_id", "segmentation": {"size", "counts"}, "score"}`
with the RLE counts as str. There is no `bbox` key on purpose: with one, `COCO.loadRes` would
take the box path and overwrite each result's area with the box's. The JSON is streamed image by
image into a temporary file that is renamed when complete.

The command `ifcn export` is `ifcn.commands.export`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ifcn.atomic import atomic_path, write_error
from ifcn.errors import IfcnError
from ifcn.proposals.format import Proposals

MAX_CATEGORY_ID = 2**63 - 1


def export_results(
    proposals_path: str | Path,
    out: str | Path,
    category_id: int = 1,
    top_n: int | None = None,
) -> int:
    """Write the COCO results JSON of the proposals (best `top_n` per image); return the count."""
    out = Path(out)
    if top_n is not None and top_n < 1:
        raise IfcnError("--top-n must be positive")
    if not 1 <= category_id <= MAX_CATEGORY_ID:
        raise IfcnError(
            f"--category-id {category_id}: a COCO category id is from 1 to {MAX_CATEGORY_ID} "
            "(a 64-bit integer, as the GT's ids that evaluation matches it with)"
        )
    count = 0
    with Proposals(proposals_path) as proposals, atomic_path(out) as tmp:
        try:
            with open(tmp, "w") as f:
                f.write("[")
                for image in proposals.iter_images(top_n=top_n):
                    size = [image.height, image.width]
                    entries = [
                        {
                            "image_id": image.image_id,
                            "category_id": category_id,
                            "segmentation": {"size": size, "counts": counts.decode("ascii")},
                            "score": score,
                        }
                        for counts, score in zip(image.rles, image.scores.tolist(), strict=True)
                    ]
                    if entries:
                        f.write(",\n" if count else "\n")
                        f.write(",\n".join(map(json.dumps, entries)))
                        count += len(entries)
                f.write("\n]\n")
        except OSError as exc:  # the reader turns its own errors into IfcnError
            raise write_error(exc, out) from None
    return count
