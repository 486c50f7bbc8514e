"""Metric modules for `evaluate.load(path)`, shipped so that evaluation works without the Hugging Face Hub."""
