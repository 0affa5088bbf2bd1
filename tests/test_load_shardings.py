"""Loading HF safetensors and GGUF checkpoints straight into shardings
(`hf.load_hf(shardings=)`, `gguf_io.load_gguf(shardings=)`).

Checked on 8 fake CPU devices, in a SUBPROCESS as in tests/test_sharding.py
(XLA_FLAGS must be set before jax initialises): `python
tests/test_load_shardings.py` writes tiny random checkpoints (`hf.save_hf`;
a GGUF written with gguf.GGUFWriter the way llama.cpp lays it out, Q8_0 for
the matrices), loads each unsharded and onto `param_shardings(cfg,
make_mesh(spec))` for spec in MESHES (and with the Mesh itself), and prints
one JSON line; the pytest functions check it:

  * every array equals the unsharded load bit for bit (same dtype) and has
    exactly the requested sharding;
  * a `shardings` that does not fit the config (a Params tree of another
    structure, a non-sharding, a sharding of the wrong rank, an indivisible
    mesh) raises ValueError naming `shardings` before any tensor data is read;
  * the tied-lm_head equality check still accepts an equal head and rejects
    a different one when loading into shardings.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
N_DEVICES = 8
MESHES = ("data=4,model=2", "data=2,model=4")


@functools.cache
def _result() -> dict:
  """Run this file as a script with 8 CPU devices; the JSON it prints last.
  (tests/test_sharding.py's `run_case` runs its own file only.)"""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
    [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  )
  proc = subprocess.run(
    [sys.executable, HERE],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  assert lines, f"printed no JSON:\n{proc.stdout[-2000:]}"
  return json.loads(lines[-1])


def test_loads_into_shardings_bit_identical():
  r = _result()["loads"]
  assert set(r) == {
    f"{fmt} {spec}"
    for fmt in ("hf llama", "hf qwen2 tied", "gguf", "gguf bfloat16")
    for spec in MESHES + ("mesh " + MESHES[0],)
  }, sorted(r)
  for name, got in r.items():
    assert got == dict(bits=True, dtype=True, sharding=True, n=got["n"]), name
    assert got["n"] >= 10, name


def test_unsharded_loads_match_the_saved_params():
  r = _result()["reference"]
  assert r == {"hf llama": True, "hf qwen2 tied": True, "gguf": True}, r


def test_bad_shardings_raise_before_reading_data():
  r = _result()["errors"]
  for name, (msg, reads) in r.items():
    assert msg is not None, name
    assert reads == 0, (name, msg)
    who = "load_gguf" if name.startswith("gguf") else "load_hf"
    assert msg.startswith(f"{who}: shardings"), (name, msg)
  assert _result()["reads_control"] == {"hf llama": 21, "gguf": 20}
  assert "2 layers" in r["hf other config"][0], r["hf other config"]
  assert "got a Params tree with 1 layers" in r["hf other config"][0]
  assert "got list" in r["gguf list"][0], r["gguf list"]
  assert "shardings.embed" in r["hf wrong rank"][0], r["hf wrong rank"]
  assert "does not divide" in r["gguf model=8"][0], r["gguf model=8"]


def test_tied_head_check_with_shardings():
  r = _result()["tied_head"]
  assert r["equal_loads"], r
  assert r["differs"] is not None and "'lm_head.weight' differs" in r["differs"], r


# ----------------------------------------------------------------------------
# The checks (run in the subprocess)
# ----------------------------------------------------------------------------


def _cfg(**kw):
  from jaxllm.config import ModelConfig

  base = dict(
    vocab_size=64,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=4,
    d_ff=64,
    max_seq_len=128,
    tie_embeddings=False,
  )
  base.update(kw)
  return ModelConfig(**base)


def _random_params(cfg, seed: int):
  """Random numpy float32 Params of `cfg` (numpy, not init_params: its jit
  compile would dominate this file's run time)."""
  import jax

  from jaxllm.params import abstract_params

  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda s: rng.normal(0, 1, s.shape).astype(np.float32), abstract_params(cfg)
  )


def _write_gguf(path: str, cfg, params) -> None:
  """`params` as a llama GGUF: our tables' names and layouts, Q/K rows
  permuted as convert_hf_to_gguf does, 2-D tensors quantised to Q8_0."""
  import gguf
  from test_gguf import _close, llamacpp_permute

  from jaxllm import hf

  w = gguf.GGUFWriter(path, "llama")
  w.add_context_length(cfg.max_seq_len)
  w.add_embedding_length(cfg.d_model)
  w.add_block_count(cfg.n_layers)
  w.add_feed_forward_length(cfg.d_ff)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.n_kv_heads)
  w.add_rope_freq_base(float(cfg.rope_theta))
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_vocab_size(cfg.vocab_size)
  w.add_rope_dimension_count(cfg.head_dim)
  for path_, i, t, shape in hf.expand_tensors(cfg, "llama"):
    x = hf.TRANSFORMS[t.transform].save(np.asarray(hf.param_at(params, path_, i)))
    x = np.ascontiguousarray(x, np.float32)
    if t.gguf_rotary:
      x = llamacpp_permute(x, shape[1])
    name = t.gguf.format(i=i)
    if x.ndim == 2:
      q = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)
    else:
      w.add_tensor(name, x)
  _close(w)


def _compare(got, ref, shardings) -> dict:
  import jax

  g, r, s = (jax.tree_util.tree_leaves(t) for t in (got, ref, shardings))
  assert len(g) == len(r) == len(s)
  return dict(
    bits=all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(g, r)),
    dtype=all(a.dtype == b.dtype for a, b in zip(g, r)),
    sharding=all(a.sharding == sh for a, sh in zip(g, s)),
    n=len(g),
  )


