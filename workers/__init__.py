"""What runs in RQ workers and the scheduler process."""
