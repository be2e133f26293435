"""openami: open-source, secure-by-design Advanced Metering Infrastructure."""

__version__ = "0.1.0"
