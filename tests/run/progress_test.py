"""The training progress bar: when it shows, how often it redraws, what it says."""

import io
import re

import numpy as np

from varjax.run import progress
class Terminal(io.StringIO):
  def isatty(self):
    return True


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_shown_only_on_a_terminal_outside_ci():
  assert progress.wanted(Terminal(), environ={})
  assert not progress.wanted(io.StringIO(), environ={})  # a log file, a pipe
  assert not progress.wanted(Terminal(), environ={'CI': 'true'})
  assert progress.wanted(Terminal(), environ={'CI': 'false'})
  off = progress.Progress(10, 8, stream=io.StringIO())
  off.update(10)
  off.close()
  assert not off.enabled


def test_redraws_every_interval_with_step_rate_and_eta():
  """20 steps at one step per second from step 4 (resumed), redrawn every 5 s."""
  screen, clock = Terminal(), Clock()
  p = progress.Progress(total_steps=24, images_per_step=16 * 128, done=4, desc='point 2/3',
                        interval=5.0, stream=screen, enable=True, clock=clock)
  p._bar._time = clock  # tqdm's own clock, as tqdm's tests set it
  p._bar.start_t = p._bar.last_print_t = clock()
  redrawn = []
  for step in range(5, 25):
    clock.now += 1.0
    metrics = np.float32(step)
    before = screen.getvalue()
    p.update(step, wait_for=metrics)
    if screen.getvalue() != before:
      redrawn.append(step)
  p.close()
  assert redrawn == [9, 14, 19, 24]  # every 5 s, and the last step
  frames = [f for f in re.split(r'[\r\n]', screen.getvalue()) if 'step' in f]
  assert any('step 14/24' in f for f in frames)
  # 1 step/s of 16 models x batch 128; 10 steps left at step 14 -> ETA 10 s.
  (frame,) = [f for f in frames if 'step 14/24' in f]
  assert frame.startswith('point 2/3:') and '2,048 model-images/s' in frame
  assert '00:10<00:10' in frame
  assert 'step 24/24' in frames[-1]


def test_paused_lets_a_log_line_through_and_redraws():
  screen, clock = Terminal(), Clock()
  p = progress.Progress(10, 1, interval=0.0, stream=screen, enable=True, clock=clock)
  p.update(3)
  with p.paused():
    screen.write('epoch 1/2 done\n')
  p.close()
  text = screen.getvalue()
  assert 'epoch 1/2 done\n' in text
  assert text.rindex('step 3/10') > text.index('epoch 1/2 done')  # redrawn after the line
