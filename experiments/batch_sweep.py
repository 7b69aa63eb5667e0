r"""Sharpness, margins and accuracy against batch size (Lengyel et al. 2021), one run per batch size.

Lengyel, Hanjalic, Kotsia, "On flat minima, large margins and
generalizability": large-batch training generalises worse because in the same
number of epochs it takes fewer steps and grows smaller margins, not because it
finds sharper minima. Batch size changes the program, so each point is its own
run under ``varjax.runner``; the points compare batch sizes at equal epochs
and at equal steps (the steps of the middle batch at the base epochs), and
every model gets its top Hessian eigenvalue and trace (varjax/measures/sharpness.py)
beside its margins and accuracy. ``opt.lr`` is in airbench's decoupled units
(per 1024 examples, summed loss), so the step grows with the batch (the linear
scaling rule) and equal epochs see equal amounts of "learning rate x data".

Variants:
  (none)  airbench94, batch 256 / 1024 / 4096 at 9.9 epochs and at the steps of
          1024 x 9.9 epochs, 32 seeds; an accelerator host.
  cpu     narrow models on 2,048 images, batch 32 / 128 / 512 at 4 epochs and
          at 64 steps, 8 seeds; ~20 minutes on 2 cores.
  smoke   2 tiny points for tests.

Example:
  python -m varjax.runner --sweep=experiments/batch_sweep.py:cpu --workdir=/tmp/batch
  python -m varjax.report --workdir=/tmp/batch
"""

import math

from varjax.config import files as config_files
SETTINGS = {  # variant: (batch sizes, the middle one, base epochs, seeds, training images)
    'default': ((256, 1024, 4096), 1024, 9.9, 32, None),
    'cpu': ((32, 128, 512), 128, 4.0, 8, 2048),
    'smoke': ((64, 128), 128, 1.0, 2, None),
}


def get_sweep(arg=None):
  """Returns [{'name', 'values', 'config'}] for variant ``arg`` ('' | 'cpu' | 'smoke')."""
  variant = config_files.pick_variant(__file__, arg, tuple(SETTINGS))
  batches, middle, epochs, seeds, train_size = SETTINGS[variant]

  def config(batch, run_epochs):
    c = config_files.sibling_config(__file__, 'airbench.py',
                                    '' if variant == 'default' else variant)
    c.name = 'batch_sweep'
    c.num_models = seeds
    c.data.train_size = train_size or c.data.train_size
    c.train.batch_size = batch
    c.train.epochs = run_epochs
    c.train.whiten_bias_epochs = min(c.train.whiten_bias_epochs, run_epochs)
    c.lenses.sharpness = True
    if variant == 'cpu':
      c.opt.lr = 23.0  # 4 epochs: between the 2-epoch cpu default (46) and airbench (11.5)
      c.lenses.sharpness_images = 256
      c.lenses.power_iterations = 15
      c.lenses.hutchinson_probes = 8
    if variant == 'smoke':
      c.lenses.sharpness_images = 32
      c.lenses.power_iterations = 2
      c.lenses.hutchinson_probes = 2
    return c

  num_train = (train_size or config(middle, epochs).data.train_size or 50_000)
  steps = math.ceil(epochs * (num_train // middle))  # the middle batch's steps at `epochs`
  points = []
  for batch in batches:
    points.append({'name': f'b{batch}_equal_epochs',
                   'values': {'batch_size': batch, 'epochs': epochs, 'schedule': 'equal epochs'},
                   'config': config(batch, epochs)})
  for batch in batches:
    if batch == middle:
      continue  # the equal-epochs point already has these steps
    run_epochs = steps / (num_train // batch)
    points.append({'name': f'b{batch}_equal_steps',
                   'values': {'batch_size': batch, 'epochs': run_epochs,
                              'schedule': 'equal steps'},
                   'config': config(batch, run_epochs)})
  return points
