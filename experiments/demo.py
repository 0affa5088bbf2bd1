r"""`make demo`: the main job, end to end on the synthetic `arith` task.

1. Train the small policy (experiments/train_policy.py) unless a trained one
   is already in <workdir>/arith/policy.
2. Train the PRM and ORM on the policy's samples (experiments/train_verifier.py)
   unless <workdir>/arith/verifier has them.
3. Run the scaling sweep with the verifier-quality axis (experiments/scaling.py,
   configs/scaling_arith_verifiers.py) into <workdir>/scaling/arith: methods x
   verifiers (exact oracle, noisy oracles, learned PRM / ORM) x budgets, with
   greedy and pass@1 baselines; the table with standard errors, fits, the
   compute-optimal method per budget (ties marked) and the plots
   (accuracy_vs_flops.png: one panel per verifier; accuracy_vs_auroc.png).
   With --full: the full study (configs/scaling_arith_full.py) at each
   sampling temperature of its TEMPERATURES, into
   <workdir>/scaling/arith_full/T<temperature>.
The last line names the results directory. Every stage is resumable: rerun
`make demo` after an interruption and finished work is reused. The sweep's
config (with --sweep_overrides) and its output directory are checked first
(`experiments.scaling --validate_only`), so a misspelt override or a results
directory made with other settings fails before any training.

Each stage is its own script with its own config (configs/*.py); this one only
chains them, so its two flags are plain absl flags.

One process only (it launches each stage as a one-process script; start
experiments.scaling itself on several processes): the multi-host flags of
experiments/distributed.py are accepted; a multi-process run or --mesh is
refused with that reason.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import distributed, workdir

FLAGS = flags.FLAGS
workdir.define_flags(
  "results", workdir_help="Root results directory (the stages write below it)."
)
flags.DEFINE_list("sweep_overrides", [], "Extra --config.X=Y for the sweep.")
flags.DEFINE_bool(
  "full",
  False,
  "Run the full verifier study (configs/scaling_arith_full.py, every method, "
  "seven verifiers, two sampling temperatures; hours on a CPU) instead of the "
  "~15-minute demo sweep.",
)
DEMO_CONFIG = "configs/scaling_arith_verifiers.py"
FULL_CONFIG = "configs/scaling_arith_full.py"


def sweeps(root: str, full: bool, overrides) -> list:
  """(results dir, experiments.scaling arguments) of each sweep to run."""
  policy = os.path.join(root, "arith", "policy")
  verifier = os.path.join(root, "arith", "verifier")
  common = [f"--config.policy_dir={policy}", f"--config.verifier_dir={verifier}"]
  extra = [f"--config.{o}" for o in overrides]
  if not full:
    out = os.path.join(root, "scaling", "arith")
    return [
      (
        out,
        [
          "experiments.scaling",
          f"--config={DEMO_CONFIG}",
          *common,
          f"--workdir={out}",
          *extra,
        ],
      )
    ]
  from configs import scaling_arith_full

  runs = []
  for t in scaling_arith_full.TEMPERATURES:
    out = os.path.join(root, "scaling", "arith_full", f"T{t}")
    runs.append(
      (
        out,
        [
          "experiments.scaling",
          f"--config={FULL_CONFIG}",
          *common,
          f"--config.temperature={t}",
          f"--workdir={out}",
          *extra,
        ],
      )
    )
  return runs


def main(argv):
  del argv
  distributed.single_process(
    "experiments.demo",
    (
      "it launches each stage as a one-process script; start experiments.scaling "
      "itself on several processes"
    ),
  )
  root = FLAGS.workdir
  policy = os.path.join(root, "arith", "policy")
  verifier = os.path.join(root, "arith", "verifier")
  runs = sweeps(root, FLAGS.full, FLAGS.sweep_overrides)
  for _, sweep_args in runs:
    workdir.run_module(sweep_args + ["--validate_only"])
  if not os.path.exists(os.path.join(policy, "policy")):
    workdir.run_module(
      [
        "experiments.train_policy",
        "--config=configs/arith_policy.py",
        f"--workdir={policy}",
      ]
    )
  else:
    print(f"using the trained policy in {policy}")
  if not all(os.path.exists(os.path.join(verifier, n)) for n in ("prm", "orm")):
    workdir.run_module(
      [
        "experiments.train_verifier",
        "--config=configs/arith_verifier.py",
        f"--workdir={verifier}",
        f"--config.policy_dir={policy}",
      ]
    )
  else:
    print(f"using the trained verifiers in {verifier}")
  for _, sweep_args in runs:
    workdir.run_module(sweep_args)
  for sweep, _ in runs:
    print(f"results: {os.path.abspath(sweep)}")


if __name__ == "__main__":
  distributed.define_flags()
  app.run(main)
