"""Without the optional runtimes (the `openvino` and `executorch` extras) nothing fails: the demo passes and their
formats show as skipped with the line that installs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK_EXTRAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "nncf", "executorch"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""


def test_without_the_extras_their_formats_are_skipped_with_the_install_line(tmp_path: Path, cache_env) -> None:
    code = BLOCK_EXTRAS + f"""
from deploycheck.cli import main
sys.exit(main(["demo", "--out", {str(tmp_path)!r}]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cache_env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("openvino", "openvino_int8", "executorch", "executorch_int8"):
        assert f"{name:<20}skipped" in run.stdout, run.stdout
    assert "openvino is not installed (pip install 'deploycheck[openvino]')" in run.stdout
    assert "executorch is not installed (pip install 'deploycheck[executorch]')" in run.stdout
    assert "onnx                ok" in run.stdout
