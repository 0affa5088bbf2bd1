"""notebooks/quickstart.ipynb runs top to bottom (nbclient), in a temp dir, on
a kernel that is this interpreter (the venv's python, its ipykernel: a
kernelspec written into the temp dir, so no user-level "python3" kernelspec can
stand in); a cell that raises fails the test. Needs the SmolLM2 GGUF (`make
smollm`) and the GSM8K data (`make gsm8k-data`), as `make test` provides.
"""

import copy
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600  # per cell; the whole notebook takes a few minutes


def _execute(nb, workdir: Path):
  """Run `nb` (an nbformat node, executed in place) with cwd `workdir` on a
  kernel running sys.executable. Raises nbclient's CellExecutionError when a
  cell raises."""
  from ipykernel.kernelspec import write_kernel_spec
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  from nbclient import NotebookClient

  kernels = workdir / "kernels"
  write_kernel_spec(str(kernels / "jaxllm-venv"))  # argv[0] = sys.executable
  km = KernelManager(
    kernel_name="jaxllm-venv",
    kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
  )
  NotebookClient(
    nb,
    km=km,
    timeout=CELL_TIMEOUT_S,
    resources={"metadata": {"path": str(workdir)}},
  ).execute()
  return nb


def _outputs_text(cell) -> str:
  return "".join(
    o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs
  )


@pytest.fixture(scope="module")
def nbformat():
  return pytest.importorskip("nbformat")


def test_committed_notebook_is_stripped_and_imports_the_package(nbformat):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)
  src = "\n".join(c.source for c in code)
  assert "from jaxllm" in src and "from algorithms" in src
  assert "def " not in src  # the package's code, not a copy


def test_quickstart_runs_top_to_bottom(nbformat, tmp_path):
  from jaxllm.pretrained import pretrained_path

  from experiments.tasks import gsm8k

  try:
    pretrained_path("smollm2-135m-instruct")
  except ValueError as e:
    pytest.skip(f"SmolLM2 GGUF not installed: {e}")
  if not gsm8k.data_available():
    pytest.skip(f"GSM8K data not prepared (run `{gsm8k.PREPARE_HINT}`)")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  probe = nbformat.v4.new_code_cell(
    "import os, sys; print(sys.executable, os.getcwd())"
  )
  nb.cells.insert(0, probe)
  before = NOTEBOOK.read_bytes()
  t0 = time.perf_counter()
  _execute(nb, tmp_path)
  print(f"\nquickstart.ipynb executed in {time.perf_counter() - t0:.0f}s")
  assert _outputs_text(nb.cells[0]).split() == [sys.executable, str(tmp_path)]
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code)
  assert not any(o.output_type == "error" for c in code for o in c.outputs)
  text = "".join(_outputs_text(c) for c in code)
  for rule in ("strict", "flexible"):
    assert f"majority, {rule:>8}:" in text and f"particle filter, {rule:>8}:" in text
  images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
  assert len(images) == 1  # the scaling curve, inline
  assert NOTEBOOK.read_bytes() == before  # nothing written into the tracked file


def test_a_raising_cell_fails_the_run(nbformat, tmp_path):
  from nbclient.exceptions import CellExecutionError

  nb = nbformat.v4.new_notebook()
  nb.cells = [
    nbformat.v4.new_code_cell("x = 1"),
    nbformat.v4.new_code_cell("raise RuntimeError('cell 2 fails')"),
    nbformat.v4.new_code_cell("never = True"),
  ]
  with pytest.raises(CellExecutionError, match="cell 2 fails"):
    _execute(copy.deepcopy(nb), tmp_path)
