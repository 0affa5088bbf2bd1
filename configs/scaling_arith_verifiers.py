"""`make demo`'s sweep: the arith scaling sweep with the verifier-quality axis.

  python -m experiments.scaling --config=configs/scaling_arith_verifiers.py

Every verifier-dependent selection method and the search methods run under
four verifiers (experiments/verifiers.py): the exact oracle (the step
checker), two noisy oracles whose within-problem AUROC lies between the
oracle's and the learned PRM's (labels flipped with probability 0.1 and
0.3; measured on the demo's pool: PRM AUROC 0.84 oracle, 0.70 flip0.1,
0.58 flip0.3, 0.54 learned), and the learned PRM / ORM; plus greedy
decoding and pass@1 as baselines. Sized for about 15 minutes of `make demo`
on a 2-core CPU (one pool seed, three search methods at two budgets); the
full study is configs/scaling_arith_full.py (`python -m experiments.demo
--full`).
"""

from configs import scaling_arith


def get_config():
  c = scaling_arith.get_config()
  c.seeds = (0,)
  c.methods = (
    "coverage",
    "majority",
    "weighted_majority_orm",
    "bon_orm",
    "bon_prm_min",
    "bom_orm",
  )
  c.search_methods = ("pf", "beam", "astar")
  c.search_budgets = (4, 16)
  c.verifiers = ("oracle", "flip0.1", "flip0.3", "learned")
  c.baselines = ("greedy",)
  c.report_budget = 16
  return c
