"""Solve-versus-verify study on arith: a trained generative verifier (GenRM)
against self-consistency at equal compute.

  python -m experiments.genrm_allocation --config=configs/genrm_arith.py \
      [--config.n_problems=64] [--config.verifications=8] \
      [--workdir=results/arith/genrm]

Needs the policy (experiments/train_policy.py -> `policy_dir`); trains the
verifier into `verifier_dir` if it is missing (experiments/train_genverifier.py,
which reads the `verifier` section of this same config).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.policy_dir = "results/arith/policy"
  c.verifier_dir = "results/arith/genrm/verifier"

  # The generative verifier (char-level LM of the policy's shape, same tokenizer).
  v = c.verifier = ml_collections.ConfigDict()
  v.init_from_policy = True
  v.max_seq_len = 256  # verifier prompt (<= ~72 tokens) + chain (<= ~60)
  v.train_problems = 2048  # fresh problems, never the held-out ones
  v.samples_per_problem = 4  # temperature-1 policy candidates per problem
  v.temperature = 1.0
  v.max_new_tokens = 48  # candidate solution budget (as the policy's eval)
  v.steps = 1500  # 500 steps: within-problem AUROC 0.685 and SC wins everywhere
  v.mark_weight = 4  # loss weight of the mark / verdict digits
  v.batch_size = 8  # packed rows
  v.seq_len = 256
  v.learning_rate = 1e-3
  v.warmup_steps = 30
  v.end_lr_ratio = 0.05
  v.weight_decay = 0.01
  v.clip_norm = 1.0
  v.log_every = 50
  v.checkpoint_every = 100
  v.eval_problems = 64  # held-out problems for the training script's report
  v.eval_samples = 4  # candidates per eval problem
  v.eval_verifications = 8  # sampled verifications per candidate

  # The study's pool (held-out problems: train_policy.heldout_problems).
  c.n_problems = 100
  c.pool_size = 32  # S_max: solutions per problem that are verified
  c.sc_pool_size = 128  # solutions per problem for self-consistency (>= pool_size)
  c.verifications = 16  # V_max: verifications per verified solution
  c.temperature = 1.0  # solutions and verifications
  c.max_new_tokens = 48  # per solution
  c.max_verify_tokens = 64  # per verification chain
  c.rows_per_call = 1024  # generated rows per compiled generate call
  c.chunk_problems = 16  # verification pool is saved in chunks of problems

  # The analysis grid and estimators.
  c.s_grid = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
  c.v_grid = (1, 2, 3, 4, 6, 8, 12, 16)
  c.plot_v = (1, 2, 4, 8, 16)  # GenRM curves drawn (one per V, over S)
  c.budgets = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # C levels (solution units)
  c.tie_break = "random"  # the exact estimator; "majority" is also reported (MC)
  c.sc_subsets = 500  # maj@k: exact if C(n, k) <= 20000, else this many draws
  c.mc_subsets = 1000  # Monte Carlo draws per problem for the majority tie-break
  return c
