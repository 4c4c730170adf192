"""multigeometry: one embedding space for images, text, audio and code, each sample a distribution."""

__version__ = "0.1.0"
