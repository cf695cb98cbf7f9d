"""Torch models, their preprocessing, artifacts and training (no Kafka in here)."""
