"""The target table: names, device counts, peaks with their units, and bad names."""

import pytest

from varjax.aot import targets
def test_named_targets_have_the_published_shapes():
  assert targets.get('h100').num_devices == 1
  assert targets.get('h100x8').num_devices == 8
  assert targets.get('h100x16').topology == '1x2x8'
  pod = targets.get('tpu-v5e:16x16')
  assert pod.num_devices == 256 and pod.memory_bytes == 16 * 2 ** 30
  assert targets.get('tpu-v4:2x2x2').num_devices == 8
  # SPEC's published peaks: H100 989 TFLOP/s bf16 at 3.35 TB/s, v5e 197 at 819 GB/s.
  assert targets.get('h100').peak_flops('bfloat16') == 989e12
  assert targets.get('h100').peak_flops('float32') == 495e12  # TF32
  assert targets.get('h200').bandwidth == 4.8e12 and targets.get('a100').bandwidth == 2.039e12
  assert pod.peak_flops('bfloat16') == 197e12 and pod.bandwidth == 819e9
  # JAX may use 75% of a GPU's memory by default.
  assert targets.get('h100').memory_bytes == 60 * 10 ** 9


@pytest.mark.parametrize('name', ['h300', 'tpu-v5e:4x4x4', 'tpu-v4:4x4', 'tpu-v9:2x2', 'v5e:2x2'])
def test_unknown_targets_name_the_known_ones(name):
  with pytest.raises(targets.TargetError, match='known targets: h100, h200, a100, h100x8'):
    targets.get(name)


def test_gpu_target_config_carries_the_device_facts():
  text = targets.H100.target_config()
  for field in ('core_count: 132', 'memory_bandwidth: 3350000000000',
                'cuda_compute_capability { major: 9 minor: 0 }', 'platform_name: "CUDA"'):
    assert field in text
