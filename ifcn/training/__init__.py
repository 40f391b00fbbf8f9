"""Training: the loop both trainers share, its sampler, log and checkpoints, DDP plumbing, and
the InstanceFCN trainer (the classifier's lives in `ifcn.classify.training`)."""
