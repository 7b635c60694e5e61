"""Shipped model weights (see MODEL_CARD.md when a default model is installed)."""
