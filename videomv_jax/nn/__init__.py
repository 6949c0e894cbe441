"""Shared layers: attention (one function, kernel by config), embeddings, norm helpers."""
