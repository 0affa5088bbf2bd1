"""Bad inputs at every public entry point raise ValueError naming the argument.

One sweep per kind of bad input (token ids outside [0, V), ids that are not
integers or do not fit int64, stop / delimiter ids outside the vocabulary, a
bad pad_id, budgets beyond max_seq_len or the cache, a max_new_B of the wrong
shape) over generate, particle filtering, beam search, DVTS, A*, speculative
decoding, the training batch builders and loss, drafts' sub_vocab_maps and
sample_step. Every check runs on the host before any model call, so nothing
here compiles except the few positive cases at the end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import drafts
from algorithms.astar import AStarConfig, run_astar
from algorithms.beam_search import BeamConfig, run_beam_search, run_dvts
from algorithms.particle_filter import PFConfig, run_particle_filter
from algorithms.scorers import ConfidenceScorer
from algorithms.speculative import SpecConfig, speculative_generate
from algorithms.stepping import sample_step
from jaxllm import train
from jaxllm.config import ModelConfig
from jaxllm.decoding import BigramLM, Transformer
from jaxllm.generate import generate
from jaxllm.sampling import make_sampling

V = 8
MODEL = BigramLM(V)
TABLE = jnp.zeros((V, V))
KEY = jax.random.key(0)
# A tiny transformer config: only its max_seq_len matters (checks run before
# any parameter is read, so params are None).
TCFG = ModelConfig(
  vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_seq_len=24
)
TMODEL = Transformer(TCFG)

# Token-id values that are wrong in different ways, each with the start of the
# message it must give (the argument name is prepended by the test).
BAD_IDS = [
  (V, r"token ids must be in \[0, 8\), got range"),
  (-1, r"token ids must be in \[0, 8\), got range"),
  (2**40, r"token ids must be in \[0, 8\), got range"),
  (2**70, "must be integer token ids"),
  (1.5, "must be integer token ids"),
]


def _gen(prompts=((1, 2),), **kw):
  kw.setdefault("max_new_tokens", 4)
  return generate(
    kw.pop("model", MODEL), kw.pop("params", TABLE), list(prompts), KEY, **kw
  )


def _pf(prompts=((1, 2),), model=MODEL, **cfg):
  cfg.setdefault("stop_ids", (3,))
  cfg.setdefault("n_particles", 2)
  cfg.setdefault("max_steps", 2)
  cfg.setdefault("max_step_tokens", 2)
  return run_particle_filter(
    model, TABLE, ConfidenceScorer(), None, list(prompts), KEY, PFConfig(**cfg)
  )


def _beam(prompts=((1, 2),), model=MODEL, dvts=False, **cfg):
  cfg.setdefault("stop_ids", (3,))
  cfg.setdefault("n_paths", 4)
  cfg.setdefault("beam_width", 2)
  cfg.setdefault("max_steps", 2)
  cfg.setdefault("max_step_tokens", 2)
  run = run_dvts if dvts else run_beam_search
  return run(
    model, TABLE, ConfidenceScorer(), None, list(prompts), KEY, BeamConfig(**cfg)
  )


def _astar(prompts=((1, 2),), model=MODEL, pad_id=0, **cfg):
  cfg.setdefault("stop_ids", (3,))
  cfg.setdefault("max_step_tokens", 2)
  cfg.setdefault("max_solution_tokens", 4)
  return run_astar(
    model,
    TABLE,
    ConfidenceScorer(),
    None,
    list(prompts),
    KEY,
    AStarConfig(**cfg),
    pad_id=pad_id,
  )


def _spec(prompts=((1, 2),), model=MODEL, **cfg):
  return speculative_generate(
    model, TABLE, model, TABLE, list(prompts), KEY, SpecConfig(**cfg)
  )


def _step(max_step_tokens=2, delimiter_ids=(), stop_ids=(3,), **kw):
  """`sample_step` of one row of the bigram model (state None, zero logits)."""
  return sample_step(
    MODEL,
    TABLE,
    None,
    jnp.zeros((1, V)),
    KEY,
    make_sampling(),
    max_step_tokens=max_step_tokens,
    delimiter_ids=delimiter_ids,
    stop_ids=stop_ids,
    **kw,
  )


PROMPT_ENTRIES = {
  "generate": lambda p: _gen(p),
  "particle_filter": lambda p: _pf(p),
  "beam_search": lambda p: _beam(p),
  "dvts": lambda p: _beam(p, dvts=True),
  "astar": lambda p: _astar(p),
  "speculative": lambda p: _spec(p),
}


# ---------------------------------------------------------------------------
# 1. Prompt token ids: same message at every decoding entry point.


@pytest.mark.parametrize("entry", sorted(PROMPT_ENTRIES))
@pytest.mark.parametrize("bad,msg", BAD_IDS)
def test_prompt_ids_checked_everywhere(entry, bad, msg):
  with pytest.raises(ValueError, match="^prompts " + msg):
    PROMPT_ENTRIES[entry]([[1, 2], [3, bad]])


@pytest.mark.parametrize("entry", sorted(PROMPT_ENTRIES))
def test_malformed_prompts_named(entry):
  with pytest.raises(ValueError, match="prompts is empty"):
    PROMPT_ENTRIES[entry]([])
  with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
    PROMPT_ENTRIES[entry]([[1], []])
  with pytest.raises(ValueError, match=r"prompts\[0\] has shape \(\)"):
    PROMPT_ENTRIES[entry]([1, 2])  # a flat list: not a list of prompts


def test_padded_prompt_array_checks_only_valid_positions():
  # Padding after a row's length is ignored (and re-padded with pad_id) ...
  out = generate(
    MODEL, TABLE, np.array([[1, 99], [2, 3]]), KEY, 1, prompt_lengths=[1, 2]
  )
  assert out.tokens.shape == (2, 1)
  # ... but ids inside the rows are checked, and so are the lengths.
  with pytest.raises(ValueError, match=r"^prompts token ids .*\[1, 99\]"):
    generate(MODEL, TABLE, np.array([[1, 99]]), KEY, 1, prompt_lengths=[2])
  with pytest.raises(
    ValueError,
    match=r"prompt_lengths must be integers in "
    r"\[1, 2\]",
  ):
    generate(MODEL, TABLE, np.array([[1, 2]]), KEY, 1, prompt_lengths=[3])
  with pytest.raises(ValueError, match="prompt_lengths"):
    generate(MODEL, TABLE, np.array([[1, 2]]), KEY, 1, prompt_lengths=[1.5])


def test_astar_prompt_outside_vocab_raises():
  """The issue's case: [1, 99] with V = 32 used to run as [1, 31]."""
  with pytest.raises(
    ValueError,
    match=r"^prompts token ids must be in "
    r"\[0, 32\), got range \[1, 99\]",
  ):
    run_astar(
      BigramLM(32),
      jnp.zeros((32, 32)),
      ConfidenceScorer(),
      None,
      [[1, 99]],
      KEY,
      AStarConfig(stop_ids=(3,), max_step_tokens=2, max_solution_tokens=4),
    )


