"""Several machines, one run: the host list, what each host must have, and the launch.

hosts.py reads and writes mlx.launch's host file; probe.py is what runs on each host to say what
it has; check.py reaches every host (ssh, or directly for this machine) and compares; launch.py
starts `mlx.launch`, relays rank 0's events and turns a host that drops out into a clear error.
"""
