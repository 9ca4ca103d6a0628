//! Placeholder: the generated xDS/workload API lands here with the control-plane issue.
