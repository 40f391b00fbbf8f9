"""Datasets into the one data contract: a COCO instances JSON and an image folder (DESIGN §3).

`synth` generates the synthetic default; `download`, `convert` (readers in `formats/`) and
`check` bring real datasets in. The contract's files: `instances` (the instances JSON's
validator and ground-truth loader), `results` (the results JSON's validator), `masks`
(segmentations into RLE, label maps, size classes), `rle` (COCO RLE text, encoded, decoded and
checked, for JSON and proposals.h5 alike), `jsonio` (reading and writing JSON). `image` decodes,
resizes and normalises images for the network; `dataset` and `crops` serve training samples.
"""
