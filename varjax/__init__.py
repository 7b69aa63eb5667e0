"""varjax: train and study ensembles of small CIFAR-10 networks in one jitted step."""

__version__ = "0.1.0"
