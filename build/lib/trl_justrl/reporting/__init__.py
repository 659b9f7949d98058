"""Run reporting: the health monitor, the compute budget, the dynamics plot, the end-of-run summary, the model card.

These read a run's logs and settings; they import nothing of the training core (which imports them).
"""
