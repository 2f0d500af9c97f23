"""``gradproj demo``: the pipeline on the embedded SmolLM2 and a generated task with flipped
pairs (``synthetic``), run through ``gradproj ablate`` (``run``)."""
