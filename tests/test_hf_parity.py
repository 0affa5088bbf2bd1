"""Parity of jaxllm against transformers on tiny random Llama / Mistral / Qwen2 /
Gemma 2 models built locally, plus safetensors round trips and bad-file errors.

Reference: transformers' own eager PyTorch implementation (float32).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import _hf_models as hfm
from jaxllm import hf
from jaxllm.cache import init_cache
from jaxllm.model import forward
from jaxllm.params import abstract_params

CASES = sorted(hfm.CASES)
REL_TOL = 1e-5
T, B = 24, 3  # longer than every sliding window in the cases
P, N_NEW = 8, 16


def rel_err(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))


def tokens(seed, shape, vocab=128):
  return np.random.default_rng(seed).integers(0, vocab, size=shape)


@functools.lru_cache(maxsize=None)
def _jit_logits(cfg):
  return jax.jit(lambda p, t: forward(p, t, cfg)[0])


@functools.lru_cache(maxsize=None)
def _jit_step(cfg):
  return jax.jit(lambda p, t, c: forward(p, t, cfg, cache=c, logits_at="last")[:2])


def our_logits(params, cfg, toks):
  return np.asarray(_jit_logits(cfg)(params, jnp.asarray(toks, jnp.int32)))


def our_greedy(params, cfg, prompt_BxP, n_new):
  """Cached greedy decoding: one prefill, then one token per step."""
  b, p = prompt_BxP.shape
  step = _jit_step(cfg)
  cache = init_cache(cfg, b, p + n_new)
  logits, cache = step(params, jnp.asarray(prompt_BxP, jnp.int32), cache)
  out = []
  for i in range(n_new):
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    out.append(tok)
    if i + 1 < n_new:
      logits, cache = step(params, tok[:, None], cache)
  return np.stack([np.asarray(t) for t in out], axis=1)


def read_tensors(path):
  with safe_open(path, framework="numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module", params=CASES, ids=CASES)
def case(request, tmp_path_factory):
  """(name, torch model, its saved directory, our loaded (cfg, params))."""
  name = request.param
  model = hfm.build_hf_model(name, seed=CASES.index(name))
  d = str(tmp_path_factory.mktemp(name))
  model.save_pretrained(d)
  return name, model, d, hf.load_hf(d)


def test_logits_match_transformers(case):
  name, model, _, (cfg, params) = case
  toks = tokens(1, (B, T))
  theirs = hfm.hf_logits(model, toks)
  ours = our_logits(params, cfg, toks)
  assert ours.shape == theirs.shape == (B, T, 128)
  assert rel_err(ours, theirs) < REL_TOL, name


# Decoding compiles two more programs per case (prefill, step); the default run
# keeps the three cases that cover windows, soft-caps, RoPE scaling, MQA and a
# tied head, the other three are marked slow.
GREEDY_FAST = (
  "gemma2_softcap_window",
  "llama3_rope_mqa_tied",
  "mistral_window_gqa",
  "qwen2_window_mqa_tied",
)


@pytest.mark.parametrize(
  "case",
  [pytest.param(n, marks=() if n in GREEDY_FAST else pytest.mark.slow) for n in CASES],
  ids=CASES,
  indirect=True,
)
def test_greedy_generation_matches_transformers(case):
  _, model, _, (cfg, params) = case
  prompt = tokens(2, (2, P))
  theirs = hfm.hf_greedy(model, prompt, N_NEW)
  assert theirs.shape == (2, N_NEW)
  assert len(np.unique(theirs)) >= 6  # a non-degenerate continuation
  np.testing.assert_array_equal(our_greedy(params, cfg, prompt, N_NEW), theirs)


def test_hf_import_export_bit_exact(case, tmp_path):
  """load_hf -> save_hf rewrites the very tensors transformers saved."""
  _, _, d, (cfg, params) = case
  hf.save_hf(
    str(tmp_path),
    cfg,
    params,
    model_type=json.load(open(os.path.join(d, "config.json")))["model_type"],
  )
  orig = read_tensors(os.path.join(d, "model.safetensors"))
  ours = read_tensors(str(tmp_path / "model.safetensors"))
  assert sorted(orig) == sorted(ours)
  for k in orig:
    assert orig[k].dtype == ours[k].dtype and orig[k].shape == ours[k].shape, k
    assert orig[k].tobytes() == ours[k].tobytes(), k
  cfg2, params2 = hf.load_hf(str(tmp_path))
  assert cfg2 == cfg
  for a, b in zip(
    jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)
  ):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _random_params(cfg, seed):
  """Our own random params (numpy draws, independent of any HF model), with
  random norms and biases so every tensor's mapping is exercised."""
  rng = np.random.default_rng(seed)
  plus_one = cfg.norm_plus_one

  def draw(path, spec):
    name = jax.tree_util.keystr(path)
    r = rng.standard_normal(spec.shape).astype(np.float32)
    if name.endswith("norm"):
      return 0.2 * r + (0.0 if plus_one else 1.0)
    if name[-2:] in ("bq", "bk", "bv"):
      return 0.2 * r
    if name.endswith("embed"):
      return r
    if name.endswith("lm_head"):
      return 0.5 * r
    fan_in = spec.shape[0] * spec.shape[1] if name.endswith("wo") else spec.shape[0]
    return r / np.sqrt(fan_in)

  return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


