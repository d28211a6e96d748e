"""LEAD's method (arXiv 2605.09806): 1-D tensors in, weights and advantages out; no model, no tokens."""
