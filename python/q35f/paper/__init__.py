"""`q35f paper`: the paper's tables, figures and supplementary archive, all from real runs.

- `q35f paper data`: bench/results/{performance,accuracy,scalability,ablation}.csv (data.py)
- `q35f paper figures`: bench/figures/*.{pdf,png}, drawn only from those CSVs (figures.py)
- `q35f paper supplementary`: a byte-reproducible zip for arXiv (supplementary.py)
- `q35f paper all`: the three in order
"""

from __future__ import annotations

from .cli import register

__all__ = ["register"]
