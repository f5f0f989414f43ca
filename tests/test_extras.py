"""Without the optional runtimes (the `openvino` and `executorch` extras) nothing fails: the demo passes and their
formats show as skipped with the line that installs them; without transformers (which only decoders need) the gate
runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BLOCK_EXTRAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "nncf", "executorch"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
def test_without_the_extras_their_formats_are_skipped_with_the_install_line(tmp_path: Path, cache_env) -> None:
    code = BLOCK_EXTRAS + f"""
from deploycheck.cli import main
sys.exit(main(["demo", "--out", {str(tmp_path)!r}]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cache_env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("openvino", "openvino_int8", "executorch", "executorch_int8"):
        assert re.search(rf"^digits_cnn +{name} +skipped$", run.stdout, re.MULTILINE), run.stdout
    assert "openvino is not installed (pip install 'deploycheck[openvino]')" in run.stdout
    assert "executorch is not installed (pip install 'deploycheck[executorch]')" in run.stdout
    assert re.search(r"^digits_cnn +onnx .* ok$", run.stdout, re.MULTILINE), run.stdout


@pytest.mark.slow
def test_without_transformers_the_gate_runs_and_a_generative_spec_says_what_to_install(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    """transformers is no dependency of deploycheck (only decoders need it): a gate run without it passes, and
    a generative spec names the package instead of an import error."""
    pytester.makeconftest(BLOCK_TRANSFORMERS + '''
import torch
import deploycheck


@deploycheck.model
def tiny():
    torch.manual_seed(0)
    return deploycheck.ModelSpec(name="tiny", model=torch.nn.Linear(6, 3).eval(), example_inputs=torch.randn(8, 6))
''')
    pytester.makepyfile(test_gate='''
import pytest
import torch

from deploycheck.errors import SpecError
from deploycheck.generation.spec import GenerativeSpec


def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)


def test_a_generative_spec_needs_transformers():
    with pytest.raises(SpecError, match="needs transformers .*: pip install transformers"):
        GenerativeSpec("lm", torch.nn.Linear(2, 2), torch.zeros(1, 4, dtype=torch.long))
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--deploycheck-no-baselines",
                                           "--deploycheck-formats=eager,onnx", f"--deploycheck-artifacts={tmp_path}")
    result.assert_outcomes(passed=3)


BLOCK_TRANSFORMERS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""
