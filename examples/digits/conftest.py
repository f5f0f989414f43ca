"""The embedded default as a user project: the digits CNN registered with the deploycheck gate, and three
compressed variants of it (unstructured-pruned, channel-pruned, distilled) gated against it as their original."""

import deploycheck
from deploycheck.digits import compressed_spec, digits_spec


@deploycheck.model
def digits_cnn() -> deploycheck.ModelSpec:
    return digits_spec()


@deploycheck.model
def digits_pruned_unstructured() -> deploycheck.ModelSpec:
    return compressed_spec("pruned_unstructured", original="digits_cnn")


@deploycheck.model
def digits_pruned_channels() -> deploycheck.ModelSpec:
    # Fewer channels compute less: in ONNX Runtime that must show as a real speedup.
    return compressed_spec("pruned_channels", original="digits_cnn", min_speedup_vs_original={"onnx": 1.05})


@deploycheck.model
def digits_student() -> deploycheck.ModelSpec:
    return compressed_spec("student", original="digits_cnn")
