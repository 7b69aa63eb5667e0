r"""The peer a CPU user would reach for: airbench's network trained in PyTorch, one seed after another.

  python benchmarks/torch_peer.py --widths=16,32,32 --batch=128 --steps=20

Prints one JSON line: model-images/s of a plain training loop (channels-last,
PyTorch's default CPU kernels) of the same network varjax trains: 2x2 whitening
conv (frozen filters, trainable bias) -> GELU -> three groups [conv3x3, maxpool2,
BN (no scale), GELU, conv3x3, BN, GELU] -> global max pool -> linear x 1/9, label
smoothing 0.2, Nesterov SGD, random translate-2 crops and flips done on the batch.
``--freeze_whiten_bias`` times the steps after airbench freezes that bias (autograd
then skips the whitening layer's backward, as varjax's second program does).

Not part of varjax (PyTorch is not a dependency); ``varjax.bench --peer=...`` runs
it as a subprocess so both are measured in one run.
"""

import argparse
import json
import time

import torch
from torch import nn
import torch.nn.functional as F


class ConvGroup(nn.Module):

  def __init__(self, c_in, c_out):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
    self.norm1 = nn.BatchNorm2d(c_out, eps=1e-12, momentum=0.4)
    self.norm2 = nn.BatchNorm2d(c_out, eps=1e-12, momentum=0.4)
    for norm in (self.norm1, self.norm2):
      norm.weight.requires_grad = False

  def forward(self, x):
    x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
    return F.gelu(self.norm2(self.conv2(x)))


class Net(nn.Module):

  def __init__(self, widths):
    super().__init__()
    self.whiten = nn.Conv2d(3, 24, 2, bias=True)
    self.whiten.weight.requires_grad = False
    self.groups = nn.Sequential(ConvGroup(24, widths[0]), ConvGroup(widths[0], widths[1]),
                                ConvGroup(widths[1], widths[2]))
    self.head = nn.Linear(widths[2], 10, bias=False)

  def forward(self, x):
    x = self.groups(F.gelu(self.whiten(x)))
    return self.head(F.adaptive_max_pool2d(x, 1).flatten(1)) / 9


def augment(x, generator):
  """Reflect-pad 2, one random crop per image, random flips."""
  n = x.shape[0]
  padded = F.pad(x, (2, 2, 2, 2), mode='reflect')
  dy, dx = torch.randint(0, 5, (2, n), generator=generator)
  rows = (dy[:, None] + torch.arange(32))[:, None, :, None].expand(n, 3, 32, 36)
  x = padded.gather(2, rows)
  cols = (dx[:, None] + torch.arange(32))[:, None, None, :].expand(n, 3, 32, 32)
  x = x.gather(3, cols)
  flip = torch.rand(n, generator=generator) < 0.5
  return torch.where(flip[:, None, None, None], x.flip(3), x)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--widths', default='16,32,32')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--models', type=int, default=2, help='seeds trained one after another')
  parser.add_argument('--freeze_whiten_bias', action='store_true')
  args = parser.parse_args()
  widths = tuple(int(w) for w in args.widths.split(','))
  generator = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (args.batch * 8, 3, 32, 32), dtype=torch.uint8,
                         generator=generator)
  labels = torch.randint(0, 10, (args.batch * 8,), generator=generator)
  mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
  std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
  seconds = 0.0
  for seed in range(args.models):
    torch.manual_seed(seed)
    net = Net(widths).to(memory_format=torch.channels_last)
    net.whiten.bias.requires_grad = not args.freeze_whiten_bias
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True, weight_decay=5e-5)
    for step in range(args.steps + 2):  # two warm-up steps
      if step == 2:
        start = time.perf_counter()
      idx = torch.randint(0, len(images), (args.batch,), generator=generator)
      x = ((images[idx].float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
      x = augment(x, generator).contiguous(memory_format=torch.channels_last)
      loss = F.cross_entropy(net(x), labels[idx], label_smoothing=0.2, reduction='sum')
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    seconds += time.perf_counter() - start
  print(json.dumps({
      'peer': f'torch {torch.__version__}', 'threads': torch.get_num_threads(),
      'widths': widths, 'batch_size': args.batch,
      'freeze_whiten_bias': args.freeze_whiten_bias,
      'model_images_per_s': round(args.models * args.steps * args.batch / seconds, 1)}))


if __name__ == '__main__':
  main()
