"""Sharding (jaxllm.sharding): mesh specs, the logical-axis rules, sharded
initialisation and checkpoint restore, and sharded decoding against one device.

Multi-device checks run in a SUBPROCESS with 8 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax
initialises, and under pytest-xdist jax is already initialised in this
process): `python tests/test_sharding.py CASE` runs one case below and prints
one JSON line; the pytest functions check it.

What is compared (sharded vs the same computation on one device):
  * init_params straight into the shardings: bit-identical.
  * checkpoints written from one mesh shape and restored onto others:
    bit-identical.
  * forward logits, generate logprobs, decode-interface (prefill / extend /
    reorder) logits: within TOL. Not bit-identical in general: with `model` > 1
    the head and d_ff contractions are split into partial sums plus an
    all-reduce, and with the batch split over `data` XLA:CPU runs smaller
    matmuls whose rounding differs (measured: |diff| ~ 2e-6 on logits of
    size ~1). Tokens (sampled with fixed keys) are compared exactly.
  * particle filtering, beam search, A* and speculative decoding with sharded
    params: tokens exactly, weights / scores within TOL.
  * the compiled HLO of one decode step has no collective as large as a
    whole KV-cache buffer; the row gathers of particle resampling and of A*
    (pool rebuild, fork) have none at all.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
N_DEVICES = 8
TOL = 1e-4  # absolute, on logits / log-probs / weights of magnitude <~ 10
MESHES = ("data=8", "data=4,model=2", "data=2,model=4")


# ----------------------------------------------------------------------------
# The subprocess driver
# ----------------------------------------------------------------------------


def run_case(case: str, *args: str, timeout: int = 240) -> dict:
  """Run `python tests/test_sharding.py case args...` with 8 CPU devices and
  return the JSON it prints last."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
    [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  )
  proc = subprocess.run(
    [sys.executable, HERE, case, *args],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, (
    f"case {case} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  assert lines, f"case {case} printed no JSON:\n{proc.stdout[-2000:]}"
  return json.loads(lines[-1])


# ----------------------------------------------------------------------------
# In-process tests (no extra devices needed)
# ----------------------------------------------------------------------------


def test_parse_mesh_spec():
  from jaxllm.sharding import parse_mesh_spec

  assert parse_mesh_spec("data=4,model=2", 8) == dict(data=4, fsdp=1, model=2)
  assert parse_mesh_spec("", 8) == dict(data=8, fsdp=1, model=1)
  assert parse_mesh_spec(None, 2) == dict(data=2, fsdp=1, model=1)
  assert parse_mesh_spec("data=-1,model=4", 16) == dict(data=4, fsdp=1, model=4)
  assert parse_mesh_spec(" fsdp=2 , model=2, data=2", 8) == dict(
    data=2, fsdp=2, model=2
  )


@pytest.mark.parametrize(
  "spec,n,words",
  [
    ("data=3,model=2", 8, ["data=3", "model=2", "= 6 devices", "8 devices"]),
    ("data=4", 2, ["data=4", "= 4 devices", "2 devices"]),
    ("data=4,tensor=2", 8, ["unknown mesh axis 'tensor'", "data, fsdp, model"]),
    ("data=4,data=2", 8, ["'data' given twice"]),
    ("data", 8, ["'data' is not 'axis=size'"]),
    ("data=x", 8, ["'data' size 'x' is not an integer"]),
    ("model=0", 8, ["'model' size must be >= 1"]),
    ("data=-1,model=-1", 8, ["only one axis may be -1"]),
    ("data=-1,model=3", 8, ["multiply to 3", "8 devices", "'data' = -1"]),
  ],
)
def test_bad_mesh_spec_names_axis_and_numbers(spec, n, words):
  from jaxllm.sharding import parse_mesh_spec

  with pytest.raises(ValueError) as e:
    parse_mesh_spec(spec, n)
  for w in words:
    assert w in str(e.value), (w, str(e.value))


def test_rules_errors_in_process():
  """Unknown logical axes / mesh axes and a device-count mismatch, on however
  many devices this process has."""
  import jax
  from jaxllm import sharding as sh

  n = len(jax.devices())
  mesh = sh.make_mesh()
  assert dict(mesh.shape) == dict(data=n, fsdp=1, model=1)
  with pytest.raises(
    ValueError,
    match=rf"data=\d+ .* = {n + 1} devices, but "
    rf"there are {n} devices",
  ):
    sh.make_mesh(f"data={n + 1}")
  with pytest.raises(ValueError, match="unknown logical axis 'layers'"):
    sh.logical_to_spec(("layers", "embed"), mesh)
  with pytest.raises(ValueError, match="unknown mesh axis 'tensor'"):
    sh.logical_to_spec(("vocab",), mesh, rules=(("vocab", "tensor"),))
  with pytest.raises(
    ValueError,
    match="mesh axis 'model' would shard both logical axes 'heads' and 'mlp'",
  ):
    sh.logical_to_spec(("heads", "mlp"), mesh)
  with pytest.raises(ValueError, match="listed twice"):
    sh.logical_to_spec(("vocab",), mesh, rules=(("vocab", None), ("vocab", "model")))
  # A user mesh without some axes: rules naming them are dropped.
  only_data = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  assert sh.logical_to_spec(("batch", "heads"), only_data) == (
    jax.sharding.PartitionSpec("data", None)
  )


def test_every_param_axis_has_a_rule():
  """The parameter descriptions use only logical axes the table knows."""
  import jax
  from jaxllm import sharding as sh
  from jaxllm.config import ModelConfig
  from jaxllm.params import is_spec, param_specs

  cfg = ModelConfig(
    vocab_size=32,
    d_model=16,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    d_ff=24,
    qkv_bias=True,
    post_norms=True,
    tie_embeddings=False,
  )
  known = {name for name, _ in sh.RULES}
  used = {
    a
    for spec in jax.tree_util.tree_leaves(param_specs(cfg), is_leaf=is_spec)
    for a in spec.axes
    if a is not None
  }
  assert used == {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"}
  assert used <= known, used - known
  assert {a for axes in sh.CACHE_AXES.values() for a in axes} <= known


def test_init_params_under_jit_matches_eager_formula():
  """init_params (now always jitted) still draws leaf i from split(key)[i]
  with std 1/sqrt(fan_in): an independent eager recomputation agrees to
  float rounding (XLA folds the std into normal()'s scale: 1 ulp)."""
  import jax
  import jax.numpy as jnp
  from jaxllm.config import ModelConfig
  from jaxllm.params import init_params, is_spec, param_specs

  cfg = ModelConfig(
    vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=24
  )
  key = jax.random.key(3)
  got = jax.tree_util.tree_leaves(init_params(cfg, key))
  specs = jax.tree_util.tree_leaves(param_specs(cfg), is_leaf=is_spec)
  keys = jax.random.split(key, len(specs))
  for g, s, k in zip(got, specs, keys):
    if s.init == "normal":
      want = s.fan_in**-0.5 * jax.random.normal(k, s.shape, jnp.float32)
    else:
      want = (jnp.zeros if s.init == "zeros" else jnp.ones)(s.shape)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_init_params_shardings_forms():
  """init_params takes the loaders' forms of `shardings=` (one Sharding, a Mesh,
  a Params tree) and refuses others, naming itself and the argument."""
  import jax
  from jaxllm import sharding as sh
  from jaxllm.config import ModelConfig
  from jaxllm.params import init_params

  cfg = ModelConfig(
    vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=24
  )
  key = jax.random.key(0)
  plain = init_params(cfg, key)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  mesh = sh.make_mesh("data=1")
  for form in (one, mesh, sh.param_shardings(cfg, mesh)):
    got = init_params(cfg, key, shardings=form)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(got)):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  with pytest.raises(ValueError, match="init_params: shardings must be None, a jax"):
    init_params(cfg, key, shardings="data=1")
  wrong = ModelConfig(
    vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=24
  )
  with pytest.raises(ValueError, match="init_params: shardings"):
    init_params(cfg, key, shardings=sh.param_shardings(wrong, mesh))


# ----------------------------------------------------------------------------
# Multi-device tests (subprocess, 8 CPU devices)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", MESHES)
def test_sharded_decoding_matches_one_device(spec):
  r = run_case("decode", spec)
  assert r["init_bit_identical"], r
  assert r["param_specs_ok"], r
  assert r["init_from_mesh_same"], r
  for name in ("forward", "prefill_extend", "generate", "generate_sharded_prompts"):
    assert r[name]["tokens_equal"], (name, r[name])
    assert r[name]["max_abs_diff"] <= TOL, (name, r[name])
  assert r["generate_sharded_prompts"]["out_data_split"], r["generate_sharded_prompts"]
  if spec == "data=8":  # params replicated, batch left to GSPMD
    assert r["generate"]["max_abs_diff"] == 0.0, r["generate"]
  assert r["batch_sharded"], r


@pytest.mark.parametrize(
  "algo,spec",
  [
    ("particle_filter", "data=4,model=2"),
    ("beam_search", "data=2,model=4"),
    ("astar", "data=4,model=2"),
    ("speculative", "data=2,model=4"),
  ],
)
def test_sharded_algorithms_match_one_device(algo, spec):
  r = run_case("algorithm", algo, spec)
  assert r["tokens_equal"], r
  assert r["max_abs_diff"] <= TOL, r


def test_checkpoint_restores_onto_other_meshes():
  r = run_case("checkpoint")
  for target, ok in r["bit_identical"].items():
    assert ok, target
  for target, ok in r["sharding_as_rules"].items():
    assert ok, target


def test_bad_meshes_on_eight_devices():
  r = run_case("errors")
  for name, msg in r.items():
    assert msg is not None, f"{name}: no ValueError"
  assert (
    "mesh axis 'model' of size 8 does not divide logical axis "
    "'kv_heads' = 4 (ModelConfig.n_kv_heads)" in r["model8"]
  )
  assert "params.layers[0].wk" in r["model8"]
  assert "'heads' = 6 (ModelConfig.n_heads)" in r["heads6"]
  assert "'mlp' = 36 (ModelConfig.d_ff)" in r["dff36"]
  assert "of size 4 does not divide logical axis 'batch' of size 6" in r["batch6"]
  assert "KV cache k" in r["cache_batch"] and "size 10" in r["cache_batch"]
  assert "= 6 devices, but there are 8 devices" in r["product"]


@functools.lru_cache(maxsize=None)
def _hlo() -> dict:
  return run_case("hlo")


def test_decode_step_hlo_has_no_whole_cache_collective():
  """One generate decode step (extend + sample) from a cache sharded by the
  rules (rows over `data`, KV heads over `model`): no all-gather /
  collective-permute / all-to-all moves as many elements as a whole
  (per-device) cache buffer. (It does all-gather the step's new K/V entries
  of every row, B x Kv/model x K per layer: see `write_new`.)"""
  for spec, info in _hlo()["decode"].items():
    assert info["largest_collective"] < info["local_cache_elems"], (spec, info)


def test_pf_resampling_hlo_has_no_collective():
  """Particle filtering's resampling gathers rows by the blocked ancestors
  [P, N] (`jaxllm.cache.take_rows`): with the problems split over `data`
  it moves nothing between devices; else (P not a multiple of the data axis)
  at most less than a whole cache buffer."""
  for spec, info in _hlo()["resample_pf"].items():
    if info["blocks_sharded"]:
      assert info["largest_collective"] == 0, (spec, info)
    assert info["largest_collective"] < info["local_cache_elems"], (spec, info)


def test_flat_gather_hlo_all_gathers_the_cache():
  """The measured reason for the blocked form: the same resampling as one
  flat row index over the population makes GSPMD all-gather whole cache
  buffers."""
  for spec, info in _hlo()["resample_flat"].items():
    if info["blocks_sharded"]:
      assert info["largest_collective"] >= info["local_cache_elems"], (spec, info)


@pytest.mark.parametrize("case", ["astar_rebuild", "astar_fork"])
def test_astar_row_gathers_hlo_have_no_collective(case):
  """A*'s per-iteration row gathers, the real `_rebuild_pool` (pool slot i <-
  queue entry i, from each problem's old pool rows + children) and `_fork`
  (popped rows -> working batch), gather by blocked [P, n] indices: with the
  problems split over `data` they compile to no collective at all. (As flat
  gathers, measured on these meshes: the rebuild over concat(pool, children)
  all-to-all'd 1.5 local cache buffers and all-reduced 4-16 of them, the
  fork all-reduced 2-8.)"""
  for spec, info in _hlo()[case].items():
    if info["blocks_sharded"]:
      assert info["largest_any"] == 0, (spec, info)
    assert info["largest_collective"] < info["local_cache_elems"], (spec, info)


def test_prefill_hlo_has_no_whole_cache_all_gather():
  for spec, info in _hlo()["prefill"].items():
    assert info["largest_collective"] < info["local_cache_elems"], (spec, info)


# ----------------------------------------------------------------------------
# The cases (run in the subprocess)
# ----------------------------------------------------------------------------


def _tiny_cfg(**kw):
  from jaxllm.config import ModelConfig

  base = dict(
    vocab_size=32,
    d_model=32,
    n_layers=1,
    n_heads=4,
    n_kv_heads=4,
    d_ff=64,
    max_seq_len=128,
  )
  base.update(kw)
  return ModelConfig(**base)


def _max_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  both = np.isfinite(a) & np.isfinite(b)
  if not np.array_equal(np.isfinite(a), np.isfinite(b)):
    return float("inf")
  return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


def _one_device(tree):
  import jax

  return jax.device_put(tree, jax.devices()[0])


def case_decode(spec: str) -> dict:
  import jax
  import jax.numpy as jnp
  from jaxllm import sharding as sh
  from jaxllm.decoding import Transformer
  from jaxllm.generate import generate, pad_prompts
  from jaxllm.model import forward
  from jaxllm.params import init_params

  cfg = _tiny_cfg()
  mesh = sh.make_mesh(spec)
  key = jax.random.key(0)
  p1 = _one_device(init_params(cfg, key))
  shardings = sh.param_shardings(cfg, mesh)
  ps = init_params(cfg, key, shardings=shardings)
  out = {}
  out["init_bit_identical"] = all(
    np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(ps))
  )
  out["param_specs_ok"] = all(
    x.sharding == s
    for x, s in zip(jax.tree_util.tree_leaves(ps), jax.tree_util.tree_leaves(shardings))
  )
  from_mesh = init_params(cfg, key, shardings=mesh)  # the rules, like the loaders
  out["init_from_mesh_same"] = all(
    a.sharding == b.sharding and np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(ps), jax.tree_util.tree_leaves(from_mesh))
  )

  rng = np.random.default_rng(0)
  prompts = [
    list(rng.integers(1, cfg.vocab_size, size=n)) for n in (3, 5, 7, 2, 9, 4, 6, 8)
  ]
  tokens, lengths = pad_prompts(prompts)  # [8, 16]
  tok_s, len_s = sh.shard_batch((tokens, lengths), mesh)
  out["batch_sharded"] = (
    sh.data_parallel_size(mesh) == 1
    or len(tok_s.sharding.device_set) == N_DEVICES
    and not tok_s.sharding.is_fully_replicated
  )

  # forward (training / scoring path), no cache
  fwd = jax.jit(lambda p, t: forward(p, t, cfg)[0])
  l1, l2 = fwd(p1, tokens), fwd(ps, tok_s)
  out["forward"] = dict(
    tokens_equal=bool(np.array_equal(np.argmax(l1, -1), np.argmax(l2, -1))),
    max_abs_diff=_max_diff(l1, l2),
  )

  # decode interface: prefill, fork each prompt into 2 rows, 4 greedy steps
  model = Transformer(cfg)

  @jax.jit
  def decode(params, tokens, lengths):
    state, logits = model.prefill(params, tokens, lengths, 32)
    fork = jnp.repeat(jnp.arange(tokens.shape[0]), 2)
    state, logits = model.reorder(state, fork), logits[fork]
    toks, lgs = [], [logits]
    for _ in range(4):
      tok = jnp.argmax(logits, -1).astype(jnp.int32)
      state, nxt = model.extend(params, state, tok[:, None])
      logits = nxt[:, 0]
      toks.append(tok)
      lgs.append(logits)
    return jnp.stack(toks, 1), jnp.stack(lgs, 1), state

  t1, g1, _ = decode(p1, tokens, lengths)
  t2, g2, st2 = decode(ps, tok_s, len_s)
  out["prefill_extend"] = dict(
    tokens_equal=bool(np.array_equal(t1, t2)),
    max_abs_diff=_max_diff(g1, g2),
    cache_spec=str(st2.k[0].sharding.spec),
  )

  # the public generate (sampled, two samples per prompt) with sharded params
  o1 = generate(model, p1, prompts, jax.random.key(1), 10, num_samples=2)
  o2 = generate(model, ps, prompts, jax.random.key(1), 10, num_samples=2)
  out["generate"] = dict(
    tokens_equal=bool(
      np.array_equal(o1.tokens, o2.tokens) and np.array_equal(o1.lengths, o2.lengths)
    ),
    max_abs_diff=_max_diff(o1.logprobs, o2.logprobs),
  )
  # prompts as a batch-sharded array: generate keeps them split over data,
  # and the sampled rows come out split the same way
  o3 = generate(
    model, ps, tok_s, jax.random.key(1), 10, prompt_lengths=len_s, num_samples=2
  )
  out["generate_sharded_prompts"] = dict(
    tokens_equal=bool(np.array_equal(o1.tokens, o3.tokens)),
    max_abs_diff=_max_diff(o1.logprobs, o3.logprobs),
    out_spec=str(o3.tokens.sharding.spec),
    out_data_split=o3.tokens.sharding.shard_shape(o3.tokens.shape)[0]
    * sh.data_parallel_size(mesh)
    == o3.tokens.shape[0],
  )
  return out


