"""The random streams of a job. Each draw is seeded by (seed, fold, epoch, stream), so a resumed job
draws exactly what an uninterrupted one did, and no stream shifts another."""
import numpy as np

PARTNERS, ORDER, INIT, SHUFFLED_LABELS, DROPOUT = 1, 2, 3, 4, 5


def derive_seed(*parts):
    """One 32-bit seed per (seed, fold, epoch, stream, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
