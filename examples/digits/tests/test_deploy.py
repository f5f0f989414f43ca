"""The deployment gate of the digits CNN: every format, loaded back from disk, against the eager model."""


def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)


def test_accuracy(artifact, deploycheck):
    deploycheck.assert_accuracy(artifact)


def test_speed(artifact, deploycheck):
    deploycheck.bench(artifact)
    deploycheck.check_speedup(artifact)
