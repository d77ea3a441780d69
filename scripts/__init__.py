"""Study tooling: the learning-rate study grid (`scripts.study_grid`) and its report (`scripts.report`)."""
