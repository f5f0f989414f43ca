"""The embedded default as a user project: the digits CNN registered with the deploycheck gate."""

import deploycheck
from deploycheck.digits import digits_spec


@deploycheck.model
def digits_cnn() -> deploycheck.ModelSpec:
    return digits_spec()
