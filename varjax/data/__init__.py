"""CIFAR-10 on the host (``sources``, ``cifar10``) and on the device (``augment``, ``label_noise``).

Example:
  >>> dataset = load(config.data)                      # doctest: +SKIP
  >>> num_train, num_test = split_sizes(config.data)   # without the data
"""

from varjax.data.cifar10 import Dataset
from varjax.data.cifar10 import num_classes
from varjax.data.cifar10 import split_sizes
from varjax.data.sources import DATA_DIR_ENV
from varjax.data.sources import load
from varjax.data.sources import load_extra_test_set

__all__ = ['Dataset', 'DATA_DIR_ENV', 'load', 'load_extra_test_set', 'num_classes', 'split_sizes']