def test_export_loads_in_transformers(case, tmp_path):
  """Our random params -> save_hf -> transformers: same logits as ours."""
  name, _, d, (cfg, _) = case
  params = _random_params(cfg, 7)
  family = hfm.CASES[name][0]
  hf.save_hf(str(tmp_path), cfg, params, model_type=family)
  model = hfm.load_hf_model(str(tmp_path))
  toks = tokens(3, (B, T))
  theirs = hfm.hf_logits(model, toks)
  assert rel_err(our_logits(params, cfg, toks), theirs) < REL_TOL


# --------------------------------------------------------------------------
# config parsing
# --------------------------------------------------------------------------


def test_config_windows_follow_transformers():
  """Per-layer windows equal transformers' own layer_types for each case."""
  for name in CASES:
    hcfg = hfm.hf_config(name)
    cfg = hf.config_from_hf(hcfg.to_dict())
    sw = getattr(hcfg, "sliding_window", None)
    types = getattr(hcfg, "layer_types", None) or ["full_attention"] * len(cfg.windows)
    if hcfg.model_type == "mistral":  # MistralAttention: every layer local
      types = ["sliding_attention"] * len(cfg.windows)
    want = tuple(sw if (t == "sliding_attention" and sw) else 0 for t in types)
    assert cfg.windows == want, name
  g = hf.config_from_hf(hfm.hf_config("gemma2_softcap_window").to_dict())
  assert g.windows == (5, 0, 5)
  q = hf.config_from_hf(hfm.hf_config("qwen2_bias_nowindow").to_dict())
  assert q.windows == (0, 0)


def _base(model_type="llama", **kw):
  d = dict(
    model_type=model_type,
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
  )
  d.update(kw)
  return d


@pytest.mark.parametrize("field", hf._REQUIRED)
def test_config_missing_field(field):
  d = _base()
  del d[field]
  with pytest.raises(
    ValueError,
    match=rf"my/config\.json: missing required "
    rf"field '{field}'",
  ):
    hf.config_from_hf(d, "my/config.json")


