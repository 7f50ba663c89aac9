"""contimg: the continuum imaging pipeline of the DSA-110 drift-scan telescope."""

__version__ = "0.1.0"
