"""What the scaling sweep (experiments/scaling.py) runs on: the task.

A task is the policy and its tokenizer, the problems and their prompts, how
a completion is graded (one or more extraction rules), which verifiers
score the samples and which of them can guide a search. The sweep itself
(pools, estimators, search rows, resume, report) is the same for every
task. `config.task` names it (absent: 'arith', the sweeps made before this
axis existed):

  arith  the synthetic arithmetic task: the trained policy of
         experiments/train_policy.py on its held-out problems, the trained
         PRM / ORM ('learned') and the exact / noisy reference oracles
         (experiments/verifiers.py); one exact grading rule.
  gsm8k  SmolLM2-135M-Instruct (`config.model`, the GGUF of
         jaxllm.pretrained, float32) on the original GSM8K problems
         (+ `config.gsm_variants` GSM-Symbolic variants per template),
         prompts in the tokenizer's chat template exactly as transformers
         renders it (workdir.chat_prompts). Graded by both rules of
         experiments/tasks/answers.py ('strict': a marked answer; 'flexible':
         else the last number); `config.answer_rule` is the headline one,
         every row reports both, and an unparsable answer is a miss counted
         as unparsable. Verifiers: 'confidence' -- the generator's own
         confidence (`algorithms.scorers.ConfidenceScorer`: a sample's score
         is exp(mean token log-prob), a step's the same over the step's
         tokens; free: it reads the sampling pass's log-probs) -- guides
         best-of-N / BoM and the searches; 'genrm' -- SmolLM2 itself as a
         generative verifier (`jaxllm.reward.generative_verifier_scores`,
         p(Yes) of its next token after the default question / solution
         template; one prefill per sample, charged its FLOPs) scores whole
         samples for the outcome methods (the solve-versus-verify study on
         the same pool).

Steps (the PRM's, the confidence's and the searches'): a step ends at a
token that is whitespace containing a newline, or at EOS.

Also the per-problem compute of sampled solutions (`selection_compute`),
shared by the selection rows (experiments/scaling.py) and the greedy
baseline (experiments/sweep_search.py).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

from experiments import config_utils, workdir
from experiments import verifiers as vlib
from jaxllm import flops as flops_lib

ARITH, GSM8K = "arith", "gsm8k"
TASKS = (ARITH, GSM8K)
SCHEMAS = {ARITH: "scaling_arith.py", GSM8K: "scaling_gsm8k.py"}
# Selection methods that read only the outcome score (a whole-sample verifier
# such as 'genrm' runs these and no step-score method).
OUTCOME_METHODS = ("weighted_majority_orm", "bon_orm", "bom_orm")


def task_name(config) -> str:
  """config.task, 'arith' when the config has no such field.

  Raises:
    ValueError: an unknown task, naming config.task.
  """
  name = config.get("task", ARITH)
  if name not in TASKS:
    raise ValueError(f"config.task: unknown task {name!r}; known: {TASKS}")
  return name


def schema_path(config) -> str:
  """The default config whose fields are this task's sweep schema."""
  return config_utils.config_path(SCHEMAS[task_name(config)])


def for_config(config):
  """The task object of a sweep config (`ArithTask` or `GSM8KTask`)."""
  return (ArithTask if task_name(config) == ARITH else GSM8KTask)(config)


def step_ends(gen_tokens, delimiter_ids, stop_ids, max_steps: int) -> np.ndarray:
  """Positions (in the generated part) of the first `max_steps` step ends:
  delimiter or stop tokens."""
  gen = np.asarray(gen_tokens)
  return np.flatnonzero(np.isin(gen, delimiter_ids) | np.isin(gen, stop_ids))[
    :max_steps
  ]


