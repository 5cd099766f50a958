"""Tools tests (release bundle, fidelity gate) share no fixtures: test_release keeps its
release keys and built bundle in its module."""
