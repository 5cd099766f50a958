"""Taking code back from the heap.

Why: without frozen modules (the unix port in tests; an ESP32 running .mpy files from its
filesystem) a module's bytecode lives on the heap, about 100 KB for all of the firmware,
as much as an ESP32 has. Code needed only at boot or while a console command is answered
(configuration checks, provisioning and its console lines, the topic layout, the version
module whose one string the application keeps) is imported when needed and forgotten afterwards, so the
collector can reuse its memory between readings.
"""
import gc
import sys

TRANSIENT = ("firmware.provision", "protocol.console", "firmware.config", "protocol.topics",
             "firmware.version")


def unload(*names):
    """Forget the modules (default: TRANSIENT) and collect."""
    for name in names or TRANSIENT:
        if sys.modules.pop(name, None) is not None:
            pkg, _, attr = name.rpartition(".")
            parent = sys.modules.get(pkg)
            if parent is not None and hasattr(parent, attr):
                try:
                    delattr(parent, attr)
                except (AttributeError, TypeError):
                    pass
    gc.collect()
