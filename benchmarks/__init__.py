"""Speed and memory benchmarks of sskd_tf (issue 7); not run by the tests.

`python -m benchmarks.step_time --help` lists the parts and their options;
docs/benchmarks.md holds the measured tables.
"""
