"""Layer 4, `mpisub-train`: the command line (`cli`), a launch's start and end on every rank
(`start`), settling the config for K ranks and the data (`resolve`), the round loop (`loop`), what
is due after a round (`due`), the full network's evaluation (`evaluate`)."""