@pytest.mark.parametrize(
  "kw,msg",
  [
    # (was "mistral" until Mistral became a FAMILY_TABLE entry)
    (dict(model_type="phi3"), "unsupported model_type 'phi3'"),
    (
      dict(rope_parameters=dict(rope_type="yarn", factor=2.0)),
      "unsupported rope type 'yarn'",
    ),
    (
      dict(rope_scaling=dict(type="linear", factor=2.0)),
      "unsupported rope type 'linear'",
    ),
    (
      dict(rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0)),
      "rope_parameters.high_freq_factor",
    ),
    (dict(hidden_act="relu2"), "unsupported hidden_act 'relu2'"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(num_key_value_heads=3), "n_kv_heads"),
  ],
  ids=[
    "model_type",
    "yarn",
    "legacy_linear",
    "llama3_field",
    "act",
    "mlp_bias",
    "kv_heads",
  ],
)
def test_config_unsupported(kw, msg):
  with pytest.raises(ValueError, match=msg):
    hf.config_from_hf(_base(**kw))


def test_config_legacy_rope_fields():
  """transformers 4.x wrote rope_theta + rope_scaling at top level."""
  cfg = hf.config_from_hf(
    _base(
      rope_theta=5e5,
      max_position_embeddings=256,
      rope_scaling=dict(
        rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=2.0
      ),
    )
  )
  assert cfg.rope_theta == 5e5
  assert cfg.rope_scaling.factor == 4.0
  assert cfg.rope_scaling.original_max_position == 256  # falls back to max pos


# --------------------------------------------------------------------------
# bad files
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
  """A tiny Llama checkpoint (tied) saved by transformers."""
  model = hfm.build_hf_model("llama3_rope_mqa_tied", seed=5)
  d = str(tmp_path_factory.mktemp("small"))
  model.save_pretrained(d)
  return d


def _copy_with(src, dst, tensors=None, config=None):
  os.makedirs(dst, exist_ok=True)
  cfg = json.load(open(os.path.join(src, "config.json")))
  if config is not None:
    cfg = config(cfg)
  json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
  t = read_tensors(os.path.join(src, "model.safetensors"))
  if tensors is not None:
    t = tensors(t)
  safetensors.numpy.save_file(
    t, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"}
  )
  return str(dst)


def test_truncated_safetensors(small_ckpt, tmp_path):
  d = _copy_with(small_ckpt, tmp_path)
  path = os.path.join(d, "model.safetensors")
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(
    ValueError,
    match=r"model\.safetensors is not a valid "
    r"safetensors file \(truncated or corrupt",
  ):
    hf.load_hf(d)


def test_garbage_safetensors(small_ckpt, tmp_path):
  d = _copy_with(small_ckpt, tmp_path)
  open(os.path.join(d, "model.safetensors"), "wb").write(b"\x00" * 64)
  with pytest.raises(ValueError, match="model.safetensors is not a valid"):
    hf.load_hf(d)


def test_config_json_missing_field(small_ckpt, tmp_path):
  def drop(c):
    del c["num_hidden_layers"]
    return c

  d = _copy_with(small_ckpt, tmp_path, config=drop)
  with pytest.raises(
    ValueError,
    match=r"config\.json: missing required field "
    r"'num_hidden_layers'",
  ):
    hf.load_hf(d)


def test_missing_dir_or_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_hf(str(tmp_path))
  json.dump(_base(), open(tmp_path / "config.json", "w"))
  with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
    hf.load_hf(str(tmp_path))


def test_wrong_shape(small_ckpt, tmp_path):
  name = "model.layers.1.self_attn.k_proj.weight"

  def bad(t):
    t[name] = np.zeros((32, 64), np.float32)  # MQA expects [16, 64]
    return t

  d = _copy_with(small_ckpt, tmp_path, tensors=bad)
  with pytest.raises(
    ValueError,
    match=rf"'{name}' has shape \[32, 64\], "
    r"expected \[16, 64\]",
  ):
    hf.load_hf(d)


def test_missing_tensor(small_ckpt, tmp_path):
  name = "model.layers.1.mlp.up_proj.weight"

  def drop(t):
    del t[name]
    return t

  d = _copy_with(small_ckpt, tmp_path, tensors=drop)
  with pytest.raises(ValueError, match=rf"missing tensor '{name}'"):
    hf.load_hf(d)


