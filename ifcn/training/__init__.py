"""Training: the loop both trainers share (engine) and its hooks, the sampler, the log, the run
folder, checkpoints, DDP plumbing, and the InstanceFCN trainer (the classifier's lives in
`ifcn.classify.training`)."""
