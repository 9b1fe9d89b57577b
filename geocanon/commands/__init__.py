"""Sub-commands of the ``geocanon`` command line, one module each (see :mod:`geocanon.cli`)."""