def test_unexpected_tensor(small_ckpt, tmp_path):
  name = "model.layers.0.self_attn.o_proj.bias"

  def add(t):
    t[name] = np.zeros((64,), np.float32)
    return t

  d = _copy_with(small_ckpt, tmp_path, tensors=add)
  with pytest.raises(ValueError, match=rf"unexpected tensor '{name}'"):
    hf.load_hf(d)


def test_tied_head_present(small_ckpt, tmp_path):
  """lm_head.weight next to tied embeddings: fine if equal, error if not."""
  ref_cfg, ref = hf.load_hf(small_ckpt)

  def same(t):
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
    return t

  cfg, params = hf.load_hf(_copy_with(small_ckpt, tmp_path / "a", tensors=same))
  assert cfg == ref_cfg and params.lm_head is None
  np.testing.assert_array_equal(params.embed, ref.embed)

  def differ(t):
    t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1.0
    return t

  d = _copy_with(small_ckpt, tmp_path / "b", tensors=differ)
  with pytest.raises(ValueError, match="'lm_head.weight' differs"):
    hf.load_hf(d)


def test_sharded_checkpoint(small_ckpt, tmp_path):
  """Two shards + model.safetensors.index.json load like the single file."""
  t = read_tensors(os.path.join(small_ckpt, "model.safetensors"))
  names = sorted(t)
  shards = {
    "model-00001-of-00002.safetensors": names[::2],
    "model-00002-of-00002.safetensors": names[1::2],
  }
  weight_map = {}
  for fname, ns in shards.items():
    safetensors.numpy.save_file(
      {n: t[n] for n in ns}, str(tmp_path / fname), metadata={"format": "pt"}
    )
    weight_map.update({n: fname for n in ns})
  json.dump(
    {"metadata": {}, "weight_map": weight_map},
    open(tmp_path / "model.safetensors.index.json", "w"),
  )
  json.dump(
    json.load(open(os.path.join(small_ckpt, "config.json"))),
    open(tmp_path / "config.json", "w"),
  )
  cfg, params = hf.load_hf(str(tmp_path))
  ref_cfg, ref = hf.load_hf(small_ckpt)
  assert cfg == ref_cfg
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_array_equal(a, b)
  # A shard the index names but that is gone.
  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
    hf.load_hf(str(tmp_path))


def test_bfloat16_checkpoint(small_ckpt, tmp_path):
  """bf16 tensors (how real checkpoints ship) load as bf16, or cast on request."""
  import ml_dtypes

  def to_bf16(t):
    return {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}

  def set_dtype(c):
    c["dtype"] = "bfloat16"
    return c

  d = _copy_with(small_ckpt, tmp_path, tensors=to_bf16, config=set_dtype)
  cfg, params = hf.load_hf(d)
  assert cfg.param_dtype == "bfloat16" and params.embed.dtype == jnp.bfloat16
  ref = read_tensors(os.path.join(small_ckpt, "model.safetensors"))
  np.testing.assert_array_equal(
    np.asarray(params.embed, np.float32),
    ref["model.embed_tokens.weight"].astype(ml_dtypes.bfloat16).astype(np.float32),
  )
  cfg32, params32 = hf.load_hf(d, dtype="float32")
  assert cfg32.param_dtype == "float32" and params32.embed.dtype == jnp.float32


def test_export_rejects_incompatible_config(case, tmp_path):
  name, _, _, (cfg, params) = case
  other = "gemma2" if hfm.CASES[name][0] != "gemma2" else "llama"
  with pytest.raises(ValueError, match=f"cannot export as '{other}'"):
    hf.save_hf(str(tmp_path), cfg, params, model_type=other)


