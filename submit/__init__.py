"""Submission scripts for operators (head node); see submit/README.md."""
