"""SoFT on SmolLM2-135M-Instruct: a short sorted fine-tune on its own answers to
GSM8K-Symbolic variants (the data path of experiments/train_draft.py), exits at
8 / 16 / 24 / 30 of its 30 layers; per-exit held-out loss and greedy next-token
agreement with the full fine-tuned model, before and after. The fine-tuned params
(`<workdir>/soft`) are the self-speculative pair `smollm_soft` of
experiments/bench_speculative.py (--soft_dir=<workdir>).

  python -m experiments.soft --config=configs/soft_smollm2.py \
      --workdir=results/soft_smollm2

The default is sized for a 2-core CPU: measured 718 s in all on 2 shared cores
(answers generated 181 s, cached in the workdir for reruns; 40 SoFT steps 482 s,
~12 s / step at ~45 answer tokens / s; each per-exit eval ~20 s). Measured there:
held-out loss at exits 8 / 16 / 24 / 30 went 15.06 / 17.67 / 10.22 / 2.21 ->
9.26 / 7.88 / 4.60 / 2.72 nats and greedy agreement with the full model
0.06 / 0.16 / 0.44 -> 0.17 / 0.22 / 0.52 (the full depth's loss rose: equal exit
weights at lr 1e-4 pull it). With --config.soft.exit_weights=1,1,1,6 (the full
model half the loss; 2204 s under heavy load): 9.79 / 8.63 / 5.00 / 2.52 nats,
agreement 0.15 / 0.20 / 0.51, exact acceptance against the full model
0.15 / 0.22 / 0.46 (pretrained 0.10 / 0.16 / 0.37); the full model still rose
from 2.21. Predicted self-speculative speed-up (`best_self_draft`) stays below 1
at every exit (0.82 / 0.75 / 0.80): SmolLM2's shared 49152-token head makes even
the 8-layer draft cost 0.4 of the target per token.
A longer run on one accelerator (GPU / TPU), same file with overrides:

  --config.data.variants_per_template=16 --config.data.max_new_tokens=320 \
  --config.data.gen_batch=128 --config.finetune.steps=1000 \
  --config.finetune.batch_size=16 --config.finetune.seq_len=512 \
  --config.finetune.warmup_steps=50 --config.eval.n_answers=20
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.model_source = "smollm2"  # experiments/soft.py: the SmolLM2 branch
  c.seed = 0

  # SmolLM2's temperature-1 answers (chat template) to GSM8K-Symbolic variants of
  # templates [0, train_templates); held out: its answers to the ORIGINAL problems
  # of templates [train_templates, 100) (what bench_speculative's smollm pairs use).
  c.data = ml_collections.ConfigDict()
  c.data.train_templates = 80
  c.data.variants_per_template = 1  # training prompts per template
  c.data.max_new_tokens = 160  # answer length cap when generating
  c.data.gen_batch = 40  # prompts per generation call

  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 40
  c.finetune.batch_size = 4  # windows per step
  c.finetune.seq_len = 192  # window length (prompt tail + answer)
  c.finetune.learning_rate = 1e-4
  c.finetune.warmup_steps = 5
  c.finetune.end_lr_ratio = 0.1
  c.finetune.weight_decay = 0.0
  c.finetune.clip_norm = 1.0
  c.finetune.log_every = 5

  c.soft = ml_collections.ConfigDict()
  c.soft.exits = (8, 16, 24, 30)  # depths trained (and evaluated)
  c.soft.exits_per_step = 0  # 0: every exit every step; k: k sampled per step
  c.soft.exit_weights = ()  # empty: equal weights

  c.eval = ml_collections.ConfigDict()
  c.eval.n_answers = 8  # held-out answers: per-exit loss and agreement
  return c