def test_astar_reads_a_list_of_two_prompts_as_two_prompts():
  """Uniform-cost search (lm cost only, h = 0) over one-token steps, V = 4,
  STOP = 3. From token 1 the cheapest solution is (2, 3): -log .88 - log .97
  = 0.158 < -log .10 = 2.30; from token 2 it is (3,): -log .97 = 0.030.
  Prompts [2, 1] and [2] (ragged, given as a list) end in 1 and 2."""
  probs = np.full((4, 4), 0.25)
  probs[1] = [0.01, 0.01, 0.88, 0.10]
  probs[2] = [0.01, 0.01, 0.01, 0.97]
  cfg = AStarConfig(
    expansion="enumerate",
    stop_ids=(3,),
    max_solution_tokens=2,
    capacity=16,
    heuristic="zero",
    prm_weight=0.0,
    lm_weight=1.0,
  )
  res, comp = run_astar(
    BigramLM(4),
    jnp.asarray(np.log(probs), jnp.float32),
    ConfidenceScorer(),
    None,
    [[2, 1], [2]],
    KEY,
    cfg,
  )
  assert res.tokens.shape == (2, 2)
  np.testing.assert_array_equal(res.length, [2, 1])
  np.testing.assert_array_equal(np.asarray(res.tokens)[0], [2, 3])
  assert int(res.tokens[1, 0]) == 3
  assert bool(np.all(res.by_search))
  np.testing.assert_allclose(
    res.g, [-np.log(0.88) - np.log(0.97), -np.log(0.97)], rtol=1e-5
  )
  assert comp.prefill_tokens == 3  # 2 + 1 prompt tokens: two prompts
  # The old (tokens, lengths) tuple form is not a second convention: it is
  # read as two prompts, and the first one is not a token list.
  with pytest.raises(ValueError, match=r"prompt_lengths"):
    run_astar(
      BigramLM(4),
      jnp.zeros((4, 4)),
      ConfidenceScorer(),
      None,
      (np.array([[2, 1], [2, 0]]), np.array([2, 1])),
      KEY,
      cfg,
    )


