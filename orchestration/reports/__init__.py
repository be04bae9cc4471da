"""The paper's tables regenerated from the runs, and its claims checked."""
