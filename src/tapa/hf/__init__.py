"""Hugging Face interoperability: tapa checkpoints as transformers folders and back."""