# ---------------------------------------------------------------------------
# 2. Stop / delimiter / candidate ids.

STOP_ENTRIES = {
  "generate.stop_tokens": (lambda ids: _gen(stop_tokens=ids), "stop_tokens"),
  "pf.stop_ids": (lambda ids: _pf(stop_ids=ids), r"PFConfig\.stop_ids"),
  "pf.delimiter_ids": (lambda ids: _pf(delimiter_ids=ids), r"PFConfig\.delimiter_ids"),
  "beam.stop_ids": (lambda ids: _beam(stop_ids=ids), r"BeamConfig\.stop_ids"),
  "beam.delimiter_ids": (
    lambda ids: _beam(delimiter_ids=ids),
    r"BeamConfig\.delimiter_ids",
  ),
  "dvts.stop_ids": (
    lambda ids: _beam(dvts=True, stop_ids=ids),
    r"BeamConfig\.stop_ids",
  ),
  "astar_sample.stop_ids": (lambda ids: _astar(stop_ids=ids), r"AStarConfig\.stop_ids"),
  "astar_sample.delimiter_ids": (
    lambda ids: _astar(delimiter_ids=ids),
    r"AStarConfig\.delimiter_ids",
  ),
  "astar_enum.candidate_steps": (
    lambda ids: _astar(
      expansion="enumerate", max_step_tokens=1, candidate_steps=((1,), tuple(ids)[::-1])
    ),
    r"AStarConfig\.candidate_steps",
  ),
  "sample_step.stop_ids": (
    lambda ids: _step(stop_ids=ids),
    "stop_ids",
  ),
  "sample_step.delimiter_ids": (
    lambda ids: _step(delimiter_ids=ids),
    "delimiter_ids",
  ),
}


@pytest.mark.parametrize("entry", sorted(STOP_ENTRIES))
@pytest.mark.parametrize("bad,msg", BAD_IDS)
def test_stop_and_delimiter_ids_checked_everywhere(entry, bad, msg):
  call, name = STOP_ENTRIES[entry]
  with pytest.raises(ValueError, match="^" + name + " " + msg):
    call((3, bad))


def test_no_stop_token_is_an_explicit_choice():
  """PF without a stop token: rejected by default, allowed with
  allow_no_stop (every particle then runs exactly max_steps * S tokens)."""
  with pytest.raises(ValueError, match="PFConfig.stop_ids is empty"):
    PFConfig(stop_ids=())
  res, comp = _pf(
    stop_ids=(), allow_no_stop=True, n_particles=2, max_steps=3, max_step_tokens=2
  )
  np.testing.assert_array_equal(res.lengths, [[6, 6]])
  assert comp.generated_tokens == 12
  assert not bool(np.any(res.finished))


# ---------------------------------------------------------------------------
# 3. pad_id: checked first, named, at every entry point that takes one.

PAD_ENTRIES = {
  "generate": (lambda pad: _gen(pad_id=pad), "pad_id"),
  "particle_filter": (lambda pad: _pf(pad_id=pad), r"PFConfig\.pad_id"),
  "beam_search": (lambda pad: _beam(pad_id=pad), r"BeamConfig\.pad_id"),
  "dvts": (lambda pad: _beam(dvts=True, pad_id=pad), r"BeamConfig\.pad_id"),
  "astar": (lambda pad: _astar(pad_id=pad), "pad_id"),
  "speculative": (lambda pad: _spec(pad_id=pad), r"SpecConfig\.pad_id"),
  "pad_batch": (
    lambda pad: train.pad_batch([[1, 2]], pad_id=pad, vocab_size=V),
    "pad_id",
  ),
  "pack_batch": (
    lambda pad: train.pack_batch([[1, 2]], 4, pad_id=pad, vocab_size=V),
    "pad_id",
  ),
  "pack_stream": (
    lambda pad: train.pack_stream(iter([[1, 2]]), 4, 1, pad_id=pad, vocab_size=V),
    "pad_id",
  ),
  "sample_step": (
    lambda pad: _step(pad_id=pad),
    "pad_id",
  ),
}


