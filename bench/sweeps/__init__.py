"""Many runs: the sweep over methods and seeds, on this machine or as submitit jobs."""
