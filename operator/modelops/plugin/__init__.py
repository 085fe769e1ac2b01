"""`kubectl modelops` (the executable kubectl-modelops, and `modelops <command>`): a day-two view of
TrainingJobs and ModelServices: get, watch, describe, promote, abort, rollback, logs."""
