"""A sweep's life: its file, its trials' identities, the checks, the plan, the budget, the lease, the Tuner and the trainable, the evaluation jobs."""
