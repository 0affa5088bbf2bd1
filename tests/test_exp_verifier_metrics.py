"""train_verifier's test metrics use the one selection / aggregation code."""

import numpy as np

from experiments import train_verifier as tv


def _sample(problem, step_pos, correct):
  return tv.Sample(
    problem=problem,
    tokens=[0] * 10,
    prompt_len=1,
    step_pos=step_pos,
    step_labels=[True] * len(step_pos),
    step_conf=[1.0] * len(step_pos),
    correct=correct,
  )


SAMPLES = [
  _sample(0, [2, 4], False),
  _sample(0, [], True),
  _sample(1, [3], True),
  _sample(1, [2, 5], False),
]
TOKEN_SCORES = [
  np.array([0, 0, 0.9, 0, 0.5] + [0] * 5),
  np.zeros(10),
  np.array([0, 0, 0, 0.7] + [0] * 6),
  np.array([0, 0, 0.8, 0, 0, 0.6] + [0] * 4),
]


def test_prm_outcome_scores_no_step_is_minus_inf():
  # Hand-computed: min / last over the scored step positions.
  np.testing.assert_allclose(
    tv.prm_outcome_scores(SAMPLES, TOKEN_SCORES, "min"), [0.5, -np.inf, 0.7, 0.6]
  )
  np.testing.assert_allclose(
    tv.prm_outcome_scores(SAMPLES, TOKEN_SCORES, "last"), [0.5, -np.inf, 0.7, 0.6]
  )


def test_best_of_n_unscored_and_nan_rank_last():
  mins = tv.prm_outcome_scores(SAMPLES, TOKEN_SCORES, "min")
  # Problem 0 picks sample 0 (wrong): the unscored sample ranks last even
  # though it is correct. Problem 1 picks 0.7 (right).
  assert tv.best_of_n(SAMPLES, mins, 2) == 0.5
  # A NaN score ranks below every number (the old code kept a leading NaN).
  assert tv.best_of_n(SAMPLES, [np.nan, 0.1, 0.2, np.nan], 2) == 1.0