class ArithTask:
  """The synthetic arith task (module doc)."""

  rules = ("exact",)
  verifier_kinds = (vlib.LEARNED, vlib.ORACLE)
  step_verifier_kinds = (vlib.LEARNED, vlib.ORACLE)

  def __init__(self, config):
    from experiments.tasks import arith

    self.config, self.arith = config, arith
    tok = arith.TOKENIZER
    self.decode = tok.decode
    self.delimiter_ids, self.stop_ids, self.pad_id = (
      (tok.newline_id,),
      (tok.eos_id,),
      tok.pad_id,
    )

  def prompts(self, problems) -> list:
    return [self.arith.TOKENIZER.encode(p.prompt, add_bos=True) for p in problems]

  def grade(self, problem, text: str) -> dict:
    """{rule: (answer key or None, correct)}."""
    return {
      "exact": (self.arith.extract_answer(text), self.arith.check_answer(problem, text))
    }

  def gold(self, problem, rule: str):
    return problem.answer

  def check_files(self) -> None:
    c = self.config
    workdir.require_files(
      c, "policy_dir", ("model_config.json", workdir.CONFIG_FILE, "policy")
    )
    workdir.require_files(c, "verifier_dir", ("model_config.json", "prm", "orm"))

  def model_configs(self):
    from jaxllm import checkpoint

    for field in ("policy_dir", "verifier_dir"):
      workdir.require_files(self.config, field, (checkpoint.MODEL_CONFIG_FILE,))
    return (
      checkpoint.load_model_config(self.config.policy_dir),
      checkpoint.load_model_config(self.config.verifier_dir),
    )

  def load(self):
    """(policy (cfg, params), policy training config, verifier cfg,
    {'prm', 'orm': (RewardModel, params)})."""
    self.check_files()
    cfg, params, pconfig = workdir.load_policy(self.config.policy_dir)
    vcfg, verifiers = workdir.load_reward_models(self.config.verifier_dir)
    return (cfg, params), pconfig, vcfg, verifiers

  def problems(self, pconfig) -> list:
    from experiments import train_policy as tp

    return tp.heldout_problems(pconfig, self.config.n_problems)

  def pool_scores(self, verifiers, problems, prompts, toks, lens, logprobs) -> dict:
    """The learned ORM (last token) and PRM (step ends) scores of the
    samples, and the exact oracle's arrays at the same steps."""
    import jax
    import jax.numpy as jnp

    from experiments import distributed

    c = self.config
    P, N = lens.shape
    seqs = [
      [prompts[p] + list(toks[p, n, : lens[p, n]]) for n in range(N)] for p in range(P)
    ]
    T = max(len(s) for row in seqs for s in row)
    T = 1 << (T - 1).bit_length()
    flat = np.full((P * N, T), self.pad_id, np.int32)
    for r, s in enumerate(s for row in seqs for s in row):
      flat[r, : len(s)] = s
    scores = {}
    for name, (rm, rparams) in verifiers.items():
      fn = jax.jit(rm.score_all)
      out = distributed.split_map(
        lambda i, fn=fn, rparams=rparams: np.asarray(
          fn(rparams, jnp.asarray(flat[i : i + c.rows_per_call]))
        ),
        range(0, P * N, c.rows_per_call),
      )
      scores[name] = np.concatenate(out).reshape(P, N, T)
    seq_len = np.array([[len(s) for s in row] for row in seqs])
    orm = np.take_along_axis(scores["orm"], (seq_len - 1)[..., None], 2)[..., 0]
    plens = np.array([len(x) for x in prompts])
    prm_steps, prm_mask = self.step_values(
      toks, lens, lambda p, n, ends: scores["prm"][p, n, plens[p] + ends]
    )
    return dict(
      orm=orm,
      prm_steps=prm_steps,
      prm_mask=prm_mask,
      **vlib.pool_oracle_arrays(
        problems, prompts, toks, lens, c.max_steps, c.rows_per_call
      ),
    )

  def step_values(self, toks, lens, value_fn):
    """(float32 [P, N, S], mask bool [P, N, S]): value_fn(p, n, ends) at
    each sample's first S = config.max_steps step ends."""
    P, N = lens.shape
    S = self.config.max_steps
    values = np.zeros((P, N, S), np.float32)
    mask = np.zeros((P, N, S), bool)
    for p in range(P):
      for n in range(N):
        ends = step_ends(toks[p, n, : lens[p, n]], self.delimiter_ids, self.stop_ids, S)
        values[p, n, : len(ends)] = value_fn(p, n, ends)
        mask[p, n, : len(ends)] = True
    return values, mask

  def pool_arrays(self, verifier_names) -> dict:
    """Extra pool arrays (name -> trailing shape letters) the verifiers need."""
    if any(vlib.parse_verifier(v).kind == vlib.ORACLE for v in verifier_names):
      return dict(oracle_steps="PNS", oracle_step_hash="PNS", oracle_end_hash="PN")
    return {}

  def step_scorer(self, verifier: str, verifiers, problems):
    """(scorer, params) guiding a search (algorithms.scorers)."""
    from algorithms.scorers import ModelStepScorer

    rm, rparams = verifiers["prm"]
    if verifier == vlib.LEARNED:
      return ModelStepScorer(rm), rparams
    scorer = ModelStepScorer(vlib.oracle_model(rm.cfg))
    return scorer, vlib.oracle_params(
      problems, vlib.parse_verifier(verifier), self.config
    )

  def verifier_tokens(self, pool, verifier: str, verifier_cfg):
    """(ModelConfig charged, tokens it reads per sample [P, N]) of a verifier
    scoring the pool's samples; (None, None) when it costs nothing."""
    return verifier_cfg, pool["prompt_lengths"][:, None] + pool["lengths"]


