r"""Two classes (cat vs dog) for the variance study's binary law (Theorem 3).

For class-calibrated two-class models with independent errors the test-set
variance is err / (2n) (Jordan 2024, Theorem 3); the report compares the observed std (with
its chi-squared CI) to sqrt(err / (2n)) and to the std predicted from the
per-example accuracies.

Variants:
  cpu    the narrow CPU model on 5,000 cat/dog training images (the first of the
         40,000 before the holdout), 32 seeds x 8 epochs, evaluated on the cats
         and dogs among the last 10,000 training images.
  smoke  seconds, for tests.

Example:
  python -m varjax.main --config=experiments/binary.py:cpu --workdir=/tmp/binary
  python -m varjax.report --workdir=/tmp/binary
"""

from varjax.config import files as config_files
CAT, DOG = 3, 5


def get_config(arg=None):
  """Returns the config of variant ``arg`` ('cpu' | 'smoke')."""
  variant = config_files.pick_variant(__file__, arg, ('cpu', 'smoke'), default='cpu')
  c = config_files.sibling_config(__file__, 'airbench.py', variant)
  c.name = 'binary'
  c.variant = variant
  c.data.classes = (CAT, DOG)
  if variant == 'cpu':
    c.num_models = 32
    c.train.epochs = 8
  return c