@pytest.mark.parametrize(
  "kw, field, msg",
  [
    (dict(hidden_size="abc"), "hidden_size", 'an integer > 0, got "abc"'),
    (dict(rms_norm_eps=None), "rms_norm_eps", "a finite number > 0, got null"),
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps", "a finite number > 0"),
    (dict(rms_norm_eps="1e-5"), "rms_norm_eps", 'got "1e-5"'),
    (dict(vocab_size=128.0), "vocab_size", "an integer > 0, got 128.0"),
    (dict(num_attention_heads=0), "num_attention_heads", "an integer > 0, got 0"),
    (dict(num_hidden_layers=True), "num_hidden_layers", "an integer > 0, got true"),
    (
      dict(num_key_value_heads="2"),
      "num_key_value_heads",
      'an integer > 0 or null, got "2"',
    ),
    (dict(head_dim=-16), "head_dim", "an integer > 0 or null, got -16"),
    (
      dict(tie_word_embeddings="false"),
      "tie_word_embeddings",
      'true or false, got "false"',
    ),
    (dict(hidden_act=["silu"]), "hidden_act", "a string"),
    (
      dict(max_position_embeddings=None),
      "max_position_embeddings",
      "an integer > 0, got null",
    ),
    (dict(rope_theta="10000"), "rope_theta", "a finite number > 0"),
    (dict(rope_parameters="default"), "rope_parameters", "an object"),
    (
      dict(
        rope_parameters=dict(
          rope_type="llama3", factor="8", low_freq_factor=1.0, high_freq_factor=4.0
        )
      ),
      "rope_parameters.factor",
      'a finite number > 0, got "8"',
    ),
    (
      dict(
        rope_parameters=dict(
          rope_type="llama3",
          factor=8.0,
          low_freq_factor=1.0,
          high_freq_factor=4.0,
          original_max_position_embeddings=8192.5,
        )
      ),
      "rope_parameters.original_max_position_embeddings",
      "an integer > 0",
    ),
    (
      dict(rope_parameters=dict(rope_type=3)),
      "rope_parameters.rope_type",
      "a string, got 3",
    ),
    (
      dict(model_type="qwen2", use_sliding_window="yes"),
      "use_sliding_window",
      'true or false, got "yes"',
    ),
    (
      dict(
        model_type="qwen2",
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=-1,
      ),
      "max_window_layers",
      "an integer >= 0",
    ),
    (
      dict(model_type="qwen2", use_sliding_window=True, sliding_window="8"),
      "sliding_window",
      "an integer > 0 or null",
    ),
    (
      dict(model_type="gemma2", layer_types=[1, 2]),
      "layer_types",
      "a list of strings or null",
    ),
    (
      dict(model_type="gemma2", attn_logit_softcapping="50"),
      "attn_logit_softcapping",
      "a finite number > 0 or null",
    ),
    (
      dict(model_type="gemma2", query_pre_attn_scalar=None),
      "query_pre_attn_scalar",
      "a finite number > 0, got null",
    ),
  ],
  ids=lambda x: x if isinstance(x, str) else None,
)
def test_config_field_of_wrong_type_names_file_and_field(kw, field, msg):
  with pytest.raises(ValueError) as e:
    hf.config_from_hf(_base(**kw), "my/config.json")
  assert str(e.value).startswith(f"my/config.json: field '{field}' must be "), str(
    e.value
  )
  assert msg in str(e.value)


def test_config_nulls_with_a_meaning_are_kept():
  """null where transformers gives it a meaning: derived or switched off."""
  cfg = hf.config_from_hf(_base(num_key_value_heads=None, head_dim=None))
  assert (cfg.n_kv_heads, cfg.head_dim) == (4, 16)
  g = hf.config_from_hf(
    _base(
      "gemma2",
      attn_logit_softcapping=None,
      final_logit_softcapping=None,
      sliding_window=None,
    )
  )
  assert g.attn_softcap is None and g.final_softcap is None
  assert g.windows == (0, 0)
  with pytest.raises(ValueError, match="dtype 'int8' is not one of"):
    hf.config_from_hf(_base(), dtype="int8")


