"""The hostile-input corpus of issue 15 as tests: every crafted input is built at test time (build.py)."""
