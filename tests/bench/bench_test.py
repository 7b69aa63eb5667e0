"""The benchmark's FLOP count against airbench94's published cost (SPEC §1)."""

import numpy as np

from varjax.bench import throughput as bench


def test_airbench94_training_run_costs_about_036_pflop():
  # SPEC §1: about 0.36 PFLOP per training run (50,000 images x 9.9 epochs).
  per_run = bench.train_flops_per_image((64, 256, 256)) * 50_000 * 9.9
  np.testing.assert_allclose(per_run, 0.36e15, rtol=0.05)


def test_forward_flops_of_a_tiny_net_by_hand():
  # Whitening 2x2x3->24 on 31x31, then per group conv1 at size s, pool, conv2 at s//2.
  want = (2 * 31 * 31 * 4 * 3 * 24
          + 2 * 31 * 31 * 9 * 24 * 2 + 2 * 15 * 15 * 9 * 2 * 2
          + 2 * 15 * 15 * 9 * 2 * 3 + 2 * 7 * 7 * 9 * 3 * 3
          + 2 * 7 * 7 * 9 * 3 * 4 + 2 * 3 * 3 * 9 * 4 * 4
          + 2 * 4 * 10)
  assert bench.forward_flops_per_image((2, 3, 4)) == want
  whiten = 2 * 31 * 31 * 4 * 3 * 24
  assert bench.train_flops_per_image((2, 3, 4)) == 3 * (want - whiten) + whiten


def test_frozen_whitening_bias_drops_the_first_convs_input_gradient():
  # After the bias freezes nothing needs d(loss)/d(whitening output): one forward's
  # worth of the first 3x3 conv (31x31, 24 -> widths[0]) less per image.
  live = bench.train_flops_per_image((2, 3, 4))
  frozen = bench.train_flops_per_image((2, 3, 4), whiten_bias_live=False)
  assert live - frozen == 2 * 31 * 31 * 9 * 24 * 2


def test_run_step_seconds_weights_the_two_programs_by_the_schedule():
  times = {'live_step_s': 3.0, 'frozen_step_s': 1.0}
  assert bench.run_step_seconds(times, 0.25) == 0.25 * 3.0 + 0.75 * 1.0
  assert bench.run_step_seconds({'live_step_s': 3.0, 'frozen_step_s': None}, 0.25) == 3.0
