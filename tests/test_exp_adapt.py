"""experiments/adapt_encdec.py end to end on a tiny config in a tmp dir, and its
config checks."""

import json
import os

import numpy as np
import pytest

from experiments import adapt_encdec as ae
from experiments import config_utils
from jaxllm import flops


def tiny_config(**over):
  c = config_utils.load_config_file(ae.DEFAULT_CONFIG)
  c.small.update(
    d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64, max_seq_len=128
  )
  c.big.update(
    d_model=48, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=96, max_seq_len=128
  )
  c.task.n_steps = (2, 2)
  c.pretrain.update(small_steps=2, big_steps=2, batch_size=2, seq_len=64)
  c.finetune.update(steps=3, batch_size=4, cross_warmup_steps=2)
  c.eval.update(n_problems=3, max_new_tokens=12, budgets=(2,))
  for k, v in over.items():
    section, field = k.split(".")
    c[section][field] = v
  return c


@pytest.mark.parametrize(
  "objective, kd",
  [("prefix_lm", 0.5), pytest.param("ul2", 0.0, marks=pytest.mark.slow)],
)
def test_end_to_end_tiny(tmp_path, objective, kd):
  c = tiny_config(**{"finetune.objective": objective, "finetune.kd_weight": kd})
  lines = []
  rep = ae.run(c, str(tmp_path), log=lines.append)
  rows = rep["rows"]
  models = ["small", "big", "small-small", "big-small"]
  assert [r["model"] for r in rows] == [m for m in models for _ in range(2)]
  assert [(r["method"], r["budget"]) for r in rows[:2]] == [
    ("greedy", 1),
    ("majority", 2),
  ]
  for r in rows:
    assert 0.0 <= r["accuracy"] <= 1.0 and r["flops_per_problem"] > 0
  # greedy FLOPs per problem, recomputed from the generated token counts: the
  # decoder-only rows by jaxllm.flops on the prompt lengths
  probs = ae.tp.heldout_problems(c, 3)
  plen = np.array([len(ae.TOK.encode(p.prompt, add_bos=True)) for p in probs])
  small = ae.model_config(c.small)
  r = rows[0]
  lo = flops.prefill_flops(small, plen).mean()
  hi = flops.generate_flops(small, plen, c.eval.max_new_tokens).mean()
  assert lo < r["flops_per_problem"] <= hi
  assert any(
    line.startswith("big-small: cross-attention warm-up 2 steps") for line in lines
  )
  with open(os.path.join(tmp_path, "results.json")) as f:
    out = json.load(f)
  assert len(out["rows"]) == 8
  assert os.path.exists(os.path.join(tmp_path, "accuracy_vs_flops.png"))
  assert "big-small" in ae.format_table(rows)


@pytest.mark.parametrize(
  "over, match",
  [
    ({"finetune.cross_warmup_steps": 3}, "cross_warmup_steps=3"),
    ({"finetune.objective": "mlm"}, "finetune.objective"),
    ({"finetune.kd_weight": 1.5}, "kd_weight"),
    ({"pretrain.seq_len": 1000}, r"config.pretrain.seq_len=1000 exceeds"),
    ({"eval.max_new_tokens": 500}, r"config.eval.max_new_tokens=500"),
    ({"eval.max_new_tokens": 120}, r"config.eval.max_new_tokens=120"),
    ({"small.max_seq_len": 32, "pretrain.seq_len": 32}, "config.small.max_seq_len"),
    ({"big.max_seq_len": 24, "pretrain.seq_len": 24}, "config.big.max_seq_len=24"),
    ({"eval.budgets": (0,)}, "eval.budgets"),
    ({"small.n_heads": 5}, "config.small"),
    ({"finetune.steps": 0}, "finetune.steps"),
    ({"pretrain.small_policy_dir": "/nonexistent"}, "small_policy_dir"),
  ],
)
def test_bad_config_rejected_before_work(tmp_path, over, match):
  with pytest.raises(ValueError, match=match):
    ae.run(tiny_config(**over), str(tmp_path), log=lambda _: None)
  assert not os.listdir(tmp_path) or os.listdir(tmp_path) == [".lock"]


def test_ul2_with_the_default_kd_weight_is_valid_and_has_no_kd():
  """README: `--config.finetune.objective=ul2` alone (kd_weight stays 0.5)."""
  c = config_utils.load_config_file(ae.DEFAULT_CONFIG)
  c.finetune.objective = "ul2"
  assert c.finetune.kd_weight == 0.5
  ae.validate_adapt_config(c)
  assert ae.kd_weight(c) == 0.0
  c.finetune.objective = "prefix_lm"
  assert ae.kd_weight(c) == 0.5


@pytest.mark.parametrize(
  "task",
  [
    {},
    {"n_digits": 2},
    {"n_digits": 2, "mul_digits": 2, "n_steps": (1, 5)},
    {"ops": "+"},
    {"ops": "-*"},
  ],
)
def test_length_bounds_cover_generated_problems(task):
  c = config_utils.load_config_file(ae.DEFAULT_CONFIG)
  c.task.update(task)
  probs = ae.arith.generate(3000, 1, **ae.tp.task_kwargs(c))
  prompt = max(len(ae.TOK.encode(p.prompt, add_bos=True)) for p in probs)
  text = max(len(ae.tp.example(p)[0]) for p in probs)
  assert prompt <= ae.longest_prompt(c) <= prompt + 2
  assert text <= ae.longest_text(c) <= text + 16


def test_longest_eval_budget_is_accepted():
  c = tiny_config()
  c.eval.max_new_tokens = 128 - ae.longest_prompt(c)
  ae.validate_adapt_config(c)
  c.eval.max_new_tokens += 1
  with pytest.raises(ValueError, match="use at most"):
    ae.validate_adapt_config(c)
