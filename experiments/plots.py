"""Plots of the scaling sweep's verifier axis: a spec first, then matplotlib.

Each plot is built in two steps: a function returns a plain-dict *spec*
(every series with its method, colour, marker, x, y and error bars, the
reference lines, labels and legend placement), which a test can check
without looking at pixels (e.g. that no two methods share a colour), and
`render_*` draws a spec with matplotlib on its own Agg canvas
(`analysis.new_figure`'s convention: the global backend is never switched).

- `method_styles`: method -> (colour, marker), one fixed entry per known
  method (the same in every panel and every plot), distinct colours.
- `verifier_panels_spec` / `render_verifier_panels`: one panel per verifier
  (accuracy against FLOPs per problem, log x, error bars = 1 SE over
  problems), coverage (pass@k) as a dashed upper bound, greedy decoding and
  pass@1 as horizontal lines, the legend outside the axes.
- `auroc_summary_spec` / `render_auroc_summary`: accuracy at a fixed budget
  against each verifier's within-problem PRM AUROC, one line per method.
"""

from __future__ import annotations

import numpy as np

# 20 colours no two alike (tab10, then the darker / lighter tab20 partners
# that are not in tab10, then four more), and markers cycled independently.
PALETTE = (
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
  "#aec7e8",
  "#ffbb78",
  "#98df8a",
  "#ff9896",
  "#c5b0d5",
  "#c49c94",
  "#f7b6d2",
  "#dbdb8d",
  "#9edae5",
  "#393b79",
)
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")
# Every method the sweep knows, in a fixed order, so a method keeps its
# colour whichever subset a sweep runs.
KNOWN_METHODS = (
  "majority",
  "weighted_majority_orm",
  "bon_orm",
  "bon_prm_min",
  "bom_orm",
  "pf",
  "beam",
  "astar",
  "dvts",
  "pf_smc",
  "epf",
  "bon_prm_last",
  "bon_prm_prod",
  "bon_prm_mean",
)
XLABEL = "FLOPs per problem (log scale)"
YLABEL = "accuracy (fraction of problems solved)"


def method_styles(methods) -> dict:
  """method -> {"colour", "marker"}: `KNOWN_METHODS` get fixed entries by
  their position, other methods the next free colours in order.

  Raises:
    ValueError: more methods than `PALETTE` has colours.
  """
  methods = list(dict.fromkeys(methods))
  extra = [m for m in methods if m not in KNOWN_METHODS]
  order = list(KNOWN_METHODS) + extra
  if len(order) > len(PALETTE):
    raise ValueError(
      f"{len(order)} methods but only {len(PALETTE)} distinct colours in PALETTE"
    )
  return {
    m: {
      "colour": PALETTE[order.index(m)],
      "marker": MARKERS[order.index(m) % len(MARKERS)],
    }
    for m in methods
  }


def verifier_panels_spec(panels: dict, title: str = "") -> dict:
  """The spec of the per-verifier figure.

  panels: verifier -> {"auroc": float (within-problem PRM AUROC) or nan,
  "series": {method: (flops [n], accuracy [n], se [n])}, "coverage":
  (flops, accuracy) or None, "greedy": accuracy or None, "pass1": accuracy
  or None}. Methods are named without their '@verifier' suffix.

  Returns {"title", "xlabel", "ylabel", "legend": "outside right",
  "styles": method -> style, "panels": [{"verifier", "title", "series":
  [{"method", "colour", "marker", "x", "y", "yerr"}], "upper_bound",
  "hlines": [{"label", "y", "colour", "linestyle"}]}]}.
  """
  methods = [m for p in panels.values() for m in p["series"]]
  styles = method_styles(methods)
  out = []
  for v, p in panels.items():
    series = []
    for m, (x, y, e) in p["series"].items():
      order = np.argsort(x)
      series.append(
        dict(
          method=m,
          **styles[m],
          x=np.asarray(x, float)[order].tolist(),
          y=np.asarray(y, float)[order].tolist(),
          yerr=np.asarray(e, float)[order].tolist(),
        )
      )
    hl = []
    if p.get("greedy") is not None:
      hl.append(
        {"label": "greedy (T=0)", "y": p["greedy"], "colour": "k", "linestyle": "-"}
      )
    if p.get("pass1") is not None:
      hl.append({"label": "pass@1", "y": p["pass1"], "colour": "k", "linestyle": ":"})
    auroc = p.get("auroc", np.nan)
    out.append(
      {
        "verifier": v,
        "title": f"{v} (PRM AUROC {auroc:.2f})" if np.isfinite(auroc) else v,
        "series": series,
        "upper_bound": None if p.get("coverage") is None else list(p["coverage"]),
        "hlines": hl,
      }
    )
  return {
    "title": title,
    "xlabel": XLABEL,
    "ylabel": YLABEL,
    "legend": "outside right",
    "styles": styles,
    "panels": out,
  }


