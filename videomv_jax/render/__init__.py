"""Cameras, Gaussian containers and the differentiable tiled Gaussian rasterizer."""
