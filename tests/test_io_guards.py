"""Reading model configs from files: one checked reader, clear errors.

`checkpoint.load_model_config` / `model_config_from_dict` read the
`model_config.json` the experiments write next to a params checkpoint (and the
`cfg` of a draft.json). A missing, unknown or mistyped field must raise a
ValueError naming the file and the field, never a bare TypeError, and a file
written the way the experiments write it today must load back to the same
config. The reference for a round trip is the ModelConfig itself; the
reference format is `json.dump(dataclasses.asdict(cfg))`, what
experiments/train_policy.py, train_verifier.py and train_genverifier.py write.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from jaxllm import checkpoint
from jaxllm.config import ModelConfig, RopeScaling

BASE = dict(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=24)
CONFIGS = {
  "plain": ModelConfig(**BASE),
  "llama3_rope": ModelConfig(
    **BASE,
    rope_theta=5e5,
    max_seq_len=256,
    rope_scaling=RopeScaling(
      factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=64
    ),
  ),
  "gemma_like": ModelConfig(
    **BASE,
    activation="gelu_tanh",
    head_dim=12,
    norm_plus_one=True,
    post_norms=True,
    attn_softcap=50.0,
    final_softcap=30.0,
    query_pre_attn_scalar=12.0,
    embed_scale=True,
    layer_windows=(8, 0),
    dtype="bfloat16",
    param_dtype="bfloat16",
    tie_embeddings=False,
  ),
  "qwen_window": ModelConfig(
    **BASE, qkv_bias=True, sliding_window=4, sliding_window_pattern=2
  ),
}


def write_as_experiments_do(path, cfg):
  """The format experiments/train_*.py write today."""
  with open(path, "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2)
  return str(path)


def as_json_dict(cfg):
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip(name, tmp_path):
  cfg = CONFIGS[name]
  # The experiments' format, read from a file and from its directory.
  path = write_as_experiments_do(tmp_path / "model_config.json", cfg)
  assert checkpoint.load_model_config(path) == cfg
  assert checkpoint.load_model_config(tmp_path) == cfg
  # save_model_config writes the same JSON, atomically (no temporary left).
  out = tmp_path / "saved"
  out.mkdir()
  written = checkpoint.save_model_config(str(out), cfg)
  assert written == str(out / "model_config.json")
  assert os.listdir(out) == ["model_config.json"]
  assert json.load(open(written)) == json.load(open(path))
  loaded = checkpoint.load_model_config(written)
  assert loaded == cfg and hash(loaded) == hash(cfg)
  assert isinstance(loaded.layer_windows, (tuple, type(None)))
  assert isinstance(loaded.rope_scaling, (RopeScaling, type(None)))


@pytest.mark.parametrize(
  "field", ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"]
)
def test_missing_field_names_file_and_field(field, tmp_path):
  d = as_json_dict(CONFIGS["plain"])
  del d[field]
  path = tmp_path / "model_config.json"
  path.write_text(json.dumps(d))
  with pytest.raises(
    ValueError,
    match=rf"model_config\.json: missing "
    rf"required field '{field}'",
  ):
    checkpoint.load_model_config(str(path))


def test_optional_fields_may_be_missing(tmp_path):
  """A file from before a field with a default existed still loads."""
  d = {k: as_json_dict(CONFIGS["plain"])[k] for k in BASE}
  assert checkpoint.model_config_from_dict(d, "x.json") == CONFIGS["plain"]


@pytest.mark.parametrize(
  "change, msg",
  [
    (dict(dmodel=16), "unknown field 'dmodel'"),
    (dict(d_model="abc"), "d_model"),
    (dict(d_model=16.0), "d_model"),
    (dict(n_heads=None), "n_heads"),
    (dict(norm_eps=None), "norm_eps"),
    (dict(norm_eps="1e-5"), "norm_eps"),
    (dict(norm_eps=float("nan")), "field 'norm_eps' must be finite"),
    (dict(rope_theta=float("inf")), "field 'rope_theta' must be finite"),
    (dict(tie_embeddings="false"), "tie_embeddings"),
    (dict(activation=3), "activation"),
    (dict(dtype="float64"), "dtype"),
    (dict(rope_scaling="llama3"), "field 'rope_scaling' must be an object"),
    (dict(rope_scaling=dict(fctor=8.0)), "rope_scaling: unknown field 'fctor'"),
    (dict(rope_scaling=dict(factor="8")), "factor"),
    (dict(layer_windows="0,0"), "field 'layer_windows' must be a list"),
    (dict(layer_windows=[0, "a"]), "layer_windows"),
    (dict(layer_windows=[0]), "layer_windows"),
  ],
  ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_field_names_file_and_field(change, msg, tmp_path):
  d = dict(as_json_dict(CONFIGS["plain"]), **change)
  path = tmp_path / "model_config.json"
  path.write_text(json.dumps(d))
  with pytest.raises(ValueError) as e:
    checkpoint.load_model_config(str(path))
  text = str(e.value)
  assert text.startswith(f"{path}: "), text
  assert msg in text, text


def test_bad_files(tmp_path):
  with pytest.raises(
    FileNotFoundError,
    match=r"model config .*nothere not "
    "found",
  ):
    checkpoint.load_model_config(str(tmp_path / "nothere"))
  with pytest.raises(FileNotFoundError, match=r"model_config\.json"):
    checkpoint.load_model_config(str(tmp_path))
  bad = tmp_path / "model_config.json"
  bad.write_text('{"vocab_size": 32,')
  with pytest.raises(
    ValueError,
    match=r"model_config\.json is not valid "
    "JSON",
  ):
    checkpoint.load_model_config(str(bad))
  bad.write_text("[1, 2]")
  with pytest.raises(
    ValueError,
    match=r"model_config\.json: expected a JSON "
    "object",
  ):
    checkpoint.load_model_config(str(bad))
  with pytest.raises(ValueError, match="cfg must be a ModelConfig"):
    checkpoint.save_model_config(str(tmp_path / "x.json"), BASE)


def test_nested_source_for_draft_json():
  """algorithms/drafts.py keeps its config under "cfg" in draft.json."""
  d = {"cfg": as_json_dict(CONFIGS["llama3_rope"]), "token_ids": [1, 2]}
  assert (
    checkpoint.model_config_from_dict(d["cfg"], "ckpt/draft.json: cfg")
    == CONFIGS["llama3_rope"]
  )
  del d["cfg"]["n_layers"]
  with pytest.raises(
    ValueError,
    match=r"ckpt/draft\.json: cfg: missing "
    "required field 'n_layers'",
  ):
    checkpoint.model_config_from_dict(d["cfg"], "ckpt/draft.json: cfg")


def test_pretrained_rejects_bad_dtype_before_any_file_io(monkeypatch):
  from jaxllm import pretrained

  opened = []
  monkeypatch.setattr(pretrained.gguf_io, "open_gguf", opened.append)
  with pytest.raises(ValueError, match="dtype 'float8' is not one of"):
    pretrained.load_pretrained("smollm2-135m-instruct", dtype="float8")
  assert opened == []