def test_config_json_field_of_wrong_type(small_ckpt, tmp_path):
  d = _copy_with(small_ckpt, tmp_path, config=lambda c: dict(c, hidden_size="abc"))
  with pytest.raises(
    ValueError,
    match=r"config\.json: field 'hidden_size' "
    r'must be an integer > 0, got "abc"',
  ):
    hf.load_hf(d)
  d = _copy_with(
    small_ckpt, tmp_path / "eps", config=lambda c: dict(c, rms_norm_eps=None)
  )
  with pytest.raises(
    ValueError,
    match=r"eps/config\.json: field "
    "'rms_norm_eps' must be a finite number > 0, got null",
  ):
    hf.load_hf(d)


def test_index_weight_map_of_wrong_type(small_ckpt, tmp_path):
  d = _copy_with(small_ckpt, tmp_path)
  with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"model.norm.weight": 3}}, f)
  with pytest.raises(
    ValueError,
    match=r"index\.json: field "
    r"'weight_map\.model\.norm\.weight' must be a file name",
  ):
    hf.load_hf(d)


# --------------------------------------------------------------------------
# Mistral (added as one FAMILY_TABLE entry)
# --------------------------------------------------------------------------


def test_mistral_window_shorter_than_sequence_is_applied(tmp_path):
  """The Mistral case's window (5) is shorter than the T = 24 test tokens and
  matters: dropping it moves our logits far from transformers', keeping it
  matches them (max |diff| printed for the record)."""
  name = "mistral_window_gqa"
  model = hfm.build_hf_model(name, seed=3)
  model.save_pretrained(str(tmp_path))
  cfg, params = hf.load_hf(str(tmp_path))
  assert cfg.windows == (5, 5) and T > 5
  toks = tokens(4, (B, T))
  theirs = hfm.hf_logits(model, toks)
  ours = our_logits(params, cfg, toks)
  print(
    f"mistral max |logit diff| = {np.max(np.abs(ours - theirs)):.3g} "
    f"(max |logit| {np.max(np.abs(theirs)):.3g})"
  )
  assert rel_err(ours, theirs) < REL_TOL
  no_window = our_logits(params, cfg.replace(layer_windows=(0, 0)), toks)
  assert rel_err(no_window, theirs) > 1e-2


def test_mistral_config_round_trip_and_export_limits(tmp_path):
  """One window on every layer (or none) exports as Mistral; per-layer
  windows do not. A config without sliding_window is global, as in
  MistralConfig(sliding_window=None)."""
  g = hf.config_from_hf(_base("mistral", sliding_window=None, num_key_value_heads=4))
  assert g.windows == (0, 0)
  d = hf.config_from_hf(_base("mistral", num_attention_heads=16))
  assert d.windows == (4096, 4096) and d.n_kv_heads == 8  # HF defaults
  w = hf.config_from_hf(_base("mistral", sliding_window=7, num_key_value_heads=2))
  assert hf.config_from_hf(hf.config_to_hf(w, "mistral")) == w
  assert hf.config_from_hf(hf.config_to_hf(g, "mistral")) == g
  with pytest.raises(ValueError, match="cannot export as 'mistral'"):
    hf.config_to_hf(w.replace(layer_windows=(7, 0)), "mistral")
  with pytest.raises(ValueError, match="cannot export as 'llama'"):
    hf.config_to_hf(w, "llama")


def test_family_table_drives_expected_names():
  """The HF names expected for a config are the table's, once per layer."""
  cfg = hf.config_from_hf(_base("mistral", sliding_window=7, num_key_value_heads=2))
  names = hf.expected_tensors(cfg, "mistral")
  assert len(names) == 3 + 2 * 9
  for t in hf.FAMILY_TABLE["mistral"].tensors.values():
    for i in range(cfg.n_layers):
      assert t.hf.format(i=i) in names
  assert hf.FAMILY_TABLE["mistral"].tensors == hf.FAMILY_TABLE["llama"].tensors
