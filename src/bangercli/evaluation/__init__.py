"""`banger evaluate`: held-out loss and accuracy, musical metrics, control adherence."""
