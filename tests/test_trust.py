"""Nothing from an artifact runs unless it is trusted: crafted artifacts whose loading would run code are refused
before anything of them is read, and load when signed by the trusted key (or with trust_code)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import deploycheck
from deploycheck.errors import ArtifactError, DeployCheckError
from deploycheck.server.repository import discover
from deploycheck.signing import sign_artifact, verify_artifact


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two elliptic-curve key pairs in PEM: the trusted one and a stranger's."""
    root = tmp_path_factory.mktemp("keys")
    paths = {}
    for owner in ("trusted", "stranger"):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[owner] = root / f"{owner}.pem"
        paths[owner].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        paths[f"{owner}.pub"] = root / f"{owner}.pub"
        paths[f"{owner}.pub"].write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return paths


def _rehash(directory: Path) -> None:
    """What an attacker does after changing files: record the new hashes in the (unsigned) sidecar."""
    sidecar = json.loads((directory / "deploycheck.json").read_text())
    for name in sidecar["files"]:
        data = (directory / name).read_bytes()
        sidecar["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (directory / "deploycheck.json").write_text(json.dumps(sidecar))


class _Payload:
    """A pickle that creates a file when unpickled: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


class FileReader(torch.nn.Module):
    """A TorchScript forward that returns a file's bytes: a program, not a model."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.from_file(self.path, shared=False, size=4, dtype=torch.uint8).float().expand(
            image.shape[0], 4).contiguous()


def _crafted(kind: str, digits_artifacts: dict, tmp_path: Path) -> tuple[Path, Path]:
    """An artifact directory whose loading would run code, with its sidecar re-hashed; and the marker file the
    code would create."""
    marker = tmp_path / "code-ran"
    source = {"pt2": "torch_export", "torchscript": "torchscript", "factory": "state_dict"}[kind]
    directory = tmp_path / kind
    shutil.copytree(digits_artifacts[source].path, directory)
    if kind == "pt2":
        (directory / "model.pt2").write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "torchscript":
        (tmp_path / "secret").write_bytes(b"key!")
        torch.jit.save(torch.jit.script(FileReader(str(tmp_path / "secret"))), str(directory / "model.ts"))
    else:
        sidecar = json.loads((directory / "deploycheck.json").read_text())
        (directory / "deploycheck.json").write_text(json.dumps({**sidecar, "factory": "os:abort"}))
    _rehash(directory)
    return directory, marker


@pytest.mark.parametrize("kind", ["pt2", "torchscript", "factory"])
def test_an_artifact_that_would_run_code_is_refused_before_anything_is_read(kind, digits_artifacts, tmp_path) -> None:
    directory, marker = _crafted(kind, digits_artifacts, tmp_path)
    with pytest.raises(ArtifactError, match=r"refusing to load .* --trust-code") as refused:
        deploycheck.load_artifact(directory)
    fmt = json.loads((directory / "deploycheck.json").read_text())["format"]
    assert f"digits_cnn/{fmt}" in str(refused.value)
    assert not marker.exists()
    with pytest.raises(DeployCheckError):  # the server refuses it too (state_dict is never served at all)
        discover(directory)
    assert not marker.exists()


def test_the_same_artifacts_load_when_signed_by_the_trusted_key_and_only_then(digits_artifacts, keys,
                                                                                tmp_path: Path) -> None:
    reader, _ = _crafted("torchscript", digits_artifacts, tmp_path)
    with pytest.raises(ArtifactError, match="is not signed"):
        deploycheck.load_artifact(reader, verify_key=keys["trusted.pub"])
    sign_artifact(reader, keys["stranger"])
    with pytest.raises(ArtifactError, match="does not verify against"):
        deploycheck.load_artifact(reader, verify_key=keys["trusted.pub"])
    sign_artifact(reader, keys["trusted"])
    loaded = deploycheck.load_artifact(reader, verify_key=keys["trusted.pub"])
    assert loaded.run(torch.zeros(2, 1, 8, 8))[0][0].tolist() == list(b"key!")  # its owner vouched for this program
    assert deploycheck.load_artifact(reader, trust_code=True).format == "torchscript"
    assert discover(reader, verify_key=keys["trusted.pub"]).artifacts["digits_cnn"].format == "torchscript"


def test_a_signature_covers_every_file_and_the_sidecar(digits_artifacts, keys, tmp_path: Path) -> None:
    signed = tmp_path / "onnx"
    shutil.copytree(digits_artifacts["onnx"].path, signed)
    sign_artifact(signed, keys["trusted"])
    verify_artifact(signed, keys["trusted.pub"])
    assert deploycheck.load_artifact(signed).format == "onnx"  # runs no code: needs no signature
    for change in ("weights", "sidecar", "added"):
        altered = tmp_path / change
        shutil.copytree(signed, altered)
        if change == "weights":
            data = bytearray((altered / "model.onnx").read_bytes())
            data[-10] ^= 1
            (altered / "model.onnx").write_bytes(bytes(data))
            _rehash(altered)
        elif change == "sidecar":
            sidecar = json.loads((altered / "deploycheck.json").read_text())
            (altered / "deploycheck.json").write_text(json.dumps({**sidecar, "model": "renamed"}))
        else:
            (altered / "extra.bin").write_bytes(b"x")
        with pytest.raises(ArtifactError):
            deploycheck.load_artifact(altered, verify_key=keys["trusted.pub"])


def test_export_signs_and_the_gate_signs_what_it_exports(digits_spec, keys, tmp_path: Path) -> None:
    artifact = deploycheck.export(digits_spec, "torchscript", tmp_path / "ts", sign_key=keys["trusted"])
    assert (artifact.path / "deploycheck.sig").is_file()
    assert deploycheck.load_artifact(artifact.path, verify_key=keys["trusted.pub"]).format == "torchscript"
    again = deploycheck.export(digits_spec, "torchscript", tmp_path / "ts", sign_key=keys["trusted"])
    assert again.reused  # the cache still applies to a signed directory; the signature is renewed
    deploycheck.load_artifact(again.path, verify_key=keys["trusted.pub"])


def test_what_this_process_exported_loads_without_a_signature_and_a_copy_altered_after_does_not(
        digits_spec, tmp_path: Path) -> None:
    exported = deploycheck.export(digits_spec, "torch_export", tmp_path / "pt2")
    assert deploycheck.load_artifact(exported.path).format == "torch_export"  # its own export: its own code
    sidecar = json.loads((exported.path / "deploycheck.json").read_text())
    (exported.path / "deploycheck.json").write_text(json.dumps({**sidecar, "created": "later"}))
    with pytest.raises(ArtifactError, match="refusing to load"):
        deploycheck.load_artifact(exported.path)
