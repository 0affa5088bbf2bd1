"""The full SmolLM2 x GSM8K study: all 100 original problems, 64 samples
each, search at budgets 4-32 (`make gsm8k-study GSM8K_STUDY=full`). Many
hours on a 2-core CPU; minutes on an accelerator."""

from configs import scaling_gsm8k


def get_config():
  c = scaling_gsm8k.get_config()
  c.n_problems = 100
  c.pool_size = 64
  c.budgets = (1, 2, 4, 8, 16, 32, 64)
  c.search_budgets = (4, 8, 16, 32)
  c.search_problems_per_call = 4  # divides 100
  c.report_budget = 32
  return c
