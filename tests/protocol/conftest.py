"""Protocol tests need no fixtures of their own: they read the shared vectors in
tests/vectors/ and run the same checks under the MicroPython unix port."""
