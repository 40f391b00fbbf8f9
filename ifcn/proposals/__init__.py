"""The proposal chain, grouped by the files it makes (paper §3.3 "Inference", DESIGN §6–7).

images → `infer` (network at every scale, `inference`; one job per shard, `sharding`) →
candidates.h5 (`candidates`) → `merge` → `nms` → proposals.h5 (`format`, the public format)
→ `export` (COCO results JSON). Read proposals in your own code with
``from ifcn.proposals.format import Proposals``.
"""
