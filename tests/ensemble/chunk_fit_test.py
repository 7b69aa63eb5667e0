"""Chunk sizing: the activation formula counted by hand, and the search over compiled sizes."""

import pytest

from varjax.ensemble import chunk_fit as memory_plan
def test_activation_formula_counts_airbench94_maps():
  per_model = memory_plan.activation_bytes_per_model((64, 256, 256), 1024)
  # airbench94's maps at batch 1024, counted by hand: 31x31x24 whitening output, then
  # 3 tensors of each group's pre-pool map and 4 of its pooled map, x2, float32.
  floats = (961 * 24 + 3 * 961 * 64 + 4 * 225 * 64 + 3 * 225 * 256 + 4 * 49 * 256
            + 3 * 49 * 256 + 4 * 9 * 256)
  assert per_model == 2 * floats * 1024 * 4
  assert memory_plan.default_models_per_chunk(256, 'gpu', 80e9, per_model) == 8  # 9 fit
  assert memory_plan.default_models_per_chunk(60, 'gpu', 80e9, per_model) == 6
  assert memory_plan.default_models_per_chunk(256, 'gpu', None, per_model) == 16
  assert memory_plan.default_models_per_chunk(16, 'cpu', 80e9, per_model) == 4
  assert memory_plan.default_models_per_chunk(7, 'cpu') == 1


def linear_program(fixed, per_model, refuse_above=None):
  """A fake compiler: fixed bytes plus per_model bytes of temporaries per model."""
  calls = []

  def measure(chunk):
    calls.append(chunk)
    if refuse_above is not None and chunk > refuse_above:
      return None
    return fixed, per_model * chunk

  return measure, calls


@pytest.mark.parametrize('guess', [1, 4, 8, 32, 64])
def test_fit_finds_the_largest_fitting_divisor_from_any_guess(guess):
  # 100 bytes budgeted of 1000 x 0.9; fixed 100 -> (900 - 100) / 30 = 26.7 models fit.
  measure, calls = linear_program(100, 30)
  chunk, trials = memory_plan.fit_models_per_chunk(64, guess, 1000, measure)
  assert chunk == 16  # the largest divisor of 64 not above 26
  assert len(calls) <= 3 and set(trials) == set(calls)


def test_fit_steps_down_when_the_compiler_refuses():
  measure, calls = linear_program(100, 30, refuse_above=2)
  chunk, _ = memory_plan.fit_models_per_chunk(64, 16, 1000, measure)
  assert chunk == 2 and calls[0] == 16


def test_fit_returns_one_when_nothing_fits():
  measure, _ = linear_program(2000, 1)
  chunk, trials = memory_plan.fit_models_per_chunk(8, 8, 1000, measure)
  assert chunk == 1 and 1 in trials


def test_fit_respects_the_compile_budget():
  # Temporaries superlinear in the chunk: the linear prediction overshoots each time.
  calls = []

  def measure(chunk):
    calls.append(chunk)
    return 0, 10 * chunk * chunk

  chunk, _ = memory_plan.fit_models_per_chunk(64, 1, 1000, measure, max_compiles=4)
  assert calls == [1, 64, 8, 16] and chunk == 8  # 8 fits (640 bytes), 16 does not
