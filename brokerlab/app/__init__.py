"""The application layer: runs scenarios on targets, compares, selects, checks the fault matrix,
renders reports and figures. It builds on the core, the simulator and the adapters; only the CLI
and the public API sit above it.
"""
