"""Does selection help on my data? ``gradproj ablate``: every rule continued from θ on its
selection and evaluated on held-out pairs (``ablate``, ``runner``), the statistics of the
comparison (``stats``, ``noise``) and the adapter snapshots they need (``state``)."""
