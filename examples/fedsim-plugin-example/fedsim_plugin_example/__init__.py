"""Example fedsim plug-ins: `damped_fedavg`, `clipped_fedavg` and the `wine` task."""