@pytest.mark.parametrize("entry", sorted(PAD_ENTRIES))
@pytest.mark.parametrize("bad,msg", BAD_IDS)
def test_pad_id_checked_first_everywhere(entry, bad, msg):
  call, name = PAD_ENTRIES[entry]
  with pytest.raises(ValueError, match="^" + name + " " + msg):
    call(bad)


@pytest.mark.parametrize(
  "entry", ["generate", "particle_filter", "astar", "speculative"]
)
def test_pad_id_named_before_prompts(entry):
  """A bad pad_id with bad prompts too: the pad_id is reported (it is the
  argument that is wrong in itself), never as a prompt id."""
  call = {
    "generate": lambda: _gen([[1, 99]], pad_id=-1),
    "particle_filter": lambda: _pf([[1, 99]], pad_id=-1),
    "astar": lambda: _astar([[1, 99]], pad_id=-1),
    "speculative": lambda: _spec([[1, 99]], pad_id=-1),
  }[entry]
  with pytest.raises(ValueError, match=r"pad_id token ids .*\[-1, -1\]"):
    call()


def test_pad_id_must_be_one_id():
  with pytest.raises(ValueError, match="pad_id must be a single integer"):
    _gen(pad_id=[0, 1])
  with pytest.raises(ValueError, match=r"PFConfig\.pad_id must be a single"):
    PFConfig(stop_ids=(1,), pad_id=(0,))


# ---------------------------------------------------------------------------
# 4. Budgets and sizes: the limit, or a clear error naming the setting.


def test_generate_max_new_B_shape_and_range():
  with pytest.raises(
    ValueError,
    match=r"max_new_B must have shape "
    r"\[B \* num_samples\] = \[2\], got \(1,\)",
  ):
    _gen([[1], [2]], max_new_B=np.array([2]))
  with pytest.raises(ValueError, match=r"max_new_B must have shape .*\[4\]"):
    _gen([[1], [2]], num_samples=2, max_new_B=np.array([1, 1]))
  for bad in ([5, 1], [-1, 1], [1.0, 2.0]):
    with pytest.raises(
      ValueError,
      match=r"max_new_B must be integers in "
      r"\[0, max_new_tokens=4\]",
    ):
      _gen([[1], [2]], max_new_B=np.array(bad))


def test_generate_budget_limits():
  with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
    _gen(max_new_tokens=0)
  with pytest.raises(ValueError, match="max_new_tokens must be an integer"):
    _gen(max_new_tokens=2.0)
  with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
    _gen(num_samples=0)
  with pytest.raises(
    ValueError,
    match=r"max_new_tokens=1099511627776 = "
    r"1099511627778 tokens exceeds the int32 position range",
  ):
    _gen(max_new_tokens=2**40)  # BigramLM: no max_seq_len, still bounded
  with pytest.raises(
    ValueError,
    match=r"prompt length 2 \+ max_new_tokens=23 "
    r"= 25 tokens exceeds ModelConfig\.max_seq_len=24",
  ):
    _gen(model=TMODEL, params=None, max_new_tokens=23)
  with pytest.raises(ValueError, match="exceeds cache_size=4"):
    _gen(cache_size=4)
  with pytest.raises(ValueError, match="cache_size must be an integer >= 1"):
    _gen(cache_size=0)


