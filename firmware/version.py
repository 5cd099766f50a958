"""The firmware version, in a module of its own: the application reports it (status, OCMF
"GV", console hello), the OTA code compares offers with it, and tools/release.py reads it
from this file's text (the regex there expects this one line) to stamp the release bundle,
so the bundle and the code it carries cannot disagree."""
FW_VERSION = "0.1.0"