def case_algorithm(algo: str, spec: str) -> dict:
  import jax
  from algorithms.scorers import ConfidenceScorer
  from jaxllm import sharding as sh
  from jaxllm.decoding import Transformer
  from jaxllm.params import init_params

  cfg = _tiny_cfg(vocab_size=16)
  mesh = sh.make_mesh(spec)
  p1 = _one_device(init_params(cfg, jax.random.key(0)))
  ps = sh.shard_params(p1, cfg, mesh)
  model = Transformer(cfg)
  prompts = [[1, 4, 5], [2, 3], [7, 7, 1, 2], [9]]
  key = jax.random.key(1)

  if algo == "particle_filter":
    from algorithms.particle_filter import PFConfig, run_particle_filter

    c = PFConfig(
      n_particles=4,
      max_steps=3,
      max_step_tokens=3,
      delimiter_ids=(10,),
      stop_ids=(0,),
      scheme="systematic",
    )
    run = lambda p: run_particle_filter(
      model, p, ConfidenceScorer(), None, prompts, key, c
    )[0]
    toks = lambda r: (r.tokens, r.lengths)
    vals = lambda r: (r.log_weights, r.scores)
  elif algo == "beam_search":
    from algorithms.beam_search import BeamConfig, run_beam_search

    c = BeamConfig(
      n_paths=4,
      beam_width=2,
      max_steps=3,
      max_step_tokens=3,
      delimiter_ids=(10,),
      stop_ids=(0,),
    )
    run = lambda p: run_beam_search(
      model, p, ConfidenceScorer(), None, prompts, key, c
    )[0]
    toks = lambda r: (r.step_tokens, r.step_lengths)
    vals = lambda r: (r.scores,)
  elif algo == "astar":
    from algorithms.astar import AStarConfig, run_astar

    c = AStarConfig(
      expansion="sample",
      num_children=3,
      pop_batch=2,
      capacity=6,
      max_step_tokens=3,
      max_solution_tokens=9,
      delimiter_ids=(10,),
      stop_ids=(0,),
      heuristic="zero",
      prm_weight=0.0,
      lm_weight=1.0,
      token_budget=30,
    )
    run = lambda p: run_astar(model, p, ConfidenceScorer(), None, prompts, key, c)[0]
    toks = lambda r: (r.tokens, r.length, r.expanded)
    vals = lambda r: (r.g, r.f)
  elif algo == "speculative":
    from algorithms.speculative import LayerSkipDraft, SpecConfig, speculative_generate

    c = SpecConfig(method="chain", gamma=2, max_new_tokens=6, sampling_top_k=8)
    draft = LayerSkipDraft(cfg, (0,))
    run = lambda p: speculative_generate(model, p, draft, p, prompts, key, c)[0]
    toks = lambda r: (r.tokens, r.num_emitted, r.accepted)
    vals = lambda r: ()
  else:
    raise ValueError(f"unknown algorithm {algo!r}")
  r1, r2 = run(p1), run(ps)
  return dict(
    tokens_equal=all(np.array_equal(a, b) for a, b in zip(toks(r1), toks(r2))),
    max_abs_diff=max(
      [_max_diff(a, b) for a, b in zip(vals(r1), vals(r2))], default=0.0
    ),
  )


