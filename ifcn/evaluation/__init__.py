"""Scoring proposals against ground truth (paper §4, DESIGN §8).

`ground_truth` reads the COCO instances JSON, `readers` the proposals (proposals.h5 or a COCO
results JSON), `ar` computes mask IoUs and AR@N, `recall` holds the matching that reproduces
pycocotools' COCOeval (useCats=0); `evaluate` is the `ifcn evaluate` command.
"""
