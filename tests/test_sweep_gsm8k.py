"""The scaling sweep's task axis (experiments/sweep_tasks.py): the GSM8K
config's plan and errors, grading under both answer rules with unparsable
answers counted, the confidence scores of the pool against the in-graph
`ConfidenceScorer`, and a small real SmolLM2 sweep that resumes."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from algorithms.scorers import ConfidenceScorer
from algorithms.stepping import Step
from experiments import config_utils, scaling, sweep_tasks
from experiments.tasks import gsm8k

GSM8K_CONFIG = "configs/scaling_gsm8k.py"


def gsm_config(**kw):
  c = config_utils.load_config_file(GSM8K_CONFIG)
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_gsm8k_plan_runs_outcome_methods_under_genrm_and_searches_under_confidence():
  plan = scaling.validate_sweep(gsm_config())
  assert "bon_prm_min@confidence" in plan.methods
  assert "bon_orm@genrm" in plan.methods and "bom_orm@genrm" in plan.methods
  assert not any(m.startswith("bon_prm") and m.endswith("@genrm") for m in plan.methods)
  assert plan.search == ("pf@confidence", "beam@confidence", "astar@confidence")
  assert plan.baselines == ("greedy",)
  full = scaling.validate_sweep(
    config_utils.load_config_file("configs/scaling_gsm8k_full.py")
  )
  assert full.budgets[-1] == 64 and full.search_budgets == (4, 8, 16, 32)


@pytest.mark.parametrize(
  "change, field",
  [
    (dict(answer_rule="loose"), "config.answer_rule"),
    (dict(confidence_kind="max"), "config.confidence_kind"),
    (dict(model="gpt5"), "config.model"),
    (dict(verifiers=("learned",)), "config.verifiers"),
    (dict(verifiers=("oracle", "confidence")), "config.verifiers"),
    (dict(verifiers=("genrm",)), "config.search_methods"),  # genrm scores no steps
    (dict(task="mmlu"), "config.task"),
    (dict(n_problems=0), "n_problems"),
    (dict(search_problems_per_call=5), "config.search_problems_per_call"),
  ],
)
def test_gsm8k_config_errors_name_the_field(change, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    scaling.validate_sweep(gsm_config(**change))


def test_arith_refuses_the_gsm8k_verifiers():
  c = config_utils.load_config_file("configs/scaling_arith.py")
  c.verifiers = ("confidence",)
  with pytest.raises(ValueError, match=r"config\.verifiers.*'confidence'.*arith"):
    scaling.validate_sweep(c)


def _problem(answer):
  return gsm8k.GSMProblem("q", "s", answer, 0, 0)


def test_grading_both_rules_counts_unparsable():
  """Hand-made completions: strict needs a marked answer, flexible falls back
  to the last number; no answer is unparsable (a miss, never dropped)."""
  task = sweep_tasks.GSM8KTask(gsm_config(answer_rule="strict"))
  assert task.rules == ("strict", "flexible")
  texts = [
    "She earns 9 * 2 = 18 dollars.\n#### 18",  # correct, both rules
    "So she has 18 eggs left.",  # unmarked: strict unparsable, flexible correct
    "The answer is \\boxed{1,000}",  # commas
    "I do not know.",  # no number: unparsable under both
    "The answer is 17.",  # wrong
  ]
  golds = ["18", "18", "1000", "18", "18"]
  graded = [[task.grade(_problem(g), t) for t, g in zip(texts, golds)]]
  arrays = scaling.grade_arrays(task, graded)
  np.testing.assert_array_equal(arrays["correct_strict"][0], [1, 0, 1, 0, 0])
  np.testing.assert_array_equal(arrays["correct_flexible"][0], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(arrays["unparsable_strict"][0], [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(arrays["unparsable_flexible"][0], [0, 0, 0, 1, 0])
  np.testing.assert_array_equal(arrays["correct"], arrays["correct_strict"])  # headline
  # equal values share an answer id across spellings (18 and 18.0 would too)
  assert arrays["answers_flexible"][0, 0] == arrays["answers_flexible"][0, 1]
  assert arrays["answers_strict"][0, 1] == -1


class _SyntheticTask(sweep_tasks.GSM8KTask):
  """GSM8KTask's scoring with made-up token ids (no tokenizer needed)."""

  delimiter_ids = (5, 6)
  stop_ids = (2,)


