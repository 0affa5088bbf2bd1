r"""First-call compile time of every decoding driver on SmolLM2-135M-Instruct.

One GSM8K chat prompt (--problem), SmolLM2 (float32), and each driver run
through its public entry point at a small budget:
  generate     jaxllm.generate, --budget samples of --new_tokens tokens
  pf           algorithms.methods.run("pf"): --budget particles,
               --max_steps steps of up to --max_step_tokens tokens
  beam         methods.run("beam"): --budget paths, beam width 2
  astar        methods.run("astar"): --budget expansions, 2 children
  speculative  methods.run("speculative"): a chain of --budget draft tokens
               per target call, the draft SmolLM2's first --draft_layers
               layers (algorithms.drafts.LayerSkipDraft)
each guided by ConfidenceScorer (no reward model) with the newline token as
the step delimiter. JAX reports, per call, the seconds it spent tracing,
lowering and in the XLA backend compile (`jax.monitoring` duration events);
the table gives those for the first call, its wall time, a second call's
wall time with the same shapes, and the second call's compile seconds
(0 unless the driver recompiles). Drivers run in this order in one process,
so a driver reuses what an earlier one compiled only where they share a jit.
Prints a table and writes <workdir>/results.json.

  python -m experiments.bench_compile
  python -m experiments.bench_compile --drivers=generate,pf --budget=8
"""

from __future__ import annotations

import collections
import time

from absl import app, flags

import jax

from experiments import workdir

DRIVERS = ("generate", "pf", "beam", "astar", "speculative")
FLAGS = flags.FLAGS
flags.DEFINE_list("drivers", list(DRIVERS), f"Drivers: {', '.join(DRIVERS)}.")
flags.DEFINE_integer("problem", 0, "Index of the GSM8K original test problem.")
flags.DEFINE_integer("budget", 4, "Samples / particles / paths / expansions / gamma.")
flags.DEFINE_integer("new_tokens", 64, "generate / speculative: tokens per sample.")
flags.DEFINE_integer("max_steps", 2, "Search steps (pf, beam).")
flags.DEFINE_integer("max_step_tokens", 16, "Tokens per search step.")
flags.DEFINE_integer("draft_layers", 8, "speculative: draft = first n of 30 layers.")
workdir.define_flags("results/bench_compile")

# jax.monitoring duration events (jax._src.dispatch) -> table column.
EVENTS = {
  "/jax/core/compile/jaxpr_trace_duration": "trace_s",
  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
  "/jax/core/compile/backend_compile_duration": "backend_s",
}
_seconds = collections.Counter()


def _listen(event: str, duration: float, **_) -> None:
  if event in EVENTS:
    _seconds[EVENTS[event]] += duration


def timed_call(fn) -> dict:
  """Wall seconds of fn() (outputs blocked on) and JAX's trace / lower /
  backend-compile seconds during it."""
  _seconds.clear()
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  out = dict(wall_s=time.perf_counter() - t0)
  out.update({k: _seconds[k] for k in EVENTS.values()})
  return out


def drivers(names, model, params, prompt, tok, newline) -> dict:
  """name -> zero-argument closure running that driver once."""
  from algorithms import methods
  from algorithms.drafts import LayerSkipDraft
  from algorithms.scorers import ConfidenceScorer
  from jaxllm import generate

  key = jax.random.key(0)
  search = dict(
    scorer=ConfidenceScorer(),
    max_step_tokens=FLAGS.max_step_tokens,
    delimiter_ids=newline,
    stop_ids=(tok.eos_id,),
  )
  steps = dict(max_steps=FLAGS.max_steps, **search)
  run = lambda name, **kw: (
    methods.run(name, model, params, [prompt], key, FLAGS.budget, **kw).tokens
  )
  draft = LayerSkipDraft(model.cfg, range(FLAGS.draft_layers))
  table = dict(
    generate=lambda: (
      generate(
        model, params, [prompt], key, FLAGS.new_tokens, num_samples=FLAGS.budget
      ).tokens
    ),
    pf=lambda: run("pf", **steps),
    beam=lambda: run("beam", beam_width=2, **steps),
    astar=lambda: run("astar", num_children=2, capacity=16, **search),
    speculative=lambda: run(
      "speculative",
      draft=draft,
      draft_params=params,
      max_new_tokens=FLAGS.new_tokens,
    ),
  )
  return {n: table[n] for n in names}


def main(argv):
  del argv
  unknown = [d for d in FLAGS.drivers if d not in DRIVERS]
  if unknown:
    raise app.UsageError(f"--drivers: unknown {unknown}; known: {list(DRIVERS)}")
  workdir.flags_at_least(
    1, "budget", "new_tokens", "max_steps", "max_step_tokens", "draft_layers"
  )
  if FLAGS.draft_layers >= 30:
    raise app.UsageError(f"--draft_layers must be < 30, got {FLAGS.draft_layers}")
  from experiments import sweep_tasks
  from experiments.tasks import gsm8k
  from jaxllm import Transformer

  problems = gsm8k.load_original()
  if not 0 <= FLAGS.problem < len(problems):
    raise app.UsageError(f"--problem must be in [0, {len(problems)})")
  jax.monitoring.register_event_duration_secs_listener(_listen)
  cfg, params, tok = workdir.load_pretrained(log=workdir.progress)
  prompt = workdir.chat_prompts(tok, [problems[FLAGS.problem]])[0]
  newline = sweep_tasks.newline_ids(workdir.SMOLLM2)
  model = Transformer(cfg)
  rows = []
  for name, fn in drivers(FLAGS.drivers, model, params, prompt, tok, newline).items():
    first, second = timed_call(fn), timed_call(fn)
    row = dict(driver=name, **first, second_wall_s=second["wall_s"])
    row["second_compile_s"] = sum(second[k] for k in EVENTS.values())
    rows.append(row)
    workdir.progress(str(row))
    workdir.save_results(FLAGS.workdir, workdir.RESULTS_FILE, dict(rows=rows))
  workdir.print_rows(
    rows,
    [
      ("driver", "driver", ""),
      ("trace s", "trace_s", ".1f"),
      ("lower s", "lower_s", ".1f"),
      ("backend s", "backend_s", ".1f"),
      ("1st call s", "wall_s", ".1f"),
      ("2nd call s", "second_wall_s", ".1f"),
      ("2nd compile s", "second_compile_s", ".1f"),
    ],
  )
  print(f"wrote {FLAGS.workdir}/{workdir.RESULTS_FILE}")


if __name__ == "__main__":
  app.run(main)
