"""The classifier's settings as people read them; torch-free, so the workflow can import it."""

from __future__ import annotations


def mask_grid_size(pool_size: int) -> int:
    """Side of the grid a proposal's mask is resized to: twice the fc grid (MNC's 14 for 7)."""
    return 2 * pool_size


def classifier_summary(config: dict) -> str:
    """One line naming the classifier a config trains (for logs and the workflow's messages)."""
    model_cfg, cfg = config["model"], config["classify"]
    fc_init = "ImageNet fc6/fc7" if cfg.get("pretrained_fc") else "Kaiming init"
    scales = "/".join(str(s) for s in cfg["scales"])
    grid = mask_grid_size(cfg["pool_size"])
    return (
        f"classifier: {model_cfg['backbone']} backbone, 2 paths x 2 fc {cfg['fc_dim']}-d "
        f"({fc_init}), RoI {grid}x{grid} -> {cfg['pool_size']}x{cfg['pool_size']}, shorter side"
        f" {scales} px (test {cfg['test_scale']}, max {cfg['max_size']}), {cfg['iters']} "
        f"iterations at lr {cfg['lr']}, {cfg['rois_per_image']} RoIs/image, top {cfg['top_n']}"
        f" proposals, AP {cfg.get('ap', 'coco')}"
    )