def test_search_budget_limits():
  # Beyond max_seq_len (prompt 2 + 3 steps * 8 tokens = 26 > 24).
  with pytest.raises(ValueError, match=r"ModelConfig\.max_seq_len=24"):
    _pf(model=TMODEL, max_steps=3, max_step_tokens=8)
  with pytest.raises(ValueError, match=r"ModelConfig\.max_seq_len=24"):
    _beam(model=TMODEL, max_steps=3, max_step_tokens=8)
  with pytest.raises(ValueError, match=r"ModelConfig\.max_seq_len=24"):
    _beam(model=TMODEL, dvts=True, max_steps=3, max_step_tokens=8)
  with pytest.raises(
    ValueError,
    match=r"max_solution_tokens=23 = 25 tokens "
    r"exceeds ModelConfig\.max_seq_len=24",
  ):
    _astar(model=TMODEL, max_solution_tokens=23)
  with pytest.raises(ValueError, match=r"ModelConfig\.max_seq_len=24"):
    _spec(model=TMODEL, max_new_tokens=20)
  # Beyond int32 positions (BigramLM has no max_seq_len).
  with pytest.raises(ValueError, match="int32 position range"):
    _pf(max_steps=2**31)
  with pytest.raises(ValueError, match="int32 position range"):
    _astar(max_solution_tokens=2**31)
  with pytest.raises(ValueError, match="int32 position range"):
    _spec(max_new_tokens=2**31)
  # Cache too small.
  with pytest.raises(ValueError, match=r"exceeds PFConfig\.cache_size=4"):
    _pf(cache_size=4)
  with pytest.raises(ValueError, match=r"exceeds BeamConfig\.cache_size=4"):
    _beam(cache_size=4)
  with pytest.raises(ValueError, match=r"exceeds SpecConfig\.cache_size=4"):
    _spec(cache_size=4)
  with pytest.raises(
    ValueError,
    match=r"SpecConfig\.cache_size must be an "
    r"integer >= 1",
  ):
    SpecConfig(cache_size=0)  # 0 used to mean "default"
  # Zero / fractional step and tree sizes.
  with pytest.raises(ValueError, match=r"PFConfig\.max_step_tokens"):
    PFConfig(stop_ids=(1,), max_step_tokens=0)
  with pytest.raises(ValueError, match=r"BeamConfig\.max_step_tokens"):
    BeamConfig(stop_ids=(1,), max_step_tokens=0)
  with pytest.raises(
    ValueError,
    match=r"AStarConfig\.max_step_tokens must be "
    r"an integer >= 1, got 0",
  ):
    AStarConfig(max_step_tokens=0)
  with pytest.raises(
    ValueError,
    match=r"SpecConfig\.gamma must be an integer "
    r">= 1, got 1\.5",
  ):
    SpecConfig(gamma=1.5)
  with pytest.raises(ValueError, match="max_step_tokens must be an integer"):
    _step(max_step_tokens=0)


def test_pf_init_reference_ids_checked():
  ref = (np.full((1, 2, 2), 9), np.ones((1, 2), np.int32), np.zeros((1, 2), np.int32))
  with pytest.raises(
    ValueError,
    match=r"init_reference step_tokens token ids "
    r"must be in \[0, 8\)",
  ):
    run_particle_filter(
      MODEL,
      TABLE,
      ConfidenceScorer(),
      None,
      [[1]],
      KEY,
      PFConfig(stop_ids=(3,), n_particles=2, max_steps=2, max_step_tokens=2),
      init_reference=ref,
    )


# ---------------------------------------------------------------------------
# 5. Training batches and loss; drafts' vocabulary maps.


@pytest.mark.parametrize("bad,msg", BAD_IDS)
def test_training_builders_check_ids(bad, msg):
  with pytest.raises(ValueError, match="^completion_ids " + msg):
    train.lm_example([1, 2], [3, bad], vocab_size=V)
  with pytest.raises(ValueError, match="^prompt_ids " + msg):
    train.lm_example([bad], [3], vocab_size=V)
  with pytest.raises(ValueError, match=r"^examples\[1\] tokens " + msg):
    train.pad_batch([[1, 2], [3, bad]], vocab_size=V)
  with pytest.raises(ValueError, match=r"^examples\[0\] tokens " + msg):
    train.pack_batch([([1, bad], [0, 1])], 4, vocab_size=V)
  with pytest.raises(ValueError, match=r"^examples\[0\] tokens " + msg):
    train.pack_stream(iter([[1, bad]]), 4, 1, vocab_size=V)


def test_training_builders_without_vocab_check_int32():
  """Without vocab_size only the int32 range can be checked (V unknown)."""
  assert train.lm_example([1], [9]) == ([1, 9], [0, 1])
  with pytest.raises(
    ValueError,
    match=r"^completion_ids token ids must be in "
    r"\[0, 2147483648\)",
  ):
    train.lm_example([1], [2**40])
  with pytest.raises(ValueError, match=r"^examples\[0\] tokens token ids"):
    train.pad_batch([[1, -3]])


