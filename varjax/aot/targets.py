"""Accelerators varjax can compile for without having them: peaks, memory, topology.

``devices(name)`` returns compile-only devices of a named target (XLA compiles for
them on any machine; nothing runs): NVIDIA GPUs through the CUDA PJRT plugin
(``jax-cuda12-plugin``, no CUDA libraries needed) described by a
``stream_executor.GpuTargetConfigProto`` written here from the published device
facts, and Cloud TPU slices through libtpu. ``pip install -e '.[aot]'``.

Targets: ``h100``, ``h200``, ``a100`` (one GPU), ``h100x8`` (one host of 8),
``h100x16`` (two hosts of 8), and TPU slices ``tpu-v4:AxBxC``,
``tpu-v5e:AxB``, ``tpu-v6e:AxB`` (e.g. ``tpu-v5e:16x16``, 256 chips on 64 hosts).

Peaks are dense (no sparsity). ``peak_flops_f32`` is the rate float32
convolutions run at under XLA's default precision: TF32 tensor cores on NVIDIA
(Ampere and later), one bfloat16 pass on TPU.

Example:
  >>> target = get('tpu-v5e:2x2')
  >>> target.num_devices, target.memory_bytes // 2**30
  (4, 16)
  >>> mesh_devices = devices('h100')                                   # doctest: +SKIP
"""

import dataclasses
import os
import re

from varjax.errors import TargetError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Gpu:
  """The published facts of one NVIDIA GPU that XLA's GPU compiler reads."""
  name: str
  sm_count: int
  compute_capability: tuple
  clock_ghz: float  # boost clock
  memory_bytes: int
  bandwidth: float  # bytes/s of device memory
  l2_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int
  fpus_per_sm: int  # FP32 cores per SM
  peak_bf16: float  # FLOP/s, dense tensor cores
  peak_tf32: float
  source: str

  def target_config(self):
    """The device as GpuTargetConfigProto text (stream_executor/device_description.proto)."""
    major, minor = self.compute_capability
    return f'''
gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 threads_per_core_limit: 2048
  shared_memory_per_block: 49152 shared_memory_per_core: {self.shared_memory_per_sm}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  core_count: {self.sm_count} fpus_per_core: {self.fpus_per_sm}
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {int(self.bandwidth)} l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz} device_memory_size: {self.memory_bytes}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
device_description_str: "{self.name}"
'''


# Sources: NVIDIA H100 datasheet (H100 SXM5: 989 TFLOP/s bf16 and 495 TF32 dense,
# 3.35 TB/s HBM3, 80 GB; nvidia.com/en-us/data-center/h100), H200 product brief
# (same compute, 141 GB HBM3e at 4.8 TB/s; nvidia.com/en-us/data-center/h200),
# A100 datasheet (SXM4 80 GB: 312 bf16 / 156 TF32, 2,039 GB/s;
# nvidia.com/en-us/data-center/a100); SM counts, L2 sizes, clocks and shared
# memory per SM: NVIDIA's Hopper and Ampere architecture whitepapers and the
# CUDA C++ Programming Guide's compute-capability tables (sm_90: 228 KB per
# SM, 227 KB per block opt-in; sm_80: 164 KB, 163 KB).
H100 = Gpu('NVIDIA H100 80GB HBM3', 132, (9, 0), 1.98, 80 * 10 ** 9, 3.35e12, 50 * 2 ** 20,
           228 * 1024, 227 * 1024, 128, 989e12, 495e12, 'NVIDIA H100 datasheet (SXM5)')
H200 = Gpu('NVIDIA H200 141GB HBM3e', 132, (9, 0), 1.98, 141 * 10 ** 9, 4.8e12, 50 * 2 ** 20,
           228 * 1024, 227 * 1024, 128, 989e12, 495e12, 'NVIDIA H200 product brief (SXM)')
A100 = Gpu('NVIDIA A100-SXM4-80GB', 108, (8, 0), 1.41, 80 * 10 ** 9, 2.039e12, 40 * 2 ** 20,
           164 * 1024, 163 * 1024, 64, 312e12, 156e12, 'NVIDIA A100 datasheet (SXM4 80GB)')


@dataclasses.dataclass(frozen=True)
class Tpu:
  """One Cloud TPU generation, per chip (one JAX device per chip)."""
  generation: str  # libtpu's topology prefix
  peak_bf16: float
  bandwidth: float
  memory_bytes: int
  chips_per_host: tuple  # host bounds of a multi-host slice
  dims: int  # 2-D (AxB) or 3-D (AxBxC) topology names
  chip_config: str
  source: str