def _legend_outside(fig, axes) -> None:
  handles, labels = {}, []
  for ax in axes:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab not in handles:
        handles[lab] = h
        labels.append(lab)
  fig.legend(
    [handles[lab] for lab in labels],
    labels,
    loc="center left",
    bbox_to_anchor=(1.0, 0.5),
    fontsize=8,
    frameon=False,
  )


def render_verifier_panels(spec: dict, path: str) -> str:
  """Draw `verifier_panels_spec`'s spec into a PNG at path; returns path."""
  from experiments import analysis

  n = len(spec["panels"])
  ncols = min(n, 2)
  nrows = -(-n // ncols)
  fig, _ = analysis.new_figure(figsize=(5.0 * ncols, 3.8 * nrows), ncols=0)
  axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
  for ax, panel in zip(axes, spec["panels"]):
    ub = panel["upper_bound"]
    if ub is not None:
      ax.plot(ub[0], ub[1], "k--", lw=1.2, label="coverage (pass@k, upper bound)")
    for s in panel["series"]:
      _draw_series(ax, s, ms=4)
    for h in panel["hlines"]:
      ax.axhline(h["y"], color=h["colour"], ls=h["linestyle"], lw=1, label=h["label"])
    analysis.style_axes(ax, spec["xlabel"], spec["ylabel"], panel["title"], None)
    ax.set_ylim(0, 1)
  _legend_outside(fig, axes)
  if spec["title"]:
    fig.suptitle(spec["title"])
  fig.tight_layout()
  fig.savefig(path, format="png", bbox_inches="tight")
  return path


def auroc_summary_spec(points: dict, budget: int) -> dict:
  """The spec of accuracy at a fixed budget against verifier quality.

  points: method -> list of (auroc, accuracy, se) (one per verifier; nan
  AUROCs are dropped). Returns {"title", "xlabel", "ylabel", "legend",
  "styles", "series": [{"method", "colour", "marker", "x", "y", "yerr"}]}.
  """
  styles = method_styles(points)
  series = []
  for m, pts in points.items():
    pts = sorted(p for p in pts if np.isfinite(p[0]))
    if pts:
      x, y, e = (list(map(float, c)) for c in zip(*pts))
      series.append(dict(method=m, **styles[m], x=x, y=y, yerr=e))
  return {
    "title": f"accuracy at budget {budget} against verifier quality",
    "xlabel": (
      "verifier within-problem AUROC (ORM for *_orm methods, else PRM min over steps)"
    ),
    "ylabel": YLABEL,
    "legend": "outside right",
    "styles": styles,
    "series": series,
  }


def render_auroc_summary(spec: dict, path: str) -> str:
  """Draw `auroc_summary_spec`'s spec into a PNG at path; returns path."""
  from experiments import analysis

  fig, (ax,) = analysis.new_figure(figsize=(6.0, 4.0))
  for s in spec["series"]:
    _draw_series(ax, s, ms=5)
  ax.set_xlabel(spec["xlabel"])
  ax.set_ylabel(spec["ylabel"])
  ax.set_title(spec["title"], fontsize=10)
  ax.set_ylim(0, 1)
  ax.grid(True, alpha=0.3)
  _legend_outside(fig, [ax])
  fig.tight_layout()
  fig.savefig(path, format="png", bbox_inches="tight")
  return path


def _draw_series(ax, s: dict, ms: float) -> None:
  """One spec series (x, y, yerr, colour, marker, method) as an error-bar line."""
  ax.errorbar(
    s["x"],
    s["y"],
    yerr=s["yerr"],
    color=s["colour"],
    marker=s["marker"],
    ms=ms,
    lw=1.2,
    capsize=2,
    label=s["method"],
  )
