"""Host-side tools for the device firmware: the fidelity gate and the release bundle."""
