r"""Which source of randomness makes the variance (the study's App. D), one run per source.

Each point lets one source differ between seeds and shares the others:
init (weights), order (data order), augment (crops and flips; keyed by image,
so 'order' alone changes no image's augmentation), and all three. At long
training the study found each source alone gives nearly the full variance.
The sources change the program's keys, so each point is its own run under
``varjax.runner``.

Variants:
  cpu    the narrow CPU model, 16 seeds x 8 epochs per point.
  smoke  2 tiny points for tests.

Example:
  python -m varjax.runner --sweep=experiments/randomness_sweep.py:cpu --workdir=/tmp/sources
  python -m varjax.report --workdir=/tmp/sources
"""

from varjax.config import files as config_files
SOURCES = {'init': ('init',), 'order': ('order',), 'augment': ('augment',),
           'all': ('init', 'order', 'augment')}


def get_sweep(arg=None):
  """Returns [{'name', 'values', 'config'}] for variant ``arg`` ('cpu' | 'smoke')."""
  variant = config_files.pick_variant(__file__, arg, ('cpu', 'smoke'), default='cpu')
  names = tuple(SOURCES) if variant == 'cpu' else ('order', 'all')
  points = []
  for name in names:
    c = config_files.sibling_config(__file__, 'airbench.py', variant)
    c.name = 'randomness_sweep'
    c.randomness.vary = SOURCES[name]
    if variant == 'cpu':
      c.train.epochs = 8
    points.append({'name': f'vary_{name}', 'values': {'varies': name}, 'config': c})
  return points
