"""What persists: the run directory's layout and its JSON files (rundir), the lock that keeps one
trainer per run directory (lock), crash-safe writes (atomic), and checkpoints with their seals
(checkpoint).

Knows no config and no model: which config a run resumes with is deqdist.train.resume.
"""
