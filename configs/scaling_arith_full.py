"""The full verifier study on arith (`python -m experiments.demo --full`, or
one temperature of it with experiments.scaling --config=<this file>).

Every selection and search method under seven verifiers (the exact oracle,
five noisy oracles spanning the oracle's to the learned PRM's within-problem
AUROC, the learned PRM / ORM), 200 problems, three pool seeds, search at
five budgets with two seeds. experiments/demo.py --full runs it at the
sampling temperatures of `TEMPERATURES` (one sweep directory each). Hours
on a 2-core CPU; minutes on a GPU.
"""

from configs import scaling_arith

TEMPERATURES = (0.7, 1.0)  # experiments/demo.py --full: one sweep per value


def get_config():
  c = scaling_arith.get_config()
  c.n_problems = 200
  c.seeds = (0, 1, 2)
  c.methods = (
    "coverage",
    "majority",
    "weighted_majority_orm",
    "bon_orm",
    "bon_prm_min",
    "bon_prm_last",
    "bon_prm_prod",
    "bon_prm_mean",
    "bom_orm",
  )
  c.search_methods = ("pf", "pf_smc", "epf", "beam", "dvts", "astar")
  c.search_budgets = (4, 8, 16, 32, 64)
  c.search_seeds = (0, 1)
  c.verifiers = (
    "oracle",
    "gauss2",
    "flip0.05",
    "flip0.1",
    "flip0.2",
    "flip0.3",
    "learned",
  )
  c.baselines = ("greedy",)
  c.report_budget = 16
  return c
