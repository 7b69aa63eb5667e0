"""A training run's recipe: the static facts that shape the compiled step.

Sizes, step counts, the schedule's shape, augmentation, lookahead and TTA,
taken from the config once; the step functions (training/step.py) read them
as Python constants, so they are baked into the compiled programs.

Example:
  >>> recipe = Recipe.from_config(config, num_train=40_000)   # doctest: +SKIP
  >>> recipe.total_steps, recipe.steps_per_epoch               # doctest: +SKIP
  (387, 39)
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The static facts of a training run that shape the compiled step (sizes, schedule, augmentation)."""
  num_train: int
  batch_size: int
  steps_per_epoch: int
  total_steps: int
  whiten_bias_steps: int
  translate: int
  flip: str
  momentum: float
  bias_lr_scale: float
  warmup_frac: float
  lr_start_factor: float
  lr_end_factor: float
  lookahead: bool
  lookahead_every: int
  lookahead_decay: float
  lookahead_power: float
  tta_level: int
  # Whether any model trains on corrupted labels (label_noise.py); static, so a
  # run without noise compiles exactly the program it did before.
  label_noise: bool = False
  # How the batch is cropped and flipped (data/augment.py's train_batch; the same
  # pixels either way), resolved per platform by the ensemble.
  crop: str = 'gather'

  @classmethod
  def from_config(cls, config, num_train):
    batch = config.train.batch_size
    steps_per_epoch = num_train // batch
    if steps_per_epoch < 1:
      raise ValueError(f'train.batch_size={batch} exceeds the {num_train} training images.')
    return cls(
        num_train=num_train, batch_size=batch, steps_per_epoch=steps_per_epoch,
        total_steps=max(1, math.ceil(config.train.epochs * steps_per_epoch)),
        whiten_bias_steps=math.ceil(config.train.whiten_bias_epochs * steps_per_epoch),
        translate=config.aug.translate, flip=config.aug.flip,
        momentum=config.opt.momentum, bias_lr_scale=config.opt.bias_lr_scale,
        warmup_frac=config.opt.warmup_frac, lr_start_factor=config.opt.lr_start_factor,
        lr_end_factor=config.opt.lr_end_factor, lookahead=config.lookahead.enabled,
        lookahead_every=config.lookahead.every_steps, lookahead_decay=config.lookahead.decay,
        lookahead_power=config.lookahead.power, tta_level=config.eval.tta_level,
        label_noise=config.train.label_noise > 0 or any(f > 0 for f in config.sweep.label_noise))

  @property
  def num_epochs(self):
    return math.ceil(self.total_steps / self.steps_per_epoch)

  def epochs(self):
    """Yields (epoch, range of global steps in it); the last epoch may be partial."""
    for epoch in range(self.num_epochs):
      first = epoch * self.steps_per_epoch
      yield epoch, range(first, min(first + self.steps_per_epoch, self.total_steps))
