"""The downstream classifier of the paper's Table 4 (MNC stage 3, DESIGN §9).

Two-step training: InstanceFCN proposes class-agnostic segments (proposals.h5), then this
network labels them. `model` is the network (RoIAlign + RoI masking + fc + softmax), `targets`
labels and samples the training RoIs, `train` / `predict` / `evaluate` are the three
`ifcn classify` stages: proposals → COCO segm results → mAP@0.5 and mAP@0.7.
"""