def test_pool_confidence_equals_the_search_scorer():
  """The pool's step confidences (bon_prm_*@confidence) are what
  ConfidenceScorer gives the same steps inside a search; the sample's is
  exp(mean log-prob) over all its tokens."""
  task = _SyntheticTask(gsm_config(verifiers=("confidence",), max_steps=3))
  rng = np.random.default_rng(0)
  toks = np.array([[[7, 8, 5, 9, 6, 10, 2, 0], [7, 6, 8, 9, 5, 2, 0, 0]]])
  lens = np.array([[7, 6]])
  logprobs = np.log(rng.uniform(0.05, 1.0, toks.shape)).astype(np.float32)
  out = task.pool_scores(None, None, None, toks, lens, logprobs)
  scorer = ConfidenceScorer("mean_logprob")
  for n in range(2):
    ends = [i for i in range(lens[0, n]) if toks[0, n, i] in (5, 6, 2)][:3]
    starts = [0] + [e + 1 for e in ends[:-1]]
    for j, (a, b) in enumerate(zip(starts, ends)):
      S = 4
      seg = np.zeros((1, S), np.int32)
      lp = np.zeros((1, S), np.float32)
      seg[0, : b + 1 - a] = toks[0, n, a : b + 1]
      lp[0, : b + 1 - a] = logprobs[0, n, a : b + 1]
      step = Step(jnp.asarray(seg), jnp.asarray([b + 1 - a]), jnp.asarray(lp), None, 0)
      _, want = scorer.score(None, None, step, jnp.asarray([True]))
      assert out["prm_steps"][0, n, j] == pytest.approx(float(want[0]), rel=1e-5)
    assert out["prm_mask"][0, n].sum() == len(ends)
    mean = logprobs[0, n, : lens[0, n]].mean()
    assert out["orm"][0, n] == pytest.approx(np.exp(mean), rel=1e-5)


@pytest.mark.smollm
def test_small_smollm2_gsm8k_sweep_reports_both_rules_and_resumes(tmp_path):
  """A real (tiny) sweep: SmolLM2 on 2 GSM8K problems, every selection row
  under both verifiers, PF guided by the confidence, greedy; every row has
  both rules with their unparsable fractions, which match the pool; a rerun
  adds nothing."""
  from jaxllm.pretrained import pretrained_path

  try:
    pretrained_path(gsm_config().model)
  except ValueError as e:
    pytest.skip(f"SmolLM2 GGUF not installed (run `make smollm`): {e}")
  if not gsm8k.data_available():
    pytest.skip("GSM8K data missing: make gsm8k-data")
  c = gsm_config(
    n_problems=2,
    pool_size=2,
    budgets=(1, 2),
    max_new_tokens=12,
    max_steps=3,
    max_step_tokens=6,
    search_methods=("pf",),
    search_budgets=(2,),
    rows_per_call=4,
    search_problems_per_call=1,  # two search calls, their results joined
  )
  out = str(tmp_path / "sweep")
  s1 = scaling.run_sweep(c, out, log=lambda _: None)
  plan = scaling.validate_sweep(c)
  assert s1["new_rows"] == len(plan.keys())
  pool = dict(np.load(os.path.join(out, "pool_seed0.npz")))
  assert (
    pool["genrm"].shape == (2, 2)
    and ((pool["genrm"] >= 0) & (pool["genrm"] <= 1)).all()
  )
  with open(os.path.join(out, "rows.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for r in rows:
    assert set(r["rules"]) == {"flexible", "strict"}, r["method"]
    assert r["rules"]["flexible"]["accuracy"] == pytest.approx(r["accuracy"])
    if r["method"] == "coverage":
      for rule in ("flexible", "strict"):
        assert r["rules"][rule]["unparsable"] == pytest.approx(
          pool[f"unparsable_{rule}"].mean()
        )
  genrm = [r for r in rows if r["method"] == "bon_orm@genrm"][0]
  assert genrm["compute"]["verifier_tokens"] > 0  # the verifier is charged
  conf = [r for r in rows if r["method"] == "bon_orm@confidence"][0]
  assert conf["compute"]["verifier_tokens"] == 0  # the confidence is free
  s2 = scaling.run_sweep(
    ml_collections.ConfigDict(c.to_dict()), out, log=lambda _: None
  )
  assert s2["new_rows"] == 0 and s2["pools_generated"] == 0
  # free this worker's copy of SmolLM2 (conftest frees the compiled programs)
  sweep_tasks._pretrained.cache_clear()
  sweep_tasks.newline_ids.cache_clear()