class GSM8KTask(ArithTask):
  """SmolLM2 on GSM8K (module doc)."""

  verifier_kinds = (vlib.CONFIDENCE, vlib.GENRM)
  step_verifier_kinds = (vlib.CONFIDENCE,)

  def __init__(self, config):
    from experiments.tasks import answers

    self.config, self.answers = config, answers
    self.rules = (config.answer_rule,) + tuple(
      r for r in answers.RULES if r != config.answer_rule
    )

  @property
  def _loaded(self):
    return _pretrained(self.config.model)

  @property
  def tokenizer(self):
    return self._loaded[2]

  @property
  def delimiter_ids(self) -> tuple:
    return newline_ids(self.config.model)

  @property
  def stop_ids(self):
    return (self.tokenizer.eos_id,)

  @property
  def pad_id(self):
    return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(t) for t in ids if int(t) not in self.stop_ids])

  def prompts(self, problems) -> list:
    return workdir.chat_prompts(self.tokenizer, problems)

  def grade(self, problem, text: str) -> dict:
    out = {}
    for rule in self.rules:
      g = self.answers.grade(text, problem.answer, rule)
      key = (
        self.answers.parse_number(g.extraction.answer)
        if g.outcome != "unparsable"
        else None
      )
      out[rule] = (key, g.outcome == "correct")
    return out

  def gold(self, problem, rule: str):
    return self.answers.parse_number(problem.answer)

  def check_files(self) -> None:
    from experiments.tasks import gsm8k
    from jaxllm.pretrained import pretrained_path

    try:
      pretrained_path(self.config.model)
    except ValueError as e:
      raise workdir.MissingInput(f"config.model: {e}") from None
    if not gsm8k.data_available():
      raise workdir.MissingInput(
        f"the GSM8K data is not in {gsm8k.default_cache_dir()}: {gsm8k.PREPARE_HINT}"
      )

  def model_configs(self):
    cfg = self._loaded[0]
    return cfg, cfg

  def load(self):
    """(policy (cfg, params), None, verifier cfg, {'genrm': (model, params)})."""
    from jaxllm import Transformer

    self.check_files()
    cfg, params, _ = self._loaded
    return (cfg, params), None, cfg, {vlib.GENRM: (Transformer(cfg), params)}

  def problems(self, pconfig) -> list:
    from experiments.tasks import gsm8k

    c = self.config
    probs = gsm8k.load_original()
    if c.gsm_variants:
      probs = probs + gsm8k.generate_variants(c.gsm_variants, seed=c.gsm_variant_seed)
    if c.n_problems > len(probs):
      raise ValueError(
        f"config.n_problems = {c.n_problems} but there are only {len(probs)} "
        f"problems (100 originals + config.gsm_variants = {c.gsm_variants} "
        "variants per template)"
      )
    return probs[: c.n_problems]

  def pool_scores(self, verifiers, problems, prompts, toks, lens, logprobs) -> dict:
    """The confidence scores (from the sampling pass's log-probs) and, with
    'genrm' among config.verifiers, SmolLM2's verdicts (`genrm`: p(Yes) [P, N];
    `genrm_tokens`: its prompt lengths [P, N])."""
    P, N = lens.shape
    valid = np.arange(toks.shape[2])[None, None] < lens[..., None]
    lp = np.where(valid, logprobs, 0.0)
    orm = np.exp(lp.sum(-1) / np.maximum(lens, 1)).astype(np.float32)

    def step_conf(p, n, ends):
      starts = np.concatenate([[0], ends[:-1] + 1])
      return [np.exp(lp[p, n, a : b + 1].mean()) for a, b in zip(starts, ends)]

    prm_steps, prm_mask = self.step_values(toks, lens, step_conf)
    out = dict(orm=orm, prm_steps=prm_steps, prm_mask=prm_mask)
    if vlib.GENRM in self.config.verifiers:
      out.update(self._genrm(verifiers, problems, toks, lens))
    return out

  def _genrm(self, verifiers, problems, toks, lens) -> dict:
    from jaxllm import reward

    model, params = verifiers[vlib.GENRM]
    P, N = lens.shape
    questions = [problems[p].question for p in range(P) for _ in range(N)]
    solutions = [
      self.decode(toks[p, n, : lens[p, n]]) for p in range(P) for n in range(N)
    ]
    v = reward.generative_verifier_scores(
      model,
      params,
      self.tokenizer,
      questions,
      solutions,
      batch_size=self.config.rows_per_call,
      pad_id=self.pad_id,
      buckets=(512, 1024),
    )
    return dict(
      genrm=np.asarray(v.scores, np.float32).reshape(P, N),
      genrm_tokens=np.asarray(v.prompt_tokens).reshape(P, N),
    )

  def pool_arrays(self, verifier_names) -> dict:
    if vlib.GENRM in verifier_names:
      return dict(genrm="PN", genrm_tokens="PN")
    return {}

  def step_scorer(self, verifier: str, verifiers, problems):
    from algorithms.scorers import ConfidenceScorer

    return ConfidenceScorer(self.config.confidence_kind), None

  def verifier_tokens(self, pool, verifier: str, verifier_cfg):
    if verifier == vlib.GENRM:
      return verifier_cfg, pool["genrm_tokens"]
    return None, None  # the confidence reads the sampling pass's log-probs


