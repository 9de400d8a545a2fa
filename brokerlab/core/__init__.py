"""The lab's core: scenario model and units, load plan, trace, delivery checks, latency, analysis,
result folders.

Everything above (the simulator, the real-broker adapters, the application, the CLI) builds on
these modules; they import nothing from those layers (checked by import-linter in CI).
"""
