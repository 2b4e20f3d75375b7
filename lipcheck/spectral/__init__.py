"""Spectral norms: power iteration, Gram-iteration certificates, convolution operator norms."""