@functools.lru_cache(maxsize=2)
def _pretrained(name: str):
  """(cfg, params, tokenizer) of a pretrained model, loaded once per process."""
  return workdir.load_pretrained(name, log=workdir.progress)


@functools.lru_cache(maxsize=2)
def newline_ids(name: str) -> tuple:
  """Every token of the model's vocabulary that is whitespace holding a
  newline ('\\n', '\\n\\n', '\\n   ', ...): the step delimiters."""
  cfg, _, tok = _pretrained(name)
  out = []
  for i in range(cfg.vocab_size):
    s = tok.decode([i])
    if s and not s.strip() and "\n" in s:
      out.append(i)
  return tuple(out)


def answer_key_is_gold(task, problem, key, rule: str) -> bool:
  """Whether an extracted answer key equals the problem's gold answer."""
  if key is None:
    return False
  gold = task.gold(problem, rule)
  if isinstance(key, Fraction) or isinstance(gold, Fraction):
    return Fraction(key) == Fraction(gold)
  return key == gold


def check_verifiers(task, names, field: str = "config.verifiers") -> None:
  """Each verifier name is one this task has.

  Raises:
    ValueError: naming `field` and the verifiers the task knows.
  """
  for n in names:
    if vlib.parse_verifier(n, field).kind not in task.verifier_kinds:
      raise ValueError(
        f"{field}: verifier {n!r} does not exist for task "
        f"{task_name(task.config)!r}; its verifiers: {task.verifier_kinds}"
        + (
          " (and the noisy oracles flip<eps> / gauss<sigma>)"
          if vlib.ORACLE in task.verifier_kinds
          else ""
        )
      )


def method_uses(method: str, verifier: str) -> bool:
  """Whether a selection method runs under a verifier (an outcome-only
  verifier has no step scores)."""
  if vlib.parse_verifier(verifier).kind == vlib.GENRM:
    return method in OUTCOME_METHODS or method in vlib.VERIFIER_FREE
  return True


def selection_compute(
  method, pool, k, policy_cfg, verifier_cfg, verifier_tokens=None
) -> dict:
  """Per-problem compute of a selection method at budget k (means): the
  prompt's prefill once, k samples' decode, and for a method that reads a
  verifier k verifier passes over `verifier_tokens` [P, N] tokens each
  (default prompt + sample) with `verifier_cfg` (None: a free verifier)."""
  prompt = pool["prompt_lengths"].astype(np.float64)
  gen = pool["lengths"].astype(np.float64)  # [P, N]
  pre = flops_lib.prefill_flops(policy_cfg, pool["prompt_lengths"]).mean()
  # Decode FLOPs of one sample: each token attends to prompt + its prefix.
  ctx = prompt[:, None] + (gen + 1) / 2
  dec = (gen * flops_lib.decode_flops(policy_cfg, ctx)).mean()
  rec = flops_lib.Compute(
    prefill_tokens=prompt.mean(),
    generated_tokens=k * gen.mean(),
    model_calls=0.0,
    prefill_flops=pre,
    decode_flops=k * dec,
  )
  if method not in vlib.VERIFIER_FREE and verifier_cfg is not None:
    vt = prompt[:, None] + gen
    if verifier_tokens is not None:
      vt = np.asarray(verifier_tokens, np.float64)
    vflops = (vt * flops_lib.decode_flops(verifier_cfg, (vt + 1) / 2)).mean()
    rec = rec + flops_lib.Compute(
      verifier_tokens=k * vt.mean(), verifier_calls=float(k), verifier_flops=k * vflops
    )
  return rec.as_dict()
