"""Scaling-law fits, Pareto frontiers and plots for compute-optimal inference studies.

- `fit_coverage_power_law`: coverage(k) ~ exp(a * k^b) (Large Language Monkeys), fitted
  with scipy curve_fit on -log coverage; R^2 reported on coverage itself.
- `fit_log_linear` / `fit_accuracy_vs_flops`: accuracy ~ slope * log10(FLOPs) + intercept
  per method.
- `pareto_frontier`, `compute_optimal_method`: which (method, budget) point is best at
  each compute budget.
- `fit_compute_optimal_allocation`: from a grid of (S solutions, V verifications,
  accuracy, compute C) take the best (S, V) at each budget (the Pareto frontier of the
  grid) and fit S_opt ~ C^a, V_opt ~ C^b by least squares in log-log space (the SC vs
  generative-verifier study reports a ~ 0.57, b ~ 0.39).
- Plots: PNG files drawn on matplotlib's Agg canvas directly (`FigureCanvasAgg`), so
  importing this module never switches the global backend of a notebook.

numpy / scipy / matplotlib only; inputs are plain arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from scipy import optimize


def _r2(y, y_pred) -> float:
  y = np.asarray(y, np.float64)
  ss_res = float(np.sum((y - y_pred) ** 2))
  ss_tot = float(np.sum((y - y.mean()) ** 2))
  return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def _vec(name: str, x, min_len: int = 1) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1 or x.size < min_len:
    raise ValueError(
      f"{name} must be 1-D with at least {min_len} entries, got shape {x.shape}"
    )
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains non-finite values")
  return x


def _same_len(**arrays) -> None:
  lens = {k: len(v) for k, v in arrays.items()}
  if len(set(lens.values())) != 1:
    raise ValueError(f"length mismatch: {lens}")


# ----------------------------------------------------------------------------------
# Fits.


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """log(coverage(k)) = a * k^b; a_se / b_se: standard errors of a and b
  from curve_fit's covariance (nan when it is undefined, e.g. 3 exact
  points)."""

  a: float
  b: float
  r2: float
  a_se: float = float("nan")
  b_se: float = float("nan")

  def predict(self, k) -> np.ndarray:
    return np.exp(self.a * np.asarray(k, np.float64) ** self.b)


def fit_coverage_power_law(ks, coverage) -> PowerLawFit:
  """Fits log(coverage(k)) ~ a * k^b by curve_fit of c * k^b on -log coverage
  (c = -a > 0), started from a log-log linear fit. R^2 is on coverage.

  Coverage must be in (0, 1]: a zero coverage has no logarithm, so drop such points
  explicitly before fitting. Needs at least 3 points.
  """
  ks = _vec("ks", ks, 3)
  cov = _vec("coverage", coverage, 3)
  _same_len(ks=ks, coverage=cov)
  if (ks <= 0).any():
    raise ValueError("ks must be positive")
  if (cov <= 0).any() or (cov > 1).any():
    raise ValueError("coverage must be in (0, 1]; drop zero-coverage points first")
  y = -np.log(cov)
  pos = y > 0
  if pos.sum() >= 2:
    slope, intercept = np.polyfit(np.log(ks[pos]), np.log(y[pos]), 1)
    p0 = (float(np.exp(intercept)), float(slope))
  else:
    p0 = (1.0, -0.5)

  def model(k, c, b):
    return c * k**b

  (c, b), pcov = optimize.curve_fit(
    model, ks, y, p0=p0, bounds=([0.0, -np.inf], [np.inf, np.inf]), maxfev=20_000
  )
  se = (
    np.sqrt(np.clip(np.diag(pcov), 0, None))
    if np.isfinite(pcov).all()
    else [np.nan] * 2
  )
  fit = PowerLawFit(
    a=-float(c), b=float(b), r2=0.0, a_se=float(se[0]), b_se=float(se[1])
  )
  return dataclasses.replace(fit, r2=_r2(cov, fit.predict(ks)))


@dataclasses.dataclass(frozen=True)
class LinearFit:
  """y = slope * x + intercept (x = log10 of compute for accuracy-vs-FLOPs fits);
  slope_se / intercept_se: their standard errors (nan when undefined)."""

  slope: float
  intercept: float
  r2: float
  slope_se: float = float("nan")
  intercept_se: float = float("nan")

  def predict(self, x) -> np.ndarray:
    return self.slope * np.asarray(x, np.float64) + self.intercept


def fit_log_linear(flops, accuracy, se=None) -> LinearFit:
  """Least-squares fit of accuracy ~ slope * log10(flops) + intercept, with the
  parameters' standard errors.

  Without `se`: ordinary least squares; covariance sigma^2 (X^T X)^-1 with
  sigma^2 the residual variance (n - 2 dof; nan for 2 points). With `se`
  (the accuracies' standard errors, all > 0): weighted least squares, weights
  1 / se^2, covariance (X^T W X)^-1 times max(1, reduced chi^2) (inflated
  when the points scatter more than their errors say; not for 2 points).
  R^2 is the unweighted one of the fitted line.

  Raises:
    ValueError: non-finite or non-positive flops, fewer than two distinct
      flops, mismatched lengths, or an se that is not finite and > 0.
  """
  flops = _vec("flops", flops, 2)
  acc = _vec("accuracy", accuracy, 2)
  _same_len(flops=flops, accuracy=acc)
  if (flops <= 0).any():
    raise ValueError("flops must be positive")
  x = np.log10(flops)
  if np.ptp(x) == 0:
    raise ValueError("flops must take at least two distinct values")
  n = len(x)
  X = np.stack([x, np.ones(n)], 1)
  if se is None:
    w = np.ones(n)
  else:
    se = _vec("se", se, 2)
    _same_len(flops=flops, se=se)
    if (se <= 0).any():
      raise ValueError("se must be > 0 for a weighted fit")
    w = 1.0 / se**2
  A = X.T @ (w[:, None] * X)
  slope, intercept = np.linalg.solve(A, X.T @ (w * acc))
  resid = acc - (slope * x + intercept)
  if se is None:
    scale = float(resid @ resid) / (n - 2) if n > 2 else np.nan
  else:
    scale = max(1.0, float(w @ resid**2) / (n - 2)) if n > 2 else 1.0
  cov = np.linalg.inv(A) * scale
  return LinearFit(
    float(slope),
    float(intercept),
    _r2(acc, slope * x + intercept),
    float(np.sqrt(cov[0, 0])),
    float(np.sqrt(cov[1, 1])),
  )


def fit_accuracy_vs_flops(results: Mapping[str, tuple]) -> dict[str, LinearFit]:
  """`results`: method -> (flops, accuracy) arrays. Returns method -> LinearFit."""
  return {m: fit_log_linear(f, a) for m, (f, a) in results.items()}


# ----------------------------------------------------------------------------------
# Pareto frontier and compute-optimal choices.


def pareto_frontier(compute, accuracy) -> np.ndarray:
  """Indices of the non-dominated (compute, accuracy) points, by increasing compute.

  Point i is dominated if another point has compute <= and accuracy >= with one of the
  two strict. Exact duplicates keep the first index. O(n log n): sort by compute, then
  accuracy descending, and keep each point that beats the best accuracy so far.
  """
  compute = _vec("compute", compute)
  acc = _vec("accuracy", accuracy)
  _same_len(compute=compute, accuracy=acc)
  order = np.lexsort((np.arange(len(acc)), -acc, compute))
  keep = []
  best = -np.inf
  for i in order:
    if acc[i] > best:
      keep.append(i)
      best = acc[i]
  return np.asarray(keep, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class BudgetChoice:
  """Best method per budget: method name ('' where nothing fits), its accuracy (nan
  where nothing fits), the compute of the chosen point and its index in the
  concatenation of the methods' points in `results` order (-1 where nothing fits)."""

  budgets: np.ndarray
  methods: list
  accuracy: np.ndarray
  compute: np.ndarray
  index: np.ndarray


def compute_optimal_method(budgets, results: Mapping[str, tuple]) -> BudgetChoice:
  """For each budget, the (method, point) with the highest accuracy among points with
  compute <= budget. Accuracy ties go to the lower compute, then to the method listed
  first. `results`: method -> (compute, accuracy)."""
  budgets = _vec("budgets", budgets)
  names, comp, acc = [], [], []
  for m, (c, a) in results.items():
    c, a = _vec(f"{m} compute", c), _vec(f"{m} accuracy", a)
    _same_len(compute=c, accuracy=a)
    names += [m] * len(c)
    comp.append(c)
    acc.append(a)
  if not names:
    raise ValueError("results is empty")
  comp, acc = np.concatenate(comp), np.concatenate(acc)
  methods = []
  best_acc, best_comp = np.full(len(budgets), np.nan), np.full(len(budgets), np.nan)
  best_idx = np.full(len(budgets), -1, np.int64)
  order = np.lexsort((np.arange(len(acc)), comp, -acc))  # best accuracy first
  for j, b in enumerate(budgets):
    fits = order[comp[order] <= b]
    if len(fits) == 0:
      methods.append("")
      continue
    i = fits[0]
    methods.append(names[i])
    best_acc[j], best_comp[j], best_idx[j] = acc[i], comp[i], i
  return BudgetChoice(budgets, methods, best_acc, best_comp, best_idx)


def standard_error(values, axis: int = 0) -> np.ndarray:
  """Standard error of the mean over `axis` (e.g. over problems): sample std
  (ddof 1) / sqrt(n); for 0 / 1 outcomes the binomial SE
  sqrt(p (1 - p) / (n - 1)). nan where n < 2.

  Raises:
    ValueError: non-finite values.
  """
  x = np.asarray(values, np.float64)
  if not np.isfinite(x).all():
    raise ValueError("standard_error: non-finite values")
  n = x.shape[axis]
  if n < 2:
    return np.full(np.delete(x.shape, axis), np.nan)[()]
  return x.std(axis=axis, ddof=1) / np.sqrt(n)


def difference_se(a_P, b_P) -> float:
  """Standard error of mean(a) - mean(b) for two methods' per-problem values
  on the same P problems (paired: the SE of the per-problem differences).

  Raises:
    ValueError: different lengths or non-finite values.
  """
  a, b = _vec("a", a_P), _vec("b", b_P)
  _same_len(a=a, b=b)
  return float(standard_error(a - b))


@dataclasses.dataclass(frozen=True)
class TiedChoice:
  """Compute-optimal choice with its uncertainty, per budget: the best
  method (as `compute_optimal_method`), its accuracy and standard error, and
  `tied`: every method whose best point within the budget is within
  z * SE(difference) of the best (the best included, best first): the
  choice is a tie when len(tied) > 1."""

  budgets: np.ndarray
  methods: list
  accuracy: np.ndarray
  se: np.ndarray
  tied: list
  z: float


def compute_optimal_with_ties(
  budgets, results: Mapping[str, tuple], per_problem: Mapping[str, list], z=1.96
) -> TiedChoice:
  """The compute-optimal method per budget and the methods tied with it.

  results: method -> (compute [n], accuracy [n]); per_problem: method -> a
  list of n per-problem value arrays [P] (one per point, the same problems
  for every method), from which the paired SE of each difference is taken
  (`difference_se`). A method is tied with the best when its best point
  with compute <= budget has accuracy >= best - z * SE(best - it).

  Raises:
    ValueError: as `compute_optimal_method`, or a per_problem entry whose
      length differs from its method's points.
  """
  choice = compute_optimal_method(budgets, results)
  for m, (c, _) in results.items():
    if len(per_problem[m]) != len(c):
      raise ValueError(
        f"per_problem[{m!r}] has {len(per_problem[m])} points, not {len(c)}"
      )
  ses, tied = [], []
  for b, best in zip(choice.budgets, choice.methods):
    if not best:
      ses.append(np.nan)
      tied.append([])
      continue
    pick = {}
    for m, (c, a) in results.items():
      ok = np.flatnonzero(np.asarray(c) <= b)
      if len(ok):
        i = ok[np.lexsort((np.asarray(c)[ok], -np.asarray(a)[ok]))[0]]
        pick[m] = (float(a[i]), np.asarray(per_problem[m][i], np.float64))
    acc_b, per_b = pick[best]
    ses.append(float(standard_error(per_b)))
    near = [
      m
      for m, (a, per) in pick.items()
      if m != best and a >= acc_b - z * difference_se(per_b, per)
    ]
    tied.append([best] + sorted(near, key=lambda m: -pick[m][0]))
  return TiedChoice(
    choice.budgets, choice.methods, choice.accuracy, np.array(ses), tied, float(z)
  )


@dataclasses.dataclass(frozen=True)
class AllocationFit:
  """Compute-optimal allocation: S_opt ~ s_coef * C^s_exponent, same for V.

  `budgets`, `s_opt`, `v_opt`, `accuracy` are the frontier points the fits used."""

  s_exponent: float
  s_coef: float
  s_r2: float
  v_exponent: float
  v_coef: float
  v_r2: float
  budgets: np.ndarray
  s_opt: np.ndarray
  v_opt: np.ndarray
  accuracy: np.ndarray


def fit_compute_optimal_allocation(
  s, v, accuracy, compute, budgets=None
) -> AllocationFit:
  """Fits S_opt ~ C^a and V_opt ~ C^b from a grid of (S, V, accuracy, C) runs.

  For each budget level the compute-optimal (S, V) is the most accurate grid point with
  C <= budget (ties to lower C). Default budget levels: the C of each Pareto-frontier
  point of the grid, i.e. every budget at which the optimum changes. The exponents are
  least-squares slopes of log S_opt and log V_opt against log budget. S and V must be
  positive (fit the V = 0 self-consistency baseline separately).
  """
  s, v = _vec("s", s, 2), _vec("v", v, 2)
  acc, comp = _vec("accuracy", accuracy, 2), _vec("compute", compute, 2)
  _same_len(s=s, v=v, accuracy=acc, compute=comp)
  if (s <= 0).any() or (v <= 0).any() or (comp <= 0).any():
    raise ValueError("s, v and compute must be positive for a log-log fit")
  if budgets is None:
    budgets = comp[pareto_frontier(comp, acc)]
  choice = compute_optimal_method(budgets, {"grid": (comp, acc)})
  ok = np.isfinite(choice.accuracy)
  if ok.sum() < 2:
    raise ValueError("need at least two budgets with a feasible grid point")
  budgets = np.asarray(choice.budgets)[ok]
  rows = choice.index[ok]
  s_opt, v_opt = s[rows], v[rows]
  log_b = np.log(budgets)
  if np.ptp(log_b) == 0:
    raise ValueError("budgets must take at least two distinct values")
  sa, sb = np.polyfit(log_b, np.log(s_opt), 1)
  va, vb = np.polyfit(log_b, np.log(v_opt), 1)
  return AllocationFit(
    s_exponent=float(sa),
    s_coef=float(np.exp(sb)),
    s_r2=_r2(np.log(s_opt), sa * log_b + sb),
    v_exponent=float(va),
    v_coef=float(np.exp(vb)),
    v_r2=_r2(np.log(v_opt), va * log_b + vb),
    budgets=budgets,
    s_opt=s_opt,
    v_opt=v_opt,
    accuracy=acc[rows],
  )


# ----------------------------------------------------------------------------------
# Plots (PNG, Agg canvas).


def new_figure(figsize=(6.0, 4.0), ncols: int = 1):
  """(figure, [axes]) on its own Agg canvas (no global backend switch), 120
  dpi, `ncols` axes side by side."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize, dpi=120)
  FigureCanvasAgg(fig)
  return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def style_axes(
  ax, xlabel: str, ylabel: str, title: str = "", legend_fontsize: int | None = 8
) -> None:
  """Log x axis, labels, optional title, grid, and a legend unless
  `legend_fontsize` is None."""
  ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  if legend_fontsize is not None:
    ax.legend(fontsize=legend_fontsize)


def save_figure(fig, path: str) -> str:
  """Tight layout, then the PNG at `path`; returns `path`."""
  fig.tight_layout()
  fig.savefig(path, format="png")
  return path


def plot_accuracy_vs_flops(
  results: Mapping[str, tuple],
  path: str,
  *,
  fits: Mapping[str, LinearFit] | None = None,
  frontier: bool = True,
  title: str = "",
) -> str:
  """Accuracy vs FLOPs (log x) per method, with optional log-linear fits and the
  Pareto frontier over all methods. `results`: method -> (flops, accuracy)."""
  fig, (ax,) = new_figure()
  all_c, all_a = [], []
  for m, (c, a) in results.items():
    c, a = _vec(f"{m} flops", c), _vec(f"{m} accuracy", a)
    order = np.argsort(c)
    (line,) = ax.plot(c[order], a[order], marker="o", ms=3, label=m)
    if fits is not None and m in fits:
      xs = np.geomspace(c.min(), c.max(), 50)
      ax.plot(xs, fits[m].predict(np.log10(xs)), ls=":", color=line.get_color())
    all_c.append(c)
    all_a.append(a)
  if frontier and all_c:
    c, a = np.concatenate(all_c), np.concatenate(all_a)
    idx = pareto_frontier(c, a)
    ax.step(
      c[idx],
      a[idx],
      where="post",
      color="k",
      lw=1.5,
      alpha=0.6,
      label="Pareto frontier",
    )
  style_axes(ax, "FLOPs", "accuracy", title)
  return save_figure(fig, path)


def plot_coverage(
  ks, coverage, path: str, *, fit: PowerLawFit | None = None, title: str = ""
) -> str:
  """Coverage vs number of samples (log x), with the exponentiated power-law fit."""
  ks, cov = _vec("ks", ks), _vec("coverage", coverage)
  fig, (ax,) = new_figure()
  ax.plot(ks, cov, marker="o", ms=3, ls="none", label="coverage")
  if fit is not None:
    xs = np.geomspace(ks.min(), ks.max(), 100)
    ax.plot(
      xs, fit.predict(xs), label=f"exp({fit.a:.3g} k^{fit.b:.3g}), R²={fit.r2:.3f}"
    )
  style_axes(ax, "samples k", "coverage (pass@k)", title)
  return save_figure(fig, path)
