"""brokerlab core."""
