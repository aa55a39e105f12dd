"""Sub-commands of the ``streamer`` CLI (see :mod:`streamer.cli`)."""
