"""SmolLM2-135M-Instruct on GSM8K through the scaling sweep (`make gsm8k-study`).

  python -m experiments.scaling --config=configs/scaling_gsm8k.py \
      --workdir=results/scaling/gsm8k

Sized for about an hour on a 2-core CPU (float32): the first `n_problems`
original GSM8K problems, a pool of 16 samples each (selection rows at budgets
1-16 from it), particle filtering, beam search and A* at budget 4, greedy.
configs/scaling_gsm8k_full.py is the full study (100 problems, 64 samples,
search budgets 4-32: many hours here, minutes on an accelerator).
Verifiers (experiments/sweep_tasks.py): 'confidence' (the generator's own
token log-probs; free) and 'genrm' (SmolLM2 asked whether each sample is
correct; outcome methods only).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.task = "gsm8k"
  c.model = "smollm2-135m-instruct"  # jaxllm.pretrained; float32
  c.n_problems = 32  # the first n of: 100 originals, then the variants
  c.gsm_variants = 0  # GSM-Symbolic variants per template, after the originals
  c.gsm_variant_seed = 0
  c.answer_rule = "flexible"  # the headline rule; rows report both rules
  c.pool_size = 16
  c.budgets = (1, 2, 4, 8, 16)
  c.seeds = (0,)
  c.temperature = 0.7
  c.max_new_tokens = 256
  c.max_steps = 16  # step slots (lines) per sample / search
  c.rows_per_call = 128  # generate / verifier rows per compiled call
  c.methods = (
    "coverage",
    "majority",
    "weighted_majority_orm",
    "bon_orm",
    "bon_prm_min",
    "bom_orm",
  )
  c.search_methods = ("pf", "beam", "astar")
  c.search_budgets = (4,)
  c.search_seeds = (0,)
  # Problems per search call (0: all at once; must divide n_problems). A*
  # keeps a KV cache per frontier node: 32 problems x 64 nodes of SmolLM2
  # asked for ~98 GB; 8 problems x 16 nodes fit in a few GB.
  c.search_problems_per_call = 8
  c.max_step_tokens = 32  # 16 steps x 32 tokens: room for a 256-token solution
  c.beam_width = 2
  c.astar_children = 2
  c.astar_capacity = 16  # frontier nodes per problem (each holds a KV cache)
  c.astar_expected_steps = 8
  c.astar_tokens_per_sample = 256  # A* token budget = budget * this
  c.verifiers = ("confidence", "genrm")
  c.confidence_kind = "mean_logprob"  # algorithms.scorers.ConfidenceScorer
  c.baselines = ("greedy",)
  c.report_budget = 16
  return c
