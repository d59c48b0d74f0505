"""Meta-training nowcasters on stored trajectories (`training`) and evaluating them on tasks (`evaluation`).

This layer sits above the data side: it reads windows through `pipeline.loader` and trains the
models of `nino`; `nino` and `pipeline` never import it.
"""
