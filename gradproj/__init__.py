"""gradproj: which preference pairs are worth aligning a model on.

Truncated influence (TIF), LossDiff and IRM (Zhang et al., ICLR 2026) over a store of
randomly projected per-pair LoRA gradients of the DPO loss.
"""

__version__ = "0.1.0"
