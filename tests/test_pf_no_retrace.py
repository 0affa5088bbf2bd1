"""The particle filter's sampling settings and weight temperature are traced:
a temperature sweep compiles once (like generate's no-retrace test)."""

import jax
import jax.numpy as jnp
import numpy as np

from algorithms import particle_filter as pf
from algorithms.scorers import ConfidenceScorer
from jaxllm import BigramLM


def test_temperature_sweep_traces_once():
  table = jax.random.normal(jax.random.key(0), (5, 5))
  base = dict(
    n_particles=3,
    max_steps=3,
    max_step_tokens=2,
    delimiter_ids=(4,),
    stop_ids=(2,),
    scheme="systematic",
    weighting="smc",
    ess_threshold=0.5,
  )
  runs = [
    dict(sampling_temperature=1.0, weight_temperature=1.0),
    dict(sampling_temperature=0.5, weight_temperature=1.0),
    dict(sampling_temperature=0.5, weight_temperature=3.0, ess_threshold=0.9),
    dict(sampling_temperature=0.0, weight_temperature=0.25),
  ]
  counts, results = [], []
  for kw in runs:
    cfg = pf.PFConfig(**{**base, **kw})
    r, _ = pf.run_particle_filter(
      BigramLM(5),
      table,
      ConfidenceScorer(),
      None,
      [[1, 3], [0]],
      jax.random.key(1),
      cfg,
    )
    results.append(r)
    counts.append(pf.TRACE_COUNT["particle_filter"])
  assert counts[1:] == [counts[0]] * 3, counts
  # The traced values are used: greedy sampling makes the particles equal.
  toks = np.asarray(results[-1].tokens)
  assert (toks == toks[:, :1]).all()


def test_prm_logit_weight_temperature_traces_once():
  table = jnp.zeros((4, 4))
  base = dict(n_particles=4, max_steps=2, max_step_tokens=1, stop_ids=(2,))
  before = None
  for T in (1.0, 2.0):
    cfg = pf.PFConfig(weight_temperature=T, **base)
    pf.run_particle_filter(
      BigramLM(4), table, ConfidenceScorer(), None, [[1]], jax.random.key(0), cfg
    )
    n = pf.TRACE_COUNT["particle_filter"]
    assert before is None or n == before
    before = n


def test_deprecated_reference_weighting_is_prm_logit():
  import warnings

  with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    cfg = pf.PFConfig(stop_ids=(1,), weighting="reference")
  assert cfg.weighting == "prm_logit"
  assert any(issubclass(x.category, DeprecationWarning) for x in w)
  assert cfg == pf.PFConfig(stop_ids=(1,), weighting="prm_logit")
