"""PRM + ORM training on samples of the trained arith policy.

  python -m experiments.train_verifier --config=configs/arith_verifier.py \
      [--workdir=results/arith/verifier]

Needs the policy first (experiments/train_policy.py writes `policy_dir`).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.policy_dir = "results/arith/policy"  # model_config.json + policy/ + config.json

  c.data = ml_collections.ConfigDict()
  c.data.train_problems = 256  # fresh problems (never the policy's held-out set)
  c.data.test_problems = 64  # the policy's held-out problems
  c.data.samples_per_problem = 8  # temperature-1 policy samples per problem
  c.data.temperature = 1.0
  c.data.max_new_tokens = 48

  c.model = ml_collections.ConfigDict()
  c.model.init_from_policy = True  # else a fresh transformer of the policy's shape

  c.train = ml_collections.ConfigDict()
  c.train.steps = 120  # per reward model (PRM, then ORM)
  c.train.batch_size = 16  # packed rows
  c.train.seq_len = 128
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 12
  c.train.end_lr_ratio = 0.05
  c.train.weight_decay = 0.01
  c.train.clip_norm = 1.0
  c.train.log_every = 50
  c.train.orm_labels = "last"  # "last": final token only; "all": every solution token
  return c
