"""Datasets into the one data contract: a COCO instances JSON and an image folder (DESIGN §3).

`synth` generates the synthetic default; `download`, `convert` (readers in `formats/`) and
`check` bring real datasets in; `cocojson` reads, checks and writes the contract; `image`
decodes, resizes and normalises images for the network; `coco` and `crops` serve training
samples.
"""