# Sources: Google Cloud TPU system architecture pages, cloud.google.com/tpu/docs/
# v4 (275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s per chip, 4 chips per host,
# one device per chip with megacore), v5e (197 TFLOP/s bf16, 16 GB HBM2 at
# 819 GB/s, 4 chips per host in multi-host slices up to 16x16) and v6e
# (Trillium: 918 TFLOP/s bf16, 32 GB HBM at 1,640 GB/s, 4 chips per host).
TPUS = {
    'v4': Tpu('v4', 275e12, 1.2e12, 32 * GIB, (2, 2, 1), 3, 'megacore',
              'cloud.google.com/tpu/docs/v4'),
    'v5e': Tpu('v5e', 197e12, 819e9, 16 * GIB, (2, 2, 1), 2, 'default',
               'cloud.google.com/tpu/docs/v5e'),
    'v6e': Tpu('v6e', 918e12, 1.64e12, 32 * GIB, (2, 2, 1), 2, 'default',
               'cloud.google.com/tpu/docs/v6e'),
}
# JAX's default share of GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION=.75).
GPU_MEMORY_FRACTION = 0.75
# name -> (GPU, topology: slices x hosts x GPUs per host)
GPUS = {'h100': (H100, '1x1x1'), 'h200': (H200, '1x1x1'), 'a100': (A100, '1x1x1'),
        'h100x8': (H100, '1x1x8'), 'h100x16': (H100, '1x2x8')}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # 'cuda' | 'tpu'
  device: str
  num_devices: int
  topology: str
  peak_flops_bf16: float  # per device
  peak_flops_f32: float
  bandwidth: float  # bytes/s per device
  memory_bytes: int  # what a JAX program may use per device
  source: str

  def peak_flops(self, compute_dtype):
    return self.peak_flops_bf16 if compute_dtype == 'bfloat16' else self.peak_flops_f32


def known_targets():
  return tuple(GPUS) + tuple(
      f'tpu-{g}:' + 'x'.join('A' * t.dims).replace('A', 'N') for g, t in TPUS.items())


def get(name):
  """The Target called ``name``; TargetError naming the known targets for any other."""
  if name in GPUS:
    gpu, topology = GPUS[name]
    count = 1
    for n in topology.split('x'):
      count *= int(n)
    return Target(name, 'cuda', gpu.name, count, topology, gpu.peak_bf16, gpu.peak_tf32,
                  gpu.bandwidth, int(GPU_MEMORY_FRACTION * gpu.memory_bytes), gpu.source)
  match = re.fullmatch(r'tpu-(v[0-9a-z]+):([0-9]+(?:x[0-9]+)*)', name)
  tpu = TPUS.get(match.group(1)) if match else None
  if tpu is None or len(match.group(2).split('x')) != tpu.dims:
    raise TargetError(f'Unknown target {name!r}; known targets: {", ".join(known_targets())} '
                     '(N: chips along each axis, e.g. tpu-v5e:16x16).')
  count = 1
  for n in match.group(2).split('x'):
    count *= int(n)
  return Target(name, 'tpu', f'TPU {tpu.generation}', count, match.group(2), tpu.peak_bf16,
                tpu.peak_bf16, tpu.bandwidth, tpu.memory_bytes, tpu.source)


def quiet_tpu_environment():
  """Sets libtpu up for compiling only, before it loads: it would read the TPU VM's
  metadata and warn when it is absent, and lock /tmp/libtpu_lockfile against a
  second process (that guards TPU chips, which compiling does not use)."""
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_WORKER_ID', '0')


def devices(name):
  """Compile-only devices of target ``name`` (needs ``pip install -e '.[aot]'``)."""
  target = get(name)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    if target.platform == 'cuda':
      gpu, topology = GPUS[name]
      desc = topologies.get_topology_desc(platform='cuda', topology_name='', topology=topology,
                                          target_config=gpu.target_config())
    else:
      quiet_tpu_environment()
      tpu = TPUS[name.split(':')[0][len('tpu-'):]]
      dims = [int(n) for n in target.topology.split('x')] + [1] * (3 - tpu.dims)
      # A slice smaller than a host (v5e:1x1) is all on one host.
      bounds = tuple(min(b, d) for b, d in zip(tpu.chips_per_host, dims))
      desc = topologies.get_topology_desc(
          platform='tpu', topology_name=f'{tpu.generation}:{target.topology}',
          chip_config_name=tpu.chip_config, chips_per_host_bounds=bounds, num_slices=1)
  except (RuntimeError, NotImplementedError) as e:
    if 'INVALID_ARGUMENT' in str(e):
      raise TargetError(f'{name}: the compiler refuses this topology: {e}') from e
    package = 'jax-cuda12-plugin' if target.platform == 'cuda' else 'libtpu (jax[tpu])'
    raise TargetError(f'Cannot make compile-only {name} devices ({e}); install {package} '
                       "at the installed jax's version: pip install -e '.[aot]'.") from e
  if len(desc.devices) != target.num_devices:
    raise RuntimeError(f'{name}: expected {target.num_devices} devices, the compiler made '
                       f'{len(desc.devices)}.')
  return desc.devices
