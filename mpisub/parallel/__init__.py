"""Layer 3, the ranks (MPI only here, in `comm`): who owns what (`layout`), a round's exchange plan
(`exchange`), the two plans of a round's steps 1 and 2 (`plans`), the collectives' counters
(`counters`) and cost model (`costs`), memory and the plan choice (`resources`), cores and threads
(`threads`), the watchdog (`watchdog`). Independent of `mpisub.io`."""
