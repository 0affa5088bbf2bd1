"""Step boundaries as token SEQUENCES (a blank line written as two "\\n"
tokens): a BigramLM with forced transitions makes every step deterministic,
so the expected steps are computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.particle_filter import PFConfig, run_particle_filter
from algorithms.scorers import ConfidenceScorer
from algorithms.stepping import BUDGET, DELIMITER, STOP, id_sequences, sample_step
from jaxllm import BigramLM
from jaxllm.sampling import make_sampling

V = 6
NEXT = {0: 1, 1: 4, 4: 3, 3: 1, 2: 2, 5: 3}  # forced transitions: 0 1 4 3 1 4 3 ...


def _table():
  t = np.full((V, V), -1e9, np.float32)
  for a, b in NEXT.items():
    t[a, b] = 0.0
  return jnp.asarray(t)


def _steps(prompts, S, delimiter_ids, stop_ids, n_steps=1):
  model, table = BigramLM(V), _table()
  lengths = jnp.array([len(p) for p in prompts])
  T = max(len(p) for p in prompts)
  toks = jnp.array([p + [0] * (T - len(p)) for p in prompts])
  state, logits = model.prefill(table, toks, lengths, 0)
  out = []
  for i in range(n_steps):
    state, logits, step = sample_step(
      model,
      table,
      state,
      logits,
      jax.random.key(i),
      make_sampling(1.0),
      max_step_tokens=S,
      delimiter_ids=delimiter_ids,
      stop_ids=stop_ids,
    )
    out.append(
      [
        (list(np.asarray(step.tokens[b, : step.length[b]])), int(step.ended[b]))
        for b in range(len(prompts))
      ]
    )
  return out


def test_two_token_delimiter_ends_the_step_on_its_last_token():
  # From prompt [0]: 1 4 3 | 1 4 3 ... ; "4 3" is the two-token delimiter.
  ((s,),) = _steps([[0]], 5, ((4, 3),), (2,))
  assert s == ([1, 4, 3], DELIMITER)
  # The single id 3 alone would end it at the same token; the single id 4 earlier.
  ((s,),) = _steps([[0]], 5, (4,), (2,))
  assert s == ([1, 4], DELIMITER)


def test_sequence_never_matches_across_the_step_boundary():
  # Budget S = 2: step 1 = 1 4 (budget). Step 2 starts with 3: "4 | 3" spans the
  # boundary and must not end it; step 2 = 3 1 (budget).
  s1, s2 = _steps([[0]], 2, ((4, 3),), (2,), n_steps=2)
  assert s1 == [([1, 4], BUDGET)]
  assert s2 == [([3, 1], BUDGET)]
  # A prompt ending in 4 does not complete the delimiter with the first token 3:
  # 3 1 4 3 is the step (ragged rows: lengths 3 and 4 in one batch).
  ((a, b),) = _steps([[0], [5, 4]], 5, ((4, 3),), (2,))
  assert a == ([1, 4, 3], DELIMITER) and b == ([3, 1, 4, 3], DELIMITER)


def test_stop_sequence_wins_over_delimiter_and_mixed_forms():
  # Stop "4 3" and delimiter 3 both end at the same token: STOP.
  ((s,),) = _steps([[0]], 5, (3,), ((4, 3),))
  assert s == ([1, 4, 3], STOP)
  # Mixed: a single id and a sequence; 1 ends the step first from prompt [3]...
  ((s,),) = _steps([[3]], 5, (1, (4, 3)), ())
  assert s == ([1], DELIMITER)
  # ... and a three-token delimiter 1 4 3 needs all three.
  ((s,),) = _steps([[0]], 5, ((1, 4, 3),), ())
  assert s == ([1, 4, 3], DELIMITER)
  ((s,),) = _steps([[4]], 5, ((1, 4, 3),), ())  # 3 1 4 3: matches at the end
  assert s == ([3, 1, 4, 3], DELIMITER)


def test_id_sequences_normalisation_and_errors():
  assert id_sequences("d", 3) == (3,)
  assert id_sequences("d", [3, 4]) == (3, 4)  # flat: single ids, as before
  assert id_sequences("d", (2, (198, 198))) == ((2,), (198, 198))
  assert id_sequences("d", [[198, 198], [271]]) == ((198, 198), (271,))
  with pytest.raises(ValueError, match="empty token sequence"):
    id_sequences("d", ((1,), ()))
  with pytest.raises(ValueError, match="^d must be integer token ids"):
    id_sequences("d", ((1, 1.5),))
  with pytest.raises(ValueError, match="longer than max_step_tokens"):
    _steps([[0]], 2, ((1, 4, 3),), ())
  with pytest.raises(ValueError, match=r"delimiter_ids token ids must be in"):
    _steps([[0]], 3, ((1, V),), ())
  with pytest.raises(ValueError, match=r"PFConfig\.delimiter_ids token ids"):
    run_particle_filter(
      BigramLM(V),
      _table(),
      ConfidenceScorer(),
      None,
      [[0]],
      jax.random.key(0),
      PFConfig(stop_ids=(2,), delimiter_ids=((1, 9),)),
    )


def test_particle_filter_steps_at_a_sequence_delimiter():
  cfg = PFConfig(
    n_particles=3,
    max_steps=3,
    max_step_tokens=4,
    delimiter_ids=((4, 3),),
    stop_ids=((3, 1, 4),),
  )
  r, comp = run_particle_filter(
    BigramLM(V), _table(), ConfidenceScorer(), None, [[0]], jax.random.key(0), cfg
  )
  # Step 1: 1 4 3 (delimiter). Step 2: 1 4 3 (the stop "3 1 4" spans the
  # boundary: no match). Step 3: 1 4 3 again; never stops within 3 steps.
  np.testing.assert_array_equal(np.asarray(r.step_lengths)[0], [[3, 3, 3]] * 3)
  np.testing.assert_array_equal(np.asarray(r.tokens)[0, :, :9], [[1, 4, 3] * 3] * 3)
  assert not np.asarray(r.finished).any()
  assert comp.generated_tokens == 27
