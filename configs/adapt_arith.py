"""T5Gemma-style adaptation on arith: decoder-only policies turned into
encoder-decoders (balanced small-small, unbalanced big-small), fine-tuned, and
compared with the decoder-only models fine-tuned for the same steps, at matched
inference FLOPs per problem.

  python -m experiments.adapt_encdec --config=configs/adapt_arith.py \
      --workdir=results/adapt_arith

Sized for a shared 2-core CPU (about 10-15 minutes). The longer run:

  --config.pretrain.small_steps=500 --config.pretrain.big_steps=500 \
  --config.finetune.steps=400 --config.eval.n_problems=200 \
  --config.eval.budgets=1,4,8,16

`small` is the arith policy's shape (configs/arith_policy.py); `big` a wider,
deeper policy for the unbalanced encoder. Both are pretrained here with
experiments/train_policy.py's batches (`pretrain.*`), unless
`pretrain.small_policy_dir` names a policy train_policy.py wrote. See
experiments/adapt_encdec.py.

Measured (this default, seed 0, 100 held-out problems; 1462 s on the shared 2-core
CPU at load ~8, so expect ~10-15 min unloaded): greedy accuracy / FLOPs per
problem: small 0.39 / 2.6e7, big 0.58 / 6.6e7, small-small (balanced) 0.26 /
3.1e7, big-small (unbalanced) 0.16 / 4.4e7; majority@8: 0.33, 0.53, 0.24, 0.15.
At this scale and 150 fine-tune steps the adapted models have not caught up
with their parents (cross-attention and the bidirectional encoder are new).

UL2 instead of PrefixLM: --config.finetune.objective=ul2 (R / S / X denoisers,
sentinel and mode ids added to the vocabulary). UL2 has no knowledge
distillation (the decoder-only teacher cannot score span-corruption targets),
so finetune.kd_weight applies to prefix_lm only and is ignored for ul2.

Sequence lengths are checked before training: pretrain.seq_len and every
fine-tuning text must fit small / big max_seq_len, and the longest eval prompt
the task can produce + eval.max_new_tokens must fit them too.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.task = ml_collections.ConfigDict()  # experiments/tasks/arith.py knobs
  c.task.n_steps = (2, 4)
  c.task.n_digits = 1
  c.task.mul_digits = 1
  c.task.ops = "+-*"

  c.small = ml_collections.ConfigDict()  # the arith policy (decoder of both)
  c.small.d_model = 96
  c.small.n_layers = 3
  c.small.n_heads = 4
  c.small.n_kv_heads = 4
  c.small.d_ff = 256
  c.small.max_seq_len = 128

  c.big = ml_collections.ConfigDict()  # the unbalanced encoder's parent
  c.big.d_model = 128
  c.big.n_layers = 4
  c.big.n_heads = 4
  c.big.n_kv_heads = 4
  c.big.d_ff = 384
  c.big.max_seq_len = 128

  # Decoder-only pretraining (train_policy's recipe: packed rows, solution loss).
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.small_policy_dir = ""  # a train_policy.py workdir; "" = train here
  c.pretrain.small_steps = 250
  c.pretrain.big_steps = 250
  c.pretrain.batch_size = 16
  c.pretrain.seq_len = 128
  c.pretrain.learning_rate = 3e-3
  c.pretrain.warmup_steps = 25
  c.pretrain.end_lr_ratio = 0.05
  c.pretrain.weight_decay = 0.05
  c.pretrain.clip_norm = 1.0

  # Every fine-tune (2 decoder-only, 2 encoder-decoder): same steps, same problems.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 150
  c.finetune.batch_size = 32  # problems per step (one per row)
  c.finetune.learning_rate = 1e-3
  c.finetune.warmup_steps = 10
  c.finetune.end_lr_ratio = 0.1
  c.finetune.weight_decay = 0.05
  c.finetune.clip_norm = 1.0
  c.finetune.cross_warmup_steps = 30  # unbalanced: cross-attention only first
  c.finetune.cross_warmup_lr = 3e-3
  c.finetune.objective = "prefix_lm"  # or "ul2" (R / S / X denoisers)
  c.finetune.kd_weight = (
    0.5  # prefix_lm: KD weight from the encoder's parent; ul2: ignored (no KD)
  )
  c.finetune.kd_temperature = 1.0
  c.finetune.n_sentinels = 8  # ul2: sentinel ids added to the vocabulary

  c.eval = ml_collections.ConfigDict()
  c.eval.n_problems = 100  # held-out problems
  c.eval.max_new_tokens = 48
  c.eval.budgets = (4, 8)  # self-consistency samples per problem (+ greedy)
  c.eval.temperature = 1.0  # self-consistency sampling temperature
  return c
