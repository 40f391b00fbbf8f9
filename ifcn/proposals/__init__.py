"""The proposal chain, grouped by the files it makes (paper §3.3 "Inference", DESIGN §6–7).

images → `infer` (the network at every scale, `inference`; one job per shard, `sharding`) →
candidates.h5 (`candidates`: score maps and ranked windows) → `merge` → `nms` (per image:
`suppression`, with the masks resized onto the image by `resample` and encoded by
`ifcn.data.rle`) → proposals.h5 (`format`, the public format) → `export` (COCO results JSON).
Both HDF5 files are the per-image table of `table`. Read proposals in your own code with
``from ifcn.proposals.format import Proposals``.
"""