def case_checkpoint() -> dict:
  import tempfile

  import jax
  from jaxllm import checkpoint as ckpt
  from jaxllm import sharding as sh
  from jaxllm.params import init_params

  cfg = _tiny_cfg(tie_embeddings=False, qkv_bias=True)
  src = sh.make_mesh("data=4,model=2")
  params = init_params(cfg, jax.random.key(5), shardings=sh.param_shardings(cfg, src))
  host = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  bits, as_rules = {}, {}
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "ck")
    ckpt.save_params(path, params)
    for spec in ("data=2,model=4", "data=8", "data=2,fsdp=2,model=2", "one_device"):
      if spec == "one_device":
        got = ckpt.restore_params(path, cfg)
        want = [jax.devices()[0]]
        as_rules[spec] = all(
          x.sharding.device_set == set(want) for x in jax.tree_util.tree_leaves(got)
        )
      else:
        mesh = sh.make_mesh(spec)
        got = ckpt.restore_params(path, cfg, sharding=mesh)
        as_rules[spec] = all(
          x.sharding == s
          for x, s in zip(
            jax.tree_util.tree_leaves(got),
            jax.tree_util.tree_leaves(sh.param_shardings(cfg, mesh)),
          )
        )
      bits[spec] = all(
        a.tobytes() == np.asarray(b).tobytes()
        for a, b in zip(host, jax.tree_util.tree_leaves(got))
      )
    # The training CheckpointManager takes a mesh the same way.
    mgr = ckpt.CheckpointManager(os.path.join(d, "train"))
    opt = {"m": np.arange(3, dtype=np.float32)}
    mgr.save(0, params, opt, jax.random.key(0), force=True)
    mesh = sh.make_mesh("data=2,model=4")
    got, got_opt, _, _ = mgr.restore(cfg, opt, sharding=mesh)
    bits["manager data=2,model=4"] = all(
      a.tobytes() == np.asarray(b).tobytes()
      for a, b in zip(host, jax.tree_util.tree_leaves(got))
    ) and np.array_equal(got_opt["m"], opt["m"])
    as_rules["manager data=2,model=4"] = all(
      x.sharding == s
      for x, s in zip(
        jax.tree_util.tree_leaves(got),
        jax.tree_util.tree_leaves(sh.param_shardings(cfg, mesh)),
      )
    )
  return dict(bit_identical=bits, sharding_as_rules=as_rules)


