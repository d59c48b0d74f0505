"""Ray job entry points: collect (trajectories), and later train and evaluate."""
