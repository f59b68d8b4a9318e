"""Where jobs run. `local` (the default): this machine, in this process, or with several GPUs
one process per GPU (local.py). `slurm`: a cluster through submitit (slurm.py); each job runs
the same group code as a local run (worker.py -> runner.run_group) but writes result files
(results.py) that the driver registers: only the driver writes the registry."""
