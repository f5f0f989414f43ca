"""The structure the code keeps: imports that flow one way, modules of one concept, and every fact about a format
declared by the format itself, so that a new format that forgets one fails here rather than misbehaving."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deploycheck
from deploycheck import formats
from deploycheck.errors import DeployCheckError
from deploycheck.explain import ENGINES, explain_quantization, explained_formats
from deploycheck.formats import Format, format_names, get_format, searchable_formats
from deploycheck.formats.base import Precision
from deploycheck.server.repository import discover, servable_formats
from deploycheck.tolerance import Tolerance

PACKAGE = Path(deploycheck.__file__).parent
# loaded with every pytest run or command line, so heavy modules are imported inside the functions that use them
LAZY_IMPORTERS = {"plugin.py", "plugin_options.py", "plugin_summary.py", "cli.py"}
MAX_LINES = 420


def _local_deploycheck_imports(path: Path) -> list[str]:
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("deploycheck")):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.module}")
    return found


def test_internal_imports_are_at_module_top_outside_the_modules_pytest_loads() -> None:
    local = [found for path in sorted(PACKAGE.rglob("*.py")) if path.name not in LAZY_IMPORTERS
             for found in _local_deploycheck_imports(path)]
    assert not local, f"function-local deploycheck imports (move the helper to a lower layer instead): {local}"


def test_no_module_holds_more_than_one_screenful_of_concepts() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines()))
            > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split along their seams): {long}"


def test_the_plugin_imports_no_heavy_library() -> None:
    code = ("import sys, deploycheck.plugin\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'numpy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.slow
def test_a_pytest_run_without_the_gate_imports_no_heavy_library(pytester: pytest.Pytester) -> None:
    """deploycheck is a pytest plugin, loaded by every pytest run of a project that installs it: a run of tests
    that never ask for the gate (with a pyproject.toml of the project's own) must not pay for torch, numpy or
    scipy (it once cost 5 s: the configure, collection and summary hooks imported the formats and the history)."""
    pytester.makepyprojecttoml("[tool.other]\nkey = 1\n")
    pytester.makeconftest("""
import sys

import pytest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    heavy = sorted(m for m in ("torch", "numpy", "scipy", "onnxruntime") if m in sys.modules)
    (config.rootpath / "heavy.txt").write_text(repr(heavy))
""")
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert (pytester.path / "heavy.txt").read_text() == "[]"


def test_the_layers_contract_fails_on_a_cycle(tmp_path: Path) -> None:
    """The contract in pyproject.toml holds, and a low layer importing a high one breaks it (run on a copy)."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    root = Path(__file__).parents[1]
    kept = subprocess.run([str(lint), "--no-cache"], cwd=root, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout[-2000:]
    copy = tmp_path / "src"
    subprocess.run(["cp", "-r", str(root / "src"), str(copy)], check=True)
    (tmp_path / "pyproject.toml").write_text((root / "pyproject.toml").read_text())
    tensors = copy / "deploycheck" / "tensors.py"
    tensors.write_text(tensors.read_text() + "\nfrom deploycheck import gate  # a leaf importing the gate\n")
    broken = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert broken.returncode != 0
    assert "deploycheck.tensors -> deploycheck.gate" in broken.stdout


def test_the_int8_search_covers_the_formats_that_declare_a_search_space() -> None:
    assert searchable_formats() == ["onnx_int8_static", "openvino_int8"]
    assert len(get_format("onnx_int8_static").int8_search_space) == 12, "6 calibrations, per channel and tensor"


@pytest.mark.parametrize("name", format_names())
def test_every_format_declares_its_facts(name: str) -> None:
    problems = format_contract_problems(get_format(name))
    assert not problems, f"format {name!r}: {problems}"


def format_contract_problems(fmt: Format) -> list[str]:
    """What a format declares wrongly or not at all (the facts the server, explanations and cache rely on)."""
    problems = []
    if not isinstance(getattr(fmt, "name", None), str):
        problems.append("no name")
    if not isinstance(fmt.default_tolerance, Tolerance):
        problems.append("default_tolerance is not a Tolerance")
    if not (isinstance(fmt.packages, tuple) and fmt.packages and all(isinstance(p, str) for p in fmt.packages)):
        problems.append("packages must name the distributions whose versions key its exports")
    if fmt.explanation is not None and fmt.explanation not in ENGINES:
        problems.append(f"explanation {fmt.explanation!r} is not one of {sorted(ENGINES)}")
    if fmt.executes_code is not None and not (isinstance(fmt.executes_code, str) and fmt.executes_code):
        problems.append("executes_code must be None or say why loading runs code")
    if fmt.servable and not fmt.writes_files:
        problems.append("a format with no files cannot be served")
    if fmt.servable and fmt.platform == "unknown":
        problems.append("a servable format names its Open Inference Protocol platform")
    if not (isinstance(fmt.precision, Precision) and fmt.precision.weights and fmt.precision.compute):
        problems.append("precision must say, in words, what the artifact stores and computes in")
    if fmt.base_format is not None and fmt.base_format not in format_names():
        problems.append(f"base_format {fmt.base_format!r} is not a registered format")
    if not (isinstance(fmt.int8_search_space, tuple) and all(isinstance(s, dict) for s in fmt.int8_search_space)):
        problems.append("int8_search_space must be a tuple of format_options settings")
    if fmt.int8_search_space and fmt.base_format is None:
        problems.append("a searched format is quantized from its base_format's export")
    return problems


NEW_FORMAT = '''
"""A format added by a test: ONNX, run by ONNX Runtime, declared in one file."""
from deploycheck.formats.onnx import OnnxFormat


class RenamedOnnx(OnnxFormat):
    name = "renamed_onnx"
    packages = ("torch", "onnx", "onnxscript", "onnxruntime", "{package}")
    servable = {servable}
    explanation = {explanation}
'''


@pytest.fixture
def add_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Register a one-file format through the `deploycheck.formats` entry-point group, as a third party would."""

    def add(package: str = "numpy", servable: bool = True, explanation: str | None = None) -> Format:
        (tmp_path / "renamed_onnx.py").write_text(NEW_FORMAT.format(package=package, servable=servable,
                                                                     explanation=repr(explanation)))
        info = tmp_path / "renamed_onnx-0.1.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: renamed-onnx\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[deploycheck.formats]\nrenamed_onnx = renamed_onnx:RenamedOnnx\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("renamed_onnx", None)
        formats._registry.cache_clear()
        get_format.cache_clear()
        return get_format("renamed_onnx")

    yield add
    sys.modules.pop("renamed_onnx", None)
    formats._registry.cache_clear()
    get_format.cache_clear()


def test_a_new_format_from_one_file_is_exported_cached_served_and_explained_by_its_declarations(
        add_format, two_io_spec, tmp_path: Path) -> None:
    fmt = add_format(package="scikit-learn")
    assert "renamed_onnx" in format_names() and not format_contract_problems(fmt)
    artifact = deploycheck.export(two_io_spec, "renamed_onnx", tmp_path / "artifacts" / "renamed_onnx")
    assert set(artifact.metadata["versions"]) >= {"onnxruntime", "scikit-learn"}  # its packages key its cache
    inputs = [t.numpy() for t in two_io_spec.example_inputs]
    expected = deploycheck.export(two_io_spec, "onnx", tmp_path / "onnx").run(inputs)
    np.testing.assert_allclose(artifact.run(inputs)[0], expected[0], rtol=1e-6)
    assert "renamed_onnx" in servable_formats()
    assert discover(artifact.path).artifacts["two_io"].format == "renamed_onnx"
    assert "renamed_onnx" not in explained_formats()
    with pytest.raises(DeployCheckError, match="no per-layer quantization explanation"):
        explain_quantization(artifact, two_io_spec)


def test_a_new_format_that_declares_it_cannot_be_served_is_refused_by_the_server(
        add_format, two_io_spec, tmp_path: Path) -> None:
    add_format(servable=False)
    artifact = deploycheck.export(two_io_spec, "renamed_onnx", tmp_path / "renamed_onnx")
    with pytest.raises(DeployCheckError, match="not served"):
        discover(artifact.path)


def test_a_new_format_naming_an_unknown_explanation_engine_fails_the_contract(add_format) -> None:
    assert format_contract_problems(add_format(explanation="magic")) == [
        "explanation 'magic' is not one of ['onnx_by_name', 'qdq', 'torch_hooks']"]


def test_an_upgrade_of_a_package_a_format_names_re_exports(add_format, two_io_spec, tmp_path: Path) -> None:
    add_format(package="renamed-onnx")  # the test's own distribution: its version is ours to change
    first = deploycheck.export(two_io_spec, "renamed_onnx", tmp_path / "renamed_onnx")
    (tmp_path / "renamed_onnx-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: renamed-onnx\nVersion: 0.2\n")
    again = deploycheck.export(two_io_spec, "renamed_onnx", tmp_path / "renamed_onnx")
    assert first.metadata["versions"]["renamed-onnx"] == "0.1" and again.metadata["versions"]["renamed-onnx"] == "0.2"
    assert not again.reused and first.metadata["cache_key"] != again.metadata["cache_key"]


def test_a_change_of_a_formats_declared_precision_re_exports(add_format, two_io_spec, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = add_format()
    first = deploycheck.export(two_io_spec, "renamed_onnx", tmp_path / "renamed_onnx")
    assert first.metadata["precision"] == fmt.precision.to_dict()
    monkeypatch.setattr(type(fmt), "precision", Precision(weights="fp16", compute="fp16"))
    again = deploycheck.export(two_io_spec, "renamed_onnx", tmp_path / "renamed_onnx")
    assert not again.reused and again.metadata["precision"] == {"weights": "fp16", "compute": "fp16"}
