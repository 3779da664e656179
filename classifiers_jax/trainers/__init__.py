"""Classifier trainers: each module has create_state, train_step, make_task, train_and_evaluate."""
