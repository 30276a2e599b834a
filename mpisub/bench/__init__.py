"""Layer 6, `mpisub-bench`: the built-in cases timed end to end (`cases`), scaling measured and
modelled (`scaling`), one rank's round in process for the strong-scaling tables (`strong`)."""
