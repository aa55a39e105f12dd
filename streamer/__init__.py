"""Real-time streaming distance estimation for two-emitter MINFLUX measurements."""

__version__ = "0.1.0"
