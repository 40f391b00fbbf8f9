"""InstanceFCN: instance-sensitive fully convolutional networks for segment proposals."""

__version__ = "0.1.0"
