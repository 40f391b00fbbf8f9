"""The paper's published figures, for reference rows labelled "paper" in reports — never results.

Restated from ../shared/paper-tables.md (InstanceFCN, ECCV 2016); AR in percent.
"""

TABLE1_K = {  # PASCAL VOC 2012 val
    "k=3": (38.3, 49.2, 52.1),
    "k=5": (38.9, 49.7, 52.6),
    "k=7": (38.8, 49.7, 52.7),
}
TABLE2_HEAD = {  # PASCAL VOC 2012 val
    "deepmask-crop": (31.2, 42.9, 47.0),
    "instancefcn-crop": (37.4, 48.4, 51.4),
    "instancefcn-full": (38.9, 49.7, 52.6),
}
TABLE3_VOC = {"InstanceFCN (paper, VOC 2012 val, VGG-16)": (38.9, 49.7, 52.6)}
TABLE5_COCO = {"InstanceFCN (paper, first 5k COCO val)": (16.6, 31.7, 39.2)}
TABLE4_MAP = {"MNC classifier on InstanceFCN proposals (paper, VOC 2012 val)": (61.5, 43.0)}
# Mask-prediction parameters as the paper states them (§4, Table 2's text); the report counts
# its own from the built modules.
MASK_PARAMS = {
    "~DeepMask fc layers": "53M",
    "InstanceFCN last conv (k = 5)": "0.1M (1/500)",
}
