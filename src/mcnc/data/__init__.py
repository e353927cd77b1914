"""Datasets used by mcnc (MNIST, read from local IDX files)."""
