"""Utilities that import nothing else of the package: process ranks, seeds, atomic files, the Hub, image grids,
argument checks."""
