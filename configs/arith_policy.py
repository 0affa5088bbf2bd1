"""Supervised training of the small character-level arith policy.

  python -m experiments.train_policy --config=configs/arith_policy.py \
      --config.train.steps=200 --workdir=results/arith/policy

Sized for a shared 2-core CPU (a few minutes); see experiments/train_policy.py.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  # The task (experiments/tasks/arith.py `generate` knobs).
  c.task = ml_collections.ConfigDict()
  c.task.n_steps = (2, 4)
  c.task.n_digits = 1  # 2 digits: ~3% greedy accuracy after 500 steps here
  c.task.mul_digits = 1
  c.task.ops = "+-*"

  # The policy transformer (vocab_size comes from the char tokenizer).
  c.model = ml_collections.ConfigDict()
  c.model.d_model = 96
  c.model.n_layers = 3
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.d_ff = 256
  c.model.max_seq_len = 128

  c.train = ml_collections.ConfigDict()
  c.train.steps = 250
  c.train.batch_size = 16  # packed rows of seq_len tokens (~2.6 texts each)
  c.train.seq_len = 128  # packed rows; every training text fits (checked)
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 25
  c.train.end_lr_ratio = 0.05
  c.train.weight_decay = 0.05
  c.train.clip_norm = 1.0
  c.train.accum_steps = 1
  c.train.compute_dtype = "float32"  # "bfloat16": f32 master params, bf16 compute
  c.train.log_every = 50
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 125  # greedy accuracy during training (0 = only at the end)
  c.eval.n_problems = 64  # held-out problems for the periodic greedy eval
  c.eval.max_new_tokens = 48
  c.eval.final_problems = 200  # held-out problems for the final report
  c.eval.final_samples = 64  # samples per problem (coverage@N, pass@1)
  c.eval.final_sample_problems = 100
  return c
