"""Experiments on top of the pipeline: the paper's evaluation as library code.

Data — ``synthetic`` (generated families), ``bigbench`` (BIG-bench pairs), ``tasks`` (train with
known flips, val, a second val, test), ``tiny`` (random models built from a config).
Stages — ``scoring`` (θ, θ_V, IRM + LossDiff, store, IF, each timed), ``runner`` (continue from θ
on a selection, evaluate on held-out pairs), ``step`` (a hand-written training step).
Measures — ``stats`` (ranks, correlations, AUROC, intervals), ``noise`` (label-noise detection),
``exact`` (unprojected gradients and influence), ``lds`` (linear datamodeling score),
``learnability`` (does warm-up θ generalise on a source at all), ``dynamics`` (losses after
every step of a continued run), ``buildcost`` and ``querycost`` (what a store costs to build and
to query), ``scale`` (real architectures: build vs training step, plan vs measured memory),
``measure`` (machine, time, memory, limits), ``tables`` (markdown reports), ``plots`` (the
benchmarks' figures), ``suite`` (the evidence suite's report). ``demo`` is ``gradproj demo``.
"""
