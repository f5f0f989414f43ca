"""The deployment gate of the digits CNN: every format, loaded back from disk, against the eager model."""


def test_parity(artifact, deploycheck):
    deploycheck.assert_parity(artifact)
