"""The README's measured numbers have one source: the benchmarks' own saved output in benchmarks/results/.

Before, README and docs/scoring.md quoted different naive-baseline numbers for the same benchmark.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_measured_number_in_the_readme_is_in_the_benchmark_output():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Measured on this 2-core CPU machine", 1)[1].split("\n## ", 1)[0]
    results = "\n".join(p.read_text() for p in sorted((REPO / "benchmarks" / "results").glob("*.txt")))
    assert results, "benchmarks/results/ holds no saved benchmark output"
    # decimals (times, ratios, facesim) and megabytes; the setup (14.0-18.0 s splice) is described, not measured
    quoted = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", section)) - {"14.0", "18.0"}
    quoted |= {f"{m} MB" for m in re.findall(r"(\d+) MB", section)}
    assert quoted
    missing = sorted(q for q in quoted if q not in results)
    assert not missing, f"README quotes numbers the saved benchmark output does not contain: {missing}"
    scoring = (REPO / "docs" / "scoring.md").read_text()
    assert "benchmarks/results/score_video.txt" in scoring and "naive full (decode" not in scoring
