"""The deployment gate of the digits CNN and its compressed variants: every format, loaded back from disk,
against the eager model, against the stored baselines and, for the compressed ones, against the original."""


def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)


def test_accuracy(artifact, deploycheck):
    deploycheck.assert_accuracy(artifact)


def test_size(artifact, deploycheck):
    deploycheck.assert_size(artifact)


def test_speed(artifact, deploycheck):
    deploycheck.bench(artifact)
    deploycheck.check_speedup(artifact)


def test_against_original(artifact, deploycheck):
    deploycheck.assert_original(artifact)  # skipped, with the reason, for a model without an original