def _same_bits(a, b) -> bool:
  import jax

  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return len(la) == len(lb) and all(
    np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(la, lb)
  )


def main() -> dict:
  import tempfile

  import jax
  import safetensors.numpy
  from jax.sharding import NamedSharding, PartitionSpec

  from jaxllm import gguf_io, hf
  from jaxllm import sharding as sh

  assert len(jax.devices()) == N_DEVICES, jax.devices()
  out: dict = dict(loads={}, reference={}, errors={}, reads_control={}, tied_head={})
  with tempfile.TemporaryDirectory() as d:
    # Checkpoints: (name, loader(shardings) -> (cfg, params), cfg, params).
    llama = _cfg()
    qwen = _cfg(tie_embeddings=True, qkv_bias=True)
    p_llama = _random_params(llama, 1)
    p_qwen = _random_params(qwen, 2)
    hf.save_hf(os.path.join(d, "llama"), llama, p_llama, model_type="llama")
    hf.save_hf(os.path.join(d, "qwen"), qwen, p_qwen, model_type="qwen2")
    g_cfg = _cfg(tie_embeddings=True)
    p_g = _random_params(g_cfg, 3)
    g_path = os.path.join(d, "tiny.gguf")
    _write_gguf(g_path, g_cfg, p_g)

    loaders = {
      "hf llama": lambda s: hf.load_hf(os.path.join(d, "llama"), shardings=s),
      "hf qwen2 tied": lambda s: hf.load_hf(os.path.join(d, "qwen"), shardings=s),
      "gguf": lambda s: gguf_io.load_gguf(g_path, shardings=s),
      "gguf bfloat16": lambda s: gguf_io.load_gguf(
        g_path, dtype="bfloat16", shardings=s
      ),
    }
    saved = {"hf llama": p_llama, "hf qwen2 tied": p_qwen}
    for name, load in loaders.items():
      cfg, ref = load(None)
      if name in saved:
        out["reference"][name] = _same_bits(ref, saved[name])
      elif name == "gguf":  # Q8_0: within half a quantisation step
        out["reference"][name] = all(
          np.max(np.abs(np.asarray(a) - np.asarray(b)))
          <= np.max(np.abs(np.asarray(b))) / 200
          for a, b in zip(
            jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(p_g)
          )
        )
      for spec in MESHES:
        mesh = sh.make_mesh(spec)
        want = sh.param_shardings(cfg, mesh)
        got_cfg, got = load(want)
        assert got_cfg == cfg
        out["loads"][f"{name} {spec}"] = _compare(got, ref, want)
      mesh = sh.make_mesh(MESHES[0])
      _, got = load(mesh)
      out["loads"][f"{name} mesh {MESHES[0]}"] = _compare(
        got, ref, sh.param_shardings(cfg, mesh)
      )

    # Bad shardings: ValueError naming the argument, no tensor data read.
    reads = [0]
    real_get, real_array = hf._get_tensor, gguf_io.GGUFFile.array

    def counting_get(*a):
      reads[0] += 1
      return real_get(*a)

    def counting_array(self, name):
      reads[0] += 1
      return real_array(self, name)

    hf._get_tensor = counting_get
    gguf_io.GGUFFile.array = counting_array
    m42 = sh.make_mesh("data=4,model=2")
    bad = {
      "hf other config": ("hf llama", sh.param_shardings(_cfg(n_layers=1), m42)),
      "hf tied vs untied": ("hf llama", sh.param_shardings(qwen, m42)),
      "hf wrong rank": (
        "hf llama",
        NamedSharding(m42, PartitionSpec(None, None, None, "model")),
      ),
      "gguf list": ("gguf", [sh.param_shardings(g_cfg, m42)]),
      "gguf model=8": ("gguf", sh.make_mesh("model=8")),
      "gguf untied tree": ("gguf", sh.param_shardings(llama, m42)),
    }
    for name, (fmt, s) in bad.items():
      reads[0] = 0
      try:
        loaders[fmt](s)
        msg = None
      except ValueError as e:
        msg = str(e)
      out["errors"][name] = (msg, reads[0])
    # Control: the counters do see a good load's reads.
    for fmt in ("hf llama", "gguf"):
      reads[0] = 0
      loaders[fmt](m42)
      out["reads_control"][fmt] = reads[0]
    hf._get_tensor, gguf_io.GGUFFile.array = real_get, real_array

    # A tied checkpoint that also stores lm_head.weight, loaded into shardings.
    qd = os.path.join(d, "qwen")
    t = safetensors.numpy.load_file(os.path.join(qd, "model.safetensors"))
    want = sh.param_shardings(qwen, m42)
    _, ref = hf.load_hf(qd)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
    safetensors.numpy.save_file(t, os.path.join(qd, "model.safetensors"))
    _, got = hf.load_hf(qd, shardings=want)
    out["tied_head"]["equal_loads"] = got.lm_head is None and _same_bits(got, ref)
    t["lm_head.weight"] = t["lm_head.weight"] + 1.0
    safetensors.numpy.save_file(t, os.path.join(qd, "model.safetensors"))
    try:
      hf.load_hf(qd, shardings=want)
      out["tied_head"]["differs"] = None
    except ValueError as e:
      out["tied_head"]["differs"] = str(e)
  return out


if __name__ == "__main__":
  print(json.dumps(main(), default=str))