def test_loss_checks_target_ids_when_concrete():
  """A target id >= V used to give a NaN loss; eagerly it now raises (params
  are never read: the check comes first)."""
  tokens = np.array([[1, 2, V]])
  with pytest.raises(
    ValueError,
    match=r"^tokens_BxT token ids must be in "
    r"\[0, 8\), got range \[1, 8\]",
  ):
    train.lm_loss(None, TCFG, tokens, np.ones_like(tokens))
  with pytest.raises(ValueError, match="^tokens_BxT"):
    train.make_lm_loss_fn(TCFG)(
      None, {"tokens": tokens, "loss_mask": np.ones_like(tokens)}, KEY
    )


@pytest.mark.parametrize("bad,msg", BAD_IDS)
def test_sub_vocab_maps_checks_ids(bad, msg):
  with pytest.raises(ValueError, match="^token_ids_K " + msg):
    drafts.sub_vocab_maps([1, bad], V)


def test_sub_vocab_maps_checks_full_vocab():
  with pytest.raises(ValueError, match="full_vocab must be an integer >= 1"):
    drafts.sub_vocab_maps([0], 0)


# ---------------------------------------------------------------------------
# 6. The boundaries themselves are valid.


def test_boundary_values_run():
  """Largest valid ids (V - 1) as stop and pad ids, and budgets 0 and
  max_new_tokens in one batch. Greedy on a table whose argmax after x is
  x + 1: prompt [1] continues 2, 3, 4."""
  table = jnp.asarray(
    10.0 * np.eye(V, k=1)[:, :V] + 10.0 * np.eye(V, k=-(V - 1)), jnp.float32
  )
  out = generate(
    MODEL,
    table,
    [[1]],
    KEY,
    3,
    make_sampling(0.0),
    stop_tokens=np.array([V - 1]),
    pad_id=V - 1,
    num_samples=2,
    max_new_B=jnp.array([0, 3]),
  )
  np.testing.assert_array_equal(out.tokens, [[V - 1] * 3, [2, 3, 4]])
  np.testing.assert_array_equal(out.lengths, [0, 3])


def test_params_that_do_not_match_the_config_are_refused_at_prefill():
  """Every decode-interface model checks the params' shapes against its config
  when it is traced (free under jit), naming the parameter: a wider, deeper or
  shallower checkpoint used to run silently (wrong logits or an XLA error)."""
  from algorithms import soft
  from jaxllm.params import init_params

  cfg = ModelConfig(
    vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=24
  )
  deeper = init_params(cfg.replace(n_layers=3), jax.random.key(0))
  wider = init_params(cfg.replace(d_model=24), jax.random.key(0))
  key = jax.random.key(1)
  with pytest.raises(ValueError, match=r"unexpected parameter .*layers\[2\]"):
    generate(Transformer(cfg), deeper, [[1, 2]], key, 2)
  with pytest.raises(ValueError, match="config expects"):
    generate(Transformer(cfg), wider, [[1, 2]], key, 2)
  with pytest.raises(ValueError, match=r"layers\[2\]"):
    generate(soft.sub_model(cfg, 1), deeper, [[1, 2]], key, 2)


def test_encdec_prompt_longer_than_the_encoder_is_refused():
  from jaxllm.encdec import EncDecConfig, init_encdec_params
  from jaxllm.encdec_decoding import EncDecTransformer

  enc = ModelConfig(
    vocab_size=32,
    d_model=16,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    d_ff=24,
    max_seq_len=4,
  )
  dec = ModelConfig(
    vocab_size=32,
    d_model=16,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    d_ff=24,
    max_seq_len=16,
  )
  cfg = EncDecConfig(enc, dec)
  params = init_encdec_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="encoder's max_seq_len"):
    generate(EncDecTransformer(cfg), params, [[1, 2, 3, 4, 5]], jax.random.key(1), 2)


def test_soft_decoders_refuse_bad_layers_and_configs():
  from algorithms import soft

  cfg = ModelConfig(
    vocab_size=32, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1, d_ff=24
  )
  for bad in ((0, 2.5), "05", (True, 2), (0, 3)):
    with pytest.raises(ValueError, match="layers"):
      soft.SkipDecoder(cfg, bad)
  for make in (
    lambda: soft.sub_model(None, 2),
    lambda: soft.SkipDecoder.for_speedup(None, 2),
    lambda: soft.EarlyExitDecoder(None, (1,), 0.5),
  ):
    with pytest.raises(ValueError, match="cfg must be a ModelConfig"):
      make()