def case_errors() -> dict:
  from jaxllm import sharding as sh

  def msg(fn):
    try:
      fn()
    except ValueError as e:
      return str(e)
    return None

  cfg = _tiny_cfg()  # 4 heads, 4 KV heads, d_ff 64
  m8 = sh.make_mesh("model=8")
  m4 = sh.make_mesh("data=2,model=4")
  d4 = sh.make_mesh("data=4,model=2")
  return dict(
    model8=msg(lambda: sh.param_shardings(_tiny_cfg(n_heads=8, n_kv_heads=4), m8)),
    heads6=msg(
      lambda: sh.param_shardings(
        _tiny_cfg(n_heads=6, n_kv_heads=2, d_model=48, head_dim=8), m4
      )
    ),
    dff36=msg(
      lambda: sh.param_shardings(_tiny_cfg(d_ff=36, n_heads=8, n_kv_heads=8), m8)
    ),
    batch6=msg(lambda: sh.shard_batch(np.zeros((6, 3), np.int32), d4)),
    cache_batch=msg(lambda: sh.cache_shardings(cfg, d4, batch=10)),
    product=msg(lambda: sh.make_mesh("data=3,model=2")),
    unknown_axis=msg(lambda: sh.make_mesh("data=4,tensor=2")),
  )


def _collectives(hlo: str) -> list:
  """[(op, element count)] of every collective in compiled HLO text; a
  collective with a tuple result (e.g. an all-to-all of several operands, one
  per device) counts the elements of the whole tuple."""
  import re

  out = []
  pat = re.compile(
    r"= (\([^()]*\)|[a-z0-9]+\[[0-9,]*\]\S*) (all-gather|"
    r"collective-permute|all-to-all|all-reduce|reduce-scatter)"
    r"(-start)?\("
  )
  for line in hlo.splitlines():
    m = pat.search(line)
    if m:
      n = sum(
        int(np.prod([int(x) for x in dims.split(",") if x]))
        for dims in re.findall(r"[a-z0-9]+\[([0-9,]*)\]", m.group(1))
      )
      out.append((m.group(2), n))
  return out


