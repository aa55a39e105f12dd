"""MINFLUX-only CLI verbs (modules with HELP, add_arguments, run), dispatched by :mod:`..commands`."""
