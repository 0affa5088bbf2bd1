"""SoFT on arith: an 8-layer policy fine-tuned with the standard loss and with the
sorted (SoFT) loss for the same steps from the same start; every exit depth
evaluated (greedy accuracy, held-out loss, decode FLOPs per token), plus unified
layer skipping at the speed-ups in eval.skip_speedups and CALM early exit at the
thresholds in eval.early_exit_thresholds, on both fine-tunes.

  python -m experiments.soft --config=configs/soft_arith.py --workdir=results/soft_arith

`train` is the shared start (the standard loss from a random init, `train.steps`
steps; the field names are configs/arith_policy.py's); `finetune` then runs for
both branches. See experiments/soft.py.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.task = ml_collections.ConfigDict()  # experiments/tasks/arith.py knobs
  c.task.n_steps = (2, 4)
  c.task.n_digits = 1
  c.task.mul_digits = 1
  c.task.ops = "+-*"

  c.model = ml_collections.ConfigDict()  # deeper than arith_policy: depth matters
  c.model.d_model = 64
  c.model.n_layers = 8
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.d_ff = 192
  c.model.max_seq_len = 128

  # The shared start: standard training from a random init.
  c.train = ml_collections.ConfigDict()
  c.train.steps = 300
  c.train.batch_size = 16
  c.train.seq_len = 128
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 25
  c.train.end_lr_ratio = 0.1
  c.train.weight_decay = 0.05
  c.train.clip_norm = 1.0
  c.train.log_every = 50

  # Both fine-tunes (standard and SoFT): same steps, same batches, same optimiser.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 200
  c.finetune.learning_rate = 1e-3
  c.finetune.warmup_steps = 10
  c.finetune.end_lr_ratio = 0.1
  c.finetune.weight_decay = 0.05
  c.finetune.clip_norm = 1.0

  c.soft = ml_collections.ConfigDict()
  c.soft.exits = (2, 4, 6, 8)  # depths trained (and evaluated)
  c.soft.exits_per_step = 0  # 0: every exit every step; k: k sampled per step
  c.soft.exit_weights = ()  # empty: equal weights

  c.eval = ml_collections.ConfigDict()
  c.eval.n_problems = 100  # held-out problems, greedy accuracy per depth
  c.eval.loss_problems = 64  # held-out problems for the per-depth loss
  c.eval.max_new_tokens = 48
  c.eval.skip_speedups = (2, 3, 4)  # unified layer skipping baselines
  c.eval.early_exit_thresholds = (0.9, 0.99)  # CALM early exit (max-prob) baselines
  c.eval.spec_depths = (
    2,
    4,
    6,
  )  # self-speculation: sub-model drafts for the full model
  c.eval.spec_gamma = 3  # draft chain length
  return c