def case_hlo() -> dict:
  import jax
  import jax.numpy as jnp
  from algorithms import array_queue as aq
  from algorithms import astar, stepping
  from algorithms.scorers import ConfidenceScorer
  from jaxllm import cache as cache_lib
  from jaxllm import sharding as sh
  from jaxllm.decoding import Transformer
  from jaxllm.params import init_params
  from jaxllm.sampling import make_sampling, sample

  cfg = _tiny_cfg()
  P, N, S = 8, 4, 256  # 32 rows; a long cache so its buffers stand out
  B = P * N
  model = Transformer(cfg)
  scorer = ConfidenceScorer()
  moved = ("all-gather", "collective-permute", "all-to-all")
  A_B, A_K, A_L = 1, 2, 8  # A*: pop_batch, children per pop, solution cap
  res = dict(
    decode={},
    prefill={},
    resample_pf={},
    resample_flat={},
    astar_rebuild={},
    astar_fork={},
  )

  def summary(fn, *args, donate=()):
    hlo = jax.jit(fn, donate_argnums=donate).lower(*args).compile().as_text()
    coll = _collectives(hlo)
    return dict(
      collectives=coll,
      largest_collective=max([n for op, n in coll if op in moved], default=0),
      largest_any=max([n for _, n in coll], default=0),  # all-reduce too
    )

  for spec in MESHES:
    mesh = sh.make_mesh(spec)
    ps = init_params(cfg, jax.random.key(0), shardings=sh.param_shardings(cfg, mesh))
    cache = jax.device_put(
      cache_lib.init_cache(cfg, B, S), sh.cache_shardings(cfg, mesh, B)
    )
    local = int(np.prod(cache.k[0].sharding.shard_shape(cache.k[0].shape)))
    tok = sh.shard_batch(np.zeros((B,), np.int32), mesh)

    def decode_step(params, cache, tok, key):
      cache, logits = model.extend(params, cache, tok[:, None])
      return cache, sample(key, logits[:, 0], make_sampling())

    info = summary(decode_step, ps, cache, tok, jax.random.key(1), donate=(1,))
    res["decode"][spec] = dict(info, local_cache_elems=local)

    prompt = sh.shard_batch(np.ones((B, S // 2), np.int32), mesh)
    plen = sh.shard_batch(np.full((B,), S // 2, np.int32), mesh)
    info = summary(lambda p, t, l: model.prefill(p, t, l, S), ps, prompt, plen)
    res["prefill"][spec] = dict(info, local_cache_elems=local)

    # particle_filter._gather: stepping.reorder (model state, logits, scorer
    # state) by the blocked ancestors [P, N] (jaxllm.cache.take_rows).
    rows = stepping.Rows(
      state=cache,
      logits_BxV=sh.shard_batch(np.zeros((B, cfg.vocab_size), np.float32), mesh),
      sstate=sh.shard_batch(np.zeros((B,), np.int32), mesh),
    )
    anc = sh.shard_batch(np.zeros((P, N), np.int32), mesh)

    def pf_resample(rows, anc_PxN):
      return stepping.reorder(model, scorer, rows, anc_PxN)

    sharded = P % sh.data_parallel_size(mesh) == 0
    info = summary(pf_resample, rows, anc, donate=(0,))
    res["resample_pf"][spec] = dict(
      info, local_cache_elems=local, blocks_sharded=sharded
    )

    def flat_resample(rows, anc_PxN):
      index = (anc_PxN + jnp.arange(P, dtype=jnp.int32)[:, None] * N).reshape(B)
      return stepping.reorder(model, scorer, rows, index)

    info = summary(flat_resample, rows, anc, donate=(0,))
    res["resample_flat"][spec] = dict(
      info, local_cache_elems=local, blocks_sharded=sharded
    )

    # A*'s per-iteration row gathers, the real functions: the pool rebuild
    # (`_rebuild_pool`: pool slot i <- queue entry i, from old pool + children)
    # and the fork of the popped rows into the working batch (`_fork`). The
    # pool is `rows` (Q = N rows per problem); the children are P * W rows.
    unused = dict.fromkeys(astar._Env._fields[2:11])  # cfg .. heuristic
    env = astar._Env(
      model=model, scorer=scorer, P=P, Q=N, B=A_B, K=A_K, S=1, L=A_L, H=S, **unused
    )
    W = env.W
    kids = stepping.Rows(
      state=jax.device_put(
        cache_lib.init_cache(cfg, P * W, S), sh.cache_shardings(cfg, mesh, P * W)
      ),
      logits_BxV=sh.shard_batch(np.zeros((P * W, cfg.vocab_size), np.float32), mesh),
      sstate=sh.shard_batch(np.zeros((P * W,), np.int32), mesh),
    )
    meta_of = lambda *lead: astar.Meta(
      tok=np.zeros(lead + (A_L,), np.int32),
      length=np.zeros(lead, np.int32),
      depth=np.zeros(lead, np.int32),
      cost=np.zeros(lead, np.float32),
      last_token=np.zeros(lead, np.int32),
      complete=np.zeros(lead, bool),
    )
    pool_meta = sh.shard_batch(meta_of(P, N), mesh)
    kid_meta = sh.shard_batch(meta_of(P * W), mesh)
    payload = np.random.default_rng(0).permutation(N + W)[:N]
    queue = sh.shard_batch(
      aq.ArrayQueue(
        f=np.zeros((P, N), np.float32),
        payload=np.tile(payload.astype(np.int32), (P, 1)),
        seq=np.zeros((P, N), np.int32),
        valid=np.ones((P, N), bool),
        next_seq=np.zeros((P,), np.int32),
      ),
      mesh,
    )

    def astar_rebuild(pool, queue, meta, kids, kid_meta):
      loop = astar.SearchLoop(
        queue=queue, pool=pool, meta=meta, key=None, best=None, counts=None
      )
      return astar._rebuild_pool(env, loop, queue, kids, kid_meta)

    info = summary(astar_rebuild, rows, queue, pool_meta, kids, kid_meta, donate=(0, 3))
    res["astar_rebuild"][spec] = dict(
      info, local_cache_elems=local, blocks_sharded=sharded
    )

    slot = sh.shard_batch(np.zeros((P, A_B), np.int32), mesh)
    expand = sh.shard_batch(np.ones((P, A_B), bool), mesh)

    def astar_fork(pool, meta, slot_PxB, expand_PxB):
      par = astar._take_meta(meta, slot_PxB)
      return astar._fork(env, pool, par, slot_PxB, expand_PxB)

    info = summary(astar_fork, rows, pool_meta, slot, expand)
    res["astar_fork"][spec] = dict(
      info, local_cache_elems=local, blocks_sharded=sharded
    )
  return res


CASES = dict(
  decode=case_decode,
  algorithm=case_algorithm,
  checkpoint=case_checkpoint,
  errors=case_errors,
  hlo=case_hlo,
)

if __name__ == "__main__":
  import jax

  if os.environ.get("JAXLLM_JIT_CACHE"):  # opt-in, as in conftest.py
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXLLM_JIT_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  assert len(jax.devices()) == N_DEVICES, jax.devices()
  result = CASES[sys.argv[1]](*sys.argv[2:])
  print(json.dumps(result, default=str))
