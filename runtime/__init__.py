"""What a process takes from its environment: settings, topic names and the clock.

The bottom layer: it imports nothing of ours, and every other package may import it."""
