"""Layer 0, what every layer uses: the user-error type and exit codes (`errors`), the version and
the code hash (`provenance`). Imports nothing of mpisub."""
