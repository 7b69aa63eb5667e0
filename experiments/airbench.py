r"""airbench94 ensembles on CIFAR-10 (Jordan 2024), every hyperparameter in one place.

Variants (``--config=experiments/airbench.py:VARIANT``):
  (none)  full airbench94: widths 64/256/256, batch 1024, 9.9 epochs, TTA level 2.
          Meant for an accelerator host.
  cpu     the README demo: 16 narrow models on a subset, minutes on 2 CPU cores,
          evaluated on the held-out last 10,000 training images (so the binary
          files without test_batch.bin suffice).
  smoke   seconds; for tests.

Units follow airbench: ``opt.lr`` and ``opt.weight_decay`` are "decoupled" (per
1024 examples); the SGD step uses lr / (1024 * (1 + 1 / (1 - momentum))).

Example:
  python -m varjax.main --config=experiments/airbench.py:cpu --workdir=/tmp/run
"""

import ml_collections
from ml_collections import config_dict

from varjax.config import files as config_files
def get_config(arg=None):
  """Returns the config for variant ``arg`` ('' | 'cpu' | 'smoke')."""
  variant = config_files.pick_variant(__file__, arg, ('default', 'cpu', 'smoke'))
  c = ml_collections.ConfigDict()
  c.name = 'airbench94'
  c.variant = variant

  # Ensemble: model k (global id first_model_id + k) draws every random choice
  # from (seed, id) alone, so any model can be rerun by itself.
  c.seed = 0
  c.num_models = 64
  c.first_model_id = 0
  c.overwrite = False  # True: discard a finished run in --workdir and start again.

  c.data = ml_collections.ConfigDict()
  # 'auto': data.dir (the binary files, or else a TFDS data dir), then the
  # directory of binary files in $VARJAX_DATA_DIR, then tfds (downloads and
  # prepares cifar10 on first use). 'cifar10_binary' | 'tfds' force one kind.
  c.data.source = 'auto'
  # The binary files' directory (data_batch_{1..5}.bin, test_batch.bin) or a
  # TFDS data dir; None: $VARJAX_DATA_DIR, else TFDS's default data dir.
  c.data.dir = config_dict.placeholder(str)
  c.data.test_split = 'test'  # 'test' | 'holdout' (last holdout_size train images)
  c.data.holdout_size = 10_000
  c.data.train_size = config_dict.placeholder(int)  # None: every training image
  c.data.verify_checksums = True  # cifar10_binary: md5 of the known files
  # A task on some classes only, e.g. (3, 5) = cat vs dog, relabelled 0, 1 in
  # this order (train and test sets alike); () keeps all 10.
  c.data.classes = ()
  # More evaluation sets, each analysed separately (distribution shift):
  # 'tfds:cifar10_1' (CIFAR-10.1 v6 through tfds) or 'binary:PATH' (CIFAR-10
  # binary records: a .bin file or a directory with test_batch.bin).
  c.data.extra_test_sets = ()

  c.model = ml_collections.ConfigDict()
  c.model.widths = (64, 256, 256)
  c.model.whiten_kernel_size = 2
  c.model.whiten_eps = 5e-4
  c.model.whiten_num_images = 5000  # first images of the training set (all if fewer)
  c.model.bn_eps = 1e-12
  c.model.bn_momentum = 0.6  # running = 0.6 * running + 0.4 * batch
  c.model.head_scale = 1 / 9
  c.model.gelu_approximate = False  # exact erf GELU, as torch.nn.GELU

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 9.9  # fractional: ceil(epochs * steps_per_epoch) steps
  c.train.batch_size = 1024  # per model; last partial batch of an epoch dropped
  c.train.label_smoothing = 0.2
  c.train.whiten_bias_epochs = 3.0  # whitening bias trains this long, then freezes
  # Label noise (varjax/label_noise.py; Zhang et al. 2017): each training label is
  # replaced, with this probability, by a uniformly random class (possibly the true
  # one), fixed per model from (seed, model id); 1.0: random labels. Evaluation
  # sets keep their true labels. Per model in a sweep: sweep.label_noise.
  c.train.label_noise = 0.0

  c.opt = ml_collections.ConfigDict()
  c.opt.lr = 11.5  # per 1024 examples, decoupled (see module docstring)
  c.opt.weight_decay = 0.0153  # decoupled, same units
  c.opt.momentum = 0.85  # Nesterov
  c.opt.bias_lr_scale = 64.0  # BatchNorm biases: 64x lr, not 64x decay
  c.opt.lr_reference_batch = 1024
  c.opt.warmup_frac = 0.23  # linear 0.2x -> 1x over the first 23% of steps
  c.opt.lr_start_factor = 0.2
  c.opt.lr_end_factor = 0.07  # then linear 1x -> 0.07x

  c.lookahead = ml_collections.ConfigDict()
  c.lookahead.enabled = True
  c.lookahead.every_steps = 5
  c.lookahead.decay = 0.95  # per step; EMA decay = decay**every * (t/T)**power
  c.lookahead.power = 3

  c.aug = ml_collections.ConfigDict()
  c.aug.translate = 2  # reflect-pad then random crop, pixels
  c.aug.flip = 'alternating'  # 'alternating' | 'random' | 'none'

  c.eval = ml_collections.ConfigDict()
  c.eval.tta_level = 2  # 0: plain, 1: + mirror, 2: + 1-pixel translations
  c.eval.batch_size = 1000  # test images per model per evaluation batch

  c.analysis = ml_collections.ConfigDict()
  c.analysis.alpha_trim_resamples = 100  # resamples of the test set for alpha_trim
  c.analysis.seed = 0  # of the alpha-trim resamples and ensemble subsets (not of the models)
  # Per-model quantiles of the true-class margin (and normalized margin).
  c.analysis.margin_quantiles = (0.1, 0.25, 0.5, 0.75, 0.9)
  # Accuracy against ensemble size (1, 2, 4, ..., group size): random subsets of
  # a group's models averaged per size (all subsets when there are fewer).
  c.analysis.ensemble_subsets = 16
  # Seeds per arm for a two-arm comparison to detect these accuracy differences
  # (fractions: 0.1, 0.2, 0.5 percentage points) at this power and level.
  c.analysis.seeds_needed_deltas = (0.001, 0.002, 0.005)
  c.analysis.seeds_needed_power = 0.8
  c.analysis.seeds_needed_alpha = 0.05

  # Example difficulty (varjax/measures/difficulty.py); each switch costs only when on
  # (measured: python -m varjax.bench.analysis, BENCHMARKS.md).
  c.difficulty = ml_collections.ConfigDict()
  # Prediction depth: k-NN probes at depth_probes (network order; the input,
  # the whitening output and every conv's output as Baldock et al. probe every
  # layer; ('group1_conv2', 'group2_conv2', 'group3_conv2') probes only each
  # group's output) against the first depth_support_size training images.
  c.difficulty.prediction_depth = False
  c.difficulty.depth_k = 30
  c.difficulty.depth_support_size = 5000
  c.difficulty.depth_probes = ('input', 'whiten', 'group1_conv1', 'group1_conv2',
                               'group2_conv1', 'group2_conv2', 'group3_conv1', 'group3_conv2')
  # Margin in the last embedding's space over the root of its total variance.
  c.difficulty.normalized_margin = True
  # Forgetting events, first epoch learned and cumulative correctness of the
  # first forgetting_probe_size training images, recorded after every epoch.
  c.difficulty.forgetting = False
  c.difficulty.forgetting_probe_size = 5000

  # Per-model lenses measured after training (varjax/run/lenses.py); each costs only
  # when on (measured: python -m varjax.bench.analysis --lenses, BENCHMARKS.md).
  c.lenses = ml_collections.ConfigDict()
  # Flatness (Lengyel et al. 2021; varjax/measures/sharpness.py): top Hessian eigenvalue by
  # power iteration and trace by Hutchinson's estimator (Rademacher probes) of the
  # mean label-smoothed training loss on the first sharpness_images training
  # images, at the final weights, BatchNorm in eval mode.
  c.lenses.sharpness = False
  c.lenses.sharpness_images = 512
  c.lenses.power_iterations = 20  # Hessian-vector products for the top eigenvalue
  c.lenses.hutchinson_probes = 10  # Hessian-vector products for the trace
  # Maennel et al. 2020 (varjax/measures/alignment.py): misalignment of the first trained
  # conv's filters with the covariance of its input patches (the whitening output)
  # on the first alignment_images training images, along the data's top
  # alignment_components principal components (None: min(patch dim, filters // 2),
  # few enough for the filters' sample covariance there to be well conditioned).
  c.lenses.alignment = False
  c.lenses.alignment_images = 256
  c.lenses.alignment_components = config_dict.placeholder(int)
  # Images per call of the sharpness and alignment programs (XLA:CPU's conv
  # gradients slow down superlinearly with the batch; accelerators want more).
  c.lenses.batch_size = 64
  # Accuracy of the final model on the first train_eval_size training images,
  # against the labels it trained on (memorisation under label noise) and the
  # true ones; 0: off.
  c.lenses.train_eval_size = 0

  # Which sources of randomness differ between models (variance study, App. D);
  # a source not listed is shared by all models.
  c.randomness = ml_collections.ConfigDict()
  c.randomness.vary = ('init', 'order', 'augment')

  c.ensemble = ml_collections.ConfigDict()
  # Models per chunk of the step (one chunk's activations are live at a time);
  # must divide the models per device. None: 4 on CPU; on accelerators the
  # largest chunk whose compiled train step and evaluation batch fit 90% of
  # device memory (memory_plan.fit_models_per_chunk).
  c.ensemble.models_per_chunk = config_dict.placeholder(int)
  # How a chunk's models run: 'unrolled' (dense per-model ops; bit-identical to a
  # model run alone), 'vmap' (batched ops), 'grad_of_sum' (the forward vmapped,
  # the gradient of the models' summed loss taken outside the vmap: the same
  # gradients, batched backward kernels), 'auto' (unrolled on CPU, grad_of_sum
  # on GPU, vmap on TPU: chosen from the compiled programs, BENCHMARKS.md).
  c.ensemble.formulation = 'auto'
  # 'float32' | 'bfloat16' (activations and convs; BatchNorm statistics, loss
  # and optimiser stay float32) | 'auto' (float32 on CPU, bfloat16 on
  # accelerators: half the compiled step's memory and traffic).
  c.ensemble.compute_dtype = 'auto'
  # How chunks are iterated: 'scan' (one jitted while loop), 'host' (one jitted
  # call per chunk; XLA:CPU runs convolutions inside loops ~10x slower), 'auto'
  # (host on CPU, scan elsewhere).
  c.ensemble.chunk_loop = 'auto'
  # Kernel gradient of 3x3 convs: 'xla', 'sliced' (XLA's, summed over slices of
  # conv_grad_slice images: ~4x faster on XLA:CPU at batch 128-256), 'auto'
  # (sliced on CPU, xla elsewhere). Same maths.
  c.ensemble.conv_weight_grad = 'auto'
  c.ensemble.conv_grad_slice = 16
  # Convolution kernels of the CPU training step: 'eigen' (XLA:CPU's own) or
  # 'ynnpack' (jaxlib's default, which runs each convolution on one thread;
  # BENCHMARKS.md). Ignored on accelerators.
  c.ensemble.cpu_conv_library = 'eigen'
  # How the training batch is cropped and flipped (the same pixels): 'gather' (one
  # gather of each crop's bytes), 'batch_crop' (the batch's whole images gathered
  # from rows, then cropped by selects), 'auto' (batch_crop on TPU, whose compiler
  # charges the per-pixel gather 69 GB of a 4-model step; gather elsewhere).
  c.ensemble.augment_crop = 'auto'
  # How the groups' 2x2 max pools are differentiated (models/airbench.py
  # max_pool): 'windows' (window bits kept, gradient split among ties as JAX's
  # rule), 'reshape' (JAX's rule on a reshape), 'reduce_window' (XLA's
  # select-and-scatter: the first maximum takes a tie's gradient, as PyTorch;
  # the least traffic on TPU, but not today's numbers in bfloat16), 'auto'
  # (windows).
  c.ensemble.max_pool = 'auto'

  # A grid of per-model hyperparameters in one ensemble (varjax/ensemble/grid.py):
  # points = product of the non-empty lists; num_models = points x seeds_per_point.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.lr_multipliers = ()  # of opt.lr
  c.sweep.weight_decay_multipliers = ()  # of opt.weight_decay
  c.sweep.label_smoothings = ()  # absolute values
  c.sweep.label_noise = ()  # absolute values in [0, 1] (train.label_noise)
  c.sweep.seeds_per_point = config_dict.placeholder(int)

  # Resume: rerunning the same command on the same workdir continues from the
  # latest checkpoint (varjax/run/checkpoint.py).
  c.checkpoint = ml_collections.ConfigDict()
  # When to save, besides the end of the run and a preemption notice (SIGTERM):
  # every so many minutes of wall time (0: off), every so many steps (0: off),
  # at every epoch's end.
  c.checkpoint.every_minutes = 10.0
  c.checkpoint.every_steps = 0
  c.checkpoint.at_epoch_end = False
  # Where: None is WORKDIR/checkpoints; a gs:// path is written by orbax itself
  # (for TPU VMs, whose workdir may be on a local disk).
  c.checkpoint.directory = config_dict.placeholder(str)
  c.checkpoint.keep = 2  # most recent checkpoints kept
  c.checkpoint.async_save = True  # write while the next steps train

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 0  # 0: log once per epoch

  if variant == 'cpu':
    # Sized for 2 CPU cores (BENCHMARKS.md): 16 models x 10,000 images each.
    c.num_models = 16
    c.data.test_split = 'holdout'
    c.data.train_size = 5_000
    c.model.widths = (16, 32, 32)
    c.train.batch_size = 128
    c.train.epochs = 2
    c.train.whiten_bias_epochs = 1
    # A 2-epoch schedule wants a far larger step than airbench's 10 epochs
    # (BENCHMARKS.md: holdout accuracy at lr 11.5, 23 and 46).
    c.opt.lr = 46.0
    c.eval.tta_level = 0
    c.eval.batch_size = 200  # XLA:CPU convs run faster per image in small batches
    c.analysis.alpha_trim_resamples = 20
  elif variant == 'smoke':
    c.num_models = 4
    c.checkpoint.at_epoch_end = True  # the resume tests stop runs mid-way
    c.data.test_split = 'holdout'
    c.data.holdout_size = 512
    c.data.train_size = 1024
    c.model.widths = (8, 16, 16)
    c.model.whiten_num_images = 256
    c.train.batch_size = 128
    c.train.epochs = 2
    c.train.whiten_bias_epochs = 1
    c.eval.tta_level = 2
    c.eval.batch_size = 256
    c.analysis.alpha_trim_resamples = 8
  return c
