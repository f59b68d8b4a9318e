"""Where jobs run. `local` (the default): this machine, in this process, or with several GPUs
one worker process per GPU (local.py, local_worker.py). `slurm`: a cluster through submitit
(slurm.py); each job runs the same group code as a local run (worker.py -> execute.run_group)
but writes result files (results.py) that the driver registers: only the driver writes the
registry. Every launcher builds on saerun/execute.py and none imports runner.py, which sits
above them and picks one."""
