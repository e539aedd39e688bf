"""llmasr: web audio -> pseudo-labelled WebDataset shards -> LLM-ASR -> rare-word error rates."""

__version__ = "0.1.0"
