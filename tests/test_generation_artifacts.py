"""A decoder's artifact is written and trusted as a single-pass one is: staged beside its directory and moved
over it whole (a killed export leaves the previous artifact intact), and signed by the gate's key, so that
`deploycheck serve --verify-key` serves it and refuses it once a file changed after signing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pytest.importorskip("transformers")
from models import llama_decoder, prompts
from serving import start_server, stop_server

from deploycheck.generation.artifact import SIDECAR, read_sidecar, reusable
from deploycheck.generation.cache import Decode
from deploycheck.generation.check import GenerationCheck
from deploycheck.generation.formats import cache_key, export_decoder
from deploycheck.generation.spec import GenerativeSpec
from deploycheck.signing import SIGNATURE_FILE

pytestmark = pytest.mark.slow


def _spec(layers: int = 2) -> GenerativeSpec:
    return GenerativeSpec("llama_tiny", llama_decoder(layers=layers), prompts(), new_tokens=4, batch_sizes=(2,),
                          formats=("eager", "onnx"))


def test_a_decoder_export_killed_halfway_leaves_the_previous_artifact_intact(
        tmp_path: Path, shared_decoder_exports) -> None:
    """The previous artifact is the 2-layer decoder; a 1-layer one (another cache key) is being exported over
    it when the process is killed, as soon as its first file is written."""
    target = tmp_path / "generative" / "llama_tiny" / "onnx"
    shutil.copytree(shared_decoder_exports(_spec(), ("onnx",))["onnx"], target)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_generation_artifacts import _spec
        from deploycheck.generation.formats import export_decoder
        export_decoder(_spec(layers=1), "onnx", {str(target)!r})
        """)
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    staged: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        staged = [p for p in target.parent.glob(".onnx.*") if p.is_dir() and any(p.iterdir())]
        if staged:
            break
        time.sleep(0.005)
    assert staged and process.poll() is None, "the export wrote into a staging directory while it ran"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before, "not replaced, not half-written"
    read_sidecar(target)  # every file verifies against its hash
    assert reusable(target, cache_key(_spec(), "onnx", Decode)), "the previous export is still the cache's"

    spec = _spec(layers=1)
    assert export_decoder(spec, "onnx", target) == target  # the next run exports cleanly over it
    assert reusable(target, cache_key(spec, "onnx", Decode)) and read_sidecar(target)["layers"] == 1
    user_files = tmp_path / "mine"
    user_files.mkdir()
    (user_files / "notes.txt").write_text("not an artifact")
    with pytest.raises(Exception, match="refusing to export into"):
        export_decoder(spec, "onnx", user_files)
    assert (user_files / "notes.txt").read_text() == "not an artifact"


def _key_pair(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = root / "signer.pem", root / "signer.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_a_decoder_signed_by_the_gate_is_served_with_verify_key_and_refused_once_altered(tmp_path: Path) -> None:
    pytest.importorskip("model_signing", reason="pip install 'deploycheck[signing]'")
    private, public = _key_pair(tmp_path)
    check = GenerationCheck(tmp_path / "artifacts", sign_key=str(private))
    assert check.assert_generation(_spec()).passed
    signed = tmp_path / "artifacts" / "llama_tiny" / "onnx"
    assert (signed / SIGNATURE_FILE).is_file()

    server = start_server(signed, "--verify-key", str(public))
    try:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/v2/models/llama_tiny/ready")
        assert connection.getresponse().status == 200
    finally:
        stop_server(server)

    altered = tmp_path / "altered"
    shutil.copytree(signed, altered)
    graph = next(name for name in read_sidecar(altered)["files"] if name.endswith(".onnx"))
    (altered / graph).write_bytes((altered / graph).read_bytes() + b"\0")
    sidecar = json.loads((altered / SIDECAR).read_text())  # what an attacker does: the hashes made to match
    sidecar["files"][graph]["sha256"] = hashlib.sha256((altered / graph).read_bytes()).hexdigest()
    (altered / SIDECAR).write_text(json.dumps(sidecar))
    refused = subprocess.run([sys.executable, "-m", "deploycheck.cli", "serve", str(altered), "--verify-key",
                              str(public), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "does not verify against" in refused.stderr, refused.stderr
