"""bench: a plugin-based harness for bias amplification in self-consuming generative loops."""

__version__ = "0.2.0"
