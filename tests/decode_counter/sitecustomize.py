"""Counts image decodes in every Python process started with this folder on PYTHONPATH and DECODE_LOG set.

Local workers are forked from a server process that the search starts, so a
patch made inside the test process would never reach them; this file is
imported at the start of every interpreter, the server included.
"""

import os

_LOG = os.environ.get("DECODE_LOG")

if _LOG:
    from PIL import Image

    _open = Image.open

    def _counted_open(fp, *args, **kwargs):
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {fp}\n")
        return _open(fp, *args, **kwargs)

    Image.open = _counted_open
