"""pytest set-up shared by every test file: the ``slow`` marker.

``slow`` marks tests that start real daemons (twistd subprocesses) or other real child
processes, or wait seconds of real time (deadlines, ping floods); ``./scripts/test.sh -m
"not slow"`` runs the rest as a fast inner loop, and CI
(``.ci/run``) runs everything.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts real daemons or child processes, or waits seconds of real time "
                                       "(deselect with -m \"not slow\")")
