"""docs/python.md runs: its Python blocks, in order, as one script, exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_python_page_runs_as_written(tmp_path):
    blocks = python_blocks((REPO / "docs" / "python.md").read_text())
    assert len(blocks) >= 4
    script = tmp_path / "python_md.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "lenet-accuracy.png").stat().st_size > 0
    assert "complete last generation 2" in r.stdout
    assert re.search(r"^(\d+)/\1 units done; complete: True$", r.stdout, re.M)
    assert "generation done: seed 1 gen 2: lenet acc" in r.stderr  # the logging set up on the page
    assert len(list((tmp_path / "runs").glob("*/run.log"))) == 1
