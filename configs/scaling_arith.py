"""Default compute-optimal scaling sweep on the synthetic arith task.

  python -m experiments.scaling --config=configs/scaling_arith.py \
      --config.n_problems=200 --config.seeds=0,1,2
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.policy_dir = "results/arith/policy"
  c.verifier_dir = "results/arith/verifier"
  c.n_problems = 100
  # Problems: the policy's held-out stream (train_policy.heldout_problems).
  c.pool_size = 64  # samples per problem; budgets up to this
  c.budgets = (1, 2, 4, 8, 16, 32, 64)
  c.seeds = (0, 1)
  c.temperature = 1.0
  c.max_new_tokens = 48
  c.max_steps = 8  # PRM step slots per sample
  c.rows_per_call = 1024  # generate / score rows per compiled call
  c.methods = (
    "coverage",
    "majority",
    "weighted_majority_orm",
    "bon_orm",
    "bon_prm_min",
    "bon_prm_last",
    "bom_orm",
  )
  # Search methods (run for real at each budget; see experiments/scaling.py).
  c.search_methods = ("pf", "pf_smc", "epf", "beam", "dvts", "astar")
  c.search_budgets = (4, 8, 16, 32)  # add 64 for the full study (~4 min more)
  c.search_seeds = (0,)
  c.max_step_tokens = 12  # one arith step line (+ delimiter) fits
  c.beam_width = 4
  c.astar_children = 4
  c.astar_capacity = 128  # fixed, so budgets share one compiled search
  c.astar_expected_steps = 5
  c.astar_tokens_per_sample = 24  # A* token budget = budget * this
  # The verifier axis (experiments/verifiers.py): every verifier-dependent
  # selection method and every search method runs under each of these:
  # "learned" (the trained PRM / ORM), "oracle" (the exact step checker),
  # "flip<eps>" (oracle labels flipped with probability eps), "gauss<sigma>"
  # (oracle logit +-oracle_margin plus N(0, sigma^2) noise). This file keeps
  # the learned verifier only (the schema of every sweep config);
  # configs/scaling_arith_verifiers.py is `make demo`'s verifier study.
  c.verifiers = ("learned",)
  c.oracle_seed = 0  # the noisy oracles' noise seed
  c.oracle_margin = 2.0  # |oracle logit| of the gauss<sigma> verifiers
  c.baselines = ()  # ("greedy",): greedy decoding, one row at budget 1
  c.report_budget = 16  # the budget of the accuracy-vs-AUROC plot
  return c
