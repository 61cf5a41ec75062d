"""Write the coverage matrix: every causal-LM family of the installed transformers, tiny, through both engines.

    python scripts/coverage_matrix.py            # all families: docs/models.md and the JSON the CLI prints
    python scripts/coverage_matrix.py llama opt  # only these, printed (nothing written)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tqdm.auto import tqdm

from patchscopes.models import quiet_transformers
from patchscopes.testing.coverage import check_family, coverage_markdown, save_coverage
from patchscopes.testing.families import causal_lm_families

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def main(only: list[str]) -> None:
    torch.set_num_threads(1)
    families = [f for f in causal_lm_families() if not only or f[0] in only]
    rows = []
    with quiet_transformers():
        for model_type, model_class in tqdm(families, desc="families", unit="family"):
            row = check_family(model_type, model_class)
            tqdm.write(f"{model_type:28s} {row.status:10s} {row.seconds:6.2f}s  {row.detail[:90]}")
            rows.append(row)
    if not only:
        import transformers

        save_coverage(rows)
        DOC.write_text(coverage_markdown(transformers.__version__, rows), encoding="utf-8")
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main(sys.argv[1:])
